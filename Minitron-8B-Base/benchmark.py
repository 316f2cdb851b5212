"""Serving-style latency of Minitron-8B-Base: TTFT, TPOT, ITL, E2E and throughput, default `generate` vs a faster
decode path (static KV cache + torch.compile), measured interleaved in the same run. JSON + PNG.

    python benchmark.py --input_tokens 128 --output_tokens 128 --num_requests 20 --batch_size 1 --device npu
    python benchmark.py --model_path smollm2 --num_requests 10                 # real SmolLM2-135M, CPU

Every request is a prompt of exactly --input_tokens random token ids (seeded) and generates exactly
--output_tokens tokens (end-of-sequence is ignored), so every figure is over the same work. Requests run in batches
of --batch_size, one after the other (no concurrency); a request's times are those of its batch.
  * TTFT: start -> first new token on the host; E2E: start -> last token; TPOT = (E2E - TTFT) / (out - 1);
    ITL: the gaps between consecutive tokens. mean, median, p90, p99 over requests (ITL over all gaps).
  * output tokens/s = generated tokens / wall time, total tokens/s counts the prompt too; requests/s.
  * decode tokens/s = batch x (out - 1) / (E2E - TTFT): the figure the fast path is judged on.
  * peak device memory (CPU: process peak RSS) next to the weights' own size, parameters x bytes per element.
Paths: `generate` is `model.generate(...)` with its default dynamic cache; `static` is this port's loop: a
StaticCache sized for the request, prefill, then a torch.compile'd one-token step (greedy argmax, no logits
processors; on CPU with inductor freezing and the C++ wrapper). Compilation runs in the warm-up and is reported
separately. Both paths decode by plain argmax (the checkpoint's generation_config processors, such as Qwen2.5's
repetition penalty, are switched off for `generate`), so both must give the same tokens. The identical requests are
counted, and where two continuations part, both paths are replayed teacher-forced on generate's tokens: the parting
must start at a near-tie (common.parity.near_tie, the rule every parity check here shares: generate's margin
between the two tokens is within NEAR_TIE_FACTOR x the largest difference between the two paths' logits there).
The copy bandwidth of a 256 MiB tensor is measured too: weights / bandwidth bounds the decode step from below.
--output_tokens must be >= 2: with one token there is no decode step, so TPOT, ITL and the decode speed-up (the
headline) would be undefined. Prompt + output must fit the model's context (config.max_position_embeddings), checked
from config.json before the weights load. --baseline_device cpu runs the same requests on both paths again on the
CPU in fp32 (`baseline_device` in the JSON; `vs_baseline_device` per path = this device's decode tokens/s / the CPU's).
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import StaticCache

from common.device import empty_cache, peak_memory, reset_peak_memory, synchronize
from common.cli import ArgumentParser, UserError, check_at_most, non_negative_int, positive_int, run_main
from common.parity import NEAR_TIE_FACTOR, first_divergence, near_tie
from common.results import check_result_outputs, model_tag, result_path, result_record, save_figure, write_json
from common.bench import (BASELINE_DTYPE, add_baseline_device_arg, add_device_vs_cpu, attach_baseline,
                          baseline_record, ratio_text, request_aggregate, request_metrics, resolve_baseline_device)
from common.timing import copy_bandwidth_gbs
from inference import CausalLM, add_model_args, check_context, plain_greedy

HERE = Path(__file__).resolve().parent
SEED = 0  # the random prompts: every run times the same work
PATHS = ("generate", "static")
MIN_OUTPUT_TOKENS = 2  # TPOT, ITL and decode tokens/s time the steps after the first token: one token has none
MAX_BATCH_SIZE = 1024  # requests per batch: no model limit; past this the KV cache alone risks the OOM killer
MAX_NUM_REQUESTS = 100_000  # every prompt is drawn up front, and the run takes hours long before this


class _TokenClock:
    """A generate() streamer that timestamps each new token (the first put() is the prompt)."""

    def __init__(self, device):
        self.device, self.times, self._prompt_seen = device, [], False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self):
        pass


def random_prompts(lm: CausalLM, n: int, length: int, seed: int = SEED) -> torch.Tensor:
    """n x length token ids drawn from the ordinary (non-special) vocabulary."""
    special = set(lm.tokenizer.all_special_ids)
    vocab = [i for i in range(min(len(lm.tokenizer), lm.model.config.vocab_size)) if i not in special]
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.choice(vocab, size=(n, length)).astype(np.int64))


def run_generate(lm: CausalLM, ids: torch.Tensor, out_tokens: int):
    clock = _TokenClock(lm.device)
    ids = ids.to(lm.device)
    synchronize(lm.device)
    start = time.perf_counter()
    with torch.inference_mode(), plain_greedy(lm.model):
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=out_tokens,
                                min_new_tokens=out_tokens, do_sample=False, streamer=clock)
    return out[:, ids.shape[1]:].cpu(), start, clock.times


class StaticDecoder:
    """Greedy decoding with a StaticCache and a compiled single-token step (the fixed shapes compile once)."""

    def __init__(self, lm: CausalLM, compile: bool = True):
        self.lm, self.model = lm, lm.model
        self.compiled = compile and lm.device.type != "mps"  # inductor has no MPS backend
        if self.compiled and lm.device.type == "cpu":
            import torch._inductor.config as inductor_config  # lazy: loads inductor (~1 s), for this path only

            inductor_config.freezing = True  # weights become constants: oneDNN-prepacked linears on CPU
            inductor_config.cpp_wrapper = True  # the compiled step is called from C++, not a Python wrapper
        self.step = torch.compile(self._step, dynamic=False, fullgraph=False) if self.compiled else self._step
        # what generate(min_new_tokens=out) does: end-of-sequence can never be chosen, so both paths pick the same
        eos = lm.model.generation_config.eos_token_id
        self.banned = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos),
                                   dtype=torch.long, device=lm.device)
        self.cache, self.cache_key = None, None

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy token from next-token logits (batch, vocab) with end-of-sequence masked out (-inf), as
        min_new_tokens does."""
        return logits.index_fill(-1, self.banned, float("-inf")).argmax(-1, keepdim=True)

    def _step(self, token, position, cache):
        """One token per row through the model with the static cache: the next-token logits (batch, vocab). The
        logits, not the pick, leave the compiled graph, so the divergence check can replay this very step."""
        return self.model(input_ids=token, position_ids=position[None].expand(token.shape[0], 1),
                          cache_position=position, past_key_values=cache, use_cache=True).logits[:, -1]

    def _prefill(self, ids: torch.Tensor, cache) -> torch.Tensor:
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
                          cache_position=torch.arange(ids.shape[1], device=ids.device)).logits[:, -1]

    def _cache(self, batch: int, length: int):
        key = (batch, length)
        if self.cache_key != key:  # reused between requests of the same shape (compiled graphs see the same buffers)
            self.cache = StaticCache(config=self.model.config, max_cache_len=length)
            self.cache_key = key
        else:
            self.cache.reset()
        return self.cache

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, out_tokens: int):
        device = self.lm.device
        ids = ids.to(device)
        batch, length = ids.shape
        synchronize(device)
        start = time.perf_counter()
        cache = self._cache(batch, length + out_tokens)
        token = self._pick(self._prefill(ids, cache))
        tokens, times = [token], []
        synchronize(device)
        times.append(time.perf_counter())
        for i in range(out_tokens - 1):
            token = self._pick(self.step(token, torch.tensor([length + i], device=device), cache))
            tokens.append(token)
            synchronize(device)
            times.append(time.perf_counter())
        return torch.cat(tokens, dim=1).cpu(), start, times

    @torch.inference_mode()
    def forced_logits(self, ids: torch.Tensor, forced: torch.Tensor, out_tokens: int, steps: int) -> torch.Tensor:
        """This path's next-token logits at output positions 0..steps-1, teacher-forced on `forced` (batch x
        out_tokens, e.g. generate's tokens): (batch, steps, vocab) float32 on the CPU. The cache has the timed
        calls' shape, so the compiled step is reused, not compiled again."""
        device = self.lm.device
        ids, forced = ids.to(device), forced.to(device)
        length = ids.shape[1]
        cache = self._cache(ids.shape[0], length + out_tokens)
        rows = [self._prefill(ids, cache).float().cpu()]
        for i in range(steps - 1):
            token = forced[:, i:i + 1].clone(memory_format=torch.contiguous_format)  # the timed calls' strides
            rows.append(self.step(token, torch.tensor([length + i], device=device), cache).float().cpu())
        return torch.stack(rows, dim=1)


