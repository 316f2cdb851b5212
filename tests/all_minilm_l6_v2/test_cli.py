"""The all-MiniLM-L6-v2 scripts end to end through main() with patched argv; assertions on what they write."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common import report
from common.stsb import load_local
from tests.support import load_script

FOLDER = "all-MiniLM-L6-v2"


@pytest.fixture
def inference():
    return load_script(FOLDER, "inference")


def test_inference_batch_file_prints_shape_and_table(inference, cli, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("A man is eating food.\n\nA man is eating a piece of bread.\n   \nThe girl is carrying a baby.\n",
                     encoding="utf-8")
    out = tmp_path / "emb.npy"
    assert cli(inference, "--batch_file", texts, "--device", "cpu", "--output", out) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 blank line(s)" in printed
    assert "(3, 384)" in printed and "[2]" in printed  # shape and the 3x3 similarity table
    vectors = np.load(out)
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_inference_jsonl_output_and_repeated_text(inference, cli, tmp_path, capsys):
    out = tmp_path / "emb.jsonl"
    assert cli(inference, "--text", "hello world", "--text", "bonjour le monde", "--device", "cpu",
               "--output", out) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["hello world", "bonjour le monde"]
    assert all(len(r["embedding"]) == 384 for r in rows)
    assert abs(np.linalg.norm(rows[0]["embedding"]) - 1) < 1e-5


@pytest.mark.slow
def test_eval_accuracy_passes_on_cpu_fp32(cli, tmp_path, capsys):
    module = load_script(FOLDER, "eval_accuracy")
    out = tmp_path / "parity.json"
    assert cli(module, "--device", "cpu", "--dtype", "fp32", "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "parity" and result["weights"] == "real" and result["headline"] == {"passed": True}
    assert result["passed"] is True and result["texts"] == 24 and result["truncated"] == 1
    embeddings = result["parts"]["embeddings"]
    assert embeddings["rel_l2"] <= 1e-4 and embeddings["thresholds"]["rel_l2"] == {"max": 1e-4}
    assert result["parts"]["token_states"]["shape"][1] == 384 and result["max_seq_length"] == 256
    assert result["meta"]["dtype"] == "fp32" and result["meta"]["versions"]["torch"]
    assert "OVERALL: PASS" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_accuracy_bf16_uses_reduced_precision_thresholds(cli, tmp_path):
    module = load_script(FOLDER, "eval_accuracy")
    out = tmp_path / "parity.json"
    assert cli(module, "--device", "cpu", "--dtype", "bf16", "--output", out) == 0
    embeddings = json.loads(out.read_text())["parts"]["embeddings"]
    assert embeddings["thresholds"]["rel_l2"] == {"max": 2e-2}
    assert 1e-4 < embeddings["rel_l2"] < 2e-2  # really bf16: measurably different from fp32
    assert embeddings["cosine_row_mean"] >= 0.9999


@pytest.mark.slow
def test_eval_accuracy_fails_with_exit_1_on_nan(cli, tmp_path, monkeypatch, capsys):
    """A device that returns NaN must FAIL (exit 1), never be scored as a pass."""
    module = load_script(FOLDER, "eval_accuracy")
    real_init = module.MiniLMEncoder.__init__

    def poisoned_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if kwargs.get("compile") is not None or args[1:2] != ("cpu",):  # only the encoder under test
            self.model.embeddings.LayerNorm.weight.data.fill_(float("nan"))

    monkeypatch.setattr(module.MiniLMEncoder, "__init__", poisoned_init)
    out = tmp_path / "parity.json"
    assert cli(module, "--device", "cpu", "--dtype", "fp32", "--output", out) == 1
    result = json.loads(out.read_text())
    assert result["passed"] is False and result["headline"] == {"passed": False}
    assert "NaN" in result["parts"]["embeddings"]["failures"][0] and result["failures"][0].startswith("embeddings: ")
    assert "OVERALL: FAIL" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_stsb_subset_on_shared_data(cli, tmp_path, shared_data, capsys):
    module = load_script(FOLDER, "eval_stsb")
    out = tmp_path / "stsb.json"
    assert cli(module, "--data", shared_data / "stsb" / "test.tsv", "--limit", 300, "--device", "cpu",
               "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 300 and result["nonfinite_embeddings"] == 0
    assert 70 < result["spearman_x100"] < 95 and 70 < result["pearson_x100"] < 95
    assert result["headline"] == {"metric": "STS-B Spearman x100", "value": result["spearman_x100"]}
    low, high = result["spearman_ci95"]
    assert low < result["spearman_x100"] < high and high - low < 10  # 300 pairs: a few points wide
    assert len(result["data_sha256"]) == 64 and result["kind"] == "task"


def test_eval_stsb_reads_jsonl_and_tsv_alike(shared_data):
    tsv = load_local(shared_data / "stsb" / "test.tsv")
    jsonl = load_local(shared_data / "stsb" / "test.jsonl")
    assert len(tsv) == len(jsonl) == 1379  # QUOTE_NONE: no rows merged by stray double quotes
    assert tsv == jsonl


@pytest.mark.slow
def test_benchmark_small_sweep_writes_json_and_plot(cli, tmp_path, capsys, monkeypatch):
    module = load_script(FOLDER, "benchmark")
    monkeypatch.setattr(module, "GEMM_PROBE_SIZE", 256)  # the device-peak probe: seconds on a loaded CPU otherwise
    out = tmp_path / "bench.json"
    assert cli(module, "--batch_sizes", "2,8", "--num_texts", 24, "--repeats", 2, "--device", "cpu",
               "--output", out) == 0
    result = json.loads(out.read_text())
    assert [r["batch_size"] for r in result["rows"]] == [2, 8]
    for row in result["rows"]:
        assert row["ours"]["texts_per_s"] > 0 and row["peer"]["texts_per_s"] > 0
        assert row["speedup"] == pytest.approx(row["ours"]["texts_per_s"] / row["peer"]["texts_per_s"])
        assert row["vs_peer"]["max_abs_diff"] <= 1e-5
        assert row["ours"]["batch_latency"]["n"] == 2 * -(-24 // row["batch_size"])
        assert row["ours"]["batch_latency"]["p50_ms"] <= row["ours"]["batch_latency"]["p99_ms"]
    assert result["workload"]["texts"] == 24 and result["meta"]["device"] == "cpu"
    assert result["kind"] == "benchmark" and result["headline"]["metric"] == "texts/s at batch 8"
    assert result["headline"]["peer"] == "SentenceTransformer.encode"
    assert result["headline"]["ratio"] == result["rows"][-1]["speedup"]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_synthetic_workload_is_fixed():
    module = load_script(FOLDER, "benchmark")
    texts = module.synthetic_texts(50)
    assert texts == module.synthetic_texts(50)
    assert all(5 <= len(t.split()) <= 60 for t in texts)


def test_inference_reports_nan_and_exits_1(inference, cli, tmp_path, monkeypatch, capsys):
    real_init = inference.MiniLMEncoder.__init__

    def poisoned_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.model.encoder.layer[0].output.dense.bias.data.fill_(float("inf"))

    monkeypatch.setattr(inference.MiniLMEncoder, "__init__", poisoned_init)
    assert cli(inference, "--text", "hello", "--device", "cpu") == 1
    assert "NaN/inf" in capsys.readouterr().err


def test_readme_tables_are_generated_from_the_result_files():
    assert report.cli([str(load_script(FOLDER, "inference").HERE), "--check"]) == 0
