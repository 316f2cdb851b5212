"""The Flan-T5 scripts end to end through main() with patched argv, on the tiny random checkpoint."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from common import report
from common.parity import greedy_parity
from tests.support import REPO_ROOT, T5_FOLDER, load_script


@pytest.fixture
def inference():
    return load_script(T5_FOLDER, "inference")


def test_no_input_runs_the_default_prompt_set(inference, cli, tiny_t5, capsys):
    assert cli(inference, "--model_path", tiny_t5, "--device", "cpu", "--max_new_tokens", 4) == 0
    out = capsys.readouterr().out
    assert out.count("\n> ") == len(inference.DEFAULT_PROMPTS)
    assert "> translate English to French: The museum opens" in out and "0 truncated" in out


@pytest.mark.parametrize("task, text, prompt", [
    ("summarize", "The council met.", "> summarize: The council met."),
    ("translate_fr", "Good morning.", "> translate English to French: Good morning."),
    ("translate_de", "Good night.", "> translate English to German: Good night."),
    ("qa", "Who met? || The council met.", "> question: Who met? context: The council met."),
    ("raw", "Is this positive? I loved it.", "> Is this positive? I loved it."),
])
def test_task_wraps_plain_text(inference, cli, tiny_t5, capsys, task, text, prompt):
    assert cli(inference, "--model_path", tiny_t5, "--device", "cpu", "--task", task, "--text", text,
               "--max_new_tokens", 3) == 0
    assert prompt in capsys.readouterr().out


def test_repeated_text_keeps_the_order(inference, cli, tiny_t5, capsys):
    assert cli(inference, "--model_path", tiny_t5, "--device", "cpu", "--text", "Hi", "--text", "summarize: a b c",
               "--max_new_tokens", 2) == 0
    out = capsys.readouterr().out
    assert "2 prompt(s)" in out and out.index("> Hi") < out.index("> summarize: a b c")


def test_make_tiny_checkpoint_script(cli, tmp_path, capsys):
    builder = load_script(T5_FOLDER, "make_tiny_checkpoint")
    assert cli(builder) == 2 and "--output" in capsys.readouterr().err  # the folder is required, never guessed
    assert cli(builder, "--output", tmp_path / "tiny") == 0
    files = {p.name for p in (tmp_path / "tiny").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "test_checkpoint.json"} <= files
    (tmp_path / "file").write_text("x")
    assert cli(builder, "--output", tmp_path / "file") == 2 and "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_make_tiny_checkpoint_help_writes_nothing(tmp_path):
    """As a user types it: the seed's script took any first argument as the folder, so `--help` built a checkpoint
    into a folder named --help."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / T5_FOLDER / "make_tiny_checkpoint.py"), "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--output" in proc.stdout and "--from" in proc.stdout, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_chat_as_a_real_process_with_piped_stdin(tiny_t5):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / T5_FOLDER / "chat.py"), "--model_path", str(tiny_t5),
                           "--device", "cpu", "--max_new_tokens", "2"], input="Hello there\n\n", capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "User: Hello there" in proc.stdout and "Assistant: " in proc.stdout and "bye: 1 reply" in proc.stdout


def test_batch_file_output_and_beams(inference, cli, tiny_t5, tmp_path, capsys):
    batch = tmp_path / "in.txt"
    batch.write_text("The first text.\n\nThe second, longer text about the river.\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli(inference, "--model_path", tiny_t5, "--device", "cpu", "--batch_file", batch, "--task", "summarize",
               "--num_beams", 2, "--max_new_tokens", 4, "--batch_size", 1, "--max_input_length", 10,
               "--output", out) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 blank line(s)" in printed and "truncated at 10 tokens" in printed
    assert "0 truncated" not in printed
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["summarize: The first text.",
                                           "summarize: The second, longer text about the river."]
    assert all(r["task"] == "summarize" and isinstance(r["generated_text"], str) for r in rows)


@pytest.mark.slow
def test_examples_run_in_one_batch_as_a_table(inference, cli, tiny_t5, capsys):
    examples = inference.read_examples()
    tasks = {e["task"] for e in examples}
    assert {"equation", "sentiment", "named_entities", "qa_squad", "intent", "summary_xsum", "topic", "keywords",
            "chatbot"} <= tasks
    assert cli(inference, "--model_path", tiny_t5, "--device", "cpu", "--examples", "--max_new_tokens", 3) == 0
    out = capsys.readouterr().out
    assert "task" in out and "| generation" in out
    assert all(f"\n{e['task']:<14} | " in out for e in examples)


def test_fp16_overflow_is_reported_with_the_fix(inference, cli, overflowing_t5, capsys):
    assert cli(inference, "--model_path", overflowing_t5, "--device", "cpu", "--dtype", "fp16", "--text", "Hi",
               "--max_new_tokens", 2) == 1
    err = capsys.readouterr().err.strip()
    assert "encoder.block.0.layer.1.DenseReluDense" in err and "use --dtype bf16 or fp32" in err


@pytest.mark.slow
def test_chat_keeps_context_over_piped_stdin(cli, tiny_t5, monkeypatch, capsys):
    chat = load_script(T5_FOLDER, "chat")
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi, I am Ana.\nWhat is my name?\nreset\nHello again\n\nignored\n"))
    assert cli(chat, "--model_path", tiny_t5, "--device", "cpu", "--max_new_tokens", 3) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("Assistant: ") for line in out.splitlines()) == 3
    assert "(context restored)" in out and "ignored" not in out
    assert "User: What is my name?" in out and "bye: 3 replies" in out


