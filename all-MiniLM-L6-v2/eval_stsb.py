"""STS Benchmark (English test split, 1,379 pairs): Spearman and Pearson x100 of cosine similarity vs gold scores.

    python eval_stsb.py --data ../../shared/data/stsb/test.tsv          # a local copy (tsv or jsonl)
    python eval_stsb.py --device npu --dtype bf16                        # the public dataset via huggingface_hub

Spearman rho is what the sentence-transformers model card reports for STS-B; Pearson r is the official metric.
Every sentence is encoded once, even when it appears in several pairs.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402

from common.errors import ArgumentParser, UserError, positive_int, run_main  # noqa: E402
from common.model_path import hub_reachable  # noqa: E402
from common.results import run_metadata, write_json  # noqa: E402
from common.textio import read_text_file  # noqa: E402
from inference import DEFAULT_BATCH_SIZE, MiniLMEncoder, add_model_args  # noqa: E402

HUB_DATASET = "mteb/stsbenchmark-sts"  # the STS-B copy MTEB scores against (gold 0-5, test split 1,379 pairs)
HUB_REVISION = "b0fddb56ed78048fa8b90373c8a3cfc37b684831"  # pinned, as MTEB pins it
HUB_FILE = "test.jsonl.gz"
REQUIRED = ("score", "sentence1", "sentence2")


def parse_rows(rows, source: str) -> list[tuple[float, str, str]]:
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


def load_local(path: Path) -> list[tuple[float, str, str]]:
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


def load_hub() -> tuple[list[tuple[float, str, str]], str]:
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
                        "with --data, e.g. --data ../../shared/data/stsb/test.tsv") from None
    with gzip.open(file, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return parse_rows(rows, HUB_DATASET), f"hf://datasets/{HUB_DATASET}@{HUB_REVISION}/{HUB_FILE}"


def score(encoder: MiniLMEncoder, pairs, batch_size: int) -> dict:
    sentences = sorted({s for _, a, b in pairs for s in (a, b)})
    vectors = encoder.encode(sentences, batch_size=batch_size)
    nonfinite = encoder.last_stats["nonfinite_rows"]
    if nonfinite:  # never score NaN: a correlation over garbage would still print a number
        return {"nonfinite_embeddings": nonfinite}
    index = {s: i for i, s in enumerate(sentences)}
    a = vectors[[index[p[1]] for p in pairs]]
    b = vectors[[index[p[2]] for p in pairs]]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    gold = np.array([p[0] for p in pairs])
    return {"nonfinite_embeddings": 0, "spearman_x100": float(spearmanr(cosine, gold).statistic * 100),
            "pearson_x100": float(pearsonr(cosine, gold).statistic * 100), "unique_sentences": len(sentences),
            "truncated": encoder.last_stats["truncated"]}


def main(args) -> int:
    if args.data:
        path = Path(args.data)
        pairs, source = load_local(path), str(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        (pairs, source), digest = load_hub(), None
    pairs = pairs[: args.limit] if args.limit else pairs
    encoder = MiniLMEncoder(args.model_path, args.device, args.dtype, compile=args.compile)
    print(f"STS-B: {len(pairs)} pairs from {source} on {encoder.device} ({encoder.dtype_name})")
    result = score(encoder, pairs, args.batch_size)
    if result["nonfinite_embeddings"]:
        print(f"error: {result['nonfinite_embeddings']} embeddings are NaN/inf; not scored. Try --dtype fp32",
              file=sys.stderr)
    else:
        print(f"Spearman x100: {result['spearman_x100']:.2f}   Pearson x100: {result['pearson_x100']:.2f}")
    output = Path(args.output or HERE / "results" / f"stsb_{encoder.device.type}_{encoder.dtype_name}.json")
    write_json(output, {"meta": run_metadata(encoder.device, encoder.dtype_name), "model": str(encoder.model_dir),
                        "data": source, "data_sha256": digest, "pairs": len(pairs), "limit": args.limit, **result})
    print(f"wrote {output}")
    return 1 if result["nonfinite_embeddings"] else 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="STS Benchmark test split: Spearman/Pearson of cosine vs gold.")
    p.add_argument("--data", help="local STS-B test file (.tsv with header score/sentence1/sentence2, or .jsonl)")
    p.add_argument("--limit", type=positive_int, help="score only the first N pairs")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--output", help="result JSON (default results/stsb_<device>_<dtype>.json)")
    return add_model_args(p)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
