"""common.parity.parity: every metric against a hand computation in numpy, and the PASS/FAIL verdicts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.parity import THRESHOLDS, format_greedy, format_parity, greedy_parity, parity, verdict

REF = np.array([[1.0, 2.0, 3.0, 4.0],
                [-1.0, 0.5, 2.0, 0.0],
                [0.3, -0.7, 1.1, 2.2]])
DIFF = np.array([[0.1, 0.0, -0.2, 0.0],
                 [0.0, 0.05, 0.0, 0.1],
                 [-0.3, 0.0, 0.0, 0.2]])
OUT = REF + DIFF


def _cos(a, b):
    return float(np.dot(a, b) / (np.sqrt(np.dot(a, a)) * np.sqrt(np.dot(b, b))))


def _perturbed(rel: float, seed: int = 0, shape=(8, 16)):
    """A reference and an output whose relative L2 error is exactly `rel`."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(shape)
    noise = rng.standard_normal(shape)
    return ref + noise * (rel * np.linalg.norm(ref) / np.linalg.norm(noise)), ref


# --- the metrics themselves ---------------------------------------------------------------------------------


def test_metrics_match_hand_computation():
    r = parity(OUT, REF)
    row_cos = [_cos(OUT[i], REF[i]) for i in range(3)]
    assert r["shape"] == [3, 4]
    assert r["dtype_under_test"] == "fp32"
    assert r["nonfinite_values"] == 0
    assert r["cosine_flat"] == pytest.approx(_cos(OUT.ravel(), REF.ravel()), rel=1e-12)
    assert r["cosine_row_mean"] == pytest.approx(sum(row_cos) / 3, rel=1e-12)
    assert r["cosine_row_min"] == pytest.approx(min(row_cos), rel=1e-12)
    assert r["max_abs_err"] == pytest.approx(0.3, rel=1e-9)
    assert r["mean_abs_err"] == pytest.approx(0.95 / 12, rel=1e-9)
    sq = 0.1**2 + 0.2**2 + 0.05**2 + 0.1**2 + 0.3**2 + 0.2**2
    assert r["mse"] == pytest.approx(sq / 12, rel=1e-9)
    assert r["rel_l2"] == pytest.approx(np.sqrt(sq) / np.sqrt((REF**2).sum()), rel=1e-9)
    # the worst row is the third one (0.3 and 0.2 errors on a small row), and differs from the mean
    assert r["cosine_row_min"] == pytest.approx(row_cos[2])
    assert r["cosine_row_min"] < r["cosine_row_mean"] < 1.0


def test_rows_are_the_last_axis():
    out3, ref3 = OUT.reshape(1, 3, 4).repeat(2, axis=0), REF.reshape(1, 3, 4).repeat(2, axis=0)
    out3[1, 0] = REF[0] * 2.0  # scaled row: cosine 1 for that row, but an absolute error
    r = parity(out3, ref3)
    row_cos = [_cos(out3[i, j], ref3[i, j]) for i in range(2) for j in range(3)]
    assert r["shape"] == [2, 3, 4]
    assert r["cosine_row_mean"] == pytest.approx(np.mean(row_cos), rel=1e-12)
    assert r["cosine_row_min"] == pytest.approx(min(row_cos), rel=1e-12)


def test_identical_inputs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 10))
    r = parity(x, x.copy())
    assert r["passed"] is True and r["failures"] == []
    assert r["rel_l2"] == 0.0 and r["max_abs_err"] == 0.0 and r["mse"] == 0.0
    assert r["cosine_row_min"] == pytest.approx(1.0, abs=1e-12)
    assert r["similarity_pearson"] == pytest.approx(1.0, abs=1e-12)
    for dtype in THRESHOLDS:
        assert parity(x, x, dtype)["passed"] is True


def test_similarity_pearson_detects_reordered_rankings():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((5, 8))
    out = ref[[1, 0, 3, 4, 2]]  # same vectors, assigned to the wrong texts
    value = parity(out, ref)["similarity_pearson"]
    assert value is not None and value < 0.9
    assert parity(ref[:2], ref[:2])["similarity_pearson"] is None  # fewer than 3 rows: undefined


def test_logits_top1_and_kl_by_hand():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    out = np.array([[1.5, 1.2, 0.0], [0.0, 1.0, 2.0]])
    p = np.exp(ref) / np.exp(ref).sum(axis=1, keepdims=True)
    q = np.exp(out) / np.exp(out).sum(axis=1, keepdims=True)
    kl_rows = (p * np.log(p / q)).sum(axis=1)  # KL(softmax(ref) || softmax(out))

    r = parity(out, ref, "bf16", logits=True)
    assert r["top1_agreement"] == 0.5  # row 0 agrees (index 0), row 1 does not (1 vs 2)
    assert r["kl_mean"] == pytest.approx(kl_rows.mean(), rel=1e-9)
    assert r["kl_max"] == pytest.approx(kl_rows.max(), rel=1e-9)
    assert r["similarity_pearson"] is None  # not computed for logits
    assert set(r["thresholds"]) == {"rel_l2", "cosine_row_min", "top1_agreement", "kl_mean"}
    assert r["passed"] is False
    assert any(f.startswith("top1_agreement=0.5 <") for f in r["failures"])