@pytest.mark.slow
def test_chat_context_grows_resets_and_drops_old_turns(tiny_t5):
    chat = load_script(T5_FOLDER, "chat")
    model = chat.T5Summarizer(str(tiny_t5), device="cpu", dtype="fp32", max_input_length=128)
    session = chat.Chat(model, max_new_tokens=2)
    session.reply("My name is Ana.")
    assert "User: My name is Ana." in session.prompt() and session.prompt().startswith(chat.CONTEXT)
    session.reset()
    assert session.context == chat.CONTEXT
    for i in range(6):
        session.reply(f"Turn number {i} about the river and the market.")
    assert session.dropped_turns > 0 and session.context.startswith(chat.CONTEXT)
    assert "Turn number 5" in session.context and "Turn number 0" not in session.context


def test_generation_mismatch_away_from_a_near_tie_fails():
    want_logits = np.zeros((4, 5))
    want_logits[:, 2] = 5.0  # the reference is sure of token 2 at every step
    got_logits = want_logits + 0.01
    near = want_logits.copy()
    near[1, 3] = 4.99  # ... except step 1, where token 3 is within the logit error
    ok = greedy_parity([[2, 3, 2, 1]], [[2, 2, 2, 1]], [got_logits], [near], "bf16")
    assert ok["mismatches"][0]["near_tie"] and ok["exact_match_rate"] == 0.0  # one sequence: below the floor
    assert ok["unexplained_divergences"] == 0 and ok["mismatches"][0]["first_divergence"] == 1
    bad = greedy_parity([[2, 3, 2, 1]], [[2, 2, 2, 1]], [got_logits], [want_logits], "bf16")
    assert not bad["passed"] and bad["unexplained_divergences"] == 1 and "near-tie" in bad["failures"][-1]


def test_teacher_forced_logits_are_one_array_per_sequence(tiny_t5):
    module = load_script(T5_FOLDER, "eval_accuracy")
    model = module.T5Summarizer(str(tiny_t5), device="cpu", dtype="fp32")
    prompts = ["summarize: the city council met", "Hi", "translate English to German: the river"]
    targets = model.generate_ids(prompts, max_new_tokens=5)
    logits = module.teacher_forced_logits(model, prompts, targets)
    assert [a.shape for a in logits] == [(len(t), model.model.config.vocab_size) for t in targets]
    assert all(a.argmax(1).tolist() == t for a, t in zip(logits, targets))  # greedy = argmax of its own logits


@pytest.mark.slow
def test_eval_accuracy_fp16_overflow_fails_and_names_the_module(cli, overflowing_t5, tmp_path, capsys):
    module = load_script(T5_FOLDER, "eval_accuracy")
    out = tmp_path / "parity.json"
    assert cli(module, "--model_path", overflowing_t5, "--device", "cpu", "--dtype", "fp16", "--max_new_tokens", 4,
               "--output", out) == 1
    result = json.loads(out.read_text())
    overflow = result["parts"]["overflow"]
    assert result["passed"] is False and result["headline"] == {"passed": False} and overflow["detected"] is True
    assert overflow["where"] == "encoder" and "use --dtype bf16 or fp32" in overflow["failures"][0]
    assert any(f.startswith("overflow: NaN/inf") for f in result["failures"])
    printed = capsys.readouterr().out
    assert "OVERALL: FAIL" in printed and "encoder.block.0.layer.1.DenseReluDense" in printed


@pytest.mark.slow
def test_benchmark_small_run_writes_json_and_plot(cli, tiny_t5, tmp_path, capsys):
    module = load_script(T5_FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(module, "--model_path", tiny_t5, "--device", "cpu", "--encoder_batch_sizes", "1,4",
               "--input_tokens", 16, "--requests", 6, "--gen_batch_size", 4, "--max_new_tokens", 4,
               "--num_beams", 2, "--repeats", 2, "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "benchmark" and result["headline"]["peer"] == "model.generate"
    assert [r["batch_size"] for r in result["encoder"]] == [1, 4]
    assert all(r["sequences_per_s"] > 0 and r["latency"]["n"] == 2 for r in result["encoder"])
    assert [(r["mode"], r["num_beams"]) for r in result["generation"]] == [("greedy", 1), ("beam", 2)]
    for row in result["generation"]:
        assert row["ours"]["requests_per_s"] > 0 and row["peer"]["requests_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours"]["requests_per_s"] / row["peer"]["requests_per_s"])
        assert row["ours"]["request_latency"]["n"] == 2 * 6 and row["same_text_as_peer"] == 1.0
        assert row["ours"]["new_tokens"] == row["peer"]["new_tokens"] > 0
    assert "ratio x" in capsys.readouterr().out
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_memory_estimate_writes_every_size(cli, tmp_path, capsys):
    module = load_script(T5_FOLDER, "memory_estimate")
    out = tmp_path / "memory.json"
    assert cli(module, "--output", out) == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "estimate"  # not a measured result: the overview skips it
    rows = doc["rows"]
    assert [r["model"].split("-")[-1] for r in rows] == ["small", "base", "large", "xl", "xxl"]
    assert all((r["model_type"], r["feed_forward"], r["lm_head"]) == ("t5", "gated-gelu", "untied") for r in rows)
    assert rows[1]["parameters"] == 247_577_856  # flan-t5-base, as published
    assert all(r["fp32_gib"] == pytest.approx(2 * r["bf16_gib"]) and r["fp16_gib"] > r["bf16_gib"] for r in rows)


def test_readme_tables_are_generated_from_the_result_files():
    assert report.cli([str(REPO_ROOT / T5_FOLDER), "--check"]) == 0
