"""What every benchmark.py shares beyond the timers of common/timing.py: the `--baseline_device` run (the same
workload on another device, fp32, same run), speed ratios, and the per-request latencies of a language model (TTFT,
TPOT, ITL, E2E) that Minitron's benchmark and the serving load test report."""
from __future__ import annotations

import math

import numpy as np

from common.cli import UserError
from common.device import device_name, resolve_device
from common.timing import summarize


# --- the same workload on a baseline device (`--baseline_device cpu`) -----------------------------------------------

BASELINE_DTYPE = "fp32"  # the reference a device is judged against: what a CPU user runs, the seeds' "vs CPU" figures


def add_baseline_device_arg(parser) -> None:
    """--baseline_device: after the main measurement, time the same workload there in fp32, in the same run."""
    parser.add_argument("--baseline_device", default=None,
                        help="also time the same workload on this device (e.g. cpu) in fp32 with this port's code, "
                             "recorded as baseline_device with a speed-up per point (this device / that one)")


def resolve_baseline_device(spec: str | None):
    """The --baseline_device as a torch.device that exists here, or None when not asked; a UserError naming the flag
    otherwise (checked before any model loads, like --device)."""
    if spec is None:
        return None
    if spec.strip().lower() == "auto":
        raise UserError("--baseline_device takes a device, e.g. cpu, not auto (auto would pick the device itself)")
    try:
        return resolve_device(spec)
    except UserError as exc:
        raise UserError(f"--baseline_device {spec}: {exc}") from None


def speed_ratio(this, baseline) -> float | None:
    """this / baseline for two rates (higher is faster); None when either is missing, zero or not finite."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (this, baseline)):
        return None
    return this / baseline


def ratio_text(ratio) -> str:
    """'x1.23', or 'n/a' for a ratio that could not be computed (None)."""
    return "n/a" if ratio is None else f"x{ratio:.2f}"


def _dotted(obj: dict, key: str):
    for part in key.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def attach_baseline(rows: list[dict], baseline_rows: list[dict], key: str) -> None:
    """Per point: `vs_baseline_device` = this device's rate / the baseline's (the dotted `key`, e.g.
    "ours.texts_per_s"), and `baseline_device` = {the key's last part: the baseline's rate}, so one readme table
    row holds both devices. Rows are matched in order: both lists time the same points."""
    if len(rows) != len(baseline_rows):
        raise ValueError(f"{len(rows)} points against {len(baseline_rows)} on the baseline device")
    for row, base in zip(rows, baseline_rows):
        this, cpu = _dotted(row, key), _dotted(base, key)
        row["baseline_device"] = {key.rsplit(".", 1)[-1]: cpu}
        row["vs_baseline_device"] = speed_ratio(this, cpu)


def baseline_record(device, seconds: float, **points) -> dict:
    """The `baseline_device` block of a benchmark JSON: which device, its name, fp32, how long it took, and the
    same per-point statistics as the main measurement (`points`, e.g. rows=[...])."""
    return {"device": str(device), "device_name": device_name(device), "dtype": BASELINE_DTYPE,
            "seconds": seconds, **points}


def add_device_vs_cpu(headline: dict, baseline, ratio) -> dict:
    """headline["device_vs_cpu"] = the headline point's speed-up over the CPU, when a CPU baseline ran (the key is
    left out otherwise, so records of runs without one keep their shape)."""
    if baseline is not None and str(baseline["device"]).startswith("cpu"):
        headline["device_vs_cpu"] = ratio
    return headline


# --- serving-style request latencies (TTFT, TPOT, ITL, E2E) ----------------------------------------

def request_metrics(start: float, times: list[float], batch: int) -> dict:
    """One request (or batch) from its start time and the host time of each new token. TPOT and decode tokens/s
    time the steps after the first token, so they are None with a single token (never NaN: JSON refuses it)."""
    ttft, e2e = times[0] - start, times[-1] - start
    steps = len(times) - 1
    return {"ttft_s": ttft, "e2e_s": e2e, "tpot_s": (e2e - ttft) / steps if steps else None,
            "itl_s": list(np.diff(times)), "decode_tokens_per_s": batch * steps / (e2e - ttft) if steps else None}


def request_aggregate(rows: list[dict], requests: int, batch_size: int, in_tokens: int, out_tokens: int,
                      wall_s: float) -> dict:
    """Percentiles over requests (ITL over every gap) and the run's throughputs from its wall time."""
    itl = [x for r in rows for x in r["itl_s"]]
    decode_s = sum(r["e2e_s"] - r["ttft_s"] for r in rows)
    return {"ttft": summarize(r["ttft_s"] for r in rows),
            "tpot": summarize(r["tpot_s"] for r in rows if r["tpot_s"] is not None),
            "itl": summarize(itl), "e2e": summarize(r["e2e_s"] for r in rows), "wall_s": wall_s,
            "requests_per_s": requests / wall_s, "output_tokens_per_s": requests * out_tokens / wall_s,
            "total_tokens_per_s": requests * (in_tokens + out_tokens) / wall_s,
            "decode_tokens_per_s": (sum(len(r["itl_s"]) for r in rows) * batch_size / decode_s
                                    if decode_s > 0 else None)}


