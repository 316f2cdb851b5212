"""Throughput and latency of MiniLMEncoder against SentenceTransformer.encode, same texts, same run.

    python benchmark.py                                   # CPU fp32, batch sizes 1,4,16,32,64, 2,000 texts
    python benchmark.py --dtype bf16 --batch_sizes 32
    python benchmark.py --compile --device npu --dtype bf16 --model_path path/to/model
    python benchmark.py --device npu --dtype bf16 --baseline_device cpu   # also the same texts on the CPU in fp32

Each (implementation, batch size) gets an untimed warm-up on a slice of the workload, then --repeats timed passes
over the whole workload; throughput is the median pass. Per-batch latencies (ours) come from every timed batch.
The peer is what a user would otherwise run on the same folder: SentenceTransformer(model).encode(texts,
batch_size=...) in fp32. The headline ratio is ours / peer in texts/s at batch 32 (or the largest batch run).
--baseline_device cpu times the same texts, batch sizes and passes again on the CPU in fp32 with this port
(`baseline_device` in the JSON, `vs_baseline_device` per batch size = this device's texts/s / the CPU's).
Writes results/benchmark_<model>_<device>_<dtype>[_compiled].json and a PNG plot beside it.
"""
from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.device import peak_memory, reset_peak_memory, synchronize
from common.cli import ArgumentParser, UserError, check_at_most, positive_int, run_main
from common.results import check_result_outputs, result_path, result_record, save_figure, write_json
from common.textio import read_lines
from common.bench import (BASELINE_DTYPE, add_baseline_device_arg, add_device_vs_cpu, attach_baseline,
                          baseline_record, ratio_text, resolve_baseline_device)
from common.timing import Stopwatch, summarize
from inference import MODEL_CLASS, MODEL_NAME, MiniLMEncoder, add_model_args

HERE = Path(__file__).resolve().parent

DEFAULT_BATCH_SIZES = "1,4,16,32,64"  # from single-request latency to bulk throughput
DEFAULT_NUM_TEXTS = 2000  # large enough that one pass at batch 64 lasts several seconds on a 2-core CPU
WORDS_MIN, WORDS_MAX = 5, 60  # sentence lengths of the synthetic workload, uniform in words
SEED = 0  # fixed workload: every run and every machine times the same texts
WARMUP_BATCHES = 3  # untimed batches per configuration (compiled graphs, allocator, oneDNN primitive caches)
GEMM_PROBE_SIZE = 2048  # square matmul used to measure this device's dense peak for the utilisation figure
HEADLINE_BATCH = 32  # the batch size whose speedup is the result's headline (the largest run if it is not run)
PEER = "SentenceTransformer.encode"
# no model limit applies to these (texts are truncated to the model's max_seq_length), so they are settings:
MAX_BATCH_SIZE = 1024  # 1024 x 12 heads x 256^2 fp32 attention scores are 3 GiB; throughput is flat long before
MAX_NUM_TEXTS = 200_000  # the synthetic texts and their token ids are held in memory (Python lists, ~1 GB here)
VOCAB = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact be have do say get make go know take see come think look "
         "want give use find tell ask seem feel try leave call good new first last long great little own other "
         "old right big high different small large next early young important few public bad same able to of in "
         "for on with at by from up about into over after the a that it not he as you this but his they her she "
         "or an will my one all would there their river market music data model system energy light water city "
         "report student history science morning evening quickly slowly never always often because although").split()


def synthetic_texts(n: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(WORDS_MIN, WORDS_MAX))).capitalize() + "."
            for _ in range(n)]


def model_flops(token_counts, model) -> float:
    """Forward FLOPs over real tokens: 2 per weight of every matrix the tokens go through (embedding tables and
    BERT's unused pooler excluded) plus attention scores and mixing (4 * n^2 * hidden per layer)."""
    weights = sum(p.numel() for name, p in model.named_parameters()
                  if p.dim() == 2 and "embed" not in name and not name.startswith("pooler."))
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    return float(sum(2 * n * weights + layers * 4 * n * n * hidden for n in token_counts))


