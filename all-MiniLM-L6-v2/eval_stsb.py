"""STS Benchmark (English test split, 1,379 pairs): Spearman and Pearson x100 of cosine similarity vs gold scores.

    python eval_stsb.py --data ../../shared/data/stsb/test.tsv          # a local copy (tsv or jsonl)
    python eval_stsb.py --device npu --dtype bf16                        # the public dataset via huggingface_hub

Spearman rho is what sentence-transformers model cards and MTEB report for STS-B; Pearson r is the official metric.
Both come with a bootstrap 95% interval (common.stsb), so a device run and the CPU run, or this port and a
published figure, can be compared with their uncertainty. Every sentence is encoded once, even when it appears in
several pairs. Writes results/task_<model>_<device>_<dtype>_stsb.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, positive_int, run_main
from common.device import dtype_name, resolve_device, resolve_dtype
from common.model_path import resolve_model_path
from common.results import check_outputs, result_path, result_record, write_json
from common.stsb import correlations, load_pairs, select_pairs
from inference import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, MODEL_NAME, MiniLMEncoder, add_model_args, check_batch_size

HERE = Path(__file__).resolve().parent
METRIC = "STS-B Spearman x100"  # the headline: what MTEB's STSBenchmark column reports (cosine Spearman)
NOT_SCORED = {"spearman_x100": None, "pearson_x100": None, "spearman_ci95": None, "pearson_ci95": None,
              "ci95": {"spearman": None, "pearson": None}}


def score(encoder: MiniLMEncoder, pairs, batch_size: int) -> dict:
    sentences = sorted({s for _, a, b in pairs for s in (a, b)})
    vectors = encoder.encode(sentences, batch_size=batch_size)
    stats = {"unique_sentences": len(sentences), "truncated": encoder.last_stats["truncated"],
             "nonfinite_embeddings": encoder.last_stats["nonfinite_rows"]}
    if stats["nonfinite_embeddings"]:  # never score NaN: a correlation over garbage would still print a number
        return {**stats, **NOT_SCORED}
    index = {s: i for i, s in enumerate(sentences)}
    a = vectors[[index[p[1]] for p in pairs]].astype(np.float64)
    b = vectors[[index[p[2]] for p in pairs]].astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    scores = correlations(cosine, [p[0] for p in pairs])
    # the intervals also as {"low", "high"}, which the readme tables can address by key
    intervals = {name: None if scores[f"{name}_ci95"] is None else dict(zip(("low", "high"), scores[f"{name}_ci95"]))
                 for name in ("spearman", "pearson")}
    return {**stats, **scores, "ci95": intervals}


def main(args) -> int:
    check_batch_size(args.batch_size)  # everything a user passes is checked before the model loads
    pairs, source, digest = load_pairs(args.data)
    pairs = select_pairs(pairs, args.limit)
    device = resolve_device(args.device)  # the default output names the device and dtype: resolved before loading
    output = result_path(args.output, HERE, "task", resolve_model_path(args.model_path, default=DEFAULT_MODEL),
                         device, dtype_name(resolve_dtype(args.dtype, device)), "_stsb")
    check_outputs({"--output": output})
    encoder = MiniLMEncoder(args.model_path, args.device, args.dtype, compile=args.compile)
    print(f"STS-B: {len(pairs)} pairs from {source} on {encoder.device} ({encoder.dtype_name}); "
          f"{encoder.describe()}")
    result = score(encoder, pairs, args.batch_size)
    if result["truncated"]:
        print(f"{result['truncated']} sentence(s) longer than {encoder.max_seq_length} tokens were truncated to "
              "it, as sentence-transformers does")
    if result["nonfinite_embeddings"]:
        print(f"error: {result['nonfinite_embeddings']} embeddings are NaN/inf; not scored. Try --dtype fp32",
              file=sys.stderr)
    elif result["spearman_x100"] is not None:
        (lo, hi), (plo, phi) = result["spearman_ci95"], result["pearson_ci95"]
        print(f"Spearman x100: {result['spearman_x100']:.2f} (95% CI {lo:.2f}-{hi:.2f})   "
              f"Pearson x100: {result['pearson_x100']:.2f} (95% CI {plo:.2f}-{phi:.2f})")
    write_json(output, result_record(
        "task", device=encoder.device, dtype=encoder.dtype_name, model=encoder.model_dir,
        headline={"metric": METRIC, "value": result["spearman_x100"]}, data=source, data_sha256=digest,
        pairs=len(pairs), limit=args.limit, pipeline=encoder.describe(), **result))
    print(f"wrote {output}")
    return 1 if result["nonfinite_embeddings"] else 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"STS Benchmark test split with {MODEL_NAME} (or another sentence-transformers "
                                   "model): Spearman/Pearson of cosine vs gold, with bootstrap 95% intervals.")
    add_model_args(p)
    p.add_argument("--data", help="local STS-B test file (.tsv with header score/sentence1/sentence2, or .jsonl)")
    p.add_argument("--limit", type=positive_int, help="score only the first N pairs")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--output", help="result JSON (default results/task_<model>_<device>_<dtype>_stsb.json)")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
