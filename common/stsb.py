"""STS Benchmark (English test split, 1,379 pairs with gold similarity 0-5): loading and scoring, for any model.

Data comes from a local copy (`--data`: the .tsv with header score/sentence1/sentence2, or the .jsonl) or, without
one, from the pinned MTEB copy on the Hugging Face hub; offline, the error says so and names `--data`. Scores are
the correlations x100 between a model's similarity for each pair and the gold score, with a bootstrap 95% interval
so two runs (a device against the CPU, a port against a published figure) can be compared with their uncertainty.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import UserError
from .model_path import hub_reachable
from .textio import read_text_file

HUB_DATASET = "mteb/stsbenchmark-sts"  # the STS-B copy MTEB scores against (gold 0-5, test split 1,379 pairs)
HUB_REVISION = "b0fddb56ed78048fa8b90373c8a3cfc37b684831"  # pinned, as MTEB pins it
HUB_FILE = "test.jsonl.gz"
REQUIRED = ("score", "sentence1", "sentence2")
BOOTSTRAP_SAMPLES = 1000  # resamples of the pairs for the 95% interval of each correlation
BOOTSTRAP_SEED = 0  # fixed, so a rerun reports the same interval
DATA_HINT = "--data ../../shared/data/stsb/test.tsv"

Pair = tuple[float, str, str]


def parse_rows(rows, source: str) -> list[Pair]:
    pairs = []
    for number, row in enumerate(rows, start=2):
        try:
            pairs.append((float(row["score"]), row["sentence1"], row["sentence2"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{source} row {number} lacks a numeric score and two sentences "
                            f"(need columns {', '.join(REQUIRED)})") from None
    if not pairs:
        raise UserError(f"{source} holds no pairs")
    return pairs


def load_local(path: Path) -> list[Pair]:
    """A .tsv with a header (score, sentence1, sentence2) or a .jsonl with those keys."""
    text = read_text_file(path, "--data file")
    if path.suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise UserError(f"--data {str(path)!r} is not valid JSONL (line {exc.lineno}); pass test.jsonl or "
                            "test.tsv from the STS-B folder") from None
        return parse_rows(rows, str(path))
    # QUOTE_NONE: 25 STS-B sentences start with '"', and default CSV quoting would merge rows.
    return parse_rows(csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE), str(path))


def load_hub() -> tuple[list[Pair], str]:
    from huggingface_hub import hf_hub_download

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
        rows = [json.loads(line) for line in f if line.strip()]
    return parse_rows(rows, HUB_DATASET), f"hf://datasets/{HUB_DATASET}@{HUB_REVISION}/{HUB_FILE}"


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
    from scipy.stats import pearsonr, spearmanr

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
