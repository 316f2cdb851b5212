"""Parity of AnandaSky on a device+dtype against the CPU float32 reference: vision features and prefill logits.

    python eval_accuracy.py --model_path test_checkpoint --device cpu --dtype bf16
    python eval_accuracy.py --model_path models/AnandaSky --device npu --dtype bf16 --image page.png
    python inference.py --model_path models/AnandaSky --device npu --eval       # the same, the seed's spelling

The model under test and a CPU float32 reference read the same fixed inputs: text rendered in-script (a wide line,
a small label, a three-line block; EVAL_TEXTS) plus any --image, each with --prompt and a second prompt. Two parts,
compared with common.parity.parity in float64 against the dtype's thresholds; both must pass:
  vision: the vision encoder + bridge output of every patch (the code that replaced flash_attn_varlen_func);
  logits: the prefill logits at the text positions (rel L2, worst-row cosine, top-1, KL). The <|image_pad|>
          positions are left out: nothing reads their logits (generation continues from the last position, training
          masks them with -100), so in a trained model they are untrained, near-flat noise whose top-1 is decided by
          rounding. Their effect on the text is still scored: every later text position attends to the image.
With --remote_code the model under test runs the weights folder's own modeling code (behind
common.porting.flash_attn_compat.install()), while the reference stays on this folder's patched code: the upstream code on
the device checked against the port. The record says which code each side ran (code_source, reference_code_source).
Writes a parity result record (JSON); exit 0 on PASS, 1 on FAIL.
Diagnosis (common.diagnostics.eval_hooks), on the first input (rendered image + prompt): --trace_ops (every aten op of the prefill
on the device, CPU fallbacks, host syncs) and --locate (vision tower, bridge and decoder, module by module against
the reference; automatic after a FAIL).
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from common.diagnostics.eval_hooks import Probe, add_diagnosis_args, locate_if_needed, trace_if_asked
from common.device import dtype_name, resolve_device, resolve_dtype
from common.cli import ArgumentParser, run_main
from common.parity import format_parity, parity, verdict
from common.results import check_outputs, result_path, result_record, write_json
from inference import (DEFAULT_PROMPT, MODEL_NAME, AnandaSkyOCR, add_model_args, check_lengths, load_processor,
                       read_image, resolve_folder, valid_prompt)

HERE = Path(__file__).resolve().parent
# The fixed inputs: (text, font size in pixels). With both prompts they give ~120 text positions for top-1.
EVAL_TEXTS = (("The quick brown fox jumps over the lazy dog. 0123456789", 22), ("Invoice 4471-B: $1,284.50", 13),
              ("Chapter One.\nIt was a bright cold day in April,\nand the clocks were striking thirteen.", 18))
EVAL_PROMPTS = (DEFAULT_PROMPT, "Transcribe the text exactly, keeping line breaks.")


def render_text_image(text: str, size: int = 22):
    """A deterministic text image: black text on white with a margin, drawn with PIL's bundled font."""
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the small bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right - left + 24, bottom - top + 16), "white")
    ImageDraw.Draw(image).multiline_text((12 - left, 8 - top), text, fill="black", font=font)
    return image


def eval_inputs(images: list[str] | None, prompt: str) -> list[tuple[str, object, str]]:
    """(name, image, prompt): the rendered texts and any --image, each with every prompt (--prompt first)."""
    named = [(f"rendered: {text!r} at {size}px", render_text_image(text, size)) for text, size in EVAL_TEXTS]
    named += [(str(path), read_image(path)) for path in images or []]
    prompts = list(dict.fromkeys((prompt, *EVAL_PROMPTS)))  # no repeats
    return [(name, image, p) for name, image in named for p in prompts]


