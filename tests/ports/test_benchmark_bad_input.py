"""Bad inputs to the four benchmark.py scripts: one line `error: ...`, exit 2, no traceback, found before any model
loads (the model path is absent, or the model class is replaced by one that fails the test if built), nothing left
behind. Each case failed before its fix: the plot overwrote its JSON, an unwritable output was found after the run
with a traceback, oversize inputs ran without end, were OOM-killed or wrote NaN into the JSON."""
from __future__ import annotations

import json

import pytest

from common.bench import request_aggregate, request_metrics
from tests.support import ANANDASKY_FOLDER, MINITRON_FOLDER, T5_FOLDER, load_script

MINILM_FOLDER = "all-MiniLM-L6-v2"
FOLDERS = [MINILM_FOLDER, T5_FOLDER, MINITRON_FOLDER, ANANDASKY_FOLDER]
MODEL_CLASSES = {MINILM_FOLDER: "MiniLMEncoder", T5_FOLDER: "T5Summarizer", MINITRON_FOLDER: "CausalLM",
                 ANANDASKY_FOLDER: "AnandaSkyOCR"}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def no_model(bench, folder, monkeypatch):
    """Building the model fails the test: the refusal must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")
    monkeypatch.setattr(bench, MODEL_CLASSES[folder], refuse)


def no_weights(bench, monkeypatch):
    """Loading the causal LM's weights fails the test: its tokenizer and config may load, the weights may not."""
    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded before the bad input was refused")
    monkeypatch.setitem(bench.CausalLM.__init__.__globals__, "load_weights", refuse)


@pytest.mark.parametrize("folder", FOLDERS)
def test_output_ending_in_png_would_be_overwritten_by_the_plot(folder, cli, capsys, tmp_path):
    bench = load_script(folder, "benchmark")
    assert cli(bench, "--model_path", tmp_path / "absent", "--output", tmp_path / "bench.png") == 2
    message = one_line_error(capsys)
    assert "the plot beside --output" in message and "same file as --output" in message, message
    assert list(tmp_path.iterdir()) == []  # no probe or temp file left behind


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("output, expected", [("/proc/bench.json", "is not a writable folder"),
                                              ("{tmp}", "is a folder; give a file name")])
