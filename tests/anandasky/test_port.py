"""The port test of the custom-family folder (what `python -m common.porting.new_port` copies): the folder's random test
checkpoint through every script. Inference CLI and Python class, eval_accuracy (PASS in fp32 and bf16, the parity
record's shape), the task eval on a few real samples, the benchmark (JSON + PNG, the benchmark record's headline),
bad inputs (exit 2, one `error:` line) and --help (exit 0, nothing written). The folder's names come from FOLDER
and the loaded modules only."""
from __future__ import annotations

import json

import pytest

from tests.support import load_script, plant_wrong_op

FOLDER = "AnandaSky"  # common.porting.new_port rewrites this line
SCRIPTS = ("inference", "eval_accuracy", "eval_ocr", "benchmark", "make_test_checkpoint", "serve_check")
OCR_DATA = ("ocr", "uw3_500")  # under the shared data folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return load_script(FOLDER, "make_test_checkpoint").build(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture
def scans(shared_data):
    return sorted(shared_data.joinpath(*OCR_DATA, "images").glob("*.png"))[:2]


def test_checkpoint_is_marked(checkpoint):
    from common.results import weights_kind

    assert weights_kind(checkpoint) == "test checkpoint"


def test_inference_cli(checkpoint, scans, cli, capsys):
    inference = load_script(FOLDER, "inference")
    assert cli(inference, "--model_path", checkpoint, "--image", *scans, "--max_new_tokens", "4") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(s) for s in scans]


def test_python_class(checkpoint, scans):
    inference = load_script(FOLDER, "inference")
    assert inference.MODEL_NAME == FOLDER and inference.MODEL_FAMILY == "custom"
    model = getattr(inference, inference.MODEL_CLASS)(checkpoint, device="cpu")
    texts = model.recognize(scans, max_new_tokens=4)
    assert len(texts) == 2 and texts == [model.recognize(s, max_new_tokens=4)[0] for s in scans]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_eval_accuracy_passes(checkpoint, cli, capsys, tmp_path, monkeypatch, dtype):
    evaluator = load_script(FOLDER, "eval_accuracy")
    monkeypatch.setattr(evaluator, "HERE", tmp_path)  # the default output, under a folder of the test's own
    assert cli(evaluator, "--model_path", checkpoint, "--device", "cpu", "--dtype", dtype) == 0
    assert "OVERALL: PASS" in capsys.readouterr().out
    result = json.loads((tmp_path / "results" / f"parity_test_checkpoint_cpu_{dtype}.json").read_text())
    assert result["kind"] == "parity" and result["headline"] == {"passed": True} and result["passed"] is True
    assert result["weights"] == "test checkpoint" and result["meta"]["dtype"] == dtype and result["failures"] == []
    assert set(result["parts"]) == {"vision", "logits"}
    for part in result["parts"].values():
        assert part["passed"] is True and part["failures"] == [] and part["dtype_under_test"] == dtype
        assert (part["rel_l2"] > 0) is (dtype == "bf16")  # fp32 on the CPU is the reference's own computation
    assert result["parts"]["logits"]["thresholds"]["top1_agreement"]["min"] > 0.9



def test_locate_runs_after_a_fail_and_names_the_broken_module(checkpoint, cli, tmp_path, monkeypatch, capsys):
    class_name = load_script(FOLDER, "inference").MODEL_CLASS
    evaluator = load_script(FOLDER, "eval_accuracy")
    planted = plant_wrong_op(getattr(evaluator, class_name), monkeypatch)
    out = tmp_path / "parity.json"
    assert cli(evaluator, "--model_path", checkpoint, "--device", "cpu", "--dtype", "fp32", "--output", out) == 1
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
def test_trace_ops_and_locate_on_the_clean_model(checkpoint, cli, tmp_path, dtype):
    out = tmp_path / "parity.json"
    assert cli(load_script(FOLDER, "eval_accuracy"), "--model_path", checkpoint, "--device", "cpu", "--dtype", dtype,
               "--trace_ops", "--locate", "--output", out) == 0
    result = json.loads(out.read_text())
    trace, locate = result["trace_ops"], result["locate"]
    assert trace["device"] == "cpu" and trace["dtype"] == dtype and trace["total_calls"] > 0
    assert trace["flags"]["cpu_ops"] == [] and trace["flags"]["fallbacks"] == []  # the target is the CPU itself
    assert any(op["op"] in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear") for op in trace["ops"])
    assert dtype == "bf16" or trace["flags"]["fp32_ops"] == []
    assert locate["reason"] == "asked for (--locate)" and locate["compared"] > 10
    assert locate["first_divergent_module"] is None and locate["first_nonfinite_module"] is None


def test_task_eval_on_real_data(checkpoint, cli, tmp_path, shared_data):
    task = load_script(FOLDER, "eval_ocr")
    output = tmp_path / "task.json"
    assert cli(task, "--model_path", checkpoint, "--data", shared_data.joinpath(*OCR_DATA), "--limit", "2",
               "--max_new_tokens", "4", "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["kind"] == "task" and result["weights"] == "test checkpoint"
    assert set(result["headline"]) == {"metric", "value"} and result["headline"]["value"] >= 0
    assert len(output.with_suffix(".jsonl").read_text().splitlines()) == 3  # the config line and two samples


def test_benchmark(checkpoint, cli, tmp_path):
    bench = load_script(FOLDER, "benchmark")
    output = tmp_path / "bench.json"
    assert cli(bench, "--model_path", checkpoint, "--sizes", "28x112", "--images", "2", "--new_tokens", "2",
               "--warmup", "0", "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["kind"] == "benchmark" and result["weights"] == "test checkpoint"
    assert set(result["headline"]) == {"metric", "peer", "ratio"} and result["headline"]["ratio"] > 0
    assert output.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("name, argv, message", [
    ("inference", ["--model_path", "{tmp}/absent", "--image", "{tmp}/empty.png"], "does not exist"),
    ("eval_accuracy", ["--model_path", "{tmp}/absent"], "does not exist"),
    ("eval_accuracy", ["--model_path", "{ckpt}", "--device", "gpu"], "device"),
    ("inference", ["--model_path", "{ckpt}", "--image", "{tmp}/empty.png"], "empty"),
    ("benchmark", ["--model_path", "{ckpt}", "--device", "gpu"], "device"),
])
def test_bad_input(checkpoint, tmp_path, cli, capsys, name, argv, message):
    (tmp_path / "empty.png").write_bytes(b"")
    module = load_script(FOLDER, name)
    values = {"tmp": tmp_path, "ckpt": checkpoint}
    output = [] if name == "inference" else ["--output", tmp_path / "out.json"]  # inference writes JSON only with --eval
    assert cli(module, *[a.format(**values) for a in argv], *output) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(load_script(FOLDER, name), "--help") == 0
    assert "usage:" in capsys.readouterr().out and list(tmp_path.iterdir()) == []