@torch.inference_mode()
def generate_path_logits(lm: CausalLM, ids: torch.Tensor, forced: torch.Tensor, steps: int) -> torch.Tensor:
    """What model.generate computes, teacher-forced on `forced`: prefill, then one token at a time with the default
    dynamic cache and a growing attention mask. (batch, steps, vocab) float32 on the CPU."""
    ids, forced = ids.to(lm.device), forced.to(lm.device)
    mask = torch.ones_like(ids)
    out = lm.model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    rows = [out.logits[:, -1].float().cpu()]
    for i in range(steps - 1):
        mask = torch.cat((mask, mask[:, :1]), dim=1)
        out = lm.model(input_ids=forced[:, i:i + 1], attention_mask=mask, past_key_values=out.past_key_values,
                       use_cache=True)
        rows.append(out.logits[:, -1].float().cpu())
    return torch.stack(rows, dim=1)


def divergences(lm: CausalLM, fast: StaticDecoder, ids: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor,
                first_request: int) -> list[dict]:
    """Every request of a batch whose static tokens (`ours`) part from generate's (`theirs`): where, the two
    tokens, and the shared near-tie verdict there, on both paths' logits teacher-forced on generate's tokens
    (generate's are the reference: its margin between its token and ours, against the largest logit difference
    between the paths at that position). A parting that is not at a near-tie is a bug in the fast path."""
    parted = {r: first_divergence(ours[r].tolist(), theirs[r].tolist()) for r in range(len(ids))
              if not torch.equal(ours[r], theirs[r])}
    if not parted:
        return []
    steps = max(parted.values()) + 1
    static = fast.forced_logits(ids, theirs, theirs.shape[1], steps)
    dynamic = generate_path_logits(lm, ids, theirs, steps)
    return [{"request": first_request + r, "position": k, "tokens": [int(ours[r, k]), int(theirs[r, k])],
             **near_tie(dynamic[r, k], static[r, k], int(theirs[r, k]), int(ours[r, k]))}
            for r, k in parted.items()]


