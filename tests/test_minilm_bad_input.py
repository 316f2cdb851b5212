"""Every bad input gets exit code 2 and one line on stderr that says what is wrong; never a traceback."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, load_script

FOLDER = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def inference():
    return load_script(FOLDER, "inference")


@pytest.fixture(scope="module")
def weights_dir(inference):
    from common.model_path import resolve_model_path

    return resolve_model_path(None)


def files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("hello\n", encoding="utf-8")
    return tmp_path


def no_weights(tmp_path, weights_dir):
    folder = tmp_path / "no_weights"
    shutil.copytree(weights_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


def corrupt_weights(tmp_path, weights_dir):
    folder = tmp_path / "corrupt"
    shutil.copytree(weights_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    head = (weights_dir / "model.safetensors").read_bytes()[:4096]  # a download cut short
    (folder / "model.safetensors").write_bytes(head)
    return folder


CASES = [  # (argv builder, words the error line must contain)
    (lambda d, w: ["--batch_file", d / "missing.txt"], "does not exist"),
    (lambda d, w: ["--batch_file", d], "is a folder"),
    (lambda d, w: ["--batch_file", d / "empty.txt"], "is empty"),
    (lambda d, w: ["--batch_file", d / "blank.txt"], "is empty"),
    (lambda d, w: ["--batch_file", d / "latin1.txt"], "not valid UTF-8"),
    (lambda d, w: ["--batch_file", d / "ok.txt", "--device", "gpu"], "unknown device"),
    (lambda d, w: ["--batch_file", d / "ok.txt", "--device", "cuda"], "not available"),
    (lambda d, w: ["--batch_file", d / "ok.txt", "--device", "npu:1"], "torch_npu"),
    (lambda d, w: ["--batch_file", d / "ok.txt", "--dtype", "fp8"], "unknown dtype"),
    (lambda d, w: ["--batch_file", d / "ok.txt", "--batch_size", "0"], "must be >= 1"),
    (lambda d, w: ["--batch_file", d / "ok.txt", "--batch_size", "-4"], "must be >= 1"),
    (lambda d, w: ["--text", "hi", "--model_path", d / "nowhere"], "does not exist"),
    (lambda d, w: ["--text", "hi", "--model_path", no_weights(d, w)], "has no weights"),
    (lambda d, w: ["--text", "hi", "--model_path", corrupt_weights(d, w)], "corrupt or truncated"),
    (lambda d, w: ["--text", "hi", "--model_path", "nobody/missing-model"], "hf download nobody/missing-model"),
    (lambda d, w: ["--text", "hi", "--output", d / "emb.csv"], "must end in .npy or .jsonl"),
    (lambda d, w: ["--text", "hi", "--max_seq_length", "2"], "max_seq_length must be >= 3"),
    (lambda d, w: [], "nothing to encode"),
]


@pytest.mark.parametrize("make_argv, message", CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(CASES)])
def test_inference_bad_input(inference, cli, tmp_path, weights_dir, capsys, make_argv, message):
    argv = make_argv(files(tmp_path), weights_dir)
    assert cli(inference, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("script, argv, message", [
    ("eval_stsb", ["--data", "missing.tsv"], "does not exist"),
    ("eval_stsb", ["--limit", "0"], "must be >= 1"),
    ("eval_stsb", [], "--data"),  # offline, no local copy: say how to pass one
    ("eval_accuracy", ["--file", "missing.txt"], "does not exist"),
    ("benchmark", ["--batch_sizes", "8,0"], "--batch_sizes"),
    ("benchmark", ["--batch_sizes", "a,b"], "--batch_sizes"),
    ("benchmark", ["--repeats", "0"], "must be >= 1"),
])
def test_other_scripts_bad_input(cli, tmp_path, monkeypatch, capsys, script, argv, message):
    monkeypatch.chdir(tmp_path)
    assert cli(load_script(FOLDER, script), *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err


def test_stsb_file_with_wrong_columns(cli, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n", encoding="utf-8")
    assert cli(load_script(FOLDER, "eval_stsb"), "--data", bad) == 2
    assert "score, sentence1, sentence2" in capsys.readouterr().err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The same through a real interpreter, as a user would run it."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / FOLDER / "inference.py"), "--batch_file",
                           str(tmp_path / "missing.txt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
