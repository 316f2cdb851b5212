"""Reading user-supplied text files with clear errors (missing, directory, unreadable, empty, not UTF-8)."""
from __future__ import annotations

import os
from pathlib import Path

from common.cli import UserError


def read_text_file(path: str | os.PathLike, what: str = "input file") -> str:
    """Return the file's text, or raise UserError naming the problem and the fix."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a folder, not a file; pass the file itself")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {str(p)!r}: {exc.strerror}; check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM written by Windows editors
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {str(p)!r} is not valid UTF-8 (bad byte at offset {exc.start}); "
            "re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    return text


def read_lines(path: str | os.PathLike, what: str = "input file") -> tuple[list[str], int]:
    """One text per line. Returns (texts, number of blank lines skipped). Empty files are an error."""
    text = read_text_file(path, what)
    lines = text.splitlines()
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise UserError(f"{what} {str(path)!r} is empty (no non-blank lines); put one text per line")
    return texts, len(lines) - len(texts)
