"""Every bad input gets exit code 2 and one line on stderr that says what is wrong; never a traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from common.model_path import resolve_model_path
from tests.support import MINITRON_FOLDER, REPO_ROOT, T5_FOLDER, load_script

FOLDER = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def inference():
    return load_script(FOLDER, "inference")


@pytest.fixture(scope="module")
def weights_dir(inference):
    return resolve_model_path(None, default=inference.DEFAULT_MODEL)


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


@pytest.mark.slow
def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The same through a real interpreter, as a user would run it."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / FOLDER / "inference.py"), "--batch_file",
                           str(tmp_path / "missing.txt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


# --- issue 12: outputs checked before the model loads, foreign checkpoints, limits, STS-B data -----------------------

def never_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was refused")


def unwritable_outputs(d):
    """(script, argv, words) for each output of each script: /proc (where root cannot create files either) or an
    existing folder."""
    (d / "folder.npy").mkdir()
    (d / "folder.json").mkdir()
    return [("inference", ["--text", "hi", "--output", "/proc/emb.npy"], "not a writable folder"),
            ("inference", ["--text", "hi", "--output", d / "folder.npy"], "is a folder"),
            ("eval_stsb", ["--output", "/proc/stsb.json"], "not a writable folder"),
            ("eval_stsb", ["--output", d / "folder.json"], "is a folder"),
            ("eval_accuracy", ["--output", "/proc/parity.json"], "not a writable folder"),
            ("eval_accuracy", ["--output", d / "folder.json"], "is a folder")]


@pytest.mark.parametrize("case", range(6))
def test_unwritable_output_is_refused_before_the_model_loads(cli, tmp_path, shared_data, monkeypatch, capsys, case):
    script, argv, words = unwritable_outputs(tmp_path)[case]
    module = load_script(FOLDER, script)
    monkeypatch.setattr(module, "MiniLMEncoder", never_load)
    data = ["--data", shared_data / "stsb" / "test.tsv"] if script == "eval_stsb" else []
    assert cli(module, *argv, *data) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output") and words in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.json", "folder.npy"]  # nothing left behind


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_a_failed_save_leaves_no_temp_file(inference, tmp_path, suffix):
    """The save itself failing (here: the target became a folder after the checks) leaves no .tmp behind."""
    target = tmp_path / f"emb{suffix}"
    target.mkdir()
    with pytest.raises(OSError):
        inference.save_embeddings(target, ["a"], np.zeros((1, 4), dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_saved_embeddings_follow_the_umask(inference, tmp_path):
    out = tmp_path / "emb.npy"
    inference.save_embeddings(out, ["a"], np.ones((1, 4), dtype=np.float32))
    assert np.load(out).shape == (1, 4) and out.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def foreign_checkpoints(tmp_path_factory, anandasky_checkpoint):
    root = tmp_path_factory.mktemp("foreign")
    return {"T5ForConditionalGeneration (t5), an encoder-decoder":
                load_script(T5_FOLDER, "make_tiny_checkpoint").build(root / "t5"),
            "NemotronForCausalLM (nemotron), a text generator":
                load_script(MINITRON_FOLDER, "make_tiny_checkpoint").build(root / "minitron"),
            "AnandaSkyForConditionalGeneration (anandasky), a model whose code ships with the checkpoint":
                anandasky_checkpoint}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["T5For", "NemotronFor", "AnandaSkyFor"])
def test_another_architecture_is_refused_naming_it_before_weights_load(foreign_checkpoints, cli, monkeypatch,
                                                                      capsys, architecture):
    words, folder = next((w, f) for w, f in foreign_checkpoints.items() if w.startswith(architecture))
    module = load_script(FOLDER, "inference")
    monkeypatch.setattr(module, "load_transformer", never_load)
    assert cli(module, "--text", "hi", "--model_path", folder, "--device", "cpu") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "is not a BERT-like sentence-transformers encoder checkpoint" in err and words in err, err


def test_batch_size_past_the_limit_is_refused(cli, capsys):
    module = load_script(FOLDER, "inference")
    assert cli(module, "--text", "hi", "--batch_size", 10 ** 9) == 2
    assert capsys.readouterr().err.strip() == (f"error: --batch_size 1000000000 is past this port's MAX_BATCH_SIZE "
                                               f"({module.MAX_BATCH_SIZE}); use at most {module.MAX_BATCH_SIZE}")


@pytest.mark.parametrize("argv, words", [
    (["--limit", "1"], "--limit 1 leaves 1 pair(s); a correlation needs at least 3 pairs"),
    (["--limit", "2"], "--limit 2 leaves 2 pair(s)"),
    (["--batch_size", "100000"], "MAX_BATCH_SIZE"),
])
def test_stsb_refusals_come_before_the_model(cli, shared_data, monkeypatch, capsys, argv, words):
    module = load_script(FOLDER, "eval_stsb")
    monkeypatch.setattr(module, "MiniLMEncoder", never_load)
    assert cli(module, "--data", shared_data / "stsb" / "test.tsv", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_stsb_field_past_csvs_limit_is_read_and_its_truncation_announced(cli, tmp_path, capsys):
    """A 200 KB sentence (csv's default field limit is 128 KB) is read; the encoder truncates it, and says so."""
    data = tmp_path / "long.tsv"
    long_sentence = "word " * 40_000
    data.write_text("score\tsentence1\tsentence2\n1.0\ta cat\ta dog\n4.5\ta man runs\ta man is running\n"
                    f"2.0\t{long_sentence}\tshort\n", encoding="utf-8")
    out = tmp_path / "stsb.json"
    assert cli(load_script(FOLDER, "eval_stsb"), "--data", data, "--device", "cpu", "--output", out) == 0
    assert "1 sentence(s) longer than 256 tokens were truncated" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["pairs"] == 3 and result["truncated"] == 1
