"""Port tests: what every sentence-transformers port must pass, on its folder's tiny random checkpoint.

`python -m common.porting.new_port --from all-MiniLM-L6-v2 ...` copies this file for a new port and rewrites FOLDER, so it
names nothing else: the encoder class and the scripts come from the folder's own modules.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support import load_script, plant_wrong_op

FOLDER = "all-MiniLM-L6-v2"  # common.porting.new_port rewrites this line
TEXTS = ["A man is playing a guitar.", "x", "Le chat dort sur le canapé pendant que la pluie tombe.",
         "Quarterly revenue rose 12.5% to $4.31 billion.", "Sentence embeddings map text to vectors."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_script(FOLDER, "make_tiny_checkpoint").build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def inference():
    return load_script(FOLDER, "inference")


def encoder_class(module):
    return getattr(module, module.MODEL_CLASS)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_inference_cli_writes_embeddings(tiny, inference, cli, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    assert cli(inference, "--model_path", tiny, "--batch_file", texts, "--device", "cpu", "--output", out) == 0
    vectors = np.load(out)
    width = encoder_class(inference)(str(tiny), device="cpu").embedding_dim
    assert vectors.shape == (len(TEXTS), width) and np.isfinite(vectors).all()
    assert f"({len(TEXTS)}, {width})" in capsys.readouterr().out


def test_class_api_matches_sentence_transformers(tiny, inference):
    from sentence_transformers import SentenceTransformer

    encoder = encoder_class(inference)(str(tiny), device="cpu", dtype="fp32")
    peer = SentenceTransformer(str(tiny), device="cpu")
    got, want = encoder.encode(TEXTS, batch_size=2), peer.encode(TEXTS, batch_size=2)
    assert got.shape == want.shape == (len(TEXTS), peer.get_embedding_dimension())
    assert float(np.abs(got - want).max()) <= 1e-5
    assert encoder.encode([]).shape == (0, encoder.embedding_dim)
    assert encoder.encode("one text").shape == (1, encoder.embedding_dim)
    assert encoder.last_stats["texts"] == 1 and encoder.last_stats["nonfinite_rows"] == 0


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_eval_accuracy_passes(tiny, dtype, cli, tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert cli(load_script(FOLDER, "eval_accuracy"), "--model_path", tiny, "--device", "cpu", "--dtype", dtype,
               "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "parity" and result["weights"] == "test checkpoint"
    assert result["headline"] == {"passed": True} and result["passed"] is True and result["failures"] == []
    assert set(result["parts"]) == {"embeddings", "token_states"}
    for part in result["parts"].values():
        assert part["passed"] is True and part["failures"] == [] and part["dtype_under_test"] == dtype
        assert part["thresholds"]["rel_l2"] == {"max": 1e-4 if dtype == "fp32" else 2e-2}
    assert result["meta"]["dtype"] == dtype and "OVERALL: PASS" in capsys.readouterr().out



def test_locate_runs_after_a_fail_and_names_the_broken_module(tiny, cli, tmp_path, monkeypatch, capsys):
    class_name = load_script(FOLDER, "inference").MODEL_CLASS
    evaluator = load_script(FOLDER, "eval_accuracy")
    planted = plant_wrong_op(getattr(evaluator, class_name), monkeypatch)
    out = tmp_path / "parity.json"
    assert cli(evaluator, "--model_path", tiny, "--device", "cpu", "--dtype", "fp32", "--output", out) == 1
    result = json.loads(out.read_text())
    locate = result["locate"]
    assert result["passed"] is False and locate["reason"].startswith("after the FAIL")
    assert locate["first_divergent_module"] == planted[0] and locate["first_nonfinite_module"] is None
    names = [record["module"] for record in locate["modules"]]
    first = names.index(planted[0])
    assert first > 0 and not any(record["past_threshold"] for record in locate["modules"][:first])
    assert locate["modules"][first]["past_threshold"] and locate["modules"][first]["input_rel_l2"] == 0
    assert planted[0] in capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_trace_ops_and_locate_on_the_clean_model(tiny, cli, tmp_path, dtype):
    out = tmp_path / "parity.json"
    assert cli(load_script(FOLDER, "eval_accuracy"), "--model_path", tiny, "--device", "cpu", "--dtype", dtype,
               "--trace_ops", "--locate", "--output", out) == 0
    result = json.loads(out.read_text())
    trace, locate = result["trace_ops"], result["locate"]
    assert trace["device"] == "cpu" and trace["dtype"] == dtype and trace["total_calls"] > 0
    assert trace["flags"]["cpu_ops"] == [] and trace["flags"]["fallbacks"] == []  # the target is the CPU itself
    assert any(op["op"] in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear") for op in trace["ops"])
    assert dtype == "bf16" or trace["flags"]["fp32_ops"] == []
    assert locate["reason"] == "asked for (--locate)" and locate["compared"] > 10
    assert locate["first_divergent_module"] is None and locate["first_nonfinite_module"] is None


def test_task_eval_on_real_samples(tiny, cli, tmp_path, shared_data):
    out = tmp_path / "task.json"
    assert cli(load_script(FOLDER, "eval_stsb"), "--model_path", tiny, "--data", shared_data / "stsb" / "test.tsv",
               "--limit", 40, "--device", "cpu", "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "task" and result["weights"] == "test checkpoint" and result["pairs"] == 40
    assert result["headline"]["metric"] and -100 <= result["headline"]["value"] <= 100
    low, high = result["spearman_ci95"]
    assert low <= result["spearman_x100"] <= high and len(result["data_sha256"]) == 64


def test_benchmark_writes_json_and_plot(tiny, cli, tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    module = load_script(FOLDER, "benchmark")
    monkeypatch.setattr(module, "GEMM_PROBE_SIZE", 256)  # the device-peak probe: seconds on a loaded CPU otherwise
    assert cli(module, "--model_path", tiny, "--batch_sizes", "2,4", "--num_texts", 12,
               "--repeats", 1, "--device", "cpu", "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "benchmark" and result["weights"] == "test checkpoint"
    assert [r["batch_size"] for r in result["rows"]] == [2, 4]
    head = result["headline"]
    assert head["metric"] == "texts/s at batch 4" and head["peer"] and head["ratio"] == result["rows"][-1]["speedup"]
    assert all(r["vs_peer"]["max_abs_diff"] <= 1e-5 for r in result["rows"])  # the peer runs the same folder
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert cli(module, "--model_path", tiny, "--batch_sizes", "2", "--num_texts", 4,
               "--repeats", 1, "--device", "cpu", "--no_peer", "--output", out) == 0
    assert json.loads(out.read_text())["headline"]["ratio"] is None


@pytest.mark.parametrize("case", ["missing model folder", "bad device", "empty input file"])
def test_bad_inputs_are_one_line(case, tiny, inference, cli, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    argv = {"missing model folder": ["--model_path", tmp_path / "nowhere", "--text", "hi"],
            "bad device": ["--model_path", tiny, "--text", "hi", "--device", "gpu"],
            "empty input file": ["--model_path", tiny, "--batch_file", empty]}[case]
    assert cli(inference, *argv) == 2
    one_error_line(capsys)


@pytest.mark.parametrize("script", ["inference", "eval_accuracy", "eval_stsb", "benchmark", "make_tiny_checkpoint"])
def test_help_exits_0(script, capsys):
    with pytest.raises(SystemExit) as info:
        load_script(FOLDER, script).build_parser().parse_args(["--help"])
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out
