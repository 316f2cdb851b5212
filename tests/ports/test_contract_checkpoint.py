"""The port contract on each model folder's own test checkpoint: the checkpoint builds and is marked as test weights;
the inference CLI and the Python class work on it; eval_accuracy.py PASSes in fp32 and bf16 with the shared
parity-record shape; a planted wrong op makes it FAIL and --locate name the planted module; --trace_ops --locate
flags nothing on the clean model; the task eval runs on a few real samples of ../shared/data; benchmark.py writes
its JSON + PNG with the benchmark record's headline; bad inputs are exit 2 and one `error:` line.

Every test runs on every folder that common.porting.folders.model_folders() finds (scaffolded ports included); what
differs between families comes from the folder's tester (tests/ports/families.py), chosen by its MODEL_FAMILY.
`python -m pytest tests/ports -k FOLDER` runs the contract on one folder."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.results import weights_kind
from tests.ports.families import family_tester, folder_params
from tests.support import REPO_ROOT, load_script, plant_wrong_op

DTYPES = ["fp32", "bf16"]
slow = pytest.mark.slow  # the test builds the folder's checkpoint (once a session) or runs a whole script on it


# ---- the test checkpoint ---------------------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("folder", folder_params())
def test_checkpoint_builds_and_is_marked_as_a_test_checkpoint(checkpoint):
    assert (checkpoint / "config.json").is_file() and weights_kind(checkpoint) == "test checkpoint"


@slow
@pytest.mark.parametrize("folder", folder_params())
def test_checkpoint_builder_help_as_a_command_writes_nothing(folder, family, tmp_path):
    """As a command, not only in-process: `--help` once built a checkpoint in a folder named --help."""
    script = REPO_ROOT / folder / f"{family.checkpoint_script}.py"
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--output" in done.stdout and list(tmp_path.iterdir()) == []


@slow
@pytest.mark.parametrize("folder", folder_params(lambda tester: tester.builder_takes_from))
def test_checkpoint_builder_copies_another_models_architecture(folder, family, checkpoint, cli, tmp_path):
    """--from: a tiny random checkpoint of another model's architecture (here the folder's own, read back)."""
    builder = load_script(folder, family.checkpoint_script)
    assert cli(builder, "--output", tmp_path / "copy", "--from", checkpoint) == 0
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["model_type"] == json.loads((checkpoint / "config.json").read_text())["model_type"]
    assert weights_kind(tmp_path / "copy") == "test checkpoint"


# ---- inference.py ----------------------------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("folder", folder_params())
def test_inference_cli(folder, family, checkpoint, cli, tmp_path, shared_data, capsys):
    inference = load_script(folder, "inference")
    family.check_inference_cli(lambda *argv: cli(inference, "--model_path", checkpoint, "--device", "cpu", *argv),
                               inference, checkpoint, tmp_path, shared_data, lambda: capsys.readouterr().out)


@slow
@pytest.mark.parametrize("folder", folder_params())
def test_python_class(folder, family, checkpoint, shared_data):
    inference = load_script(folder, "inference")
    assert inference.MODEL_NAME == folder and inference.MODEL_FAMILY == family.name
    family.check_class(inference, checkpoint, shared_data)


# ---- eval_accuracy.py ------------------------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("folder", folder_params())
def test_eval_accuracy_passes(folder, family, checkpoint, dtype, cli, tmp_path, monkeypatch, capsys):
    evaluator = load_script(folder, "eval_accuracy")
    output_args, output = family.parity_output(evaluator, tmp_path, monkeypatch, dtype)
    assert cli(evaluator, "--model_path", checkpoint, "--device", "cpu", "--dtype", dtype, *family.parity_args,
               *output_args) == 0
    assert "OVERALL: PASS" in capsys.readouterr().out
    result = json.loads(output.read_text())
    assert result["kind"] == "parity" and result["weights"] == "test checkpoint" and result["model"] == str(checkpoint)
    assert result["headline"] == {"passed": True} and result["passed"] is True and result["failures"] == []
    assert result["meta"]["dtype"] == dtype and set(result["parts"]) == family.parity_parts
    for part in result["parts"].values():
        assert part["passed"] is True and part["failures"] == []
    family.check_parity(result, dtype, evaluator)


@slow
@pytest.mark.parametrize("folder", folder_params())
def test_a_planted_wrong_op_fails_and_locate_names_it(folder, family, checkpoint, cli, tmp_path, monkeypatch,
                                                      capsys):
    evaluator = load_script(folder, "eval_accuracy")
    planted = plant_wrong_op(getattr(evaluator, family.identity["MODEL_CLASS"]), monkeypatch)
    out = tmp_path / "parity.json"
    assert cli(evaluator, "--model_path", checkpoint, "--device", "cpu", "--dtype", "fp32", *family.locate_args,
               "--output", out) == 1
    result = json.loads(out.read_text())
    locate = result["locate"]
    assert result["passed"] is False and locate["reason"].startswith("after the FAIL")
    assert locate["first_divergent_module"] == planted[0] and locate["first_nonfinite_module"] is None
    names = [record["module"] for record in locate["modules"]]
    first = names.index(planted[0])
    assert first > 0 and not any(record["past_threshold"] for record in locate["modules"][:first])
    assert locate["modules"][first]["past_threshold"] and locate["modules"][first]["input_rel_l2"] == 0
    assert planted[0] in capsys.readouterr().out


@slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("folder", folder_params())
def test_trace_ops_and_locate_flag_nothing_on_the_clean_model(folder, family, checkpoint, dtype, cli, tmp_path):
    out = tmp_path / "parity.json"
    assert cli(load_script(folder, "eval_accuracy"), "--model_path", checkpoint, "--device", "cpu", "--dtype", dtype,
               *family.locate_args, "--trace_ops", "--locate", "--output", out) == 0
    result = json.loads(out.read_text())
    trace, locate = result["trace_ops"], result["locate"]
    assert trace["device"] == "cpu" and trace["dtype"] == dtype and trace["total_calls"] > 0
    assert trace["flags"]["cpu_ops"] == [] and trace["flags"]["fallbacks"] == []  # the target is the CPU itself
    assert any(op["op"] in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear") for op in trace["ops"])
    assert dtype == "bf16" or trace["flags"]["fp32_ops"] == []
    assert locate["reason"] == "asked for (--locate)" and locate["compared"] > 10
    assert locate["first_divergent_module"] is None and locate["first_nonfinite_module"] is None


# ---- the task eval and the benchmark ---------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("folder", folder_params())
def test_task_eval_on_real_samples(folder, family, checkpoint, cli, tmp_path, shared_data):
    task = load_script(folder, family.task_script)
    output = tmp_path / "task.json"
    assert cli(task, "--model_path", checkpoint, "--device", "cpu", *family.task_args(shared_data),
               "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["kind"] == "task" and result["weights"] == "test checkpoint"
    assert set(result["headline"]) == {"metric", "value"} and result["headline"]["metric"]
    family.check_task(result, output, task)


@slow
@pytest.mark.parametrize("folder", folder_params())
def test_benchmark_writes_json_and_plot(folder, family, checkpoint, cli, tmp_path, monkeypatch):
    bench = load_script(folder, "benchmark")
    family.prepare_benchmark(bench, monkeypatch)
    output = tmp_path / "bench.json"

    def run(*argv):
        return cli(bench, "--model_path", checkpoint, "--device", "cpu", *argv, "--output", output)

    assert run(*family.benchmark_args) == 0
    result = json.loads(output.read_text())
    assert result["kind"] == "benchmark" and result["weights"] == "test checkpoint"
    assert set(result["headline"]) == {"metric", "peer", "ratio"} and result["headline"]["ratio"] > 0
    assert output.with_suffix(".png").stat().st_size > 10_000
    family.check_benchmark(result, output, run)


# ---- bad inputs ------------------------------------------------------------------------------------------------
BAD_INPUTS = {  # case -> (script, model path, input, more arguments, what the one error line says)
    # model path: "absent" (a folder that does not exist) or "checkpoint"; input: "valid" (the family's inference
    # input), "empty" (the family's empty input file for the script) or None
    "inference-missing-model-folder": ("inference", "absent", "valid", [], "does not exist"),
    "inference-unknown-device": ("inference", "checkpoint", "valid", ["--device", "gpu"], "device"),
    "inference-unknown-numbered-device": ("inference", "checkpoint", "valid", ["--device", "gpu7"], "device"),
    "inference-empty-input-file": ("inference", "checkpoint", "empty", [], "empty"),
    "eval_accuracy-missing-model-folder": ("eval_accuracy", "absent", None, [], "does not exist"),
    "eval_accuracy-unknown-device": ("eval_accuracy", "checkpoint", None, ["--device", "gpu"], "device"),
    "eval_accuracy-empty-input-file": ("eval_accuracy", "checkpoint", "empty", [], "empty"),
    "benchmark-missing-model-folder": ("benchmark", "absent", None, [], "does not exist"),
    "benchmark-unknown-device": ("benchmark", "checkpoint", None, ["--device", "gpu"], "device"),
}


def bad_input_params() -> list:
    """(folder, case) for every case that applies to the folder's family (an empty-file case needs a file flag);
    the cases without a checkpoint are fast, so only the others are marked slow."""
    params = []
    for folder_param in folder_params():
        folder = folder_param.values[0]
        for case, (script, model, given, _, _) in BAD_INPUTS.items():
            if given == "empty" and script not in family_tester(folder).input_file_flags:
                continue
            marks = [slow] if model == "checkpoint" else []
            params.append(pytest.param(folder, case, id=f"{folder}-{case}", marks=marks))
    return params


@pytest.mark.parametrize("folder, case", bad_input_params())
def test_bad_input_is_one_error_line(folder, case, family, request, cli, tmp_path, shared_data, capsys):
    script, model, given, more, message = BAD_INPUTS[case]
    model_path = tmp_path / "absent" if model == "absent" else request.getfixturevalue("checkpoint")
    inputs = {"valid": lambda: family.inference_input(tmp_path, shared_data),
              "empty": lambda: family.empty_input(script, tmp_path), None: lambda: []}[given]()
    device = [] if "--device" in more else ["--device", "cpu"]
    output = [] if script == "inference" else ["--output", tmp_path / "out.json"]
    assert cli(load_script(folder, script), "--model_path", model_path, *inputs, *device, *more, *output) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert message in err[0], err
    assert not (tmp_path / "out.json").exists()
