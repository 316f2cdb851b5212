"""Verdicts on accuracy differences with their uncertainty: is a port's benchmark score the same as another's?

Two runs of the same questions (a device run against the CPU float32 run, or against a published per-question log)
are compared *paired*: only the questions that flipped (right in one run, wrong in the other) carry information, so
the interval is much tighter than two separate accuracy intervals. The paired 95% interval is the hull of a seeded
paired bootstrap and the Agresti-Min interval: they agree once a few questions flip, and the second keeps a tiny
sample honest where the bootstrap collapses to [0, 0] (nothing flipped in 3 questions proves little). Against a bare published number (no per-question
data) the comparison is *unpaired*: a Wilson interval of this run's accuracy, shifted by the fixed baseline.

    from common.compare import paired_comparison, baseline_comparison
    paired_comparison(this_correct, other_correct, tolerance_points=1.0)  # lists of bools, same question order
    baseline_comparison(correct=281, n=1319, baseline=0.22)              # -> INCONCLUSIVE: 21.30% vs 22.00%

Verdict rule (tolerance in accuracy points, i.e. percent): PASS when the whole 95% interval of the difference lies
inside [-tolerance, +tolerance]; FAIL when it lies wholly outside (the difference is surely larger than tolerated);
INCONCLUSIVE otherwise (this sample cannot tell; more questions or more runs are needed).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_SAMPLES = 20_000  # resamples of the paired bootstrap; percentile error ~0.01 point at n=1319
BOOTSTRAP_SEED = 1234  # fixed: the same two runs always give the same interval
DEFAULT_TOLERANCE_POINTS = 1.0  # accuracy points (1.0 = one percentage point)
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")
METHOD_PAIRED = ("paired: 95% CI = hull of the seeded paired bootstrap and Agresti-Min intervals; exact McNemar p on "
                 "the flipped questions")


def mcnemar_exact_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar test: under 'no difference' each of the b + c discordant questions flips either way
    with probability 1/2, so p = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c))). 1.0 when nothing flipped."""
    b, c = right_to_wrong, wrong_to_right
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (stays honest at 0/n and n/n, unlike the normal one)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap_ci(right_to_wrong: int, wrong_to_right: int, n: int, samples: int = BOOTSTRAP_SAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile interval of acc_this - acc_other (as a fraction) by resampling the n questions with
    replacement. A question contributes -1 (right_to_wrong: this run lost it), +1 (wrong_to_right) or 0, so
    resampling questions is drawing the three counts from one multinomial: exact, and fast at any n."""
    b, c = right_to_wrong, wrong_to_right
    probabilities = [b / n, c / n, max(0.0, 1.0 - (b + c) / n)]
    counts = np.random.default_rng(seed).multinomial(n, probabilities, size=samples)
    diffs = (counts[:, 1] - counts[:, 0]) / n
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def agresti_min_interval(right_to_wrong: int, wrong_to_right: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Agresti & Min (2005) interval of a paired difference: Wald after adding 1/2 to each of the four cells. Unlike
    the bootstrap it does not collapse to [0, 0] when nothing flipped, so 3 identical answers are not a proof."""
    b, c, m = right_to_wrong + 0.5, wrong_to_right + 0.5, n + 2
    diff = (c - b) / m
    half = z * math.sqrt(max(0.0, (b + c) - (c - b) ** 2 / m)) / m
    return max(-1.0, diff - half), min(1.0, diff + half)


def verdict(ci_points: Sequence[float], tolerance_points: float) -> str:
    """PASS inside [-tol, tol], FAIL wholly outside it, INCONCLUSIVE when the interval straddles a bound."""
    low, high = ci_points
    if -tolerance_points <= low and high <= tolerance_points:
        return "PASS"
    if low > tolerance_points or high < -tolerance_points:
        return "FAIL"
    return "INCONCLUSIVE"


def _points(fraction: float) -> float:
    return round(100.0 * fraction, 4)


def paired_comparison(this_correct: Sequence[bool], other_correct: Sequence[bool],
                      tolerance_points: float = DEFAULT_TOLERANCE_POINTS) -> dict:
    """Paired comparison of two runs over the same questions (position i is the same question in both lists).
    Differences and intervals are in accuracy points (this - other); accuracies are fractions."""
    if len(this_correct) != len(other_correct) or not this_correct:
        raise ValueError("paired_comparison needs two equally long, non-empty lists")
    n = len(this_correct)
    right_to_wrong = sum(1 for a, b in zip(this_correct, other_correct) if b and not a)  # other right, this wrong
    wrong_to_right = sum(1 for a, b in zip(this_correct, other_correct) if a and not b)
    boot, small_sample = (paired_bootstrap_ci(right_to_wrong, wrong_to_right, n),
                          agresti_min_interval(right_to_wrong, wrong_to_right, n))
    ci = [_points(min(boot[0], small_sample[0])), _points(max(boot[1], small_sample[1]))]
    return {"method": METHOD_PAIRED, "n": n,
            "acc_this": sum(map(bool, this_correct)) / n, "acc_other": sum(map(bool, other_correct)) / n,
            "diff_points": _points((wrong_to_right - right_to_wrong) / n), "ci95": ci,
            "flipped": {"right_to_wrong": right_to_wrong, "wrong_to_right": wrong_to_right},
            "mcnemar_p": mcnemar_exact_p(right_to_wrong, wrong_to_right),
            "verdict": verdict(ci, tolerance_points), "tolerance": tolerance_points}


def baseline_comparison(correct: int, n: int, baseline: float,
                        tolerance_points: float = DEFAULT_TOLERANCE_POINTS) -> dict:
    """Unpaired comparison against a bare published accuracy (a fraction, taken as exact): this run's Wilson
    interval minus the baseline. Wider than a paired comparison, because every question's luck counts, not only
    the flips; and still optimistic, since the baseline had its own sampling luck that a bare number hides."""
    low, high = wilson_interval(correct, n)
    ci = [_points(low - baseline), _points(high - baseline)]
    return {"method": "unpaired: Wilson 95% CI of this run minus a fixed baseline", "n": n,
            "acc_this": correct / n, "acc_other": baseline, "diff_points": _points(correct / n - baseline),
            "ci95": ci, "flipped": None, "mcnemar_p": None,
            "verdict": verdict(ci, tolerance_points), "tolerance": tolerance_points}


def format_comparison(per_filter: dict[str, dict], against: str) -> str:
    """The short console table: one row per filter."""
    lines = [f"comparison against {against}:",
             f"  {'filter':<18}{'n':>6}{'this':>9}{'other':>9}{'diff pt':>9}  {'95% CI (pt)':<17}"
             f"{'flips -/+':>10}{'McNemar p':>11}  verdict (±tol pt)"]
    for name, row in per_filter.items():
        flips = "-" if row["flipped"] is None else f"{row['flipped']['right_to_wrong']}/{row['flipped']['wrong_to_right']}"
        p = "-" if row["mcnemar_p"] is None else f"{row['mcnemar_p']:.4f}"
        ci = f"[{row['ci95'][0]:+.2f}, {row['ci95'][1]:+.2f}]"
        lines.append(f"  {name:<18}{row['n']:>6}{100 * row['acc_this']:>8.2f}%{100 * row['acc_other']:>8.2f}%"
                     f"{row['diff_points']:>+9.2f}  {ci:<17}{flips:>10}{p:>11}  {row['verdict']} (±{row['tolerance']:g})")
    return "\n".join(lines)
