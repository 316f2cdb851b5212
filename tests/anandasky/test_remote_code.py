"""AnandaSky --remote_code: the weights folder's own modeling code, run with common.porting.flash_attn_compat.install().

The folder is the seeded test checkpoint carrying tests/fixtures/anandasky_upstream/modeling_anandasky.py (the
upstream-style code: flash_attn imports at module top, flash_attn_varlen_func over packed images, bert_padding,
autocast("cuda")) instead of the patched file, with config.json's auto_map pointing at it
(make_test_checkpoint.use_upstream_code). Checked: the same greedy text and near-identical logits as the patched code
on the same weights, eval_accuracy PASS with the code source recorded, the lint summary (which findings the layer
covers, which need attention, file:line), refusals (no code of its own, a renamed tensor: exit 2, one `error:` line),
that the layer is what makes the code import, and that without the flag the folder's code never runs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from common.porting import flash_attn_compat
from tests.support import ANANDASKY_FOLDER, REPO_ROOT, load_script

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "anandasky_upstream" / "modeling_anandasky.py"
REMOTE_SOURCE = "remote: modeling_anandasky.py"
PATCHED_SOURCE = "patched: modeling_anandasky_patched.py"
SCRIPTS = ("inference", "eval_accuracy", "eval_ocr", "benchmark")  # every script that loads the model


def fixture_line(text: str) -> int:
    """The 1-based line of the fixture's code (the docstring quotes it too) that starts with `text` (exactly one)."""
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    hits = [n for n, line in enumerate(lines, 1) if line.strip().startswith(text)]
    assert len(hits) == 1, (text, hits)
    return hits[0]


@pytest.fixture(autouse=True)
def no_flash_attn_stand_in():
    """Every test starts and ends without the stand-in in sys.modules (--remote_code installs it)."""
    flash_attn_compat.uninstall()
    yield
    flash_attn_compat.uninstall()


@pytest.fixture(scope="module")
def upstream(anandasky_checkpoint, tmp_path_factory) -> Path:
    """The test checkpoint's weights with the upstream-style modeling file as the folder's only code."""
    folder = tmp_path_factory.mktemp("remote") / "anandasky_upstream"
    shutil.copytree(anandasky_checkpoint, folder)
    return load_script(ANANDASKY_FOLDER, "make_test_checkpoint").use_upstream_code(folder)


def variant(upstream: Path, target: Path, drop: tuple = (), config=None) -> Path:
    """A folder like `upstream` (files linked, not copied) without `drop`, config.json rewritten by `config`."""
    target.mkdir()
    for file in upstream.iterdir():
        if file.name not in drop and file.name != "config.json":
            (target / file.name).symlink_to(file)
    settings = json.loads((upstream / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config(settings) if config else settings))
    return target


@pytest.fixture
def scans(shared_data):
    return sorted((shared_data / "ocr" / "uw3_500" / "images").glob("*.bin.png"))[:2]  # two sizes: a packed pass


@pytest.mark.slow
def test_every_script_takes_the_flag():
    for name in SCRIPTS:
        options = load_script(ANANDASKY_FOLDER, name).build_parser()._option_string_actions
        for flag in ("--remote_code", "--remote-code", "--trust_remote_code", "--trust-remote-code"):
            assert options[flag].dest == "remote_code", (name, flag)


@pytest.mark.slow
def test_remote_code_reads_the_same_text_and_prints_the_lint_summary(upstream, anandasky_checkpoint, scans, cli,
                                                                      capsys):
    inference = load_script(ANANDASKY_FOLDER, "inference")
    argv = ("--image", *scans, "--max_new_tokens", "6", "--device", "cpu", "--dtype", "fp32")
    assert cli(inference, "--model_path", upstream, "--remote_code", *argv) == 0
    remote = capsys.readouterr()
    assert cli(inference, "--model_path", anandasky_checkpoint, *argv) == 0
    patched = capsys.readouterr()
    assert remote.out == patched.out and len(remote.out.splitlines()) == 2

    err = remote.err.splitlines()
    covered = err[err.index("  covered by flash_attn_compat.install():") + 1:]
    covered = covered[:next(i for i, line in enumerate(covered) if not line.startswith("    "))]
    assert covered == [f"    modeling_anandasky.py:{fixture_line(code)}: {code}" for code in
                       ("from flash_attn import flash_attn_varlen_func",
                        "from flash_attn.bert_padding import pad_input, unpad_input")]
    attention = err[[line.startswith("  needs attention") for line in err].index(True) + 1:]
    autocast = f"    modeling_anandasky.py:{fixture_line('with torch.autocast(' + chr(34) + 'cuda')}:"
    assert any(line.startswith(autocast) and " cuda-autocast " in line and " -> " in line for line in attention)
    assert f"running modeling_anandasky.py from {upstream}" in err[0] and "2 covered" in err[0]
    assert f"{REMOTE_SOURCE}, 2 image(s)" in remote.err and f"{PATCHED_SOURCE}, 2 image(s)" in patched.err