def plot(result: dict, path: Path) -> None:
    import matplotlib  # lazy: heavy, and only a run that plots needs it (never --help or a refused flag)

    matplotlib.use("Agg")  # before pyplot loads: no display is needed or assumed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [p for p in PATHS if p in result["paths"]]
    x = np.arange(len(names))
    for offset, (key, label) in zip((-0.2, 0.2), (("ttft", "TTFT"), ("tpot", "TPOT"))):
        left.bar(x + offset, [result["paths"][n][key]["p50_ms"] for n in names], 0.4, label=f"{label} median")
    left.set_xticks(x, names)
    left.set(ylabel="ms", title="latency per request")
    left.legend()
    right.bar(x, [result["paths"][n]["decode_tokens_per_s"] for n in names])
    right.set_xticks(x, names)
    right.set(ylabel="tokens / s", title=f"decode throughput (x{result['speedup_decode']:.2f})")
    s = result["settings"]
    fig.suptitle(f"{result['model_name']} on {result['meta']['device_name']}, {result['meta']['dtype']}, "
                 f"{s['input_tokens']} in / {s['output_tokens']} out, batch {s['batch_size']}", fontsize=9)
    save_figure(fig, path)


def check_settings(args) -> None:
    """Every size refused before the weights load: one line that names the limit, exit 2."""
    if args.output_tokens < MIN_OUTPUT_TOKENS:
        raise UserError(f"--output_tokens {args.output_tokens}: the benchmark needs at least {MIN_OUTPUT_TOKENS} "
                        "(TPOT, ITL and decode tokens/s time the steps after the first token); use 2 or more")
    check_at_most(args.batch_size, MAX_BATCH_SIZE, "--batch_size", "the largest batch this benchmark runs")
    check_at_most(args.num_requests, MAX_NUM_REQUESTS, "--num_requests", "this benchmark's request limit")
    if args.num_requests % args.batch_size:
        raise UserError(f"--num_requests ({args.num_requests}) must be a multiple of --batch_size ({args.batch_size})")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--input_tokens", type=positive_int, default=128)
    parser.add_argument("--output_tokens", type=positive_int, default=128)
    parser.add_argument("--num_requests", type=positive_int, default=20)
    parser.add_argument("--batch_size", type=positive_int, default=1)
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed batches per path (compiles)")
    parser.add_argument("--no_compile", action="store_true", help="static cache without torch.compile")
    parser.add_argument("--output", default=None,
                        help="result JSON (default results/benchmark_<model>_<device>_<dtype>.json)")
    parser.add_argument("--no_plot", action="store_true")
    add_baseline_device_arg(parser)
    return parser


