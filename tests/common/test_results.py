"""common.results: run metadata, JSON and JSONL records, atomic writes, output checks."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cli import UserError
from common.device import device_name
from common.results import (
    append_jsonl,
    default_result_path,
    mark_test_checkpoint,
    read_jsonl,
    result_path,
    run_metadata,
    write_json,
)

CPU = torch.device("cpu")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_write_json_atomic(tmp_path):
    target = tmp_path / "sub" / "result.json"  # the parent folder is created
    obj = {"name": "caf\u00e9", "x": 1.5, "rows": [1, 2, 3], "none": None}
    assert write_json(target, obj) == target
    assert json.loads(target.read_text(encoding="utf-8")) == obj
    assert "caf\u00e9" in target.read_text(encoding="utf-8")  # not escaped
    assert target.read_text(encoding="utf-8").endswith("}\n")
    assert _leftovers(target.parent, {"result.json"}) == []

    write_json(target, {"x": 2})  # overwrite
    assert json.loads(target.read_text(encoding="utf-8")) == {"x": 2}
    assert _leftovers(target.parent, {"result.json"}) == []


@pytest.mark.parametrize("bad, error", [({"x": float("nan")}, ValueError), ({"x": float("inf")}, ValueError),
                                        ({"x": {1, 2}}, TypeError)])
def test_write_json_failure_keeps_previous_file(tmp_path, bad, error):
    target = tmp_path / "result.json"
    write_json(target, {"good": True})
    before = target.read_bytes()
    with pytest.raises(error):
        write_json(target, bad)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, {"result.json"}) == []


def test_write_json_nan_leaves_no_file_when_none_existed(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", [float("nan")])
    assert list(tmp_path.iterdir()) == []


def test_write_json_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "r.json"
        write_json(target, {"x": 1})
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_append_and_read_jsonl_roundtrip(tmp_path):
    path = tmp_path / "logs" / "run.jsonl"
    assert read_jsonl(path) == []  # absent log: nothing to resume
    records = [{"i": i, "text": f"na\u00efve {i}", "v": [i * 0.5]} for i in range(4)]
    for record in records:
        append_jsonl(path, record)
    raw = path.read_text(encoding="utf-8")
    assert raw.count("\n") == 4 and raw.endswith("\n")
    assert read_jsonl(path) == records


def test_append_jsonl_rejects_nan_without_writing(tmp_path):
    path = tmp_path / "run.jsonl"
    append_jsonl(path, {"i": 0})
    with pytest.raises(ValueError):
        append_jsonl(path, {"i": 1, "v": float("nan")})
    assert read_jsonl(path) == [{"i": 0}]


def test_read_jsonl_drops_torn_last_line(tmp_path):
    path = tmp_path / "run.jsonl"
    append_jsonl(path, {"i": 0})
    append_jsonl(path, {"i": 1})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"i": 2, "te')  # the crash happened here
    before = path.read_bytes()
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]
    assert path.read_bytes() == before


def test_read_jsonl_corrupt_middle_line(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"i": 0}\n{"i": 1, oops\n{"i": 2}\n', encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"line 2 is not valid JSON") as info:
        read_jsonl(path)
    assert "not modified" in str(info.value)
    assert path.read_bytes() == before


def test_read_jsonl_complete_but_corrupt_last_line_is_an_error(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"i": 0}\n{"i": 1, oops\n', encoding="utf-8")  # ends with a newline: not torn
    with pytest.raises(UserError, match="line 2"):
        read_jsonl(path)


def test_read_jsonl_torn_inside_multibyte_char(tmp_path):
    path = tmp_path / "run.jsonl"
    append_jsonl(path, {"i": 0})
    line = json.dumps({"i": 1, "text": "\u00fc"}, ensure_ascii=False).encode("utf-8")
    cut = line.index(b"\xc3") + 1  # half of the two-byte '\u00fc'
    with open(path, "ab") as f:
        f.write(line[:cut])
    assert read_jsonl(path) == [{"i": 0}]


def test_run_metadata():
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    meta = run_metadata(CPU, "fp32", argv=["bench.py", "--input", "my file.txt"])
    after = dt.datetime.now(dt.timezone.utc)
    for key in ("command", "git_commit", "date_utc", "device_name", "dtype", "versions", "torch_threads"):
        assert key in meta, key
    assert meta["command"] == "python bench.py --input 'my file.txt'"
    assert meta["device"] == "cpu"
    assert meta["device_name"] == device_name(CPU)
    assert meta["dtype"] == "fp32"
    assert meta["torch_threads"] == torch.get_num_threads()
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["numpy"] == np.__version__
    assert meta["versions"]["torch_npu"] is None or isinstance(meta["versions"]["torch_npu"], str)
    date = dt.datetime.fromisoformat(meta["date_utc"])
    assert date.utcoffset() == dt.timedelta(0)
    assert before <= date <= after
    if (REPO_ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", meta["git_commit"]), meta["git_commit"]
    json.dumps(meta, allow_nan=False)  # must be writable by write_json


def test_run_metadata_without_device():
    meta = run_metadata(argv=["x.py"])
    assert meta["device"] is None and meta["device_name"] is None and meta["dtype"] is None
    assert meta["command"] == "python x.py"




def test_result_path_is_output_when_given(tmp_path):
    assert result_path("out/x.json", tmp_path, "parity", "m", CPU, "fp32") == Path("out/x.json")
    assert result_path(tmp_path / "y.png", tmp_path, "task", "m", CPU, "bf16", "_stsb") == tmp_path / "y.png"


@pytest.mark.parametrize("output", [None, ""])  # argparse's default, and an empty --output: both mean the default
def test_result_path_default_names_kind_model_device_dtype_suffix(tmp_path, output):
    checkpoint = tmp_path / "tiny"
    mark_test_checkpoint(checkpoint, seed=0)
    hub = tmp_path / "hub" / "models--org--Some-Model" / "snapshots" / "abc123"
    cases = [  # (kind, model, device, dtype, suffix) -> the file name every script has always written
        (("parity", checkpoint, CPU, "fp32", ""), "parity_test_checkpoint_cpu_fp32.json"),
        (("task", "smollm2", CPU, "fp32", "_gsm8k"), "task_smollm2_cpu_fp32_gsm8k.json"),
        (("benchmark", hub, torch.device("cuda", 1), "bf16", "_compiled"),
         "benchmark_Some-Model_cuda_bf16_compiled.json"),
        (("task", "nvidia/Minitron-8B-Base", "npu", "fp16", "_ocr_uw3_500_remote_code"),
         "task_Minitron-8B-Base_npu_fp16_ocr_uw3_500_remote_code.json"),
    ]
    for (kind, model, device, dtype, suffix), name in cases:
        path = result_path(output, tmp_path, kind, model, device, dtype, suffix)
        assert path == tmp_path / "results" / name
        assert path == default_result_path(tmp_path, kind, model, device, dtype, suffix)
