"""lm-eval gsm8k v3's scoring, for eval_gsm8k.py: the strict-match and flexible-extract filters, the normalised exact
match, each run's accuracy with its standard error and 95% Wilson interval, and pass@k over several runs.

    from gsm8k_scoring import score, summarize
    score("... #### 18", gold_answer)   # {"extracted": {filter: str}, "correct": {filter: bool}}
"""
from __future__ import annotations

import math
import re

STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")  # strict-match: the first '#### N'
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # flexible-extract: the last number
IGNORE_RES = [",", "\\$", "(?s).*#### ", "\\.$"]  # exact_match's regexes_to_ignore, removed in this order
INVALID = "[invalid]"  # what a filter gives when nothing matches
FILTERS = ("strict-match", "flexible-extract")


def _regex_filter(text: str, pattern: re.Pattern, group_select: int) -> str:
    """lm-eval RegexFilter: findall, pick match `group_select`, from a group tuple the first non-empty group."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "")
    return match.strip()


def extract_strict(text: str) -> str:
    return _regex_filter(text, STRICT_RE, 0)


def extract_flexible(text: str) -> str:
    return _regex_filter(text, FLEXIBLE_RE, -1)


def normalize(text: str) -> str:
    """exact_match's preprocessing with gsm8k's options: regexes_to_ignore removed in order, then lower-cased."""
    for pattern in IGNORE_RES:
        text = re.sub(pattern, "", text)
    return text.lower()


def is_correct(extracted: str, gold_answer: str) -> bool:
    return normalize(extracted) == normalize(gold_answer)


def score(generation: str, gold_answer: str) -> dict:
    strict, flexible = extract_strict(generation), extract_flexible(generation)
    return {"extracted": {"strict-match": strict, "flexible-extract": flexible},
            "correct": {"strict-match": is_correct(strict, gold_answer),
                        "flexible-extract": is_correct(flexible, gold_answer)}}


def accuracy_uncertainty(correct: int, n: int, z: float = 1.96) -> dict:
    """Standard error of an accuracy over n questions (lm-eval's: the sample standard deviation / sqrt(n), i.e.
    sqrt(p(1-p)/(n-1))) and the 95% Wilson score interval. Two accuracies whose intervals overlap widely are not
    shown to differ by this sample."""
    if n == 0:
        return {"stderr": None, "ci95": None}
    p = correct / n
    stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"stderr": stderr, "ci95": {"low": max(0.0, centre - half), "high": min(1.0, centre + half)}}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(records: list[dict], doc_ids: list[int], num_runs: int) -> dict:
    by_key = {(r["run"], r["doc_id"]): r for r in records}
    out = {"runs": [], "pass_at_n_any": {}, "pass_at_k_unbiased": {}}
    for run in range(1, num_runs + 1):
        rows = [by_key[(run, i)] for i in doc_ids if (run, i) in by_key]
        correct = {f: sum(r["correct"][f] for r in rows) for f in FILTERS}
        uncertainty = {f: accuracy_uncertainty(correct[f], len(rows)) for f in FILTERS}
        out["runs"].append({"run": run, "samples": len(rows),
                            "accuracy": {f: (correct[f] / len(rows) if rows else None) for f in FILTERS},
                            "stderr": {f: uncertainty[f]["stderr"] for f in FILTERS},
                            "ci95": {f: uncertainty[f]["ci95"] for f in FILTERS}})
    for f in FILTERS:
        counts = [sum(by_key[(run, i)]["correct"][f] for run in range(1, num_runs + 1)) for i in doc_ids]
        out["pass_at_n_any"][f] = sum(c > 0 for c in counts) / len(counts)
        out["pass_at_k_unbiased"][f] = {str(k): sum(pass_at_k(num_runs, c, k) for c in counts) / len(counts)
                                        for k in range(1, num_runs + 1)}
    return out
