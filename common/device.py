"""Device and dtype selection, synchronisation and memory readouts, the same code for NPU, CUDA, MPS and CPU.

Device strings: `auto` (npu > cuda > mps > cpu), `cpu`, `cuda`, `cuda:1`, `npu`, `npu:0`, `mps`.
`torch_npu` is imported only when an NPU is asked for or probed by `auto`, so CPU and CUDA machines never need it.
Per-backend calls go through `getattr(torch, device.type)` (the diffusers idiom) instead of if/elif chains.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import resource
import sys
from functools import lru_cache

import torch

from common.cli import UserError

DEVICE_TYPES = ("cpu", "cuda", "npu", "mps")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|npu|mps)(?::(\d+))?$")


def parse_device(spec: str) -> tuple[str, int | None]:
    """Syntax check only: 'cuda:1' -> ('cuda', 1). Raises UserError for anything else."""
    match = _DEVICE_RE.match((spec or "").strip().lower())
    if not match:
        raise UserError(f"unknown device {spec!r}; use auto, cpu, cuda[:N], npu[:N] or mps")
    kind, index = match.group(1), match.group(2)
    if kind in ("auto", "cpu", "mps") and index is not None:
        raise UserError(f"device {spec!r} takes no index; use {kind}")
    return kind, None if index is None else int(index)


def _import_torch_npu() -> bool:
    """Import torch_npu if it is installed; True when it imported. Registers torch.npu as a side effect."""
    if "torch_npu" in sys.modules:
        return True
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401  (registers the 'npu' device type with torch)

    return True


def is_available(kind: str) -> bool:
    """Whether at least one device of this type is usable in this process."""
    if kind == "cpu":
        return True
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if kind == "npu" and not _import_torch_npu():
        return False
    backend = getattr(torch, kind, None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a device string into a torch.device that exists here, or raise UserError. Never falls back silently."""
    kind, index = parse_device(spec)
    if kind == "auto":
        for candidate in ("npu", "cuda", "mps"):
            if is_available(candidate):
                return torch.device(candidate, 0) if candidate != "mps" else torch.device("mps")
        return torch.device("cpu")
    if kind == "npu" and importlib.util.find_spec("torch_npu") is None:
        raise UserError("device 'npu' needs torch_npu, which is not installed; see requirements-npu.txt")
    if not is_available(kind):
        raise UserError(f"device {spec!r} is not available on this machine; use --device cpu or --device auto")
    if kind in ("cuda", "npu"):
        count = getattr(torch, kind).device_count()
        index = 0 if index is None else index
        if index >= count:
            raise UserError(f"device {spec!r} does not exist: this machine has {count} {kind} device(s)")
        return torch.device(kind, index)
    return torch.device(kind)


def _backend(device: torch.device):
    return None if device.type == "cpu" else getattr(torch, device.type, None)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a timer reads real time. No-op on CPU."""
    backend = _backend(device)
    if backend is not None:
        backend.synchronize()


def empty_cache(device: torch.device) -> None:
    backend = _backend(device)
    if backend is not None and hasattr(backend, "empty_cache"):
        backend.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    backend = _backend(device)
    if backend is not None and hasattr(backend, "reset_peak_memory_stats"):
        backend.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak memory in MiB and what was measured: the device allocator, or the process's peak RSS on CPU."""
    backend = _backend(device)
    if backend is not None and hasattr(backend, "max_memory_allocated"):
        return {"peak_mib": backend.max_memory_allocated(device) / 2**20, "source": f"{device.type} allocator peak"}
    if device.type == "mps":
        return {"peak_mib": torch.mps.driver_allocated_memory() / 2**20, "source": "mps driver allocated (current)"}
    # ru_maxrss is KiB on Linux, bytes on macOS; it is the process's lifetime peak and cannot be reset.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if platform.system() == "Darwin" else 1024
    return {"peak_mib": rss * scale / 2**20, "source": "process peak RSS (lifetime, includes Python and libraries)"}


@lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """A human name: 'Ascend910B3', 'NVIDIA H100 80GB HBM3', or the CPU model with its thread count."""
    if device.type == "cpu":
        return f"{cpu_name()} ({torch.get_num_threads()} threads, {os.cpu_count()} logical CPUs)"
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return str(getattr(torch, device.type).get_device_name(device))


def _dtype_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Probe with a tiny matmul: the cheapest honest answer to 'can this device compute in this dtype'."""
    try:
        a = torch.ones(4, 4, device=device, dtype=dtype)
        (a @ a).sum().item()
        return True
    except (RuntimeError, TypeError):
        return False


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """fp32 | bf16 | fp16 | auto. auto = fp32 on CPU, bf16 where the accelerator supports it, otherwise fp16."""
    key = DTYPE_ALIASES.get((spec or "").strip().lower(), (spec or "").strip().lower())
    if key == "auto":
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if _dtype_works(device, torch.bfloat16) else torch.float16
    if key not in DTYPES:
        raise UserError(f"unknown dtype {spec!r}; use fp32, bf16, fp16 or auto")
    dtype = DTYPES[key]
    if dtype is not torch.float32 and not _dtype_works(device, dtype):
        raise UserError(f"device {device} cannot compute in {key}; use --dtype fp32 or --dtype auto")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bf16' (the names used on the command line and in result files)."""
    for name, value in DTYPES.items():
        if value is dtype:
            return name
    return str(dtype).replace("torch.", "")
