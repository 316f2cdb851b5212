"""Benchmark timing: warm-up, device synchronisation, perf_counter, percentiles."""
from __future__ import annotations

import time

import numpy as np

from .device import synchronize


def summarize(samples_s) -> dict:
    """Latency summary in milliseconds: mean, median (p50), p90, p99, min, max and the sample count."""
    ms = np.asarray(list(samples_s), dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"n": 0}
    return {"n": int(ms.size), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "min_ms": float(ms.min()), "max_ms": float(ms.max())}


class Stopwatch:
    """`with Stopwatch(device) as sw: ...` then `sw.seconds`. Syncs before and after so queued kernels count."""

    def __init__(self, device):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self):
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        return False


def time_calls(fn, device, *, warmup: int = 1, repeats: int = 5) -> list[float]:
    """Run fn() `warmup` times untimed, then `repeats` times timed; returns seconds per call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        with Stopwatch(device) as sw:
            fn()
        samples.append(sw.seconds)
    return samples
