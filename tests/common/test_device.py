"""common.device: device strings, device/dtype resolution and the per-backend helpers, on a CPU-only machine."""
from __future__ import annotations

import importlib.util
import resource
import sys

import pytest
import torch

from common import device as dev
from common.cli import UserError
from common.device import (
    DTYPES,
    device_name,
    dtype_name,
    empty_cache,
    parse_device,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
    synchronize,
)

CPU = torch.device("cpu")

needs_no_accelerator = pytest.mark.skipif(
    torch.cuda.is_available() or dev.is_available("mps") or dev.is_available("npu"),
    reason="these tests assume a machine without any accelerator",
)


@pytest.fixture
def no_torch_npu_module():
    """Fail loudly if a test starts with torch_npu imported, and remove any (fake) torch_npu afterwards."""
    assert "torch_npu" not in sys.modules
    yield
    sys.modules.pop("torch_npu", None)


# --- parse_device -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("auto", ("auto", None)),
        ("cpu", ("cpu", None)),
        ("cuda", ("cuda", None)),
        ("cuda:1", ("cuda", 1)),
        ("npu", ("npu", None)),
        ("npu:0", ("npu", 0)),
        ("mps", ("mps", None)),
        (" CUDA:2 ", ("cuda", 2)),  # case and surrounding spaces are forgiven
    ],
)
def test_parse_device_accepts(spec, expected):
    assert parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:0", "", "mps:1", "auto:0", "cuda:", "cuda:-1", "cuda1", None])
def test_parse_device_rejects(spec):
    with pytest.raises(UserError) as info:
        parse_device(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "device" in message


def test_parse_device_index_error_names_the_fix():
    with pytest.raises(UserError, match=r"takes no index; use cpu"):
        parse_device("cpu:0")


# --- resolve_device -----------------------------------------------------------------------------------------


def test_resolve_device_cpu(no_torch_npu_module):
    assert resolve_device("cpu") == CPU
    assert "torch_npu" not in sys.modules


@needs_no_accelerator
def test_resolve_device_auto_is_cpu_here(no_torch_npu_module):
    assert resolve_device("auto") == CPU
    assert resolve_device() == CPU  # auto is the default
    assert "torch_npu" not in sys.modules


@needs_no_accelerator
@pytest.mark.parametrize("spec", ["cuda", "cuda:3", "mps"])
def test_resolve_device_absent_accelerator(spec):
    with pytest.raises(UserError, match="not available") as info:
        resolve_device(spec)
    assert repr(spec) in str(info.value)
    assert "--device cpu" in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed")
def test_resolve_device_npu_without_torch_npu(no_torch_npu_module):
    with pytest.raises(UserError, match="torch_npu"):
        resolve_device("npu")
    assert "torch_npu" not in sys.modules


def test_resolve_device_rejects_garbage():
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("gpu")


@needs_no_accelerator
def test_torch_npu_imported_only_when_asked_for(tmp_path, monkeypatch, no_torch_npu_module):
    """With a (fake, device-less) torch_npu installed: cpu never imports it; auto probes it and falls back to cpu."""
    (tmp_path / "torch_npu.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delattr(torch, "npu", raising=False)  # the fake registers no backend

    assert resolve_device("cpu") == CPU
    with pytest.raises(UserError):
        parse_device("npu:x")
    assert "torch_npu" not in sys.modules

    assert resolve_device("auto") == CPU
    assert sys.modules["torch_npu"].IMPORTED is True

    with pytest.raises(UserError, match="not available"):  # installed, but no NPU behind it
        resolve_device("npu")


# --- resolve_dtype / dtype_name -----------------------------------------------------------------------------


def test_resolve_dtype_on_cpu():
    assert resolve_dtype("auto", CPU) is torch.float32
    assert resolve_dtype("fp32", CPU) is torch.float32
    assert resolve_dtype("bf16", CPU) is torch.bfloat16
    assert resolve_dtype("fp16", CPU) is torch.float16


@pytest.mark.parametrize("alias, expected", [("float32", torch.float32), ("BFloat16", torch.bfloat16),
                                             ("half", torch.float16), (" FP16 ", torch.float16)])
def test_resolve_dtype_aliases(alias, expected):
    assert resolve_dtype(alias, CPU) is expected


@pytest.mark.parametrize("spec", ["fp8", "int4", "", "float64", None])
def test_resolve_dtype_rejects(spec):
    with pytest.raises(UserError, match="unknown dtype"):
        resolve_dtype(spec, CPU)


def test_resolve_dtype_auto_on_accelerator_prefers_bf16(monkeypatch):
    cuda = torch.device("cuda", 0)  # only passed around, never used for compute here
    monkeypatch.setattr(dev, "_dtype_works", lambda device, dtype: True)
    assert resolve_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(dev, "_dtype_works", lambda device, dtype: dtype is not torch.bfloat16)
    assert resolve_dtype("auto", cuda) is torch.float16
    with pytest.raises(UserError, match="cannot compute in bf16"):
        resolve_dtype("bf16", cuda)


def test_dtype_probe_really_computes():
    assert dev._dtype_works(CPU, torch.float32) is True
    assert dev._dtype_works(torch.device("meta"), torch.float32) is False  # .item() is impossible on meta


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_dtype_name_roundtrip(name):
    assert dtype_name(resolve_dtype(name, CPU)) == name


def test_dtype_name_other_dtypes():
    assert dtype_name(torch.bfloat16) == "bf16"
    assert dtype_name(torch.float64) == "float64"
    assert dtype_name(torch.int8) == "int8"


# --- synchronize / memory / names ---------------------------------------------------------------------------


def test_cpu_helpers_are_noops(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a CPU helper called into a torch backend")

    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cpu, name, boom, raising=False)
    assert synchronize(CPU) is None
    assert empty_cache(CPU) is None
    assert reset_peak_memory(CPU) is None


def test_helpers_dispatch_to_the_device_backend(monkeypatch):
    """Non-CPU devices go through getattr(torch, device.type); a fake cuda backend records the calls."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 * 2**20)
    cuda = torch.device("cuda", 0)
    synchronize(cuda)
    empty_cache(cuda)
    reset_peak_memory(cuda)
    assert calls == ["sync", "empty", "reset"]
    assert peak_memory(cuda) == {"peak_mib": 3.0, "source": "cuda allocator peak"}


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is KiB on Linux only")
def test_peak_memory_cpu_is_process_rss():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    result = peak_memory(CPU)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert set(result) == {"peak_mib", "source"}
    assert before <= result["peak_mib"] <= after
    assert result["peak_mib"] > 10  # Python + torch alone are far above 10 MiB
    assert "RSS" in result["source"]


def test_device_name_cpu():
    name = device_name(CPU)
    assert isinstance(name, str) and name.strip()
    assert f"{torch.get_num_threads()} threads" in name
