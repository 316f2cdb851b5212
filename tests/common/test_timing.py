"""common.timing: synchronised timers and latency percentiles."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from common import timing
from common.timing import Stopwatch, summarize, time_calls

CPU = torch.device("cpu")


def test_summarize_known_samples():
    samples = [0.010, 0.002, 0.003, 0.001, 0.005, 0.004, 0.009, 0.006, 0.008, 0.007, 0.050]
    ms = np.array(samples) * 1e3
    s = summarize(iter(samples))  # any iterable
    assert s["n"] == 11
    assert s["mean_ms"] == pytest.approx(ms.mean())
    assert s["p50_ms"] == pytest.approx(6.0)
    assert s["p50_ms"] == pytest.approx(np.percentile(ms, 50))
    assert s["p90_ms"] == pytest.approx(np.percentile(ms, 90))
    assert s["p99_ms"] == pytest.approx(np.percentile(ms, 99))
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(50.0)
    assert summarize([]) == {"n": 0}


def test_stopwatch_measures_and_syncs(monkeypatch):
    syncs = []
    monkeypatch.setattr(timing, "synchronize", lambda device: syncs.append(device))
    sw = Stopwatch(CPU)
    assert np.isnan(sw.seconds)
    with sw as inside:
        assert inside is sw
        time.sleep(0.02)
    assert 0.02 <= sw.seconds < 1.0
    assert syncs == [CPU, CPU]  # before and after


def test_time_calls_counts_and_skips_warmup():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= 2:
            time.sleep(0.05)  # slow warm-up calls must not be timed

    samples = time_calls(fn, CPU, warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(samples) == 3
    assert all(0 <= s < 0.04 for s in samples)

    calls.clear()
    assert len(time_calls(fn, CPU, warmup=0, repeats=1)) == 1
    assert len(calls) == 1


