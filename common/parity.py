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


METRIC_KEYS = ("cosine_flat", "cosine_row_mean", "cosine_row_min", "max_abs_err", "mean_abs_err", "rel_l2", "mse",
               "similarity_pearson")
LOGITS_KEYS = ("top1_agreement", "kl_mean", "kl_max")


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
        unscored = dict.fromkeys(METRIC_KEYS + (LOGITS_KEYS if logits else ()))  # null, so tables show "–"
        return {**result, **unscored, "passed": False, "failures": failures, "thresholds": {}}
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


# --- greedy generation: every divergence must start at a near-tie of the reference --------------------------------
# Greedy decoding is discontinuous: where the reference's best two tokens are nearly tied, a tiny logit error flips
# the choice and changes everything after it, on any device (even fp32 with other kernels). So a mismatch is
# accepted only when it starts at such a near-tie: the reference's margin between its own token and the device's
# token is within NEAR_TIE_FACTOR x the logit error measured at that very position (max |test - ref| over the
# vocabulary, from the teacher-forced logits of both sides). Any other mismatch fails. The exact-match rate must also
# stay above a floor (it falls with sequence length, so the floor is low for 16-bit dtypes).
NEAR_TIE_FACTOR = 2.0
GENERATION_EXACT_MIN = {"fp32": 0.9, "bf16": 0.4, "fp16": 0.4}


def first_divergence(got: list[int], want: list[int]) -> int:
    """Index of the first differing token (the shorter length when one is a prefix of the other)."""
    return next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def near_tie(ref_row: np.ndarray, test_row: np.ndarray, ref_token: int, test_token: int) -> dict:
    """The near-tie rule at one position: the reference's margin between its token and the device's token, against
    the logit error at that position. NaN/inf logits explain nothing (near_tie False, values None)."""
    ref_row, test_row = _as_f64(ref_row), _as_f64(test_row)
    margin = float(ref_row[ref_token] - ref_row[test_token])
    error = float(np.abs(test_row - ref_row).max())
    finite = bool(np.isfinite(margin) and np.isfinite(error))
    return {"reference_margin": margin if finite else None, "logit_error": error if finite else None,
            "near_tie": finite and margin <= NEAR_TIE_FACTOR * error}


def greedy_parity(got: list[list[int]], want: list[list[int]], got_logits: list, want_logits: list,
                  dtype: str) -> dict:
    """Greedy sequences of the device (`got`) against the reference's (`want`), with PASS/FAIL.

    `got_logits[i]` and `want_logits[i]` are both sides' logits teacher-forced on the reference sequence
    `want[i]` (rows = its positions, columns = the vocabulary), so a divergence at position k is judged on row k.
    """
    mismatches = []
    for i, (g, w) in enumerate(zip(got, want)):
        if g == w:
            continue
        k = first_divergence(g, w)
        entry = {"sequence": i, "first_divergence": k, "reference_tokens": len(w), "near_tie": False}
        if k < min(len(g), len(w)):
            entry.update(near_tie(want_logits[i][k], got_logits[i][k], w[k], g[k]))
        mismatches.append(entry)
    rate = 1.0 - len(mismatches) / max(len(want), 1)
    unexplained = sum(not m["near_tie"] for m in mismatches)
    agreed = sum(first_divergence(g, w) if g != w else len(w) for g, w in zip(got, want))
    floor = GENERATION_EXACT_MIN[dtype]
    failures = [f"exact_match_rate={rate:.3g} < {floor:g}"] * (rate < floor)
    failures += [f"{unexplained} divergence(s) not at a near-tie of the reference"] * (unexplained > 0)
    return {"dtype_under_test": dtype, "sequences": len(want), "exact_match_rate": rate,
            "unexplained_divergences": unexplained, "prefix_token_agreement": agreed / max(sum(map(len, want)), 1),
            "near_tie_factor": NEAR_TIE_FACTOR, "mismatches": mismatches,
            "thresholds": {"exact_match_rate": {"min": floor}, "unexplained_divergences": {"max": 0}},
            "passed": not failures, "failures": failures}


def format_greedy(result: dict, show: int = 10) -> str:
    """Human-readable block for `greedy_parity`'s result."""
    floor = result["thresholds"]["exact_match_rate"]["min"]
    lines = [f"  {'exact_match_rate':<20} {result['exact_match_rate']:<14.6g} (>= {floor:g})  "
             f"{'PASS' if result['exact_match_rate'] >= floor else 'FAIL'}",
             f"  {'unexplained_diverg.':<20} {result['unexplained_divergences']:<14d} (<= 0)  "
             f"{'PASS' if result['unexplained_divergences'] == 0 else 'FAIL'}",
             f"  {'prefix_token_agree.':<20} {result['prefix_token_agreement']:.6g}"]
    for m in result["mismatches"][:show]:
        detail = (f", reference margin {m['reference_margin']:.3g} vs logit error {m['logit_error']:.3g}"
                  if m.get("reference_margin") is not None else "")
        lines.append(f"  sequence {m['sequence']}: first divergence at token {m['first_divergence']} of "
                     f"{m['reference_tokens']}{detail}: {'near-tie' if m['near_tie'] else 'NOT a near-tie'}")
    return "\n".join(lines)


def verdict(parts: dict) -> dict:
    """The overall verdict of a parity run from its parts (each a dict with `passed` and `failures`): PASS only when
    every part passes; failures are prefixed with the part's name. This is the shape every eval_accuracy.py writes:
    {"passed": bool, "failures": [...], "parts": {name: part}}."""
    failures = [f"{name}: {failure}" for name, part in parts.items() for failure in part.get("failures", [])]
    return {"passed": all(part["passed"] for part in parts.values()), "failures": failures, "parts": parts}