def parity_parts(test: AnandaSkyOCR, reference: AnandaSkyOCR, inputs: list) -> tuple[dict, list]:
    """{"vision": ..., "logits": ...} parity over all (image, prompt) inputs, and the positions scored per input."""
    got = [test.prefill(image, prompt) for image, prompt in inputs]
    want = [reference.prefill(image, prompt) for image, prompt in inputs]
    text = [~w["is_image_token"] for w in want]
    parts = {
        "vision": parity(torch.cat([g["image_features"] for g in got]),
                         torch.cat([w["image_features"] for w in want]), test.dtype_name),
        "logits": parity(torch.cat([g["logits"][m] for g, m in zip(got, text)]),
                         torch.cat([w["logits"][m] for w, m in zip(want, text)]), test.dtype_name, logits=True),
    }
    positions = [{"text_positions": int(m.sum()), "image_patches": len(w["image_features"])}
                 for w, m in zip(want, text)]
    return parts, positions


def diagnosis_probe(test: AnandaSkyOCR, reference: AnandaSkyOCR, image, prompt: str) -> Probe:
    """The prefill of one (image, prompt): vision encoder, bridge and decoder in one forward, both sides."""
    test_inputs, reference_inputs = test.encode([image], prompt), reference.encode([image], prompt)
    return Probe(test.model, reference.model, lambda: test.model(**test_inputs, use_cache=False),
                 lambda: reference.model(**reference_inputs, use_cache=False), test.device, test.dtype,
                 f"1 image ({int(reference_inputs['image_grid_hw'].prod())} patches) + prompt, "
                 f"{reference_inputs['input_ids'].shape[1]} tokens")


def main(args) -> int:
    """Parity of --device/--dtype against CPU float32; writes the record; 0 on PASS, 1 on FAIL. Also what
    `inference.py --eval` runs, with that parser's arguments."""
    folder = resolve_folder(args.model_path)
    valid_prompt(args.prompt)
    inputs = eval_inputs(args.image, args.prompt)  # every input checked before the models load
    processor = load_processor(folder)
    for prompt in dict.fromkeys(prompt for _, _, prompt in inputs):  # prefill only: no new tokens
        check_lengths(processor, [image.size for _, image, _ in inputs], prompt, 0)
    device = resolve_device(args.device)  # the default output names the device and dtype: resolved before loading
    output = result_path(args.output, HERE, "parity", folder, device, dtype_name(resolve_dtype(args.dtype, device)),
                         "_remote_code" if args.remote_code else "")
    check_outputs({"--output": output})  # an unwritable result file fails now, not after the whole comparison
    test = AnandaSkyOCR(folder, args.device, args.dtype, remote_code=args.remote_code)
    reference = AnandaSkyOCR(folder, "cpu", "fp32")
    _, first_image, first_prompt = inputs[0]
    probe = partial(diagnosis_probe, test, reference, first_image, first_prompt)
    traced = trace_if_asked(args, probe)  # first: torch_npu reports each CPU fallback once per process
    parts, positions = parity_parts(test, reference, [(image, prompt) for _, image, prompt in inputs])
    result = verdict(parts)
    print(f"{MODEL_NAME} parity, {len(inputs)} inputs (image x prompt): {test.device} {test.dtype_name} vs cpu fp32 "
          f"reference ({folder})")
    for name, part in parts.items():
        print(f"{name}:\n{format_parity(part)}")
    print(f"OVERALL: {'PASS' if result['passed'] else 'FAIL'}")
    diagnosis = {**traced, **locate_if_needed(args, result["passed"], probe)}
    described = [{"image": name, "size_wh": list(image.size), "prompt": prompt, **pos}
                 for (name, image, prompt), pos in zip(inputs, positions)]
    write_json(output, result_record("parity", device=test.device, dtype=test.dtype_name, model=folder,
                                     headline={"passed": result["passed"]}, **result, inputs=described,
                                     num_parameters=test.num_parameters(), **test.describe(),
                                     reference_code_source=reference.code_source, **diagnosis))
    print(f"wrote {output}")
    return 0 if result["passed"] else 1


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--image", nargs="+", default=None, help="image file(s) added to the rendered inputs")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="instruction given with each image")
    parser.add_argument("--output", default=None,
                        help="result JSON (default results/parity_<model>_<device>_<dtype>.json)")
    add_diagnosis_args(parser)
    return parser


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
