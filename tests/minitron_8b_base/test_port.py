"""The port test of a causal-LM folder (what `python -m common.porting.new_port` copies): the folder's tiny checkpoint through
every script. Inference CLI and Python class, eval_accuracy (PASS in fp32 and bf16, the parity record's shape), the
task eval on a few real samples, the benchmark (JSON + PNG, the benchmark record's headline), bad inputs (exit 2,
one `error:` line) and --help (exit 0, nothing written). Only what every port of the family has is used: the
folder's names come from FOLDER and the loaded modules."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO_ROOT, load_script, plant_wrong_op

FOLDER = "Minitron-8B-Base"  # common.porting.new_port rewrites this line
SCRIPTS = ("inference", "eval_accuracy", "eval_gsm8k", "benchmark", "make_tiny_checkpoint")
PROMPTS = ["Question: 2 + 3 =", "x"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_script(FOLDER, "make_tiny_checkpoint").build(tmp_path_factory.mktemp("tiny"))


def test_tiny_checkpoint_is_marked(tiny):
    from common.results import weights_kind

    assert weights_kind(tiny) == "test checkpoint"


def test_inference_cli(tiny, cli, capsys):
    inference = load_script(FOLDER, "inference")
    assert cli(inference, "--model_path", tiny, "--prompt", PROMPTS[0], "--max_new_tokens", "4") == 0
    assert capsys.readouterr().out.startswith(PROMPTS[0])


def test_python_class(tiny):
    inference = load_script(FOLDER, "inference")
    assert inference.MODEL_FAMILY == "causal-lm" and inference.MODEL_NAME == FOLDER
    lm = getattr(inference, inference.MODEL_CLASS)(str(tiny), device="cpu")
    texts = lm.generate(PROMPTS, max_new_tokens=4)
    assert len(texts) == 2 and texts == [lm.generate(p, max_new_tokens=4)[0] for p in PROMPTS]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_eval_accuracy_passes(tiny, cli, capsys, tmp_path, monkeypatch, dtype):
    evaluator = load_script(FOLDER, "eval_accuracy")
    monkeypatch.setattr(evaluator, "HERE", tmp_path)  # the default output, under a folder of the test's own
    assert cli(evaluator, "--model_path", tiny, "--device", "cpu", "--dtype", dtype, "--max_new_tokens", "8") == 0
    assert "OVERALL: PASS" in capsys.readouterr().out
    result = json.loads((tmp_path / "results" / f"parity_test_checkpoint_cpu_{dtype}.json").read_text())
    assert result["kind"] == "parity" and result["headline"] == {"passed": True} and result["passed"] is True
    assert result["weights"] == "test checkpoint" and result["meta"]["dtype"] == dtype and result["failures"] == []
    assert set(result["parts"]) == {"prefill_logits", "generation"}
    for part in result["parts"].values():
        assert part["passed"] is True and part["failures"] == [] and part["dtype_under_test"] == dtype
    logits = result["parts"]["prefill_logits"]
    assert logits["shape"][0] == sum(result["prompt_tokens"]) and logits["thresholds"]["top1_agreement"]
    assert (logits["rel_l2"] > 0) is (dtype == "bf16")  # fp32 on the CPU is the reference's own computation


def test_eval_accuracy_fails_when_the_model_under_test_is_wrong(tiny, cli, tmp_path, monkeypatch):
    evaluator = load_script(FOLDER, "eval_accuracy")
    real_init, built = evaluator.CausalLM.__init__, []

    def broken_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)
        if len(built) == 1:  # the model under test is built before the reference
            import torch

            with torch.no_grad():
                self.model.get_output_embeddings().weight.mul_(1.05)

    monkeypatch.setattr(evaluator.CausalLM, "__init__", broken_init)
    output = tmp_path / "parity.json"
    assert cli(evaluator, "--model_path", tiny, "--dtype", "fp32", "--max_new_tokens", "4", "--output", output) == 1
    result = json.loads(output.read_text())
    assert result["passed"] is False and result["headline"] == {"passed": False}
    assert result["parts"]["prefill_logits"]["passed"] is False and "prefill_logits: rel_l2" in result["failures"][0]



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


def test_task_eval_on_real_data(tiny, cli, tmp_path, shared_data):
    task = load_script(FOLDER, "eval_gsm8k")
    output = tmp_path / "task.json"
    assert cli(task, "--model_path", tiny, "--data", shared_data / "gsm8k", "--limit", "2", "--max_new_tokens", "8",
               "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["kind"] == "task" and result["weights"] == "test checkpoint" and result["num_questions"] == 2
    assert set(result["headline"]) == {"metric", "value"} and 0 <= result["headline"]["value"] <= 1
    assert len(output.with_suffix(".jsonl").read_text().splitlines()) == 3  # the config line and two samples


def test_benchmark(tiny, cli, tmp_path):
    bench = load_script(FOLDER, "benchmark")
    output = tmp_path / "bench.json"
    assert cli(bench, "--model_path", tiny, "--input_tokens", "8", "--output_tokens", "4", "--num_requests", "2",
               "--no_compile", "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["kind"] == "benchmark" and result["weights"] == "test checkpoint"
    assert set(result["headline"]) == {"metric", "peer", "ratio"} and result["headline"]["ratio"] > 0
    assert output.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("name, argv, message", [
    ("inference", ["--model_path", "{tmp}/absent"], "does not exist"),
    ("eval_accuracy", ["--model_path", "{tmp}/absent"], "does not exist"),
    ("eval_accuracy", ["--model_path", "{tiny}", "--device", "gpu"], "device"),
    ("eval_accuracy", ["--model_path", "{tiny}", "--file", "{tmp}/empty.txt"], "empty"),
    ("benchmark", ["--model_path", "{tiny}", "--device", "gpu"], "device"),
])
def test_bad_input(tiny, tmp_path, cli, capsys, name, argv, message):
    (tmp_path / "empty.txt").write_text("\n \n")
    module = load_script(FOLDER, name)
    values = {"tmp": tmp_path, "tiny": tiny}
    output = [] if name == "inference" else ["--output", tmp_path / "out.json"]
    assert cli(module, *[a.format(**values) for a in argv], *output) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(load_script(FOLDER, name), "--help") == 0
    assert "usage:" in capsys.readouterr().out and list(tmp_path.iterdir()) == []


def test_make_tiny_checkpoint_help_writes_nothing(tmp_path):
    """As a command: `--help` once built a checkpoint in a folder named --help."""
    script = REPO_ROOT / FOLDER / "make_tiny_checkpoint.py"
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--output" in done.stdout and list(tmp_path.iterdir()) == []


def test_make_tiny_checkpoint_from_another_model(tiny, tmp_path, cli):
    """--from: a tiny random checkpoint of another model's architecture (here the folder's own, read back)."""
    builder = load_script(FOLDER, "make_tiny_checkpoint")
    assert cli(builder, "--output", tmp_path / "copy", "--from", tiny) == 0
    from common.results import weights_kind

    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["model_type"] == json.loads((tiny / "config.json").read_text())["model_type"]
    assert weights_kind(tmp_path / "copy") == "test checkpoint"
