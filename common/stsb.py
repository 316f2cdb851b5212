"""STS Benchmark (English test split, 1,379 pairs with gold similarity 0-5): loading and scoring, for any model.

Data comes from a local copy (`--data`: the .tsv with header score/sentence1/sentence2, or the .jsonl) or, without
one, from the pinned MTEB copy on the Hugging Face hub; offline, the error says so and names `--data`. Scores are
the correlations x100 between a model's similarity for each pair and the gold score, with a bootstrap 95% interval
so two runs (a device against the CPU, a port against a published figure) can be compared with their uncertainty.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
from huggingface_hub import hf_hub_download
from scipy.stats import pearsonr, spearmanr

from common.cli import UserError
from common.model_path import hub_reachable
from common.textio import read_text_file

HUB_DATASET = "mteb/stsbenchmark-sts"  # the STS-B copy MTEB scores against (gold 0-5, test split 1,379 pairs)
HUB_REVISION = "b0fddb56ed78048fa8b90373c8a3cfc37b684831"  # pinned, as MTEB pins it
HUB_FILE = "test.jsonl.gz"
REQUIRED = ("score", "sentence1", "sentence2")
BOOTSTRAP_SAMPLES = 1000  # resamples of the pairs for the 95% interval of each correlation
BOOTSTRAP_SEED = 0  # fixed, so a rerun reports the same interval
DATA_HINT = "--data ../../shared/data/stsb/test.tsv"
GOLD_RANGE = (0.0, 5.0)  # STS-B's similarity scale; a gold score outside it (or NaN) means a damaged file
MIN_PAIRS = 3  # two pairs always correlate at +-1 and their bootstrap interval is meaningless

Pair = tuple[float, str, str]


def parse_rows(rows, source: str) -> list[Pair]:
    """(gold, sentence1, sentence2) from (line number, row dict) items. A gold score that is not a number in
    GOLD_RANGE is refused, naming the line: skipping it would silently score a different benchmark."""
    pairs = []
    for number, row in rows:
        try:
            gold, first, second = float(row["score"]), row["sentence1"], row["sentence2"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{source} line {number} lacks a numeric score and two sentences "
                            f"(need columns {', '.join(REQUIRED)})") from None
        if not isinstance(first, str) or not isinstance(second, str):
            raise UserError(f"{source} line {number}: sentence1 and sentence2 must be text")
        if not GOLD_RANGE[0] <= gold <= GOLD_RANGE[1]:  # also false for NaN
            raise UserError(f"{source} line {number} has gold score {row['score']!r}; STS-B gold scores are "
                            f"{GOLD_RANGE[0]:g} to {GOLD_RANGE[1]:g}, so fix or remove that line")
        pairs.append((gold, first, second))
    if not pairs:
        raise UserError(f"{source} holds no pairs")
    return pairs


def tsv_rows(text: str, source: str):
    """(line number, row dict) per non-blank line of a tab-separated file with a header line. Split by hand rather
    than with the csv module: STS-B is tab-separated with no quoting, so a split is exact, and csv refuses any
    field over its 128 KB field_size_limit with a traceback. A line with the wrong number of fields is refused."""
    lines = text.splitlines()
    header = lines[0].split("\t") if lines else []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise UserError(f"{source} line {number} has {len(fields)} tab-separated fields, the header {len(header)} "
                            f"(need columns {', '.join(REQUIRED)})")
        yield number, dict(zip(header, fields))


def jsonl_rows(lines, source: str):
    """(line number, object) per non-blank line of a JSONL file."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{source} line {number} is not valid JSON; pass test.jsonl or test.tsv from the "
                            "STS-B folder") from None
        yield number, row if isinstance(row, dict) else {}


def load_local(path: Path) -> list[Pair]:
    """A .tsv with a header (score, sentence1, sentence2) or a .jsonl with those keys."""
    text = read_text_file(path, "--data file")
    if path.suffix == ".jsonl":
        return parse_rows(jsonl_rows(text.splitlines(), f"--data {str(path)!r}"), str(path))
    return parse_rows(tsv_rows(text, str(path)), str(path))


def select_pairs(pairs: list[Pair], limit: int | None) -> list[Pair]:
    """The first `limit` pairs (all without one); fewer than MIN_PAIRS is refused before any model loads."""
    chosen = pairs[:limit] if limit else pairs
    if len(chosen) < MIN_PAIRS:
        where = f"--limit {limit}" if limit and limit < len(pairs) else f"the data ({len(pairs)} pair(s))"
        raise UserError(f"{where} leaves {len(chosen)} pair(s); a correlation needs at least {MIN_PAIRS} pairs, "
                        f"so use --limit {MIN_PAIRS} or more")
    return chosen


def load_hub() -> tuple[list[Pair], str]:
    def fetch(cached_only: bool) -> str:
        return hf_hub_download(HUB_DATASET, HUB_FILE, repo_type="dataset", revision=HUB_REVISION,
                               local_files_only=cached_only)

    try:
        try:
            file = fetch(cached_only=True)
        except Exception:
            if not hub_reachable():
                raise ConnectionError("offline") from None
            file = fetch(cached_only=False)
    except Exception as exc:  # offline, blocked, or the hub changed
        raise UserError(f"could not fetch STS-B from the hub ({type(exc).__name__}: {exc}); pass a local copy "
                        f"with {DATA_HINT}") from None
    with gzip.open(file, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return parse_rows(jsonl_rows(lines, HUB_DATASET), HUB_DATASET), f"hf://datasets/{HUB_DATASET}@{HUB_REVISION}/{HUB_FILE}"


def load_pairs(data: str | None) -> tuple[list[Pair], str, str | None]:
    """(pairs, source, sha256 of the local file or None for the hub copy). Checked before any model loads."""
    if data:
        path = Path(data)
        pairs = load_local(path)
        return pairs, str(path), hashlib.sha256(path.read_bytes()).hexdigest()
    pairs, source = load_hub()
    return pairs, source, None


def correlations(predicted, gold) -> dict:
    """Spearman and Pearson x100 of predicted similarities against gold scores, each with a bootstrap 95% interval
    (pairs resampled with replacement). A constant prediction has no correlation: None."""
    predicted, gold = np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if predicted.std() == 0 or gold.std() == 0:
        return {"spearman_x100": None, "pearson_x100": None, "spearman_ci95": None, "pearson_ci95": None}
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = {"spearman": [], "pearson": []}
    for _ in range(BOOTSTRAP_SAMPLES):
        idx = rng.integers(0, len(gold), len(gold))
        p, g = predicted[idx], gold[idx]
        if p.std() == 0 or g.std() == 0:
            continue
        samples["spearman"].append(spearmanr(p, g).statistic * 100)
        samples["pearson"].append(pearsonr(p, g).statistic * 100)
    result = {"spearman_x100": float(spearmanr(predicted, gold).statistic * 100),
              "pearson_x100": float(pearsonr(predicted, gold).statistic * 100)}
    for name, values in samples.items():
        result[f"{name}_ci95"] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    return result
