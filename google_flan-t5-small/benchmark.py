"""T5-family speed: encoder latency/throughput per batch size, and generation against plain transformers, same run.

    python benchmark.py                                        # CPU fp32, default sizes
    python benchmark.py --device npu --dtype bf16 --input_tokens 256 --num_beams 4
    python benchmark.py --encoder_batch_sizes 1,8 --requests 16 --max_new_tokens 16   # a quick look

Encoder: inputs of exactly --input_tokens tokens (ids of real words drawn with a fixed seed, so any tokenizer and
vocabulary works), timed `model.encoder(...)`
calls after a warm-up; latency percentiles per call, sequences/s and tokens/s from the median.
Generation: --requests synthetic summarize prompts in batches of --gen_batch_size, greedy and beam search. Each
timed pass runs ours (T5Summarizer.generate_ids) and then the peer, the code a user would otherwise write:
`AutoModelForSeq2SeqLM.from_pretrained(...).generate(**tokenizer(batch, padding=True, return_tensors="pt"), ...)`,
alternating pass by pass so machine drift hits both alike. requests/s and new tokens/s come from the median pass;
a request's latency is the time of the batch it was in. ratio = ours / peer requests/s. New tokens are counted the
same way on both sides: up to and including each row's first </s> (what follows is padding).
Writes a "benchmark" result record, results/benchmark_<model>_<device>_<dtype>.json, and a PNG plot beside it;
its headline is the greedy row's ratio. --baseline_device cpu times the same encoder inputs and generation requests
again on the CPU in fp32 with this port (`baseline_device` in the JSON; `vs_baseline_device` per row = this device's
sequences/s or requests/s / the CPU's).
"""
from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM

from common.device import device_name, peak_memory, reset_peak_memory
from common.cli import ArgumentParser, UserError, check_at_most, non_negative_int, positive_int, run_main
from common.results import check_result_outputs, result_path, result_record, save_figure, write_json
from common.bench import (BASELINE_DTYPE, add_baseline_device_arg, add_device_vs_cpu, attach_baseline,
                          baseline_record, ratio_text, resolve_baseline_device)
from common.timing import Stopwatch, summarize, time_calls
from inference import MODEL_CLASS, MODEL_NAME, T5Summarizer, add_model_args

HERE = Path(__file__).resolve().parent

DEFAULT_ENCODER_BATCH_SIZES = "1,4,16,32,64"  # from single-request latency to bulk throughput
DEFAULT_INPUT_TOKENS = 128  # encoder input length (every row exactly this long, no padding)
DEFAULT_REQUESTS = 32  # generation workload: prompts per timed pass
DEFAULT_GEN_BATCH_SIZE = 8  # prompts per generate() call, ours and the peer alike
DEFAULT_MAX_NEW_TOKENS = 32  # new tokens per request (the cap; a request may stop earlier at </s>)
DEFAULT_BEAMS = 4  # beam width of the beam-search row (the greedy row is 1)
SEED = 0  # fixed workload: every run and machine times the same inputs
# T5 has relative positions, so no position table bounds these; they are settings, named in the error messages:
MAX_BATCH_SIZE = 1024  # encoder or generate batch: throughput is flat long before; larger ones risk the OOM killer
MAX_NEW_TOKENS_LIMIT = 2048  # T5 targets were trained up to 512 tokens; a random checkpoint never stops at </s>
MAX_BEAMS = 64  # each beam is a full decoder row: 64 x the batch is already far past any useful beam search
WORDS_MIN, WORDS_MAX = 20, 60  # synthetic prompt lengths in words
WORDS = ("the council city river market energy report school water company plan year people new old first last "
         "said would could after before because while during against local national public private small large "
         "project budget transport housing weather station museum hospital team season result growth price "
         "study scientists found increase decrease support announced expected open closed").split()