def test_logits_kl_is_shift_invariant_and_large_values_safe():
    ref = np.array([[1000.0, 999.0, 990.0]])  # a naive exp() overflows here
    r = parity(ref + 50.0, ref, logits=True)  # softmax is invariant to a constant shift
    assert r["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    assert r["top1_agreement"] == 1.0


# --- verdicts -----------------------------------------------------------------------------------------------


def test_thresholds_are_reported_with_the_verdict():
    r = parity(OUT, REF, "fp16")
    assert r["thresholds"] == {"rel_l2": {"max": THRESHOLDS["fp16"]["rel_l2"][1]},
                               "cosine_row_min": {"min": THRESHOLDS["fp16"]["cosine_row_min"][1]}}


def test_small_perturbation_fails_fp32_passes_bf16():
    out, ref = _perturbed(1e-3)
    fp32 = parity(out, ref, "fp32")
    assert fp32["rel_l2"] == pytest.approx(1e-3, rel=1e-9)
    assert fp32["rel_l2"] > THRESHOLDS["fp32"]["rel_l2"][1]
    assert fp32["passed"] is False
    assert [f.split("=")[0] for f in fp32["failures"]] == ["rel_l2"]
    bf16 = parity(out, ref, "bf16")
    assert bf16["rel_l2"] < THRESHOLDS["bf16"]["rel_l2"][1]
    assert bf16["passed"] is True and bf16["failures"] == []
    assert parity(out, ref, "fp16")["passed"] is True


def test_tiny_perturbation_passes_fp32():
    out, ref = _perturbed(1e-6)
    assert parity(out, ref, "fp32")["passed"] is True


def test_bad_row_fails_on_cosine_even_when_rel_l2_is_small():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((50, 16))
    ref[7] *= 1e-3  # one tiny row among large ones
    out = ref.copy()
    out[7] = -out[7]  # that row points the wrong way; the global L2 barely notices
    r = parity(out, ref, "bf16")
    assert r["rel_l2"] < THRESHOLDS["bf16"]["rel_l2"][1]
    assert r["cosine_row_min"] == pytest.approx(-1.0)
    assert r["passed"] is False
    assert [f.split("=")[0] for f in r["failures"]] == ["cosine_row_min"]


def test_nan_in_output_fails_and_is_counted():
    out = OUT.copy()
    out[0, 1] = np.nan
    out[2, 3] = np.inf
    r = parity(out, REF, "bf16")
    assert r["passed"] is False
    assert r["nonfinite_values"] == 2
    assert len(r["failures"]) == 1 and "NaN" in r["failures"][0] and "output" in r["failures"][0]
    assert "(2 values)" in r["failures"][0]
    assert r["rel_l2"] is None and r["cosine_row_min"] is None  # present for tables, but no value pretends to describe it
    text = format_parity(r)
    assert "NaN" in text and "FAIL" in text and "PASS" not in text


def test_nan_in_reference_is_counted():
    ref = REF.copy()
    ref[1, 1] = np.nan
    ref[1, 2] = np.nan
    r = parity(OUT, ref)
    assert r["passed"] is False
    assert "reference" in r["failures"][0]
    assert "(2 values)" in r["failures"][0]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        parity(OUT, REF[:, :3])
    with pytest.raises(ValueError, match="shape mismatch"):
        parity(OUT.ravel(), REF)


def test_unknown_dtype_raises():
    with pytest.raises(ValueError, match="no thresholds"):
        parity(OUT, REF, "int8")


def test_reference_near_zero_does_not_blow_up():
    ref = REF.copy()
    ref[:, 1] = [1e-12, -1e-15, 0.0]
    out = ref.copy()
    out[:, 1] += 1e-9  # element-wise relative error would be 1e3 .. inf here
    r = parity(out, ref, "fp32")
    assert all(np.isfinite(r[k]) for k in ("rel_l2", "max_abs_err", "mean_abs_err", "mse", "cosine_row_min"))
    assert r["rel_l2"] == pytest.approx(np.sqrt(3) * 1e-9 / np.linalg.norm(ref), rel=1e-6)
    assert r["passed"] is True


def test_identical_inputs_with_zero_row_pass():
    x = REF.copy()
    x[1] = 0.0
    r = parity(x, x.copy())
    assert r["rel_l2"] == 0.0
    assert r["passed"] is True, r["failures"]


# --- format_parity ------------------------------------------------------------------------------------------


def test_format_parity_pass_and_fail():
    out, ref = _perturbed(1e-3)
    good = format_parity(parity(ref, ref, "fp32"))
    assert "verdict (fp32 thresholds): PASS" in good
    assert "(<= 0.0001)" in good and "(>= 0.99999)" in good
    assert "FAIL" not in good

    bad = format_parity(parity(out, ref, "fp32"))
    assert "verdict (fp32 thresholds): FAIL" in bad
    rel_line = next(line for line in bad.splitlines() if line.strip().startswith("rel_l2"))
    assert "(<= 0.0001)" in rel_line and rel_line.endswith("FAIL")
    cos_line = next(line for line in bad.splitlines() if line.strip().startswith("cosine_row_min"))
    assert cos_line.endswith("PASS")
    assert "failed: rel_l2=0.001 > 0.0001" in bad

    logits = format_parity(parity(out, ref, "bf16", logits=True))
    assert "(>= 0.95)" in logits and "(<= 0.01)" in logits  # bf16 top1 and KL bounds
    assert "kl_max" in logits
    assert "verdict (bf16 thresholds): PASS" in logits


# --- torch inputs -------------------------------------------------------------------------------------------


def test_accepts_torch_tensors():
    out_t = torch.tensor(OUT, dtype=torch.float64, requires_grad=True)
    r_t = parity(out_t, torch.tensor(REF, dtype=torch.float32))
    r_np = parity(OUT, REF.astype(np.float32))
    for key in ("rel_l2", "cosine_row_min", "max_abs_err", "mse"):
        assert r_t[key] == pytest.approx(r_np[key], rel=1e-12)


def test_accepts_bfloat16_tensors():
    _, ref = _perturbed(0.0, seed=4)
    ref_t = torch.tensor(ref, dtype=torch.float32)
    out_t = ref_t.to(torch.bfloat16)  # numpy cannot hold bf16; parity must convert it itself
    rounded = out_t.double().numpy()
    r = parity(out_t, ref_t, "bf16")
    expected_rel = np.linalg.norm(rounded - ref_t.double().numpy()) / np.linalg.norm(ref_t.double().numpy())
    assert r["rel_l2"] == pytest.approx(expected_rel, rel=1e-9)
    assert 1e-4 < r["rel_l2"] < 4e-3  # bf16 rounding: about 2^-9 relative
    assert r["passed"] is True
    assert parity(out_t, ref_t, "fp32")["passed"] is False


# === greedy generation: the shared near-tie rule =================================================================

def test_greedy_parity_accepts_divergence_only_at_a_near_tie():
    want_logits = np.zeros((4, 5))
    want_logits[:, 2] = 5.0  # the reference is sure of token 2 at every step
    got_logits = want_logits + 0.01  # logit error 0.01 everywhere
    near = want_logits.copy()
    near[1, 3] = 4.99  # ... except step 1, where token 3 is within 2x the logit error
    ok = greedy_parity([[2, 3, 2, 1]], [[2, 2, 2, 1]], [got_logits], [near], "bf16")
    assert ok["mismatches"][0]["near_tie"] and ok["mismatches"][0]["first_divergence"] == 1
    assert ok["unexplained_divergences"] == 0 and ok["exact_match_rate"] == 0.0  # one sequence: below the floor
    assert ok["failures"] == ["exact_match_rate=0 < 0.4"]
    bad = greedy_parity([[2, 3, 2, 1]], [[2, 2, 2, 1]], [got_logits], [want_logits], "bf16")
    assert not bad["passed"] and bad["unexplained_divergences"] == 1 and "near-tie" in bad["failures"][-1]
    assert "NOT a near-tie" in format_greedy(bad)
    same = greedy_parity([[2, 2], [1]], [[2, 2], [1]], [got_logits[:2], got_logits[:1]],
                         [want_logits[:2], want_logits[:1]], "fp32")
    assert same["passed"] and same["exact_match_rate"] == 1.0 and same["prefix_token_agreement"] == 1.0


def test_greedy_parity_nan_logits_explain_nothing_and_prefix_is_judged():
    want = np.zeros((3, 4))
    want[:, 1] = 1.0
    nan = np.full((3, 4), np.nan)
    result = greedy_parity([[1, 0, 1]], [[1, 1, 1]], [nan], [want], "fp16")
    assert result["mismatches"][0]["reference_margin"] is None and not result["passed"]
    short = greedy_parity([[1]], [[1, 1, 1]], [want], [want], "fp32")  # stopped early: no position to judge
    assert short["mismatches"][0]["first_divergence"] == 1 and short["unexplained_divergences"] == 1


def test_verdict_combines_parts():
    result = verdict({"a": {"passed": True, "failures": []}, "b": {"passed": False, "failures": ["x > 1"]}})
    assert result == {"passed": False, "failures": ["b: x > 1"], "parts": result["parts"]}
    assert verdict({"a": {"passed": True, "failures": []}})["passed"] is True