def gemm_peak_gflops(device, dtype) -> float:
    """Measured dense matmul rate of this device in this dtype: the honest ceiling for the utilisation figure."""
    a = torch.randn(GEMM_PROBE_SIZE, GEMM_PROBE_SIZE, device=device, dtype=dtype)
    for _ in range(2):
        a @ a
    with Stopwatch(device) as sw:
        for _ in range(5):
            a @ a
    return 5 * 2 * GEMM_PROBE_SIZE ** 3 / sw.seconds / 1e9


def cpu_bf16_hardware() -> dict:
    """Whether this CPU computes bf16 natively (AVX512-BF16, AMX); without either, oneDNN emulates it slowly."""
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    return {name: bool(getattr(torch.cpu, fn, lambda: None)()) for name, fn in probes.items()}


def ours_pass(encoder: MiniLMEncoder, texts, batch_size: int, latencies: list):
    def run():
        out = encoder.encode(texts, batch_size=batch_size, show_progress=False)
        latencies.extend(encoder.last_stats["batch_seconds"])
        return out
    return run


def peer_pass(peer, texts, batch_size: int):
    # no normalize_embeddings: both sides give what the checkpoint's modules give (Normalize or not)
    kwargs = dict(batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return lambda: peer.encode(texts, **kwargs)


def interleaved(runs: dict, repeats: int, device) -> tuple[dict, dict]:
    """Time the implementations alternately (A B A B ...), so drift on a shared machine hits both alike."""
    seconds, outputs = {name: [] for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            with Stopwatch(device) as sw:
                outputs[name] = run()
            seconds[name].append(sw.seconds)
    return seconds, outputs


def compare(ours: np.ndarray, peer: np.ndarray) -> dict:
    a, b = ours.astype(np.float64), peer.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"max_abs_diff": float(np.abs(a - b).max()), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min())}