@pytest.mark.slow
def test_python_class_records_the_code_and_matches_the_patched_logits(upstream, scans):
    inference = load_script(ANANDASKY_FOLDER, "inference")
    patched = inference.AnandaSkyOCR(upstream, device="cpu", dtype="fp32")  # the flag off: the folder's code unused
    assert not flash_attn_compat.is_installed() and patched.describe() == {"code_source": PATCHED_SOURCE}
    remote = inference.AnandaSkyOCR(upstream, device="cpu", dtype="fp32", remote_code=True)
    assert flash_attn_compat.is_installed() and type(remote.model).__module__.endswith("modeling_anandasky")
    described = remote.describe()
    assert described["code_source"] == REMOTE_SOURCE == remote.code_source
    findings = described["remote_code_findings"]
    assert {(f["path"], f["line"], f["rule"], f["covered_by"]) for f in findings if f["rule"] == "flash-attn"} == {
        ("modeling_anandasky.py", fixture_line("from flash_attn import"), "flash-attn", "flash_attn_compat.install()"),
        ("modeling_anandasky.py", fixture_line("from flash_attn.bert_padding"), "flash-attn",
         "flash_attn_compat.install()")}
    assert all(f["covered_by"] is None for f in findings if f["rule"] != "flash-attn")
    assert json.loads(json.dumps(described)) == described  # goes into result JSON as it is
    want, got = patched.logits(scans[0]), remote.logits(scans[0])
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()


@pytest.mark.slow
def test_eval_accuracy_passes_with_the_code_source_recorded(upstream, cli, capsys, tmp_path):
    evaluator = load_script(ANANDASKY_FOLDER, "eval_accuracy")
    output = tmp_path / "parity.json"
    assert cli(evaluator, "--model_path", upstream, "--device", "cpu", "--dtype", "fp32", "--remote_code",
               "--output", output) == 0
    assert "OVERALL: PASS" in capsys.readouterr().out
    result = json.loads(output.read_text())
    assert result["passed"] is True and result["meta"]["dtype"] == "fp32"
    assert result.get("code_source") == REMOTE_SOURCE, "eval_accuracy must pass remote_code and record describe()"
    assert [f["line"] for f in result["remote_code_findings"] if f["covered_by"]] == [
        fixture_line("from flash_attn import"), fixture_line("from flash_attn.bert_padding")]


@pytest.mark.parametrize("case, message", [
    ("no auto_map", "carries no modeling code of its own"),
    ("file absent", "modeling_anandasky.py is not in the folder"),
    ("renamed tensor", "do not match the architecture: 1 missing (bridge.fc1.weight); 1 unexpected (bridge.fc_1.weight)"),
    ("auto_map not a string", "auto_map AutoModelForCausalLM is 5, not 'module.ClassName'"),
    ("auto_map outside the folder", "auto_map AutoModelForCausalLM is '../evil.Model', not 'module.ClassName'"),
])
def test_refused_in_one_line(upstream, tmp_path, scans, cli, capsys, case, message):
    target = tmp_path / "folder"
    if case == "no auto_map":
        variant(upstream, target, config=lambda c: {k: v for k, v in c.items() if k != "auto_map"})
    elif case.startswith("auto_map"):
        bad = 5 if case == "auto_map not a string" else "../evil.Model"
        variant(upstream, target, config=lambda c: {**c, "auto_map": {**c["auto_map"], "AutoModelForCausalLM": bad}})
    elif case == "file absent":
        variant(upstream, target, drop=("modeling_anandasky.py",))
    else:
        variant(upstream, target, drop=("model.safetensors",))
        weights = load_file(str(upstream / "model.safetensors"))
        weights["bridge.fc_1.weight"] = weights.pop("bridge.fc1.weight")
        save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    inference = load_script(ANANDASKY_FOLDER, "inference")
    assert cli(inference, "--model_path", target, "--remote_code", "--image", scans[0], "--device", "cpu") == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and captured.err.endswith(errors[0] + "\n"), captured.err
    assert "--remote_code" in errors[0] and captured.out == ""  # says how to go on; never read text with it


def test_the_folder_loads_only_because_of_the_compatibility_layer(upstream):
    with pytest.raises(ImportError, match="flash_attn"):
        AutoModelForCausalLM.from_pretrained(upstream, trust_remote_code=True)
    assert flash_attn_compat.install()
    model = AutoModelForCausalLM.from_pretrained(upstream, trust_remote_code=True)
    assert "flash_attn_varlen_func" in model.vision_model.blocks[0].attn.forward.__code__.co_names


def test_only_what_the_layer_provides_counts_as_covered(tmp_path):
    """flash_attn.ops (Triton/CUDA kernels) is not in the stand-in: that import still needs attention."""
    remote_code = load_script(ANANDASKY_FOLDER, "remote_code")
    code = tmp_path / "modeling_x.py"
    code.write_text("import flash_attn.bert_padding as bp\nfrom flash_attn.ops.triton.layer_norm import RMSNorm\n"
                    "from flash_attn import flash_attn_func\n")
    flash_attn_compat.install()
    findings = remote_code.lint_remote_code(tmp_path, [code], "flash_attn_compat.install()")
    assert [(f["line"], f["rule"], f["covered_by"]) for f in findings] == [
        (1, "flash-attn", "flash_attn_compat.install()"), (2, "flash-attn", None),
        (3, "flash-attn", "flash_attn_compat.install()")]
