"""AnandaSky OCR (image -> text) on any device (Ascend NPU, CUDA, MPS, CPU), without flash_attn.

    python make_test_checkpoint.py --output test_checkpoint                  # random weights, for trying it out
    python inference.py --model-path test_checkpoint --image line1.png line2.png
    python inference.py --model-path models/AnandaSky --device npu --dtype bf16 --image page.jpg --max-new-tokens 256
    python inference.py --model-path models/AnandaSky --device npu --eval       # parity vs CPU fp32, PASS/FAIL

Python:
    from inference import AnandaSkyOCR
    ocr = AnandaSkyOCR("models/AnandaSky", device="auto")       # dtype auto: bf16 on accelerators, fp32 on CPU
    ocr.recognize(["line1.png", pil_image])                     # -> ["text 1", "text 2"], one batched pass
    ocr.logits(pil_image)                                       # prefill logits (seq_len, vocab), float32, CPU

The model code is always this folder's modeling_anandasky_patched.py (imported here, then `from_pretrained`), never
the modeling file inside the weights folder: the upstream file there needs flash_attn. `--model-path` defaults to
$ANANDASKY_MODEL_PATH; there is no hub download. `--eval` runs the device and dtype under test and a CPU
float32 reference on fixed rendered text images (plus any --image) and compares, with `common.metrics.parity`,
the vision features and the prefill logits at the text positions (why not the image positions: `parity_parts`).
The verdicts and their thresholds go to results/eval_results.json (or --output). Exit 0 on PASS, 1 on FAIL.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repo root, for `common`

import torch  # noqa: E402

from common.device import dtype_name, resolve_device, resolve_dtype  # noqa: E402
from common.errors import ArgumentParser, UserError, first_line, positive_int, run_main  # noqa: E402
from common.metrics import format_parity, parity  # noqa: E402
from common.model_path import check_weights  # noqa: E402
from common.results import run_metadata, write_json  # noqa: E402
from modeling_anandasky_patched import AnandaSkyForConditionalGeneration  # noqa: E402
from processor import AnandaSkyProcessor, ImageError, check_prompt, load_image  # noqa: E402

ENV_MODEL_PATH = "ANANDASKY_MODEL_PATH"  # used when --model-path is not given
DEFAULT_PROMPT = "Recognize the text in this image."
DEFAULT_MAX_NEW_TOKENS = 128  # a long printed line is ~80 characters, ~30-60 tokens
DEFAULT_BATCH_SIZE = 8  # images per generate call; all of a batch go through the vision encoder in one pass
DEFAULT_EVAL_OUTPUT = HERE / "results" / "eval_results.json"
# --eval's fixed inputs: text rendered in-script (a wide line, a small label, a 3-line block; font size in pixels),
# each with --prompt and the second prompt. Pooled, they give ~120 text positions for the top-1 criterion.
EVAL_TEXTS = (("The quick brown fox jumps over the lazy dog. 0123456789", 22), ("Invoice 4471-B: $1,284.50", 13),
              ("Chapter One.\nIt was a bright cold day in April,\nand the clocks were striking thirteen.", 18))
EVAL_PROMPTS = (DEFAULT_PROMPT, "Transcribe the text exactly, keeping line breaks.")
BUILD_HINT = "python make_test_checkpoint.py --output test_checkpoint"


def resolve_folder(model_path: str | None) -> Path:
    """The weights folder from --model-path or $ANANDASKY_MODEL_PATH, checked; UserError with the fix otherwise."""
    spec = model_path or os.environ.get(ENV_MODEL_PATH)
    if not spec:
        raise UserError(f"no model given: pass --model-path FOLDER (the AnandaSky weights folder) or set "
                        f"{ENV_MODEL_PATH}; for a random-weight test checkpoint run `{BUILD_HINT}` in "
                        f"{HERE.name}/ and pass --model-path test_checkpoint")
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise UserError(f"model folder {spec!r} does not exist; pass the AnandaSky weights folder (or build a test "
                        f"one with `{BUILD_HINT}`)")
    if not folder.is_dir():
        raise UserError(f"--model-path {spec!r} is a file; pass the folder that holds config.json and the weights")
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"model folder {spec!r} has no config.json; pass a complete AnandaSky weights folder")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{str(config)!r} is not valid JSON; download the model again") from None
    if model_type != "anandasky":
        raise UserError(f"{spec!r} holds a {model_type!r} model, not AnandaSky (model_type 'anandasky')")
    return check_weights(folder)


def load_model(folder: Path, dtype: torch.dtype):
    """(processor, model) from a checked folder, with this folder's patched modeling code. One-line errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        processor = AnandaSkyProcessor.from_pretrained(folder)
        model = AnandaSkyForConditionalGeneration.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load the model from {str(folder)!r}: {first_line(exc)}") from None
    if processor.image_token_id != model.config.image_token_id:
        raise UserError(f"{str(folder)!r}: the tokenizer's <|image_pad|> id {processor.image_token_id} is not the "
                        f"config's image_token_id {model.config.image_token_id}")
    return processor, model.eval()


