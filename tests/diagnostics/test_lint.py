"""common/diagnostics/lint.py: each rule planted at a known line, alias forms, suppressions, what is not a device use,
remote code in a weights folder, the CLI's exit codes and JSON, bad input, and the repository linting clean."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from common.cli import run_main
from common.diagnostics.lint import RULES, build_parser, format_findings, lint_paths, main
from common.porting.folders import model_folders
from tests.support import REPO_ROOT

PLANTED = '''\
import flash_attn
import xformers.ops
from apex.normalization import FusedLayerNorm
import triton
import bitsandbytes as bnb
import os
import torch
import torch.distributed as dist


def setup(model, x):
    torch.cuda.synchronize()
    model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pass
    y = x.to("cuda:1")
    torch.backends.cudnn.benchmark = True
    dist.init_process_group(backend="nccl")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    return y


class Block(torch.nn.Module):
    def forward(self, x):
        n = x.sum().item()
        return x + torch.arange(n)
'''
# (line, col, rule) of every finding in PLANTED: one per rule except bad-suppression (tested below)
PLANTED_FINDINGS = [
    (1, 1, "flash-attn"), (2, 1, "xformers"), (3, 1, "apex"), (4, 1, "triton"), (5, 1, "bitsandbytes"),
    (12, 5, "torch-cuda-api"), (13, 11, "cuda-call"), (14, 25, "cuda-autocast"), (16, 14, "cuda-device-string"),
    (17, 5, "cudnn"), (18, 37, "nccl"), (19, 16, "cuda-env"), (25, 21, "host-sync-in-forward"),
    (26, 20, "cpu-tensor-in-forward"),
]

ALIASES = '''\
import torch as th
from torch import cuda
from torch.cuda import empty_cache
from torch.cuda.amp import autocast
from torch.backends import cudnn
import flash_attn.bert_padding as bp
import importlib
from .cuda import synchronize

th.cuda.synchronize()
cuda.current_device()
empty_cache()
with autocast():
    pass
cudnn.deterministic = True
stream = th.cuda
stream.Event()
importlib.import_module("flash_attn.flash_attn_interface")
synchronize()
th.amp.autocast(device_type="cuda")
d = th.device("cuda" if th.cuda.is_available() else "cpu")
'''

NOT_DEVICE_USES = '''\
"""Runs on "cuda" or "cuda:0"; set CUDA_VISIBLE_DEVICES yourself."""
import argparse
import torch

try:
    from flash_attn import flash_attn_func  # optional: the except branch is the fallback
except ImportError:
    flash_attn_func = None

DEVICE_TYPES = ("cpu", "cuda", "npu", "mps")


def pick(kind: str, device: torch.device):
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto", help="cuda | npu | cpu")
    if kind == "cuda":
        print("cuda selected")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.backends.cudnn.benchmark = True
    if device.type not in ("cuda", "npu"):
        raise ValueError("expected a cuda or npu device")
    return torch.zeros(2).to(device)


class Model(torch.nn.Module):
    def forward(self, x, grid):
        if grid.sum() < 0:
            raise ValueError(f"bad grid {grid.tolist()}")
        return x + torch.ones(3, device=x.device) + torch.arange(3).to(x.device)

    def summary(self, x):
        return x.tolist()
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def found(findings) -> list[tuple[int, int, str]]:
    return [(f.line, f.col, f.rule) for f in findings]


def test_each_rule_at_its_line(tmp_path):
    path = write(tmp_path, "planted.py", PLANTED)
    findings = lint_paths([path])
    assert found(findings) == PLANTED_FINDINGS
    assert {f.path for f in findings} == {str(path)}
    assert {rule for _, _, rule in PLANTED_FINDINGS} == set(RULES) - {"bad-suppression"}
    by_rule = {f.rule: f for f in findings}
    assert by_rule["flash-attn"].message == "flash_attn is NVIDIA-only: the import fails on Ascend NPU, MPS and CPU"
    assert by_rule["flash-attn"].fix.startswith("call common.porting.flash_attn_compat.install() before the model code")
    assert by_rule["torch-cuda-api"].fix == "common.device.synchronize(device)"
    assert by_rule["cuda-call"].fix.startswith(".to(device)")
    assert by_rule["nccl"].fix.startswith('"hccl" on Ascend NPU, "gloo" on CPU')
    assert by_rule["cpu-tensor-in-forward"].fix.startswith("pass device=x.device")


def test_aliases_are_resolved(tmp_path):
    findings = lint_paths([write(tmp_path, "aliases.py", ALIASES)])
    assert [(f.line, f.rule) for f in findings] == [
        (6, "flash-attn"), (10, "torch-cuda-api"), (11, "torch-cuda-api"), (12, "torch-cuda-api"),
        (13, "torch-cuda-api"), (15, "cudnn"), (16, "torch-cuda-api"), (17, "torch-cuda-api"), (18, "flash-attn"),
        (20, "cuda-autocast"), (21, "cuda-device-string"), (21, "torch-cuda-api")]
    messages = {f.line: f.message.split(" ")[0] for f in findings}
    assert messages[10] == "torch.cuda.synchronize" and messages[11] == "torch.cuda.current_device"
    assert messages[12] == "torch.cuda.empty_cache" and messages[13] == "torch.cuda.amp.autocast"
    assert messages[15] == "torch.backends.cudnn.deterministic" and messages[17] == "torch.cuda.Event"
    fixes = {f.line: f.fix for f in findings}
    assert fixes[13] == "torch.autocast(device_type=x.device.type)"
    assert fixes[17] == "getattr(torch, device.type).Event"


def test_strings_that_are_not_device_uses_are_not_flagged(tmp_path):
    assert lint_paths([write(tmp_path, "ok.py", NOT_DEVICE_USES)]) == []


def test_a_cuda_guard_covers_only_the_cuda_branch(tmp_path):
    path = write(tmp_path, "guards.py", textwrap.dedent('''\
        import torch
        def sync(device):
            if device.type == "cuda":
                torch.cuda.synchronize()
            else:
                torch.cuda.synchronize()
            if device.type != "cuda":
                torch.cuda.synchronize()
            else:
                torch.cuda.synchronize()
        '''))
    assert found(lint_paths([path])) == [(6, 9, "torch-cuda-api"), (8, 9, "torch-cuda-api")]


def test_suppression_needs_a_reason(tmp_path):
    path = write(tmp_path, "suppressed.py", textwrap.dedent('''\
        import torch
        torch.cuda.synchronize()  # lint-port: allow torch-cuda-api -- this script only ever runs on CUDA
        torch.cuda.synchronize()  # lint-port: allow torch-cuda-api
        torch.cuda.synchronize()  # lint-port: allow no-such-rule -- a typo in the rule name
        torch.cuda.synchronize()  # lint-port: allow cuda-call -- the wrong rule silences nothing
        '''))
    assert found(lint_paths([path])) == [
        (3, 1, "torch-cuda-api"), (3, 27, "bad-suppression"), (4, 1, "torch-cuda-api"), (4, 27, "bad-suppression"),
        (5, 1, "torch-cuda-api")]
    bad = [f.message for f in lint_paths([path]) if f.rule == "bad-suppression"]
    assert bad == ["suppression comment: no reason given after ' -- '",
                   "suppression comment: unknown rule 'no-such-rule'"]


def test_remote_code_in_a_weights_folder_is_scanned(tmp_path):
    weights = tmp_path / "weights"
    write(weights, "config.json", '{"model_type": "x"}')
    write(weights, "modeling_x.py", "import torch\nfrom flash_attn.bert_padding import unpad_input\n")
    write(weights, ".venv/lib/site.py", "import flash_attn\n")  # environments and caches are skipped
    write(weights, "__pycache__/old.py", "import flash_attn\n")
    findings = lint_paths([tmp_path])
    assert [(Path(f.path).relative_to(tmp_path).as_posix(), f.line, f.rule) for f in findings] == [
        ("weights/modeling_x.py", 2, "flash-attn")]
    assert findings[0].message.endswith("(remote code in a weights folder)")


def cli(argv, capsys) -> tuple[int, str, str]:
    code = run_main(main, build_parser().parse_args([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_codes_and_json(tmp_path, capsys):
    planted = write(tmp_path / "src", "planted.py", PLANTED)
    write(tmp_path / "src", "clean.py", "import torch\n")
    out_json = tmp_path / "results" / "lint.json"
    code, out, err = cli([tmp_path / "src", "--json", out_json], capsys)
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert len(lines) == len(PLANTED_FINDINGS) + 1
    assert lines[0].endswith(":1:1: flash-attn flash_attn is NVIDIA-only: the import fails on Ascend NPU, MPS and "
                             "CPU -> " + lint_paths([planted])[0].fix)
    assert lines[-1].startswith(f"lint-port: {len(PLANTED_FINDINGS)} findings in 2 files (apex 1, bitsandbytes 1,")
    report = json.loads(out_json.read_text())
    assert report["paths"] == [str(tmp_path / "src")] and report["files_scanned"] == 2
    assert report["counts"] == {rule: 1 for _, _, rule in PLANTED_FINDINGS}
    assert [(f["line"], f["col"], f["rule"]) for f in report["findings"]] == PLANTED_FINDINGS
    assert set(report["findings"][0]) == {"path", "line", "col", "rule", "message", "fix"}

    code, out, err = cli([tmp_path / "src" / "clean.py"], capsys)
    assert (code, out, err) == (0, "lint-port: clean, no findings in 1 files\n", "")


def test_format_findings_paths_relative_to_root(tmp_path):
    findings = lint_paths([write(tmp_path / "pkg", "m.py", "import torch\ntorch.cuda.empty_cache()\n")])
    assert format_findings(findings, root=tmp_path).splitlines() == [
        "pkg/m.py:2:1: torch-cuda-api torch.cuda.empty_cache talks to NVIDIA GPUs only: on Ascend NPU, MPS and CPU "
        "it raises or answers for a device that is not the one in use -> common.device.empty_cache(device)",
        "lint-port: 1 findings (torch-cuda-api 1)"]


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("syntax", "bad.py:2: syntax error"),
    ("latin1", "not valid UTF-8"),
    ("not_py", "is not a .py file"),
    ("json_under_a_file", "is not a writable folder"),
    ("json_is_a_folder", "is a folder"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, case, expected):
    good = write(tmp_path, "good.py", "import torch\n")
    argv = {
        "missing": [tmp_path / "nowhere"],
        "syntax": [write(tmp_path, "bad.py", "x = 1\ndef f(:\n")],
        "latin1": [tmp_path / "latin.py"],
        "not_py": [write(tmp_path, "notes.txt", "cuda\n")],
        "json_under_a_file": [good, "--json", good / "lint.json"],
        "json_is_a_folder": [good, "--json", tmp_path],
    }[case]
    (tmp_path / "latin.py").write_bytes(b"name = '\xe9'\n")
    code, out, err = cli(argv, capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err


def test_the_repository_lints_clean():
    folders = model_folders()
    assert {"all-MiniLM-L6-v2", "google_flan-t5-small", "Minitron-8B-Base", "AnandaSky"} <= {f.name for f in folders}
    findings = lint_paths([*folders, REPO_ROOT / "common"])
    assert findings == [], format_findings(findings, root=REPO_ROOT)