def bench_batch_size(encoder, peer, texts, batch_size: int, repeats: int, flops: float) -> dict:
    latencies = []
    runs = {"ours": ours_pass(encoder, texts, batch_size, latencies)}
    if peer is not None:
        runs["peer"] = peer_pass(peer, texts, batch_size)
    for name, run in runs.items():  # warm-up on a slice: compiled graphs, allocator, oneDNN primitive caches
        (ours_pass(encoder, texts[: batch_size * WARMUP_BATCHES], batch_size, []) if name == "ours" else
         peer_pass(peer, texts[: batch_size * WARMUP_BATCHES], batch_size))()
    reset_peak_memory(encoder.device)
    seconds, outputs = interleaved(runs, repeats, encoder.device)
    tokens = encoder.last_stats["tokens"]
    row = {"batch_size": batch_size}
    for name, samples in seconds.items():
        median = statistics.median(samples)
        row[name] = {"pass_seconds": samples, "texts_per_s": len(texts) / median, "tokens_per_s": tokens / median}
    row["ours"].update(batch_latency=summarize(latencies), padded_tokens=encoder.last_stats["padded_tokens"],
                       gflops_per_s=flops / statistics.median(seconds["ours"]) / 1e9,
                       peak_memory=peak_memory(encoder.device))
    if peer is not None:
        row["peer"]["mean_batch_ms"] = statistics.median(seconds["peer"]) / -(-len(texts) // batch_size) * 1e3
        row["speedup"] = row["ours"]["texts_per_s"] / row["peer"]["texts_per_s"]
        row["speedup_per_repeat"] = [p / o for o, p in zip(seconds["ours"], seconds["peer"])]
        row["vs_peer"] = compare(outputs["ours"], outputs["peer"])
    return row


def run_sweep(encoder, peer, texts, batch_sizes, repeats) -> list[dict]:
    ids, _ = encoder.tokenize(texts)
    flops = model_flops([len(s) for s in ids], getattr(encoder.model, "_orig_mod", encoder.model))
    rows = []
    for batch_size in tqdm(batch_sizes, desc="batch sizes", unit="config"):
        rows.append(bench_batch_size(encoder, peer, texts, batch_size, repeats, flops))
        tqdm.write(format_row(rows[-1]))
    return rows


def format_row(row: dict) -> str:
    ours = row["ours"]
    text = (f"batch {row['batch_size']:>3}: ours {ours['texts_per_s']:8.1f} texts/s "
            f"(p50 {ours['batch_latency']['p50_ms']:.1f} ms, p99 {ours['batch_latency']['p99_ms']:.1f} ms/batch)")
    if "peer" in row:
        text += (f" | SentenceTransformer {row['peer']['texts_per_s']:8.1f} texts/s | x{row['speedup']:.2f}"
                 f" | max|diff| {row['vs_peer']['max_abs_diff']:.2e}, cos {row['vs_peer']['cosine_mean']:.6f}")
    return text


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib  # lazy: heavy, and only a run that plots needs it (never --help or a refused flag)

    matplotlib.use("Agg")  # before pyplot loads: no display is needed or assumed
    import matplotlib.pyplot as plt

    sizes = [r["batch_size"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(sizes, [r["ours"]["texts_per_s"] for r in rows], "o-", label=f"{MODEL_CLASS} (this port)")
    if rows and "peer" in rows[0]:
        left.plot(sizes, [r["peer"]["texts_per_s"] for r in rows], "s--", label=PEER)
    left.set(xscale="log", xlabel="batch size", ylabel="texts / s", title="throughput")
    left.set_xticks(sizes, [str(s) for s in sizes])
    left.legend()
    for key, style in (("p50_ms", "o-"), ("p90_ms", "^-"), ("p99_ms", "v-")):
        right.plot(sizes, [r["ours"]["batch_latency"][key] for r in rows], style, label=key.replace("_ms", ""))
    right.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per batch", title="latency (this port)")
    right.set_xticks(sizes, [str(s) for s in sizes])
    right.legend()
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch_sizes {text!r} must be a comma-separated list of whole numbers >= 1, e.g. 1,8,32")
    check_at_most(max(sizes), MAX_BATCH_SIZE, "--batch_sizes", "the largest batch size this benchmark runs")
    return sizes


def check_workload(batch_sizes: list[int], num_texts: int) -> None:
    """A batch larger than the workload would time a smaller batch under a bigger label."""
    if max(batch_sizes) > num_texts:
        raise UserError(f"--batch_sizes {max(batch_sizes)} is larger than the workload ({num_texts} texts); use "
                        f"batch sizes up to {num_texts} or more texts")


def baseline_sweep(args, texts, batch_sizes, device) -> dict:
    """The same texts, batch sizes, warm-up and passes on --baseline_device in fp32, with this port (no peer)."""
    began = time.perf_counter()
    encoder = MiniLMEncoder(args.model_path, str(device), BASELINE_DTYPE, compile=args.compile)
    encoder.encode(texts[:64], batch_size=32, show_progress=False)  # first call (compilation) untimed, as above
    print(f"baseline: the same workload on {device} {BASELINE_DTYPE}")
    rows = run_sweep(encoder, None, texts, batch_sizes, args.repeats)
    return baseline_record(device, time.perf_counter() - began, compiled=args.compile, rows=rows)


def headline(rows: list[dict], with_peer: bool, baseline: dict | None) -> dict:
    """The result's one figure: our speedup over the peer at batch 32, or at the largest batch size run (and this
    device's over the CPU there, with --baseline_device cpu)."""
    sizes = [r["batch_size"] for r in rows]
    row = rows[sizes.index(HEADLINE_BATCH)] if HEADLINE_BATCH in sizes else max(rows, key=lambda r: r["batch_size"])
    return add_device_vs_cpu({"metric": f"texts/s at batch {row['batch_size']}", "peer": PEER,
                              "ratio": row["speedup"] if with_peer else None}, baseline, row.get("vs_baseline_device"))


def main(args) -> int:
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    check_at_most(args.num_texts, MAX_NUM_TEXTS, "--num_texts", "the largest synthetic workload")
    baseline_device = resolve_baseline_device(args.baseline_device)
    if args.output:
        check_result_outputs(args.output)
    texts = read_lines(args.batch_file, "--batch_file")[0] if args.batch_file else synthetic_texts(args.num_texts)
    check_workload(batch_sizes, len(texts))
    encoder = MiniLMEncoder(args.model_path, args.device, args.dtype, compile=args.compile)
    start = time.perf_counter()
    encoder.encode(texts[:64], batch_size=32, show_progress=False)  # first call: compilation happens here
    first_call_s = time.perf_counter() - start
    peer = None
    if not args.no_peer:
        from sentence_transformers import SentenceTransformer  # optional (--no_peer runs without it), and slow

        peer = SentenceTransformer(str(encoder.model_dir), device=str(encoder.device))  # the same folder
    suffix = "_compiled" if args.compile else ""
    label = f"{encoder.device.type}_{encoder.dtype_name}{suffix}"
    print(f"{len(texts)} texts, batch sizes {batch_sizes}, {args.repeats} timed passes each, {label}; "
          f"{encoder.describe()}")
    output = result_path(args.output, HERE, "benchmark", encoder.model_dir, encoder.device, encoder.dtype_name, suffix)
    check_result_outputs(output)
    rows = run_sweep(encoder, peer, texts, batch_sizes, args.repeats)
    synchronize(encoder.device)
    gemm_peak = gemm_peak_gflops(encoder.device, encoder.dtype)
    baseline = None
    if baseline_device is not None:
        baseline = baseline_sweep(args, texts, batch_sizes, baseline_device)
        attach_baseline(rows, baseline["rows"], "ours.texts_per_s")
    result = result_record(
        "benchmark", device=encoder.device, dtype=encoder.dtype_name, model=encoder.model_dir,
        headline=headline(rows, peer is not None, baseline), label=label, compiled=args.compile,
        workload={"texts": len(texts), "source": args.batch_file or f"synthetic seed={SEED}",
                  "tokens": encoder.last_stats["tokens"], "truncated": encoder.last_stats["truncated"]},
        repeats=args.repeats, first_call_seconds=first_call_s,
        gemm_peak_gflops=gemm_peak,
        cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_bf16_hardware=cpu_bf16_hardware(),
        pipeline=encoder.describe(), rows=rows, **({"baseline_device": baseline} if baseline else {}))
    write_json(output, result)
    plot(rows, f"{MODEL_NAME} {label} on {result['meta']['device_name']}", output.with_suffix(".png"))
    print(f"first call {first_call_s:.1f} s; measured {encoder.dtype_name} GEMM peak "
          f"{result['gemm_peak_gflops']:.0f} GFLOP/s")
    if baseline:
        print(f"this device / {baseline['device']} fp32 texts/s: "
              + ", ".join(f"batch {r['batch_size']} {ratio_text(r['vs_baseline_device'])}" for r in rows))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"Benchmark {MODEL_CLASS} vs {PEER} on the same model folder.")
    add_model_args(p)
    p.add_argument("--batch_sizes", default=DEFAULT_BATCH_SIZES, help="comma-separated, e.g. 1,4,16,32,64")
    p.add_argument("--num_texts", type=positive_int, default=DEFAULT_NUM_TEXTS, help="size of the synthetic workload")
    p.add_argument("--batch_file", help="benchmark these texts (one per line) instead of the synthetic workload")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed passes per configuration")
    p.add_argument("--no_peer", action="store_true", help="skip SentenceTransformer (e.g. when it is not installed)")
    p.add_argument("--output", help="result JSON (default results/benchmark_<model>_<device>_<dtype>[_compiled].json)")
    add_baseline_device_arg(p)
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
