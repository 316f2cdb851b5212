"""common.textio: input text files (empty, non-UTF-8, folders given for files) refused in one line."""
from __future__ import annotations

import pytest

from common.cli import UserError
from common.textio import read_lines


def test_read_lines_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist; check the path") as info:
        read_lines(tmp_path / "absent.txt")
    assert "absent.txt" in str(info.value)


def test_read_lines_directory(tmp_path):
    with pytest.raises(UserError, match="is a folder, not a file"):
        read_lines(tmp_path)


@pytest.mark.parametrize("content", [b"", b"   \n\t\n\n", b"\r\n\r\n"])
def test_read_lines_empty(tmp_path, content):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is empty") as info:
        read_lines(path, what="--input file")
    assert str(info.value).startswith("--input file ")


@pytest.mark.parametrize("raw, offset", [(b"\xff\xfe\x00bad", 0), ("caf\xe9\n".encode("latin-1"), 3)])
def test_read_lines_not_utf8(tmp_path, raw, offset):
    path = tmp_path / "in.txt"
    path.write_bytes(raw)
    with pytest.raises(UserError) as info:
        read_lines(path)
    message = str(info.value)
    assert "not valid UTF-8" in message
    assert f"offset {offset}" in message
    assert "iconv" in message  # says how to fix it
    assert "\n" not in message


def test_read_lines_skips_and_counts_blank_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("first\n\n   second  \n\t\nthird\n\n", encoding="utf-8")
    assert read_lines(path) == (["first", "second", "third"], 3)


def test_read_lines_crlf_and_no_trailing_newline(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\r\nb\r\nc")
    assert read_lines(path) == (["a", "b", "c"], 0)


def test_read_lines_strips_bom(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffcaf\u00e9\nna\u00efve\n".encode("utf-8"))
    texts, blanks = read_lines(str(path))
    assert texts == ["caf\u00e9", "na\u00efve"]
    assert not texts[0].startswith("\ufeff")
    assert blanks == 0