def valid_prompt(prompt: str) -> str:
    try:
        return check_prompt(prompt)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def read_image(source):
    """RGB PIL image, or UserError naming the file and the problem."""
    try:
        return load_image(source)
    except ImageError as exc:
        raise UserError(str(exc)) from None


class AnandaSkyOCR:
    """Images -> recognised text with the AnandaSky VLM: `recognize(images)`, and `logits(image)` for parity."""

    def __init__(self, model_path=None, device: str = "auto", dtype: str = "auto"):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.folder = resolve_folder(None if model_path is None else str(model_path))
        self.processor, model = load_model(self.folder, self.dtype)
        self.model = model.to(self.device)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def encode(self, images: list, prompts) -> dict:
        """Processor output on the device: input_ids, attention_mask (left-padded), pixel_values, image_grid_hw."""
        try:
            batch = self.processor(images, prompts)
        except ValueError as exc:  # ImageError included: a bad image or prompt, said in one line
            raise UserError(first_line(exc)) from None
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.inference_mode()
    def recognize(self, images, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
        """Greedy transcription of each image (a path, bytes or PIL image), in order. Every image is read before
        any compute, so a bad file fails at once; each batch is one vision pass and one generate call."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if max_new_tokens < 1 or batch_size < 1:
            raise UserError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
        loaded = [read_image(image) for image in images]
        texts = []
        for start in range(0, len(loaded), batch_size):
            batch = self.encode(loaded[start:start + batch_size], prompt)
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.processor.eos_token_id,
                                      pad_token_id=self.processor.pad_token_id)
            texts += self.processor.decode(out[:, batch["input_ids"].shape[1]:])
        return texts

    @torch.inference_mode()
    def prefill(self, image, prompt: str = DEFAULT_PROMPT) -> dict:
        """One image + prompt through the model without generating, for parity checks (all float32 on the CPU):
        logits (seq_len, vocab) at every position, image_features (patches, text hidden) from the vision encoder
        and bridge, and is_image_token (seq_len,) marking the <|image_pad|> positions."""
        batch = self.encode([read_image(image)], prompt)
        features = self.model.get_image_features(batch["pixel_values"], batch["image_grid_hw"])
        out = self.model(**batch, use_cache=False)
        return {"logits": out.logits[0].float().cpu(), "image_features": features.float().cpu(),
                "is_image_token": (batch["input_ids"][0] == self.processor.image_token_id).cpu()}

    @torch.inference_mode()
    def logits(self, image, prompt: str = DEFAULT_PROMPT) -> torch.Tensor:
        """Prefill logits of one image + prompt: (seq_len, vocab) float32 on the CPU, every position."""
        batch = self.encode([read_image(image)], prompt)
        out = self.model(**batch, use_cache=False)
        return out.logits[0].float().cpu()


def render_text_image(text: str, size: int = 22):
    """A deterministic text image: black text on white with a margin, drawn with PIL's bundled font."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the small bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right - left + 24, bottom - top + 16), "white")
    ImageDraw.Draw(image).multiline_text((12 - left, 8 - top), text, fill="black", font=font)
    return image


def parity_parts(test: AnandaSkyOCR, reference: AnandaSkyOCR, inputs: list) -> tuple[dict, list]:
    """{"vision": ..., "logits": ...} parity over all (image, prompt) inputs, and the positions scored per input.

    vision: the encoder + bridge output for every patch, the code that replaced flash_attn_varlen_func.
    logits: the prefill logits at the text positions. The <|image_pad|> positions are left out: nothing reads their
    logits (generation continues from the last position, training masks them with -100), so in a trained model they
    are untrained, near-flat noise whose top-1 is decided by rounding; their effect on the text is still scored,
    since every later text position attends to the image.
    """
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


def eval_inputs(args) -> list[tuple[str, object, str]]:
    """(name, image, prompt) for --eval: the rendered texts and any --image, each with every prompt."""
    images = [(f"rendered: {text!r} at {size}px", render_text_image(text, size)) for text, size in EVAL_TEXTS]
    images += [(str(path), read_image(path)) for path in args.image or []]
    prompts = list(dict.fromkeys((args.prompt, *EVAL_PROMPTS)))  # --prompt first, no repeats
    return [(name, image, prompt) for name, image in images for prompt in prompts]


def run_eval(args) -> int:
    """Parity of --device/--dtype against CPU float32; writes the JSON; 0 on PASS, 1 on FAIL."""
    folder = resolve_folder(args.model_path)
    inputs = eval_inputs(args)
    valid_prompt(args.prompt)
    test = AnandaSkyOCR(folder, args.device, args.dtype)
    reference = AnandaSkyOCR(folder, "cpu", "fp32")
    parts, positions = parity_parts(test, reference, [(image, prompt) for _, image, prompt in inputs])
    passed = all(part["passed"] for part in parts.values())
    print(f"{len(inputs)} inputs (image x prompt): {test.device} {test.dtype_name} vs cpu fp32 reference ({folder})")
    for name, part in parts.items():
        print(f"{name}:\n{format_parity(part)}")
    print(f"overall: {'PASS' if passed else 'FAIL'}")
    described = [{"image": name, "size_wh": list(image.size), "prompt": prompt, **pos}
                 for (name, image, prompt), pos in zip(inputs, positions)]
    output = Path(args.output) if args.output else DEFAULT_EVAL_OUTPUT
    write_json(output, {"meta": run_metadata(test.device, test.dtype_name), "model_path": str(folder),
                        "inputs": described, "num_parameters": test.num_parameters(), "passed": passed, **parts})
    print(f"wrote {output}")
    return 0 if passed else 1


def add_model_args(parser: ArgumentParser) -> None:
    """--model-path, --device, --dtype: shared by every script of this folder (underscore spellings accepted)."""
    parser.add_argument("--model-path", "--model_path", dest="model_path", default=None,
                        help=f"AnandaSky weights folder (default ${ENV_MODEL_PATH})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | npu[:N] | mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on accelerators, fp32 on CPU) | fp32 | bf16 | fp16")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--image", nargs="+", default=None, help="image file(s) to read (PNG, JPEG, ...)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="instruction given with each image")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=positive_int,
                        default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int,
                        default=DEFAULT_BATCH_SIZE, help="images per generate call")
    parser.add_argument("--eval", action="store_true", help="parity of --device/--dtype vs CPU fp32 (PASS/FAIL)")
    parser.add_argument("--output", default=None, help=f"--eval result file (default {DEFAULT_EVAL_OUTPUT.name} "
                        "in results/)")
    return parser


def main(args) -> int:
    if args.eval:
        return run_eval(args)
    folder = resolve_folder(args.model_path)
    if not args.image:
        raise UserError("pass --image PATH [PATH ...] to read text from images (or --eval for the parity check)")
    images = [read_image(path) for path in args.image]  # every input checked before the model loads
    valid_prompt(args.prompt)
    ocr = AnandaSkyOCR(folder, args.device, args.dtype)
    sys.stderr.write(f"model {folder} on {ocr.device} ({ocr.dtype_name}), {len(images)} image(s)\n")
    texts = ocr.recognize(images, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size)
    for path, text in zip(args.image, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_main(main, build_parser().parse_args()))
