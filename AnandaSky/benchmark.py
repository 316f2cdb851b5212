"""AnandaSky speed: load time, per-image latency percentiles, generated tokens/s and peak memory over image sizes.

    python benchmark.py --model_path models/AnandaSky --device npu                       # bf16 on accelerators
    python benchmark.py --model_path test_checkpoint --sizes 32x256 64x1024 --images 6    # the CPU test checkpoint

For every size (height x width of a rendered text line; the uw3_500 lines are 28-88 px high and up to 2,227 px
wide) the same `--images` images are recognised two ways, interleaved so that machine drift hits both:
  * single: one image per call, as a user looping over files would: TTFT (image load + preprocessing + vision
    encoder + prefill, timed as a 1-token generate), end to end with exactly --new-tokens tokens (EOS ignored, so
    every size generates the same amount), and decode tokens/s = (new_tokens - 1) / (E2E - TTFT);
  * packed: all the size's images in one call, their patches packed into one vision-encoder pass (the code that
    replaced flash_attn_varlen_func) and their prompts left-padded into one generate: images/s, as a ratio to single.
There is no other implementation to compare with: the upstream code needs flash_attn, which does not run here. The
headline ratio is packed / single images/s at the largest size (most pixels): the conservative one, since packing
gains most on small images (every size's ratio is in the JSON). --baseline_device cpu times the same images again on
the CPU in fp32 (`baseline_device` in the JSON; per size `vs_baseline_device` = this device's single images/s / the
CPU's, `vs_baseline_device_packed` the same for packed). Sizes are refused past processor.MAX_INPUT_PIXELS per image
and MAX_RENDERED_BYTES per size, and prompt + --new_tokens past the text model's context, before the long work.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from common.device import peak_memory, reset_peak_memory, synchronize
from common.cli import ArgumentParser, UserError, check_at_most, non_negative_int, positive_int, run_main
from common.results import check_result_outputs, model_tag, result_path, result_record, save_figure, write_json
from common.bench import (BASELINE_DTYPE, add_baseline_device_arg, add_device_vs_cpu, attach_baseline,
                          baseline_record, ratio_text, resolve_baseline_device, speed_ratio)
from common.timing import Stopwatch, summarize
from inference import DEFAULT_PROMPT, AnandaSkyOCR, add_model_args
from processor import MAX_INPUT_PIXELS

HERE = Path(__file__).resolve().parent

DEFAULT_SIZES = ("32x256", "48x640", "64x1280", "80x2048")  # height x width in pixels: short to page-wide lines
DEFAULT_IMAGES = 8  # images per size (each timed alone, then all packed in one call)
DEFAULT_NEW_TOKENS = 32  # generated per image, EOS ignored
DEFAULT_WARMUP = 2  # untimed single calls before the first size (allocator, kernel selection)
# Every image is resized to at most the processor's max_pixels before the model, so a larger one only times the resize;
# the port refuses input images past processor.MAX_INPUT_PIXELS (PIL's decompression-bomb limit): so does --sizes.
MAX_RENDERED_BYTES = 4 * 2**30  # --images RGB renders of one size are held at once (plus the packed batch): 4 GiB
LINE_TEXT = ("Printed lines of a technical report, page 7: results of the 2019 survey (n = 1,284) show that "
             "throughput rose by 31.5% while latency fell from 42 ms to 17 ms.")


def parse_size(text: str) -> tuple[int, int]:
    """'64x1280' -> (64, 1280); argparse turns the UserError into one line and exit 2."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--sizes takes HEIGHTxWIDTH in pixels, e.g. 64x1280; got {text!r}") from None
    if height < 1 or width < 1:
        raise UserError(f"--sizes {text!r}: height and width must be >= 1")
    check_at_most(height * width, MAX_INPUT_PIXELS, f"--sizes {text}: its pixel count",
                  "the largest image this port reads (processor.MAX_INPUT_PIXELS)")
    return height, width


def check_sizes(sizes: list[tuple[int, int]], images: int) -> None:
    """All --images renders of the largest size must fit in memory at once (refused before the model loads)."""
    height, width = max(sizes, key=lambda hw: hw[0] * hw[1])
    need = images * height * width * 3
    if need > MAX_RENDERED_BYTES:
        raise UserError(f"--images {images} at {height}x{width} need {need / 2**30:.1f} GiB of rendered RGB, past this "
                        f"benchmark's {MAX_RENDERED_BYTES / 2**30:.0f} GiB (MAX_RENDERED_BYTES); use fewer images or "
                        "smaller sizes")


def check_context(ocr: AnandaSkyOCR, sizes: list[tuple[int, int]], new_tokens: int) -> None:
    """Prompt (with the largest size's image tokens) + --new_tokens must fit the model's context length, the one
    the processor enforces for every input (processor.context_length)."""
    limit = ocr.processor.context_length
    if limit is not None:
        prompt = ocr.encode(line_images(*max(sizes, key=lambda hw: hw[0] * hw[1]), 1), DEFAULT_PROMPT)
        check_at_most(new_tokens, limit - prompt["input_ids"].shape[1], "--new_tokens",
                      f"the model's context ({limit} positions) less the largest size's "
                      f"{prompt['input_ids'].shape[1]}-token prompt")


