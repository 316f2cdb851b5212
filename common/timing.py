"""Timing only: warm-up, device synchronisation around `time.perf_counter`, latency percentiles, and the measured
copy bandwidth a decode step is bounded by. What the benchmark scripts share beyond timing (the `--baseline_device`
run, speed ratios, per-request LM latencies) is in common/bench.py."""
from __future__ import annotations

import time

import numpy as np
import torch

from common.device import synchronize


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


def copy_bandwidth_gbs(device, mib: int = 256, repeats: int = 5) -> float:
    """Measured memory bandwidth (bytes read + written per second) of a large tensor copy: decoding one token
    reads every weight once, so weights / bandwidth bounds the step time from below."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9
