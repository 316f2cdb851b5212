"""Minitron-8B-Base scripts on bad input: one `error:` line, exit 2, no traceback, refused before the weights load
(most tests pass a model path that does not exist, or make any weight load fail the test), nothing left behind."""
from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForCausalLM

from tests.support import MINITRON_FOLDER, load_script

ABSENT_MODEL = "/no/such/model"  # reached only if every check before the model passed


@pytest.fixture
def gsm8k():
    return load_script(MINITRON_FOLDER, "eval_gsm8k")


@pytest.fixture
def no_weights(monkeypatch):
    """Any weight load fails the test: the refusal must come from the config and tokenizer alone."""
    def refuse(*args, **kwargs):
        raise AssertionError("the weights loaded before the input was checked")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def tiny_data(folder, test_lines=2, train_lines=3):
    """A GSM8K folder of a few real records."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("test", test_lines), ("train", train_lines)):
        rows = [{"question": f"{split} question {i}: 2 + {i}?", "answer": f"2 + {i} = {2 + i}\n#### {2 + i}"}
                for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def one_error_line(capsys, expected: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    return err[0]


# --- outputs: never each other, writable, checked before the work --------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--output", "{tmp}/run.jsonl"], "the per-sample log beside --output {tmp}/run.jsonl is the same file as --output"),
    (["--output", "{tmp}/run.json", "--log", "{tmp}/run.json"], "--log {tmp}/run.json is the same file as --output"),
    (["--output", "/proc/run.json"], "--output /proc/run.json: /proc is not a writable folder"),
    (["--output", "{tmp}/run.json", "--log", "/proc/run.jsonl"], "--log /proc/run.jsonl: /proc is not a writable"),
    (["--output", "{tmp}"], "is a folder; give a file name"),
])
def test_gsm8k_outputs_checked_before_the_work(gsm8k, cli, capsys, tmp_path, argv, message):
    data = tiny_data(tmp_path.parent / f"{tmp_path.name}-data")
    assert cli(gsm8k, "--model_path", ABSENT_MODEL, "--data", data, *[a.format(tmp=tmp_path) for a in argv]) == 2
    one_error_line(capsys, message.format(tmp=tmp_path))
    assert list(tmp_path.iterdir()) == []  # no log, no summary, no probe or temp file


@pytest.mark.parametrize("name", ["eval_accuracy", "eval_gsm8k"])
def test_parity_output_checked_before_the_models(name, cli, capsys, tmp_path):
    extra = ["--data", tiny_data(tmp_path / "data")] if name == "eval_gsm8k" else []
    module = load_script(MINITRON_FOLDER, name)
    assert cli(module, "--model_path", ABSENT_MODEL, "--output", "/proc/parity.json", *extra) == 2
    one_error_line(capsys, "/proc is not a writable folder")


# --- the data: each file checked, and --resume only of a log made from the same data -----------------------------

@pytest.mark.parametrize("content, message", [
    (b"", "holds no question"),
    (b"\n  \n", "holds no question"),
    (b"\xff\xfe\x00q", "is not valid UTF-8"),
    (b'{"question": "q", "answer": 5}\n', "line 1 is not a GSM8K record (a JSON object with string fields"),
    (b'{"question": "q", "answer": "#### 1"}\n[1, 2]\n', "line 2 is not a GSM8K record (a JSON object"),
])
@pytest.mark.parametrize("split", ["test", "train"])
def test_gsm8k_bad_data_file(gsm8k, cli, capsys, tmp_path, split, content, message):
    data = tiny_data(tmp_path / "data")
    (data / f"{split}.jsonl").write_bytes(content)
    assert cli(gsm8k, "--model_path", ABSENT_MODEL, "--data", data, "--output", tmp_path / "run.json",
               "--num_fewshot", "1") == 2
    assert split in one_error_line(capsys, message)
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "run.jsonl").exists()


def test_gsm8k_num_fewshot_past_the_train_split(gsm8k, cli, capsys, tmp_path):
    data = tiny_data(tmp_path / "data", train_lines=3)
    assert cli(gsm8k, "--model_path", ABSENT_MODEL, "--data", data, "--output", tmp_path / "run.json",
               "--num_fewshot", "4") == 2
    one_error_line(capsys, "--num_fewshot 4 is past the GSM8K train split's size (3); use at most 3")


def test_gsm8k_resume_needs_the_same_data(gsm8k, tiny_minitron, cli, capsys, tmp_path):
    """A moved copy of the same data resumes; other data, or a log that does not say which data it used, does not."""
    data = tiny_data(tmp_path / "data")
    run = ["--model_path", tiny_minitron, "--num_fewshot", "1", "--max_new_tokens", "2", "--output",
           tmp_path / "run.json"]
    assert cli(gsm8k, *run, "--data", data) == 0
    log = tmp_path / "run.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert json.loads(lines[0])["config"]["data_sha256"] == json.loads((tmp_path / "run.json").read_text())[
        "data"]["sha256"]
    log.write_text("".join(lines[:2]))  # as if the run stopped after the first question
    moved = tmp_path / "moved"
    shutil.move(data, moved)
    assert cli(gsm8k, *run, "--data", moved, "--resume") == 0  # the same questions from another folder
    assert log.read_text().splitlines(keepends=True)[:2] == lines[:2] and len(log.read_text().splitlines()) == 3
    capsys.readouterr()

    other = tiny_data(tmp_path / "other")
    (other / "train.jsonl").write_text((other / "train.jsonl").read_text().replace("#### 3", "#### 4"))
    before = log.read_bytes()
    assert cli(gsm8k, *run, "--data", other, "--resume") == 2
    one_error_line(capsys, "it was made from other GSM8K data")
    assert log.read_bytes() == before

    config = json.loads(lines[0])
    del config["config"]["data_sha256"]  # a log written before the data was recorded
    log.write_text(json.dumps(config) + "\n" + "".join(lines[1:2]))
    before = log.read_bytes()
    assert cli(gsm8k, *run, "--data", moved, "--resume") == 2
    one_error_line(capsys, "predates the record of which GSM8K data")
    assert log.read_bytes() == before


# --- numbers: finite, in range, and within the model's context -----------------------------------------------------

@pytest.mark.parametrize("name, argv, message", [
    ("inference", ["--temperature", "nan"], "expected a finite number, got 'nan'"),
    ("inference", ["--temperature", "inf"], "expected a finite number, got 'inf'"),
    ("inference", ["--top_p", "5"], "must be in (0, 1], got 5"),
    ("inference", ["--top_p", "0"], "must be in (0, 1], got 0"),
    ("inference", ["--prompt", ""], "--prompt is empty"),
    ("inference", ["--prompt", " \n\t"], "--prompt is empty"),
    ("inference", ["--seed", str(2**70)], f"--seed {2**70} is outside torch's seed range"),
    ("eval_gsm8k", ["--temperature", "nan", "--num_runs", "2"], "expected a finite number, got 'nan'"),
    ("eval_gsm8k", ["--temperature=-inf"], "expected a finite number, got '-inf'"),
    ("eval_gsm8k", ["--top_p", "5"], "must be in (0, 1], got 5"),
    ("eval_gsm8k", ["--tolerance", "inf", "--compare_only", "x.json", "--baseline", "0.2"], "expected a finite"),
])
def test_bad_numbers_and_prompts(name, argv, message, cli, capsys):
    assert cli(load_script(MINITRON_FOLDER, name), "--model_path", ABSENT_MODEL, *argv) == 2
    one_error_line(capsys, message)


def test_nan_temperature_refused_from_python():
    inference = load_script(MINITRON_FOLDER, "inference")
    with pytest.raises(inference.UserError, match="finite"):  # refused before the model (self) is touched
        inference.CausalLM.generate(None, ["Hi"], temperature=float("nan"))


@pytest.mark.parametrize("name, argv, message", [
    ("inference", ["--prompt", "Hi"], "--max_new_tokens 1000000000 is past the model's context length (4096, "
                                      "config.max_position_embeddings) minus the "),
    ("eval_accuracy", [], "minus the {n} tokens of the longest probe prompt"),
    ("eval_gsm8k", ["--num_fewshot", "1"], "minus the {n} tokens of the longest 1-shot prompt (question "),
])
def test_max_new_tokens_past_the_context(name, argv, message, tiny_minitron, no_weights, cli, capsys, tmp_path):
    extra = {"eval_gsm8k": ["--data", tiny_data(tmp_path / "data"), "--output", tmp_path / "run.json"],
             "eval_accuracy": ["--output", tmp_path / "run.json"]}.get(name, [])
    assert cli(load_script(MINITRON_FOLDER, name), "--model_path", tiny_minitron, "--max_new_tokens", "1000000000",
               *argv, *extra) == 2
    line = one_error_line(capsys, "--max_new_tokens 1000000000 is past the model's context length (4096, ")
    assert message.split("{n}")[-1] in line and "; use at most " in line
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "run.jsonl").exists()


@pytest.fixture
def short_context(tiny_minitron, tmp_path):
    """The tiny checkpoint with a tokenizer that allows 40 positions (its config allows 4096)."""
    folder = tmp_path / "short"
    shutil.copytree(tiny_minitron, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 40}))
    return folder


def test_tokenizer_limit_counts(short_context, no_weights, cli, capsys):
    assert cli(load_script(MINITRON_FOLDER, "inference"), "--model_path", short_context, "--prompt", "Hi",
               "--max_new_tokens", "40") == 2
    one_error_line(capsys, "is past the model's context length (40, the tokenizer's model_max_length) minus")


def test_gsm8k_prompt_past_the_context_is_not_cut(short_context, no_weights, gsm8k, cli, capsys, tmp_path):
    data = tiny_data(tmp_path / "data")
    assert cli(gsm8k, "--model_path", short_context, "--data", data, "--num_fewshot", "3", "--output",
               tmp_path / "run.json") == 2
    line = one_error_line(capsys, "the longest 3-shot prompt (question ")
    assert "leaves no room for a new token in the model's context length (40, " in line
    assert "use a smaller --num_fewshot" in line


# --- the model: another architecture is refused from its config ---------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ({"model_type": "t5", "d_model": 16, "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 32, "vocab_size": 512,
      "is_encoder_decoder": True, "architectures": ["T5ForConditionalGeneration"]}, "encoder-decoder model (t5)"),
    ({"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
      "intermediate_size": 32, "vocab_size": 512, "architectures": ["BertModel"]}, "bare BertModel"),
])
def test_other_architecture_refused_before_weights(config, message, tiny_minitron, no_weights, cli, capsys, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(tiny_minitron, folder)  # a tokenizer and a weights file, under another model's config
    (folder / "config.json").write_text(json.dumps(config))
    assert cli(load_script(MINITRON_FOLDER, "inference"), "--model_path", folder, "--prompt", "Hi") == 2
    one_error_line(capsys, message)


# --- an error after the progress bar started is on a line of its own ----------------------------------------------

def test_gsm8k_error_mid_run_starts_a_fresh_line(gsm8k, tiny_minitron, cli, capsys, tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise gsm8k.UserError("the device ran out of memory")
    monkeypatch.setattr(gsm8k.CausalLM, "generate", fail)
    assert cli(gsm8k, "--model_path", tiny_minitron, "--data", tiny_data(tmp_path / "data"), "--num_fewshot", "1",
               "--output", tmp_path / "run.json") == 2
    err = capsys.readouterr().err
    assert "gsm8k:" in err  # the bar was drawn
    assert err.rstrip("\n").split("\n")[-1] == "error: the device ran out of memory"
    assert "Traceback" not in err