def test_unwritable_output_is_refused_before_the_model_loads(folder, output, expected, cli, capsys, tmp_path):
    bench = load_script(folder, "benchmark")
    assert cli(bench, "--model_path", tmp_path / "absent", "--output", output.format(tmp=tmp_path)) == 2
    message = one_line_error(capsys)
    assert message.startswith("error: --output ") and expected in message, message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("folder, argv, expected", [
    (T5_FOLDER, ["--input_tokens", "1000000000"],
     "--input_tokens 1000000000 is past --max_input_length, the longest input this port feeds the model (512); use "
     "at most 512"),
    (T5_FOLDER, ["--encoder_batch_sizes", "1,100000"], "--encoder_batch_sizes 100000 is past the largest batch"),
    (T5_FOLDER, ["--gen_batch_size", "100000"], "--gen_batch_size 100000 is past the largest batch"),
    (T5_FOLDER, ["--max_new_tokens", "1000000000"], "--max_new_tokens 1000000000 is past this benchmark's generation"),
    (T5_FOLDER, ["--num_beams", "100000"], "--num_beams 100000 is past this benchmark's beam limit (64)"),
    (MINILM_FOLDER, ["--num_texts", "1000000000"], "--num_texts 1000000000 is past the largest synthetic workload"),
    (MINILM_FOLDER, ["--batch_sizes", "8,100000"], "--batch_sizes 100000 is past the largest batch size"),
    (MINILM_FOLDER, ["--batch_sizes", "64", "--num_texts", "8"],
     "--batch_sizes 64 is larger than the workload (8 texts)"),
    (MINITRON_FOLDER, ["--output_tokens", "1"], "--output_tokens 1: the benchmark needs at least 2"),
    (MINITRON_FOLDER, ["--batch_size", "100000", "--num_requests", "100000"], "--batch_size 100000 is past"),
    (ANANDASKY_FOLDER, ["--sizes", "100000x100000"],
     "--sizes 100000x100000: its pixel count 10000000000 is past the largest image this port reads"),
    (ANANDASKY_FOLDER, ["--sizes", "80x2048", "--images", "10000"], "past this benchmark's 4 GiB"),
])
def test_oversize_setting_is_refused_before_the_model_loads(folder, argv, expected, cli, capsys, tmp_path,
                                                            monkeypatch):
    bench = load_script(folder, "benchmark")
    no_model(bench, folder, monkeypatch)
    assert cli(bench, *argv, "--output", tmp_path / "bench.json") == 2
    message = one_line_error(capsys)
    assert expected in message, message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("input_tokens, output_tokens, positions", [
    ("1000000000", "8", 1000000008),  # was OOM-killed drawing the prompts
    ("8", "1000000000", 1000000008),  # ran without end
    ("4000", "200", 4200),  # past the 4,096 context
])
def test_minitron_context_is_checked_from_the_config_before_the_weights_load(
        input_tokens, output_tokens, positions, tiny_minitron, cli, capsys, tmp_path, monkeypatch):
    bench = load_script(MINITRON_FOLDER, "benchmark")
    no_weights(bench, monkeypatch)
    assert cli(bench, "--model_path", tiny_minitron, "--input_tokens", input_tokens, "--output_tokens",
               output_tokens, "--num_requests", 1, "--output", tmp_path / "bench.json") == 2
    message = one_line_error(capsys)
    assert f"need {positions} positions, more than the model's 4096" in message, message
    assert list(tmp_path.iterdir()) == []


def test_anandasky_new_tokens_past_the_context(anandasky_checkpoint, cli, capsys, tmp_path, monkeypatch):
    """Refused after the (small) load but before the first generate, which would otherwise run without end."""
    bench = load_script(ANANDASKY_FOLDER, "benchmark")
    monkeypatch.setattr(bench, "generate", lambda *a, **k: pytest.fail("generation started"))
    assert cli(bench, "--model_path", anandasky_checkpoint, "--device", "cpu",
               "--sizes", "28x112", "--new_tokens", "1000000000", "--output", tmp_path / "bench.json") == 2
    message = one_line_error(capsys)
    assert "--new_tokens 1000000000 is past the model's context (40960 positions) less the largest size's" in message
    assert list(tmp_path.iterdir()) == []


def test_t5_input_tokens_past_the_tokenizer_limit(tiny_t5, cli, capsys, tmp_path, monkeypatch):
    """A tokenizer with a finite model_max_length below --max_input_length bounds --input_tokens too."""
    bench = load_script(T5_FOLDER, "benchmark")
    real = bench.T5Summarizer

    def small_tokenizer(*args, **kwargs):
        model = real(*args, **kwargs)
        model.tokenizer.model_max_length = 64
        return model
    monkeypatch.setattr(bench, "T5Summarizer", small_tokenizer)
    assert cli(bench, "--model_path", tiny_t5, "--device", "cpu", "--input_tokens", 100,
               "--output", tmp_path / "bench.json") == 2
    assert "--input_tokens 100 is past the tokenizer's model_max_length (64)" in one_line_error(capsys)


def test_one_output_token_gives_null_not_nan():
    """The shared request statistics never produce NaN (write_json refuses it): one token has no TPOT."""
    row = request_metrics(0.0, [0.5], batch=1)
    assert row["tpot_s"] is None and row["decode_tokens_per_s"] is None and row["itl_s"] == []
    stats = request_aggregate([row], 1, 1, 8, 1, 0.5)
    assert stats["tpot"] == {"n": 0} and stats["decode_tokens_per_s"] is None
    json.dumps(stats, allow_nan=False)