def line_images(height: int, width: int, count: int) -> list:
    """`count` different text lines rendered black on white at exactly height x width (deterministic)."""
    font_px = max(8, int(height * 0.6))
    try:
        font = ImageFont.load_default(size=font_px)
    except TypeError:  # Pillow < 10.1: only the small bitmap font
        font = ImageFont.load_default()
    words = LINE_TEXT.split()
    images = []
    for i in range(count):
        text = " ".join(words[i % len(words):] + words[: i % len(words)])  # a different rotation of the words
        image = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(image).text((4, max(0, (height - font_px) // 2 - 1)), text, fill="black", font=font)
        images.append(image)
    return images


def generate(ocr: AnandaSkyOCR, images: list, new_tokens: int) -> tuple[torch.Tensor, dict]:
    """Exactly `new_tokens` greedy tokens per image (min = max, so EOS cannot stop early), from the raw images."""
    batch = ocr.encode(images, DEFAULT_PROMPT)
    out = ocr.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=ocr.processor.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:], batch


@torch.inference_mode()
def time_size(ocr: AnandaSkyOCR, images: list, new_tokens: int) -> dict:
    """Single (TTFT, E2E per image) and packed (all images, one call) timings, interleaved per image."""
    ttft, e2e = [], []
    packed_s = []
    for i, image in enumerate(images):
        with Stopwatch(ocr.device) as sw:
            generate(ocr, [image], 1)
        ttft.append(sw.seconds)
        with Stopwatch(ocr.device) as sw:
            tokens, batch = generate(ocr, [image], new_tokens)
        e2e.append(sw.seconds)
        assert tokens.shape == (1, new_tokens), tokens.shape
        if i == len(images) // 2:  # the packed call sits in the middle of the single ones
            with Stopwatch(ocr.device) as sw:
                packed, _ = generate(ocr, images, new_tokens)
            packed_s.append(sw.seconds)
            assert packed.shape == (len(images), new_tokens), packed.shape
    decode = [(new_tokens - 1) / (e - t) for e, t in zip(e2e, ttft) if e > t and new_tokens > 1]
    single_per_s = len(images) / sum(e2e)
    packed_per_s = len(images) / packed_s[0]
    return {"patches_per_image": int(batch["image_grid_hw"].prod(dim=1)[0]), "prompt_tokens": batch["input_ids"].shape[1],
            "ttft": summarize(ttft), "e2e": summarize(e2e),
            "decode_tokens_per_s": float(np.median(decode)) if decode else None,
            "single_images_per_s": single_per_s, "packed_images_per_s": packed_per_s,
            "packed_speedup": packed_per_s / single_per_s,
            "packed_tokens_per_s": len(images) * new_tokens / packed_s[0]}


def plot(result: dict, path: Path) -> None:
    import matplotlib  # lazy: heavy, and only a run that plots needs it (never --help or a refused flag)

    matplotlib.use("Agg")  # before pyplot loads: no display is needed or assumed
    import matplotlib.pyplot as plt

    rows = result["sizes"]
    labels = [r["size"] for r in rows]
    x = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, key, label in ((-0.2, "ttft", "TTFT"), (0.2, "e2e", "end to end")):
        p50 = np.array([r[key]["p50_ms"] for r in rows])
        p90 = np.array([r[key]["p90_ms"] for r in rows])
        left.bar(x + offset, p50, 0.4, yerr=[np.zeros_like(p50), p90 - p50], capsize=3, label=f"{label} p50 (bar to p90)")
    left.set_xticks(x, labels)
    left.set(xlabel="image height x width (px)", ylabel="ms per image", title="single-image latency")
    left.legend(fontsize=8)
    right.bar(x - 0.2, [r["single_images_per_s"] for r in rows], 0.4, label="one image per call")
    right.bar(x + 0.2, [r["packed_images_per_s"] for r in rows], 0.4, label=f"{result['settings']['images']} packed")
    right.set_xticks(x, labels)
    right.set(xlabel="image height x width (px)", ylabel="images / s", title="throughput")
    right.legend(fontsize=8)
    meta = result["meta"]
    fig.suptitle(f"{result['model_name']} on {meta['device_name']}, {meta['dtype']}, "
                 f"{result['settings']['new_tokens']} new tokens per image", fontsize=9)
    save_figure(fig, path)


def measure(ocr: AnandaSkyOCR, sizes, args) -> list[dict]:
    """Warm-up on the first size, then every size: the rows of the result."""
    warm = line_images(*sizes[0], 1)
    for _ in range(args.warmup):
        with torch.inference_mode():
            generate(ocr, warm, args.new_tokens)
    return [{"size": f"{height}x{width}", **time_size(ocr, line_images(height, width, args.images), args.new_tokens)}
            for height, width in tqdm(sizes, desc="sizes", unit="size", file=sys.stderr)]


def baseline_run(args, sizes, device) -> dict:
    """The same images, warm-up and tokens on --baseline_device in fp32, with the same modeling code."""
    began = time.perf_counter()
    ocr = AnandaSkyOCR(args.model_path, device=str(device), dtype=BASELINE_DTYPE, remote_code=args.remote_code)
    print(f"baseline: the same images on {device} {BASELINE_DTYPE}")
    rows = measure(ocr, sizes, args)
    return baseline_record(device, time.perf_counter() - began, sizes=rows)


def add_baseline(rows: list[dict], baseline: dict) -> None:
    attach_baseline(rows, baseline["sizes"], "single_images_per_s")
    for row, base in zip(rows, baseline["sizes"]):
        row["baseline_device"]["packed_images_per_s"] = base["packed_images_per_s"]
        row["vs_baseline_device_packed"] = speed_ratio(row["packed_images_per_s"], base["packed_images_per_s"])


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="HEIGHTxWIDTH of the line images")
    parser.add_argument("--images", type=positive_int, default=DEFAULT_IMAGES, help="images per size")
    parser.add_argument("--new_tokens", type=positive_int, default=DEFAULT_NEW_TOKENS,
                        help="tokens generated per image (EOS ignored)")
    parser.add_argument("--warmup", type=non_negative_int, default=DEFAULT_WARMUP)
    parser.add_argument("--output", default=None,
                        help="result JSON (default results/benchmark_<model>_<device>_<dtype>.json)")
    parser.add_argument("--no_plot", action="store_true")
    add_baseline_device_arg(parser)
    return parser


def main(args) -> int:
    sizes = [parse_size(s) for s in args.sizes]
    check_sizes(sizes, args.images)
    baseline_device = resolve_baseline_device(args.baseline_device)
    if args.output:
        check_result_outputs(args.output, plot=not args.no_plot)
    began = time.perf_counter()
    ocr = AnandaSkyOCR(args.model_path, device=args.device, dtype=args.dtype, remote_code=args.remote_code)
    synchronize(ocr.device)
    load_s = time.perf_counter() - began
    check_context(ocr, sizes, args.new_tokens)
    output = result_path(args.output, HERE, "benchmark", ocr.folder, ocr.device, ocr.dtype_name,
                         "_remote_code" if args.remote_code else "")
    check_result_outputs(output, plot=not args.no_plot)
    reset_peak_memory(ocr.device)
    rows = measure(ocr, sizes, args)
    memory = peak_memory(ocr.device)
    weights_mib = sum(p.numel() * p.element_size() for p in ocr.model.parameters()) / 2**20
    largest = max(rows, key=lambda r: np.prod(parse_size(r["size"])))
    headline = {"metric": f"images/s packed vs one at a time ({args.images} images at the largest size, "
                          f"{largest['size']})", "peer": "single-image generate", "ratio": largest["packed_speedup"]}
    baseline = None
    if baseline_device is not None:
        baseline = baseline_run(args, sizes, baseline_device)
        add_baseline(rows, baseline)
        add_device_vs_cpu(headline, baseline, largest["vs_baseline_device_packed"])
    result = result_record("benchmark", device=ocr.device, dtype=ocr.dtype_name, model=ocr.folder, headline=headline,
                           model_name=model_tag(ocr.folder), model_path=str(ocr.folder),
                           settings={"images": args.images, "new_tokens": args.new_tokens, "warmup": args.warmup,
                                     "prompt": DEFAULT_PROMPT},
                           load_s=load_s, parameters=ocr.num_parameters(), sizes=rows,
                           memory={**memory, "weights_mib": weights_mib}, **ocr.describe(),
                           **({"baseline_device": baseline} if baseline else {}))
    write_json(output, result)
    if not args.no_plot:
        plot(result, output.with_suffix(".png"))
    print(f"load {load_s:.2f} s, {result['parameters'] / 1e6:.1f}M parameters, {ocr.device} {ocr.dtype_name}")
    for r in rows:
        print(f"{r['size']:>8s} ({r['patches_per_image']:4d} patches): TTFT p50 {r['ttft']['p50_ms']:.0f} ms  "
              f"E2E p50 {r['e2e']['p50_ms']:.0f} p90 {r['e2e']['p90_ms']:.0f} p99 {r['e2e']['p99_ms']:.0f} ms  "
              f"decode {r['decode_tokens_per_s'] or 0:.1f} tok/s  packed x{r['packed_speedup']:.2f} "
              f"({r['packed_images_per_s']:.2f} vs {r['single_images_per_s']:.2f} images/s)")
    print(f"peak memory {memory['peak_mib']:.0f} MiB ({memory['source']}); weights {weights_mib:.0f} MiB")
    if baseline:
        print(f"this device / {baseline['device']} fp32 images/s (single, packed): " + ", ".join(
            f"{r['size']} {ratio_text(r['vs_baseline_device'])} {ratio_text(r['vs_baseline_device_packed'])}"
            for r in rows))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
