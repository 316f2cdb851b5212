"""Strict weight loading in every folder (common.strict_load): a checkpoint with a renamed, a dropped or a wrongly
shaped tensor is refused by eval_accuracy.py (which loads like every script of its folder) with exit 2 and one line
saying how many tensors and which, never run with random parts; transformers' loading report stays off the console."""
from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from common.porting.folders import model_folders
from common.strict_load import problems
from tests.support import load_script

FOLDERS = [folder.name for folder in model_folders()]
BUILDERS = {"AnandaSky": "make_test_checkpoint"}  # the others: make_tiny_checkpoint
FAULTS = {"renamed": "1 missing", "dropped": "1 missing", "wrongly shaped": "1 wrongly shaped"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    built = {}

    def get(folder: str):
        if folder not in built:
            builder = load_script(folder, BUILDERS.get(folder, "make_tiny_checkpoint"))
            built[folder] = builder.build(tmp_path_factory.mktemp(folder.replace(".", "_")))
        return built[folder]
    return get


def target_tensor(tensors: dict) -> str:
    """A weight inside the stack (2-D, not an embedding or output head: those may be tied)."""
    return sorted(k for k, v in tensors.items() if v.dim() == 2 and not any(
        word in k for word in ("embed", "shared", "lm_head", "wte", "wpe")))[0]


def plant(source, target, fault: str) -> str:
    shutil.copytree(source, target)
    files = sorted(target.rglob("*.safetensors"))
    tensors = load_file(files[0])
    key = target_tensor(tensors)
    if fault == "renamed":
        tensors[key.replace("weight", "wieght")] = tensors.pop(key)
    elif fault == "dropped":
        tensors.pop(key)
    else:
        tensors[key] = tensors[key][:-1].contiguous()
    save_file(tensors, files[0], metadata={"format": "pt"})
    return key


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("folder", FOLDERS)
def test_a_mismatched_checkpoint_is_refused_in_one_line(folder, fault, checkpoints, tmp_path, cli, capsys):
    key = plant(checkpoints(folder), tmp_path / "model", fault)
    out = tmp_path / "out.json"
    assert cli(load_script(folder, "eval_accuracy"), "--model_path", tmp_path / "model", "--device", "cpu",
               "--dtype", "fp32", "--output", out) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "do not match the architecture" in err[0], err
    assert FAULTS[fault] in err[0] and key.split(".")[-2] in err[0] and "random parts" in err[0]
    assert "LOAD REPORT" not in captured.out + captured.err and not out.exists()
    if folder == "AnandaSky":
        assert "--remote_code" in err[0]  # the patched code may be what differs from the real weights


def test_problems_lists_each_kind_with_the_first_few_names():
    info = {"missing_keys": ["pooler.dense.weight", "b", "a", "c", "d"], "unexpected_keys": {"x"},
            "mismatched_keys": [("w", (3, 4), (2, 4))], "error_msgs": []}
    assert problems(info, allow_missing=("pooler.",)) == [
        "4 missing (a, b, c, ...)", "1 unexpected (x)", "1 wrongly shaped (w (checkpoint 3x4, model 2x4))"]
    assert problems({"missing_keys": ["pooler.dense.weight"]}, allow_missing=("pooler.",)) == []
