"""Flan-T5 scripts: every bad input gets exit code 2 and one line on stderr that says what is wrong."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, T5_FOLDER, load_script


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


def test_missing_model_in_a_real_process(tmp_path):
    """As a user runs it: exit 2, one line naming the download command, no traceback."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / T5_FOLDER / "inference.py"), "--text", "hi",
                           "--model_path", "google/flan-t5-small"], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert "hf download google/flan-t5-small" in proc.stderr
