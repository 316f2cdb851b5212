"""The port test of a seq2seq folder: what every port of the family has, on the folder's own tiny checkpoint.
`python -m common.porting.new_port` copies this file and rewrites FOLDER; nothing below names the model or its class."""
from __future__ import annotations

import json

import pytest

from tests.support import load_script, plant_wrong_op

FOLDER = "google_flan-t5-small"
SCRIPTS = ("inference", "eval_accuracy", "eval_stsb", "benchmark", "chat", "memory_estimate", "make_tiny_checkpoint")
PARTS = {"encoder", "decoder_logits", "generation", "overflow"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_script(FOLDER, "make_tiny_checkpoint").build(tmp_path_factory.mktemp("tiny"))


def test_tiny_checkpoint_is_marked_as_test_weights(tiny):
    from common.results import weights_kind

    assert weights_kind(tiny) == "test checkpoint"


def test_inference_cli_writes_the_output_file(cli, tiny, tmp_path, capsys):
    module = load_script(FOLDER, "inference")
    out = tmp_path / "out.jsonl"
    assert cli(module, "--model_path", tiny, "--device", "cpu", "--text", "summarize: The council met.",
               "--text", "Hi", "--max_new_tokens", 4, "--output", out) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["summarize: The council met.", "Hi"]
    assert all(isinstance(r["generated_text"], str) for r in rows)
    assert f"wrote {out}" in capsys.readouterr().out


def test_python_class_api(tiny):
    module = load_script(FOLDER, "inference")
    assert module.MODEL_FAMILY == "seq2seq" and module.MODEL_NAME == FOLDER
    model = getattr(module, module.MODEL_CLASS)(str(tiny), device="cpu", dtype="fp32")
    texts = model.summarize(["summarize: The council met.", "Hi"], max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert model(["Hi"], max_new_tokens=4) == [{"generated_text": texts[1]}]


@pytest.mark.parametrize("dtype, rel_l2_max", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_eval_accuracy_passes(cli, tiny, tmp_path, capsys, dtype, rel_l2_max):
    module = load_script(FOLDER, "eval_accuracy")
    out = tmp_path / "parity.json"
    assert cli(module, "--model_path", tiny, "--device", "cpu", "--dtype", dtype, "--max_new_tokens", 8,
               "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "parity" and result["weights"] == "test checkpoint"
    assert result["headline"] == {"passed": True} and result["passed"] is True and result["failures"] == []
    assert set(result["parts"]) == PARTS and all(part["passed"] for part in result["parts"].values())
    assert result["meta"]["dtype"] == dtype and result["model"] == str(tiny)
    encoder = result["parts"]["encoder"]
    assert encoder["thresholds"]["rel_l2"] == {"max": rel_l2_max} and encoder["rel_l2"] <= rel_l2_max
    assert result["prompts"] == len(module.PROBE_PROMPTS) + len(module.read_examples()) and result["truncated"] == 1
    generation = result["parts"]["generation"]
    assert generation["unexplained_divergences"] == 0 and generation["sequences"] == result["prompts"]
    if dtype == "fp32":
        assert generation["exact_match_rate"] == 1.0 and result["parts"]["decoder_logits"]["top1_agreement"] == 1.0
    assert "OVERALL: PASS" in capsys.readouterr().out



def test_locate_runs_after_a_fail_and_names_the_broken_module(tiny, cli, tmp_path, monkeypatch, capsys):
    class_name = load_script(FOLDER, "inference").MODEL_CLASS
    evaluator = load_script(FOLDER, "eval_accuracy")
    planted = plant_wrong_op(getattr(evaluator, class_name), monkeypatch)
    out = tmp_path / "parity.json"
    assert cli(evaluator, "--model_path", tiny, "--device", "cpu", "--dtype", "fp32", "--max_new_tokens", 4, "--output", out) == 1
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
    assert cli(load_script(FOLDER, "eval_accuracy"), "--model_path", tiny, "--device", "cpu", "--dtype", dtype, "--max_new_tokens", 4,
               "--trace_ops", "--locate", "--output", out) == 0
    result = json.loads(out.read_text())
    trace, locate = result["trace_ops"], result["locate"]
    assert trace["device"] == "cpu" and trace["dtype"] == dtype and trace["total_calls"] > 0
    assert trace["flags"]["cpu_ops"] == [] and trace["flags"]["fallbacks"] == []  # the target is the CPU itself
    assert any(op["op"] in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear") for op in trace["ops"])
    assert dtype == "bf16" or trace["flags"]["fp32_ops"] == []
    assert locate["reason"] == "asked for (--locate)" and locate["compared"] > 10
    assert locate["first_divergent_module"] is None and locate["first_nonfinite_module"] is None


def test_task_eval_on_real_samples(cli, tiny, tmp_path, shared_data):
    module = load_script(FOLDER, "eval_stsb")
    out = tmp_path / "task.json"
    assert cli(module, "--model_path", tiny, "--device", "cpu", "--data", shared_data / "stsb" / "test.tsv",
               "--limit", 8, "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "task" and result["weights"] == "test checkpoint"
    assert result["headline"]["metric"] == module.METRIC and result["headline"]["value"] == result["spearman_x100"]
    assert result["pairs"] == 8 and 0 <= result["unparsed"] <= 8
    log = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert log[0]["type"] == "config" and [r["id"] for r in log[1:]] == list(range(8))


def test_benchmark_writes_json_and_plot(cli, tiny, tmp_path):
    module = load_script(FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(module, "--model_path", tiny, "--device", "cpu", "--encoder_batch_sizes", "1,2", "--input_tokens", 8,
               "--requests", 4, "--gen_batch_size", 2, "--max_new_tokens", 3, "--num_beams", 2, "--repeats", 1,
               "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "benchmark" and result["weights"] == "test checkpoint"
    headline = result["headline"]
    assert set(headline) == {"metric", "peer", "ratio"} and headline["ratio"] > 0
    greedy = next(row for row in result["generation"] if row["mode"] == "greedy")
    assert headline["ratio"] == greedy["ratio"]
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.parametrize("case", ["missing model folder", "bad device", "empty input file"])
def test_bad_input_is_one_error_line(cli, tiny, tmp_path, capsys, case):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    argv = {"missing model folder": ["--text", "Hi", "--model_path", tmp_path / "nowhere"],
            "bad device": ["--text", "Hi", "--model_path", tiny, "--device", "gpu7"],
            "empty input file": ["--batch_file", empty, "--model_path", tiny]}[case]
    assert cli(load_script(FOLDER, "inference"), *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_and_writes_nothing(cli, script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(load_script(FOLDER, script), "--help") == 0
    assert "usage:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
