"""Parity between an output and its CPU float32 reference, computed in float64.

Element-wise relative error is never used as a criterion: it explodes wherever the reference is near zero.
The pass criteria are the relative L2 error ||a-b||/||b||, the worst per-row cosine and, for logits, top-1
agreement and the mean KL divergence. Everything else is reported for diagnosis. Thresholds depend on the
dtype under test and are returned with the verdict, so every PASS/FAIL says what it was measured against.
"""
from __future__ import annotations

import numpy as np

# Per dtype under test; each key is a criterion, each value its bound ("max" or "min").
# fp32 vs fp32 differs only by kernel order (~1e-6); bf16 keeps 8 mantissa bits (eps 3.9e-3), fp16 11 bits.
THRESHOLDS = {
    "fp32": {"rel_l2": ("max", 1e-4), "cosine_row_min": ("min", 0.99999), "top1_agreement": ("min", 0.999),
             "kl_mean": ("max", 1e-6)},
    "fp16": {"rel_l2": ("max", 1e-2), "cosine_row_min": ("min", 0.9995), "top1_agreement": ("min", 0.97),
             "kl_mean": ("max", 5e-3)},
    "bf16": {"rel_l2": ("max", 2e-2), "cosine_row_min": ("min", 0.999), "top1_agreement": ("min", 0.95),
             "kl_mean": ("max", 1e-2)},
}


def _as_f64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly bf16 which numpy cannot hold
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; two all-zero rows agree perfectly (1.0), a zero row against a non-zero one scores 0."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300)
    return np.where((na == 0) & (nb == 0), 1.0, cos)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def similarity_pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r between the cosine-similarity matrices of a and b (off-diagonal pairs): do rankings survive?"""
    if a.shape[0] < 3:
        return None
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    iu = np.triu_indices(a.shape[0], k=1)
    sa, sb = (an @ an.T)[iu], (bn @ bn.T)[iu]
    if sa.std() == 0 or sb.std() == 0:
        return None
    return float(np.corrcoef(sa, sb)[0, 1])


def logits_metrics(out: np.ndarray, ref: np.ndarray) -> dict:
    """Top-1 agreement and mean KL(ref || out) over the last axis, per position."""
    o, r = _rows(out), _rows(ref)
    log_p, log_q = _log_softmax(r), _log_softmax(o)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    return {"top1_agreement": float((o.argmax(1) == r.argmax(1)).mean()), "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max())}


def _verdict(metrics: dict, dtype: str) -> tuple[bool, dict, list[str]]:
    rules = THRESHOLDS[dtype]
    used, failures = {}, []
    for key, (kind, bound) in rules.items():
        if metrics.get(key) is None:
            continue
        used[key] = {kind: bound}
        value = metrics[key]
        ok = value <= bound if kind == "max" else value >= bound
        if not ok:
            failures.append(f"{key}={value:.3g} {'>' if kind == 'max' else '<'} {bound:g}")
    return not failures, used, failures


def parity(out, ref, dtype: str = "fp32", *, logits: bool = False) -> dict:
    """All parity metrics between `out` (device under test) and `ref` (CPU fp32), plus PASS/FAIL.

    Rows are the last axis (an embedding, or one position's logits). Returns a JSON-ready dict with the metrics,
    `thresholds` (the bounds applied for this dtype), `passed` and `failures` (which bounds were broken).
    """
    if dtype not in THRESHOLDS:
        raise ValueError(f"no thresholds for dtype {dtype!r}; known: {sorted(THRESHOLDS)}")
    a, b = _as_f64(out), _as_f64(ref)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: output {a.shape} vs reference {b.shape}")
    nonfinite = int((~np.isfinite(a)).sum())
    result = {"dtype_under_test": dtype, "shape": list(a.shape), "nonfinite_values": nonfinite}
    ref_nonfinite = int((~np.isfinite(b)).sum())
    if nonfinite or ref_nonfinite:
        # NaN/inf is never scored: the run fails with the count, and no metric pretends to describe it.
        failures = [f"{where} contains NaN/inf ({count} values)"
                    for where, count in (("output", nonfinite), ("reference", ref_nonfinite)) if count]
        return {**result, "passed": False, "failures": failures, "thresholds": {}}
    diff = a - b
    ar, br = _rows(a), _rows(b)
    cos_rows = _cosine_rows(ar, br)
    metrics = {
        "cosine_flat": float(_cosine_rows(a.reshape(1, -1), b.reshape(1, -1))[0]),
        "cosine_row_mean": float(cos_rows.mean()),
        "cosine_row_min": float(cos_rows.min()),
        "max_abs_err": float(np.abs(diff).max()),
        "mean_abs_err": float(np.abs(diff).mean()),
        "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(b), 1e-300)),
        "mse": float((diff ** 2).mean()),
        "similarity_pearson": None if logits else similarity_pearson(ar, br),
    }
    if logits:
        metrics.update(logits_metrics(a, b))
    passed, used, failures = _verdict(metrics, dtype)
    return {**result, **metrics, "thresholds": used, "passed": passed, "failures": failures}


def format_parity(result: dict) -> str:
    """Human-readable block: each criterion with its bound and PASS/FAIL, then the diagnostic metrics."""
    lines = []
    for key, bound in result.get("thresholds", {}).items():
        (kind, limit), = bound.items()
        value = result[key]
        ok = value <= limit if kind == "max" else value >= limit
        op = "<=" if kind == "max" else ">="
        lines.append(f"  {key:<20} {value:<14.8g} ({op} {limit:g})  {'PASS' if ok else 'FAIL'}")
    for key in ("cosine_flat", "cosine_row_mean", "max_abs_err", "mean_abs_err", "mse", "similarity_pearson",
                "kl_max"):
        if result.get(key) is not None and key not in result.get("thresholds", {}):
            lines.append(f"  {key:<20} {result[key]:.8g}")
    for failure in result.get("failures", []):
        lines.append(f"  failed: {failure}")
    lines.append(f"  verdict ({result['dtype_under_test']} thresholds): {'PASS' if result['passed'] else 'FAIL'}")
    return "\n".join(lines)
