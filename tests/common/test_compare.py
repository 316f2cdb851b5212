"""common/compare.py: paired and unpaired accuracy differences with 95% intervals, McNemar, and the verdict rule."""
from __future__ import annotations

import pytest

from common.compare import (
    agresti_min_interval,
    baseline_comparison,
    format_comparison,
    mcnemar_exact_p,
    paired_bootstrap_ci,
    paired_comparison,
    verdict,
    wilson_interval,
)


def runs(n: int, both_right: int, right_to_wrong: int, wrong_to_right: int) -> tuple[list[bool], list[bool]]:
    """(this, other) correctness lists with the given cell counts; the rest of the questions wrong in both."""
    this = [True] * both_right + [False] * right_to_wrong + [True] * wrong_to_right
    other = [True] * both_right + [True] * right_to_wrong + [False] * wrong_to_right
    rest = n - len(this)
    return this + [False] * rest, other + [False] * rest


@pytest.mark.parametrize("b, c, p", [
    (10, 2, 0.0386),  # 2 * (1 + 12 + 66) / 4096
    (2, 10, 0.0386),  # symmetric
    (0, 0, 1.0),      # nothing flipped: no evidence of a difference
    (5, 5, 1.0),
    (6, 0, 0.0312),   # 2 / 64
    (1, 0, 1.0),
])
def test_mcnemar_exact(b, c, p):
    assert mcnemar_exact_p(b, c) == pytest.approx(p, abs=1e-4)


def test_wilson_interval():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)


def test_identical_runs_pass_only_with_enough_questions():
    big = paired_comparison(*runs(1319, 281, 0, 0))
    assert big["diff_points"] == 0 and big["flipped"] == {"right_to_wrong": 0, "wrong_to_right": 0}
    assert -0.2 < big["ci95"][0] <= 0 <= big["ci95"][1] < 0.2 and big["verdict"] == "PASS"
    assert big["mcnemar_p"] == 1.0 and big["n"] == 1319 and big["tolerance"] == 1.0
    small = paired_comparison(*runs(3, 1, 0, 0))  # 3 identical answers prove little: the bootstrap alone says [0, 0]
    assert paired_bootstrap_ci(0, 0, 3) == (0.0, 0.0)
    assert small["ci95"][0] < -30 and small["ci95"][1] > 30 and small["verdict"] == "INCONCLUSIVE"


def test_balanced_flips_pass_at_1319_not_at_30():
    assert paired_comparison(*runs(1319, 280, 3, 3))["verdict"] == "PASS"
    small = paired_comparison(*runs(30, 10, 3, 3))
    assert small["diff_points"] == 0 and small["verdict"] == "INCONCLUSIVE" and small["ci95"][1] > 10


def test_large_real_difference_fails():
    result = paired_comparison(*runs(1319, 200, 100, 10))  # this run lost 100 questions and won 10
    assert result["flipped"] == {"right_to_wrong": 100, "wrong_to_right": 10}
    assert result["diff_points"] == pytest.approx(-100 * 90 / 1319, abs=1e-3)
    assert result["ci95"][1] < -1 and result["verdict"] == "FAIL" and result["mcnemar_p"] < 1e-15
    assert result["acc_this"] == pytest.approx(210 / 1319) and result["acc_other"] == pytest.approx(300 / 1319)


def test_bootstrap_is_seeded_and_agrees_with_agresti_min():
    assert paired_bootstrap_ci(12, 5, 500) == paired_bootstrap_ci(12, 5, 500)
    boot, am = paired_bootstrap_ci(12, 5, 500), agresti_min_interval(12, 5, 500)
    assert boot == pytest.approx(am, abs=0.003)


def test_unpaired_21_30_vs_22_00_on_1319_is_inconclusive():
    result = baseline_comparison(281, 1319, 0.22)  # 281/1319 = 21.30%
    assert result["diff_points"] == pytest.approx(-0.696, abs=1e-3)
    assert result["ci95"] == pytest.approx([-2.82, 1.60], abs=0.01)  # +-2.2 points of sampling noise
    assert result["verdict"] == "INCONCLUSIVE" and result["flipped"] is None and result["mcnemar_p"] is None
    assert baseline_comparison(150, 1319, 0.22)["verdict"] == "FAIL"  # 11.4%: surely more than a point below


@pytest.mark.parametrize("ci, tolerance, expected", [
    ((-0.5, 0.5), 1.0, "PASS"), ((-1.0, 1.0), 1.0, "PASS"), ((-1.5, 0.5), 1.0, "INCONCLUSIVE"),
    ((1.2, 3.0), 1.0, "FAIL"), ((-4.0, -1.1), 1.0, "FAIL"), ((-3.0, 3.0), 1.0, "INCONCLUSIVE"),
    ((-1.5, 0.5), 2.0, "PASS"),
])
def test_verdict_rule(ci, tolerance, expected):
    assert verdict(ci, tolerance) == expected


def test_format_comparison_table():
    text = format_comparison({"strict-match": paired_comparison(*runs(1319, 200, 100, 10)),
                              "flexible-extract": baseline_comparison(281, 1319, 0.22)}, "cpu.json")
    lines = text.splitlines()
    assert lines[0] == "comparison against cpu.json:" and len(lines) == 4
    assert "100/10" in lines[2] and lines[2].rstrip().endswith("FAIL (±1)")
    assert "21.30%" in lines[3] and "22.00%" in lines[3] and "INCONCLUSIVE" in lines[3]
