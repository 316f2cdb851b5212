"""Flan-T5 scripts: every bad input gets exit code 2 and one line on stderr that says what is wrong."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from tests.support import REPO_ROOT, T5_FOLDER, load_script


def inputs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "ok.txt").write_text("hello\n", encoding="utf-8")
    return tmp_path


CASES = [  # (argv builder given (files dir, tiny checkpoint), words the error line must contain)
    (lambda d, m: ["--text", "hi", "--model_path", d / "nowhere"], "does not exist"),
    (lambda d, m: ["--text", "hi", "--model_path", d / "empty.txt"], "is a file"),
    (lambda d, m: ["--text", "hi", "--model_path", d], "has no weights"),
    (lambda d, m: ["--text", "hi", "--model_path", "nobody/missing-t5"], "hf download nobody/missing-t5"),
    (lambda d, m: ["--text", "hi"], "hf download google/flan-t5-small"),  # the default, offline and not cached
    (lambda d, m: ["--text", "", "--model_path", m], "--text is empty"),
    (lambda d, m: ["--text", "   ", "--model_path", m], "--text is empty"),
    (lambda d, m: ["--batch_file", d / "empty.txt", "--model_path", m], "is empty"),
    (lambda d, m: ["--batch_file", d / "missing.txt", "--model_path", m], "does not exist"),
    (lambda d, m: ["--text", "hi", "--task", "poem", "--model_path", m], "invalid choice"),
    (lambda d, m: ["--text", "no separator", "--task", "qa", "--model_path", m], "QUESTION || CONTEXT"),
    (lambda d, m: ["--text", "hi", "--num_beams", "0", "--model_path", m], "must be >= 1"),
    (lambda d, m: ["--text", "hi", "--num_beams", "two", "--model_path", m], "whole number"),
    (lambda d, m: ["--text", "hi", "--max_new_tokens", "-1", "--model_path", m], "must be >= 1"),
    (lambda d, m: ["--text", "hi", "--device", "gpu", "--model_path", m], "unknown device"),
    (lambda d, m: ["--text", "hi", "--dtype", "int8", "--model_path", m], "unknown dtype"),
    (lambda d, m: ["--text", "hi", "--output", d / "out.csv", "--model_path", m], "must end in .jsonl"),
]


@pytest.mark.parametrize("make_argv, message", CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_inference_bad_input(cli, tmp_path, tiny_t5, capsys, make_argv, message):
    module = load_script(T5_FOLDER, "inference")
    assert cli(module, *make_argv(inputs(tmp_path), tiny_t5)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("script, argv, message", [
    ("eval_accuracy", ["--file", "missing.txt"], "does not exist"),
    ("eval_accuracy", ["--max_new_tokens", "0"], "must be >= 1"),
    ("benchmark", ["--encoder_batch_sizes", "4,0"], "--encoder_batch_sizes"),
    ("benchmark", ["--encoder_batch_sizes", "a"], "--encoder_batch_sizes"),
    ("benchmark", ["--num_beams", "0"], "must be >= 1"),
    ("benchmark", ["--repeats", "0"], "must be >= 1"),
    ("chat", ["--context", ""], "--context is empty"),
    ("chat", ["--num_beams", "0"], "must be >= 1"),
])
def test_other_scripts_bad_input(cli, tmp_path, tiny_t5, monkeypatch, capsys, script, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli(load_script(T5_FOLDER, script), *argv, "--model_path", tiny_t5) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_missing_model_in_a_real_process(tmp_path):
    """As a user runs it: exit 2, one line naming the download command, no traceback."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / T5_FOLDER / "inference.py"), "--text", "hi",
                           "--model_path", "google/flan-t5-small"], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert "hf download google/flan-t5-small" in proc.stderr


# --- issue 12: limits and outputs checked before the model loads, atomic saves, non-UTF-8 chat input ------------------

def never_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was refused")