def time_paths(runners: dict, prompts: torch.Tensor, args, lm: CausalLM, fast: StaticDecoder):
    """The timed loop: every batch on both paths, interleaved in alternating order so that drift hits both;
    the greedy tokens compared (outside the timed region). Returns (rows, wall seconds, identical, divergences)."""
    rows, wall = {name: [] for name in PATHS}, {name: 0.0 for name in PATHS}
    identical, parted = 0, []
    bar = tqdm(total=args.num_requests // args.batch_size, desc="benchmark", unit="batch", file=sys.stderr)
    for first in range(0, args.num_requests, args.batch_size):
        ids = prompts[first: first + args.batch_size]
        outs = {}
        for name in (PATHS if (first // args.batch_size) % 2 == 0 else PATHS[::-1]):
            tokens, start, times = runners[name](ids)
            wall[name] += times[-1] - start
            assert tokens.shape == (len(ids), args.output_tokens), tokens.shape
            rows[name].extend([request_metrics(start, times, len(ids))] * len(ids))  # one row per request
            outs[name] = tokens
        found = divergences(lm, fast, ids, outs["static"], outs["generate"], first)
        identical += len(ids) - len(found)
        parted += found
        bar.update(1)
        bar.set_postfix(ratio=f"{rows['generate'][-1]['tpot_s'] / rows['static'][-1]['tpot_s']:.2f}"
                        if args.output_tokens > 1 else "-")
    bar.close()
    return rows, wall, identical, parted


def greedy_check(identical: int, requests: int, parted: list[dict]) -> str:
    text = f"{identical}/{requests} identical"
    if parted:
        text += (f", {sum(d['near_tie'] for d in parted)}/{len(parted)} others part at a near-tie (margin <= "
                 f"{NEAR_TIE_FACTOR:g} x logit difference)")
    return text


def measure(lm: CausalLM, prompts: torch.Tensor, args) -> tuple[dict, StaticDecoder, int, list]:
    """Warm-up, then the timed loop on both paths: (per-path statistics, the fast decoder, identical requests,
    divergences)."""
    fast = StaticDecoder(lm, compile=not args.no_compile)
    runners = {"generate": lambda ids: run_generate(lm, ids, args.output_tokens),
               "static": lambda ids: fast(ids, args.output_tokens)}
    warm = {}
    for name, runner in runners.items():
        began = time.perf_counter()
        for _ in range(args.warmup):
            runner(prompts[: args.batch_size])
        warm[name] = time.perf_counter() - began
    rows, wall, identical, parted = time_paths(runners, prompts, args, lm, fast)
    paths = {name: {**request_aggregate(rows[name], args.num_requests, args.batch_size, args.input_tokens,
                                args.output_tokens, wall[name]), "warmup_s": warm[name]} for name in PATHS}
    return paths, fast, identical, parted


def baseline_run(args, prompts: torch.Tensor, device) -> dict:
    """The same requests on both paths on --baseline_device in fp32 (same warm-up, same compile setting)."""
    began = time.perf_counter()
    lm = CausalLM(args.model_path, device=str(device), dtype=BASELINE_DTYPE)
    print(f"baseline: the same requests on {device} {BASELINE_DTYPE}")
    paths, fast, identical, parted = measure(lm, prompts, args)
    return baseline_record(device, time.perf_counter() - began, compiled=fast.compiled,
                           greedy_check=greedy_check(identical, args.num_requests, parted),
                           paths_list=[{"path": name, **paths[name]} for name in PATHS])


def build_result(lm: CausalLM, args, measured: tuple, memory: dict, bandwidth: float) -> dict:
    paths, fast, identical, parted = measured
    gen, sta = paths["generate"]["decode_tokens_per_s"], paths["static"]["decode_tokens_per_s"]
    speedup = (sta / gen) if gen and sta else None
    headline = {"metric": "decode tokens/s, static cache" + (" + compile" if fast.compiled else " (eager)"),
                "peer": "model.generate", "ratio": speedup}
    return result_record(
        "benchmark", device=lm.device, dtype=lm.dtype_name, model=lm.spec, headline=headline,
        model_name=model_tag(lm.spec), source=str(lm.source),
        settings={"input_tokens": args.input_tokens, "output_tokens": args.output_tokens,
                  "num_requests": args.num_requests, "batch_size": args.batch_size, "warmup": args.warmup,
                  "compiled": fast.compiled},
        paths=paths, paths_list=[{"path": name, **paths[name]} for name in PATHS], speedup_decode=speedup,
        speedup_e2e=paths["generate"]["e2e"]["mean_ms"] / paths["static"]["e2e"]["mean_ms"],
        greedy_identical_requests=identical, greedy_identical=identical == args.num_requests,
        greedy_divergences=parted, greedy_unexplained=sum(not d["near_tie"] for d in parted),
        greedy_check=greedy_check(identical, args.num_requests, parted),
        memory={**memory, "weights_mib": lm.weight_bytes() / 2**20, "parameters": lm.num_parameters()},
        roofline={"copy_bandwidth_gbs": bandwidth,
                  "max_decode_tokens_per_s": args.batch_size * bandwidth * 1e9 / lm.weight_bytes()})


def add_baseline(result: dict, baseline: dict) -> None:
    """The baseline block, and per path this device's decode tokens/s over the baseline's (the headline: static)."""
    paths = result["paths"]
    attach_baseline([paths[name] for name in PATHS], baseline["paths_list"], "decode_tokens_per_s")
    result["paths_list"] = [{"path": name, **paths[name]} for name in PATHS]
    result["baseline_device"] = baseline
    add_device_vs_cpu(result["headline"], baseline, paths["static"]["vs_baseline_device"])


def main(args) -> int:
    check_settings(args)
    baseline_device = resolve_baseline_device(args.baseline_device)
    if args.output:
        check_result_outputs(args.output, plot=not args.no_plot)
    # before the weights load (minutes for 8B): a prompt past the context would OOM or run without end
    lm = CausalLM(args.model_path, device=args.device, dtype=args.dtype, before_weights=lambda tokenizer, config:
                  check_context(config, args.input_tokens + args.output_tokens, "--input_tokens + --output_tokens",
                                tokenizer))
    output = result_path(args.output, HERE, "benchmark", lm.spec, lm.device, lm.dtype_name)
    check_result_outputs(output, plot=not args.no_plot)
    prompts = random_prompts(lm, args.num_requests, args.input_tokens)
    reset_peak_memory(lm.device)
    measured = measure(lm, prompts, args)
    memory = peak_memory(lm.device)
    result = build_result(lm, args, measured, memory, copy_bandwidth_gbs(lm.device))
    if baseline_device is not None:
        device = lm.device
        del lm, measured  # the baseline loads its own copy: free this one first (an 8B model twice may not fit)
        gc.collect()
        empty_cache(device)
        add_baseline(result, baseline_run(args, prompts, baseline_device))
    write_json(output, result)
    if not args.no_plot:
        plot(result, output.with_suffix(".png"))
    print_summary(result, output)
    return 0


def print_summary(result: dict, output: Path) -> None:
    for name in PATHS:
        p = result["paths"][name]
        print(f"{name:9s} TTFT p50 {p['ttft']['p50_ms']:.1f} ms  TPOT p50 {p['tpot'].get('p50_ms', float('nan')):.2f} "
              f"ms  E2E p50 {p['e2e']['p50_ms']:.0f} ms  decode {p['decode_tokens_per_s'] or 0:.1f} tok/s  "
              f"output {p['output_tokens_per_s']:.1f} tok/s  {p['requests_per_s']:.3f} req/s")
    if result["speedup_decode"]:
        print(f"static/generate decode speed-up x{result['speedup_decode']:.2f}; greedy: {result['greedy_check']}")
    roofline, memory = result["roofline"], result["memory"]
    print(f"memory-bandwidth bound: {roofline['copy_bandwidth_gbs']:.1f} GB/s copy -> at most "
          f"{roofline['max_decode_tokens_per_s']:.1f} decode tokens/s at batch {result['settings']['batch_size']}")
    print(f"peak memory {memory['peak_mib']:.0f} MiB ({memory['source']}); weights {memory['weights_mib']:.0f} MiB")
    if "baseline_device" in result:
        print(f"this device / {result['baseline_device']['device']} fp32 decode tokens/s: " + ", ".join(
            f"{name} {ratio_text(result['paths'][name]['vs_baseline_device'])}" for name in PATHS))
    print(f"wrote {output}")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