def synthetic_prompts(n: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return ["summarize: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(WORDS_MIN, WORDS_MAX))) + "."
            for _ in range(n)]


def encoder_inputs(model: T5Summarizer, batch_size: int, length: int) -> dict:
    """Ids of real words drawn at random (no specials, no sentinels), ending in </s>; all rows real, no padding.
    Drawn from the tokenizer's own encoding of WORDS, so nothing depends on where a vocabulary keeps its specials
    (T5's sentinels come last, mT5 has none, ByT5's ids are bytes)."""
    words = torch.tensor(sorted(set(model.tokenizer(" ".join(WORDS), add_special_tokens=False)["input_ids"])))
    generator = torch.Generator().manual_seed(SEED)
    ids = words[torch.randint(0, len(words), (batch_size, length), generator=generator)]
    ids[:, -1] = model.eos_id
    return {"input_ids": ids.to(model.device), "attention_mask": torch.ones_like(ids).to(model.device)}


def bench_encoder(model: T5Summarizer, batch_sizes, length: int, warmup: int, repeats: int) -> list[dict]:
    rows = []
    for batch_size in tqdm(batch_sizes, desc="encoder", unit="batch size"):
        inputs = encoder_inputs(model, batch_size, length)
        with torch.inference_mode():
            samples = time_calls(lambda: model.model.encoder(**inputs).last_hidden_state, model.device,
                                 warmup=warmup, repeats=repeats)
        median = statistics.median(samples)
        rows.append({"batch_size": batch_size, "input_tokens": length, "latency": summarize(samples),
                     "sequences_per_s": batch_size / median, "tokens_per_s": batch_size * length / median})
    return rows


def ours_pass(model: T5Summarizer, prompts, settings: dict):
    def run():
        out = model.generate_ids(prompts, settings["max_new_tokens"], settings["num_beams"], settings["batch_size"])
        stats = model.last_stats
        latencies = [s for s, n in zip(stats["batch_seconds"], stats["batch_sizes"]) for _ in range(n)]
        return model.tokenizer.batch_decode(out, skip_special_tokens=True), stats["new_tokens"], latencies
    return run


def peer_pass(peer, model: T5Summarizer, prompts, settings: dict):
    """What a user writes without this port: tokenizer(..., padding=True) then model.generate, batch by batch.
    Its new tokens are counted as ours are (model.strip_generated: up to the first </s>), never as "not <pad>": a
    model may emit <pad> as a token (a tied-embedding T5 can), and padding after </s> is not work done."""
    tokenizer = model.tokenizer

    def run():
        texts, new_tokens, latencies = [], 0, []
        for start in range(0, len(prompts), settings["batch_size"]):
            batch = prompts[start: start + settings["batch_size"]]
            began = time.perf_counter()
            out = peer.generate(**tokenizer(batch, padding=True, return_tensors="pt").to(model.device),
                                max_new_tokens=settings["max_new_tokens"], num_beams=settings["num_beams"])
            rows = [model.strip_generated(row) for row in out.tolist()]  # .tolist() waits for the device
            latencies += [time.perf_counter() - began] * len(batch)
            new_tokens += sum(map(len, rows))
            texts += tokenizer.batch_decode(rows, skip_special_tokens=True)
        return texts, new_tokens, latencies
    return run


def bench_generation(model, peer, prompts, settings: dict, repeats: int) -> dict:
    runs = {"ours": ours_pass(model, prompts, settings)}
    if peer is not None:
        runs["peer"] = peer_pass(peer, model, prompts, settings)
    warm = {**settings, "max_new_tokens": min(4, settings["max_new_tokens"])}
    ours_pass(model, prompts[: settings["batch_size"]], warm)()  # warm-up: allocator, kernels, caches
    if peer is not None:
        peer_pass(peer, model, prompts[: settings["batch_size"]], warm)()
    seconds = {name: [] for name in runs}
    latencies, tokens, texts = {name: [] for name in runs}, {}, {}
    for _ in range(repeats):  # A B A B ...: drift on a shared machine hits both alike
        for name, run in runs.items():
            with Stopwatch(model.device) as sw:
                texts[name], tokens[name], lat = run()
            seconds[name].append(sw.seconds)
            latencies[name] += lat
    row = {**settings}
    for name in runs:
        median = statistics.median(seconds[name])
        row[name] = {"pass_seconds": seconds[name], "requests_per_s": len(prompts) / median,
                     "new_tokens": tokens[name], "new_tokens_per_s": tokens[name] / median,
                     "request_latency": summarize(latencies[name])}
    if peer is not None:
        row["ratio"] = row["ours"]["requests_per_s"] / row["peer"]["requests_per_s"]
        row["same_text_as_peer"] = sum(a == b for a, b in zip(texts["ours"], texts["peer"])) / len(prompts)
    return row


def format_generation_row(row: dict) -> str:
    ours, text = row["ours"], f"{row['mode']:>6} (beams {row['num_beams']}): "
    text += (f"ours {ours['requests_per_s']:7.2f} req/s, {ours['new_tokens_per_s']:8.1f} tok/s, "
             f"p50 {ours['request_latency']['p50_ms']:.0f} ms, p99 {ours['request_latency']['p99_ms']:.0f} ms")
    if "peer" in row:
        text += (f" | transformers generate {row['peer']['requests_per_s']:7.2f} req/s | ratio x{row['ratio']:.2f}"
                 f" | same text {row['same_text_as_peer']:.0%}")
    return text


def plot(result: dict, title: str, path: Path) -> None:
    import matplotlib  # lazy: heavy, and only a run that plots needs it (never --help or a refused flag)

    matplotlib.use("Agg")  # before pyplot loads: no display is needed or assumed
    import matplotlib.pyplot as plt

    enc, gen = result["encoder"], result["generation"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [r["batch_size"] for r in enc]
    left.plot(sizes, [r["sequences_per_s"] for r in enc], "o-", label="sequences / s")
    left.set(xscale="log", xlabel="batch size", ylabel="sequences / s",
             title=f"encoder, {result['settings']['input_tokens']} tokens per input")
    left.set_xticks(sizes, [str(s) for s in sizes])
    left.legend()
    names = [f"{r['mode']} (beams {r['num_beams']})" for r in gen]
    x = range(len(gen))
    right.bar([i - 0.2 for i in x], [r["ours"]["requests_per_s"] for r in gen], 0.4, label=f"{MODEL_CLASS} (this port)")
    if gen and "peer" in gen[0]:
        right.bar([i + 0.2 for i in x], [r["peer"]["requests_per_s"] for r in gen], 0.4, label="transformers generate")
    right.set_xticks(list(x), names)
    right.set(ylabel="requests / s", title=f"generation, batch {result['settings']['gen_batch_size']}")
    right.legend()
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def parse_sizes(text: str, flag: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"{flag} {text!r} must be a comma-separated list of whole numbers >= 1, e.g. 1,8,32")
    return sizes


def check_settings(args, batch_sizes: list[int]) -> None:
    """Sizes past what the model takes or a machine holds, refused before the model loads (one line, exit 2).
    The encoder input is used as given (not truncated), so it must fit --max_input_length, the port's limit."""
    check_at_most(args.input_tokens, args.max_input_length, "--input_tokens",
                  "--max_input_length, the longest input this port feeds the model")
    for flag, value, limit, what in (
            ("--encoder_batch_sizes", max(batch_sizes), MAX_BATCH_SIZE, "the largest batch this benchmark runs"),
            ("--gen_batch_size", args.gen_batch_size, MAX_BATCH_SIZE, "the largest batch this benchmark runs"),
            ("--max_new_tokens", args.max_new_tokens, MAX_NEW_TOKENS_LIMIT, "this benchmark's generation limit"),
            ("--num_beams", args.num_beams, MAX_BEAMS, "this benchmark's beam limit")):
        check_at_most(value, limit, flag, what)


def check_input_limit(model: T5Summarizer, input_tokens: int) -> None:
    """The tokenizer's own model_max_length, when it has a finite one smaller than --max_input_length."""
    limit = getattr(model.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**9:
        check_at_most(input_tokens, limit, "--input_tokens", "the tokenizer's model_max_length")


def generation_settings(args) -> list[dict]:
    return [{"mode": mode, "num_beams": beams, "max_new_tokens": args.max_new_tokens,
             "batch_size": args.gen_batch_size} for mode, beams in (("greedy", 1), ("beam", args.num_beams))]


def baseline_run(args, batch_sizes, prompts, device) -> dict:
    """The same encoder inputs and generation requests on --baseline_device in fp32, with this port (no peer)."""
    began = time.perf_counter()
    model = T5Summarizer(args.model_path, str(device), BASELINE_DTYPE, args.max_input_length)
    print(f"baseline: the same workload on {device} {BASELINE_DTYPE}")
    encoder_rows = bench_encoder(model, batch_sizes, args.input_tokens, args.warmup, args.repeats)
    generation_rows = [bench_generation(model, None, prompts, settings, args.repeats)
                       for settings in generation_settings(args)]
    return baseline_record(device, time.perf_counter() - began, encoder=encoder_rows, generation=generation_rows)


def load_peer(model: T5Summarizer):
    return AutoModelForSeq2SeqLM.from_pretrained(model.model_dir, dtype=model.dtype,
                                                 trust_remote_code=False).to(model.device).eval()


def headline(generation_rows: list[dict], batch_size: int, baseline: dict | None) -> dict:
    """The overview's one figure: greedy generation, ours against transformers' generate (None without the peer),
    and this device against the CPU on the same row when --baseline_device cpu ran."""
    greedy = next(row for row in generation_rows if row["mode"] == "greedy")
    return add_device_vs_cpu({"metric": f"generation requests/s, greedy, batch {batch_size}", "peer": "model.generate",
                              "ratio": greedy.get("ratio")}, baseline, greedy.get("vs_baseline_device"))


def main(args) -> int:
    batch_sizes = parse_sizes(args.encoder_batch_sizes, "--encoder_batch_sizes")
    check_settings(args, batch_sizes)
    baseline_device = resolve_baseline_device(args.baseline_device)
    if args.output:
        check_result_outputs(args.output)
    model = T5Summarizer(args.model_path, args.device, args.dtype, args.max_input_length)
    check_input_limit(model, args.input_tokens)
    output = result_path(args.output, HERE, "benchmark", model.model_dir, model.device, model.dtype_name)
    check_result_outputs(output)
    peer = None if args.no_peer else load_peer(model)
    label = f"{model.device.type}_{model.dtype_name}"
    prompts = synthetic_prompts(args.requests)
    print(f"{label}: encoder at {batch_sizes} x {args.input_tokens} tokens; generation of {len(prompts)} requests, "
          f"batch {args.gen_batch_size}, up to {args.max_new_tokens} new tokens, {args.repeats} timed passes")
    reset_peak_memory(model.device)
    encoder_rows = bench_encoder(model, batch_sizes, args.input_tokens, args.warmup, args.repeats)
    for row in encoder_rows:
        tqdm.write(f"encoder batch {row['batch_size']:>3}: {row['sequences_per_s']:8.1f} seq/s, "
                   f"{row['tokens_per_s']:9.0f} tok/s, p50 {row['latency']['p50_ms']:.1f} ms")
    generation_rows = []
    for settings in tqdm(generation_settings(args), desc="generation", unit="mode"):
        generation_rows.append(bench_generation(model, peer, prompts, settings, args.repeats))
        tqdm.write(format_generation_row(generation_rows[-1]))
    memory = peak_memory(model.device)
    baseline = None
    if baseline_device is not None:
        baseline = baseline_run(args, batch_sizes, prompts, baseline_device)
        attach_baseline(encoder_rows, baseline["encoder"], "sequences_per_s")
        attach_baseline(generation_rows, baseline["generation"], "ours.requests_per_s")
        print(f"this device / {baseline['device']} fp32: encoder " + ", ".join(
            f"batch {r['batch_size']} {ratio_text(r['vs_baseline_device'])}" for r in encoder_rows) + "; generation "
            + ", ".join(f"{r['mode']} {ratio_text(r['vs_baseline_device'])}" for r in generation_rows))
    result = result_record(
        "benchmark", device=model.device, dtype=model.dtype_name, model=model.model_dir,
        headline=headline(generation_rows, args.gen_batch_size, baseline), label=label,
        parameters=sum(p.numel() for p in model.model.parameters()),
        settings={"input_tokens": args.input_tokens, "requests": len(prompts), "seed": SEED,
                  "gen_batch_size": args.gen_batch_size, "max_new_tokens": args.max_new_tokens,
                  "repeats": args.repeats, "warmup": args.warmup, "peer": peer is not None},
        peak_memory=memory, encoder=encoder_rows, generation=generation_rows,
        **({"baseline_device": baseline} if baseline else {}))
    write_json(output, result)
    title = f"{Path(str(model.model_dir)).name} ({result['weights']}) {label} on {device_name(model.device)}"
    plot(result, title, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"Benchmark {MODEL_NAME} (or any T5-family model): encoder sweep, generation "
                                   "vs transformers generate.")
    add_model_args(p)
    p.add_argument("--encoder_batch_sizes", default=DEFAULT_ENCODER_BATCH_SIZES, help="comma-separated, e.g. 1,4,16")
    p.add_argument("--input_tokens", type=positive_int, default=DEFAULT_INPUT_TOKENS, help="encoder input length")
    p.add_argument("--requests", type=positive_int, default=DEFAULT_REQUESTS, help="generation prompts per pass")
    p.add_argument("--gen_batch_size", type=positive_int, default=DEFAULT_GEN_BATCH_SIZE)
    p.add_argument("--max_new_tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--num_beams", type=positive_int, default=DEFAULT_BEAMS, help="beam width of the beam-search row")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed passes / calls per configuration")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed encoder calls per batch size")
    p.add_argument("--no_peer", action="store_true", help="skip the plain transformers comparison")
    p.add_argument("--output", help="result JSON (default results/benchmark_<model>_<device>_<dtype>.json)")
    add_baseline_device_arg(p)
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