def with_tokenizer_limit(tiny_t5, folder, length: int):
    """A copy of the tiny checkpoint whose tokenizer_config.json sets model_max_length (Flan-T5's is 512)."""
    shutil.copytree(tiny_t5, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": length}))
    return folder


LIMIT_CASES = [  # (script, argv, the exact error line); {limit} is MAX_NEW_TOKENS, {beams} MAX_NUM_BEAMS
    ("inference", ["--text", "hi", "--max_new_tokens", "1000000000"],
     "--max_new_tokens 1000000000 is past this port's MAX_NEW_TOKENS ({limit}); use at most {limit}"),
    ("inference", ["--text", "hi", "--num_beams", "1000000000"],
     "--num_beams 1000000000 is past this port's MAX_NUM_BEAMS ({beams}); use at most {beams}"),
    ("inference", ["--text", "hi", "--batch_size", "1000000000"], "--batch_size 1000000000 is past this port's "
     "MAX_BATCH_SIZE"),
    ("inference", ["--text", "hi", "--output", "/proc/out.jsonl"], "--output /proc/out.jsonl: /proc is not a "
     "writable folder; choose another path"),
    ("chat", ["--max_new_tokens", "1000000000"], "--max_new_tokens 1000000000 is past this port's MAX_NEW_TOKENS"),
    ("chat", ["--num_beams", "1000000000"], "--num_beams 1000000000 is past this port's MAX_NUM_BEAMS"),
    ("eval_accuracy", ["--max_new_tokens", "1000000000"], "--max_new_tokens 1000000000 is past"),
    ("eval_accuracy", ["--output", "/proc/parity.json"], "--output /proc/parity.json: /proc is not a writable"),
    ("memory_estimate", ["--output", "/proc/memory.json"], "--output /proc/memory.json: /proc is not a writable"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, argv, line", LIMIT_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(LIMIT_CASES)])
def test_limits_and_outputs_are_refused_before_the_model_loads(cli, tmp_path, tiny_t5, monkeypatch, capsys, script,
                                                               argv, line):
    module = load_script(T5_FOLDER, script)
    for name in ("T5Summarizer", "model_rows", "known_rows"):  # memory_estimate reads configs, not weights
        if hasattr(module, name):
            monkeypatch.setattr(module, name, never_load)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli(module, *argv, *([] if script == "memory_estimate" else ["--model_path", tiny_t5])) == 2
    inference = load_script(T5_FOLDER, "inference")
    expected = "error: " + line.format(limit=inference.MAX_NEW_TOKENS, beams=inference.MAX_NUM_BEAMS)
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected) and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_new_token_limit_is_the_tokenizers_model_max_length_when_set(cli, tmp_path, tiny_t5, monkeypatch, capsys):
    folder = with_tokenizer_limit(tiny_t5, tmp_path / "t5-512", 512)
    module = load_script(T5_FOLDER, "inference")
    monkeypatch.setattr(module, "T5Summarizer", never_load)
    assert cli(module, "--text", "hi", "--max_new_tokens", 513, "--model_path", folder) == 2
    assert capsys.readouterr().err.strip() == ("error: --max_new_tokens 513 is past the tokenizer's model_max_length "
                                               "(512); use at most 512")


def test_a_failed_save_leaves_no_temp_file(tmp_path):
    module = load_script(T5_FOLDER, "inference")
    target = tmp_path / "out.jsonl"
    target.mkdir()  # the save fails at the rename, after the temp file was written
    with pytest.raises(OSError):
        module.save_outputs(target, ["raw"], ["hi"], ["hello"])
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_chat_skips_a_line_that_is_not_utf8_and_goes_on(cli, tiny_t5, monkeypatch, capsys):
    stdin = io.TextIOWrapper(io.BytesIO("Hi\ncaf\xe9 au lait\nWhat now?\n\n".encode("latin-1")), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    chat = load_script(T5_FOLDER, "chat")
    assert cli(chat, "--model_path", tiny_t5, "--device", "cpu", "--max_new_tokens", 2) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: input line 2 is not valid UTF-8") and "iconv" in err and len(err.splitlines()) == 1
    assert "bye: 2 replies" in captured.out and "1 line(s) refused as not UTF-8" in captured.out
