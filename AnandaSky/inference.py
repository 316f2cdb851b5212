"""AnandaSky OCR (image -> text) on any device (Ascend NPU, CUDA, MPS, CPU), without flash_attn.

    python make_test_checkpoint.py --output test_checkpoint                  # random weights, for trying it out
    python inference.py --model_path test_checkpoint --image line1.png line2.png
    python inference.py --model_path models/AnandaSky --device npu --dtype bf16 --image page.jpg --max_new_tokens 256
    python inference.py --model_path models/AnandaSky --device npu --eval       # = eval_accuracy.py: PASS/FAIL

Python:
    from inference import AnandaSkyOCR
    ocr = AnandaSkyOCR("models/AnandaSky", device="auto")       # dtype auto: bf16 on accelerators, fp32 on CPU
    ocr.recognize(["line1.png", pil_image])                     # -> ["text 1", "text 2"], one batched pass
    ocr.logits(pil_image)                                       # prefill logits (seq_len, vocab), float32, CPU
    AnandaSkyOCR("models/AnandaSky", remote_code=True).describe()  # the folder's own code: code_source, lint findings

The model code is this folder's modeling_anandasky_patched.py (imported here, then `from_pretrained`), not the
modeling file inside the weights folder: the upstream file there needs flash_attn. `--remote_code` (alias
`--trust_remote_code`) runs the weights folder's own code instead, to check it against the patched one:

    python inference.py --model_path models/AnandaSky --remote_code --image line.png

It needs config.json's auto_map to name a modeling file that is in the folder, lints that code (common.diagnostics.lint:
which findings `common.porting.flash_attn_compat.install()` covers, which still need attention, on stderr), installs the
flash_attn stand-in and loads with trust_remote_code, refusing any missing or unexpected weight. The processor is
this folder's processor.py either way.

Limits, checked before the model loads: the prompt with its image tokens plus --max_new_tokens must fit the
decoder's context (config.json text_config.max_position_embeddings, 40,960 for AnandaSky), and an image may have at
most processor.MAX_INPUT_PIXELS pixels (larger ones are refused from their header, never decoded; within the cap
every image is resized to the processor's max_pixels). `recognize` checks the context too, before generating.

`--model_path` defaults to $ANANDASKY_MODEL_PATH; there is no hub download. `--eval` is the seed's spelling of
`eval_accuracy.py` (the device and dtype under test against a CPU float32 reference; same flags, same result file,
exit 1 on FAIL).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from functools import partial
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from common.device import dtype_name, resolve_device, resolve_dtype
from common.diagnostics.eval_hooks import add_diagnosis_args
from common.cli import ArgumentParser, UserError, first_line, positive_int, run_main
from common.cli import add_model_args as add_common_model_args
from common.model_path import check_weights
from common.strict_load import load_strictly
from modeling_anandasky_patched import AnandaSkyForConditionalGeneration
from processor import AnandaSkyProcessor, ImageError, check_prompt, load_image, probe_image
from remote_code import PATCHED_CODE, load_remote_model, prepare_remote_code, remote_code_files

# The port's identity: `python -m common.porting.new_port` rewrites these lines when it copies this folder.
MODEL_NAME = "AnandaSky"  # headings, messages, result labels
DEFAULT_MODEL = "$ANANDASKY_MODEL_PATH"  # --model_path default: this environment variable, read at run time
MODEL_FAMILY = "custom"  # sentence-transformers | seq2seq | causal-lm | (AnandaSky: custom)
MODEL_CLASS = "AnandaSkyOCR"  # the class users import

HERE = Path(__file__).resolve().parent
ENV_MODEL_PATH = DEFAULT_MODEL.lstrip("$")  # the real weights are not public: no hub id to fall back on
MODEL_TYPE = "anandasky"  # config.json's model_type: anything else is refused
DEFAULT_PROMPT = "Recognize the text in this image."
DEFAULT_MAX_NEW_TOKENS = 128  # a long printed line is ~80 characters, ~30-60 tokens
DEFAULT_BATCH_SIZE = 8  # images per generate call; all of a batch go through the vision encoder in one pass
BUILD_HINT = "python make_test_checkpoint.py --output test_checkpoint"
# A refused load: the patched code reconstructs the architecture, so real weights that differ point at the real code.
REMOTE_CODE_HINT = ("if the folder's own modeling code differs from modeling_anandasky_patched.py, run it with "
                    "--remote_code; otherwise check the checkpoint")


def resolve_folder(model_path: str | None) -> Path:
    """The weights folder from --model_path or DEFAULT_MODEL (environment variables expanded), checked; UserError
    with the fix otherwise."""
    spec = str(model_path) if model_path else os.path.expandvars(DEFAULT_MODEL)
    if not spec or "$" in spec:  # the variable is unset
        raise UserError(f"no model given: pass --model_path FOLDER (the {MODEL_NAME} weights folder) or set "
                        f"{ENV_MODEL_PATH}; for a random-weight test checkpoint run `{BUILD_HINT}` in "
                        f"{HERE.name}/ and pass --model_path test_checkpoint")
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise UserError(f"model folder {spec!r} does not exist; pass the {MODEL_NAME} weights folder (or build a "
                        f"test one with `{BUILD_HINT}`)")
    if not folder.is_dir():
        raise UserError(f"--model_path {spec!r} is a file; pass the folder that holds config.json and the weights")
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"model folder {spec!r} has no config.json; pass a complete {MODEL_NAME} weights folder")
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{str(config)!r} is not valid JSON; download the model again") from None
    if not isinstance(settings, dict):
        raise UserError(f"{str(config)!r} is not a JSON object (it holds a {type(settings).__name__}); pass a "
                        f"complete {MODEL_NAME} weights folder")
    model_type = settings.get("model_type")
    if model_type != MODEL_TYPE:
        raise UserError(f"{spec!r} holds a {model_type!r} model, not {MODEL_NAME} (model_type {MODEL_TYPE!r})")
    return check_weights(folder)


def load_processor(folder: Path) -> AnandaSkyProcessor:
    """The processor (tokenizer, image settings, context length) of a checked folder: cheap, so scripts load it
    before the model to check their inputs' lengths. One-line errors."""
    try:
        return AnandaSkyProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load the processor from {str(folder)!r}: {first_line(exc)}") from None


def check_lengths(processor: AnandaSkyProcessor, sizes: list, prompt: str, max_new_tokens: int) -> None:
    """Refuse, before any compute, inputs that do not fit the model's context: the largest image's tokens (sizes
    are (width, height)) plus the prompt, plus max_new_tokens."""
    valid_prompt(prompt)
    image_tokens = max(processor.image_tokens(height, width) for width, height in sizes)
    try:
        processor.check_length(image_tokens, image_tokens + processor.text_tokens(prompt), max_new_tokens,
                               "the prompt with its image" if len(sizes) == 1 else "the prompt with its largest image")
    except ValueError as exc:
        raise UserError(str(exc).replace("max_new_tokens", "--max_new_tokens", 1)) from None


def load_model(folder: Path, dtype: torch.dtype, remote_auto_class: str | None = None):
    """(processor, model) from a checked folder, with this folder's patched modeling code, or with the folder's own
    code through `remote_auto_class` (see prepare_remote_code). One-line errors."""
    hf_logging.disable_progress_bar()
    processor = load_processor(folder)
    try:
        if remote_auto_class is None:
            model = load_strictly(partial(AnandaSkyForConditionalGeneration.from_pretrained, folder, dtype=dtype,
                                          attn_implementation="sdpa"), folder, hint=REMOTE_CODE_HINT)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load the model from {str(folder)!r}: {first_line(exc)}") from None
    if remote_auto_class is not None:
        model = load_remote_model(folder, remote_auto_class, dtype)
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


def check_image(source) -> tuple[int, int]:
    """(width, height) of an image file checked without decoding it (see processor.probe_image), or UserError."""
    try:
        return probe_image(source)
    except ImageError as exc:
        raise UserError(str(exc)) from None


class AnandaSkyOCR:
    """Images -> recognised text with the AnandaSky VLM: `recognize(images)`, and `logits(image)` for parity.
    remote_code=True runs the weights folder's own modeling code (see the module docstring); `code_source` says
    which code runs, `remote_code_findings` what common.diagnostics.lint found in the folder's code."""

    def __init__(self, model_path=None, device: str = "auto", dtype: str = "auto", remote_code: bool = False):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.folder = resolve_folder(None if model_path is None else str(model_path))
        auto_class, self.code_source, self.remote_code_findings = None, f"patched: {PATCHED_CODE}", []
        if remote_code:
            auto_class, self.code_source, self.remote_code_findings = prepare_remote_code(self.folder)
        self.processor, model = load_model(self.folder, self.dtype, auto_class)
        self.model = model.to(self.device)

    def describe(self) -> dict:
        """Which modeling code runs, for result records: code_source, and the lint findings of remote code."""
        described = {"code_source": self.code_source}
        if self.code_source.startswith("remote"):
            described["remote_code_findings"] = self.remote_code_findings
        return described

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
            self.check_length(batch, max_new_tokens)
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.processor.eos_token_id,
                                      pad_token_id=self.processor.pad_token_id)
            texts += self.processor.decode(out[:, batch["input_ids"].shape[1]:])
        return texts

    def check_length(self, batch: dict, max_new_tokens: int = 0) -> None:
        """UserError when an encoded batch plus max_new_tokens does not fit the model's context length."""
        image_tokens = int((batch["input_ids"] == self.processor.image_token_id).sum(1).max())
        try:
            self.processor.check_length(image_tokens, batch["input_ids"].shape[1], max_new_tokens, "the input")
        except ValueError as exc:
            raise UserError(str(exc)) from None

    @torch.inference_mode()
    def prefill(self, image, prompt: str = DEFAULT_PROMPT) -> dict:
        """One image + prompt through the model without generating, for parity checks (all float32 on the CPU):
        logits (seq_len, vocab) at every position, image_features (patches, text hidden) from the vision encoder
        and bridge, and is_image_token (seq_len,) marking the <|image_pad|> positions."""
        batch = self.encode([read_image(image)], prompt)
        self.check_length(batch)
        features = self.model.get_image_features(batch["pixel_values"], batch["image_grid_hw"])
        out = self.model(**batch, use_cache=False)
        return {"logits": out.logits[0].float().cpu(), "image_features": features.float().cpu(),
                "is_image_token": (batch["input_ids"][0] == self.processor.image_token_id).cpu()}

    @torch.inference_mode()
    def logits(self, image, prompt: str = DEFAULT_PROMPT) -> torch.Tensor:
        """Prefill logits of one image + prompt: (seq_len, vocab) float32 on the CPU, every position."""
        batch = self.encode([read_image(image)], prompt)
        self.check_length(batch)
        out = self.model(**batch, use_cache=False)
        return out.logits[0].float().cpu()


def add_model_args(parser: ArgumentParser) -> ArgumentParser:
    """--model_path, --device, --dtype (common.cli) and this folder's --remote_code: shared by every script here."""
    add_common_model_args(parser, model_help=f"{MODEL_NAME} weights folder (default {DEFAULT_MODEL})")
    parser.add_argument("--remote_code", "--trust_remote_code", action="store_true",
                        help="run the weights folder's own modeling code (config.json auto_map) with the flash_attn "
                             f"stand-in, after linting it, instead of {PATCHED_CODE}")
    return parser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--image", nargs="+", default=None, help="image file(s) to read (PNG, JPEG, ...)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="instruction given with each image")
    parser.add_argument("--max_new_tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per generate call")
    parser.add_argument("--eval", action="store_true",
                        help="run eval_accuracy.py: parity of --device/--dtype vs CPU fp32 (PASS/FAIL)")
    parser.add_argument("--output", default=None,
                        help="--eval result file (default results/parity_<model>_<device>_<dtype>.json)")
    add_diagnosis_args(parser)  # with --eval, as in eval_accuracy.py
    return parser


def main(args) -> int:
    if args.eval:  # the seed's spelling of eval_accuracy.py, with the same arguments
        import eval_accuracy  # lazy: this folder's script imports this module (a cycle at the top)

        return eval_accuracy.main(args)
    if args.trace_ops or args.locate or args.no_locate:
        raise UserError("--trace_ops, --locate and --no_locate go with --eval (the parity check they diagnose)")
    if args.output:
        raise UserError("--output is the --eval result file; without --eval the text goes to stdout (redirect it, "
                        "e.g. `> texts.tsv`)")
    folder = resolve_folder(args.model_path)
    if not args.image:
        raise UserError("pass --image PATH [PATH ...] to read text from images (or --eval for the parity check)")
    if args.remote_code:
        remote_code_files(folder)  # a folder without code of its own fails now, not after the images are read
    images = [read_image(path) for path in args.image]  # every input checked before the model loads
    check_lengths(load_processor(folder), [image.size for image in images], args.prompt, args.max_new_tokens)
    ocr = AnandaSkyOCR(folder, args.device, args.dtype, remote_code=args.remote_code)
    sys.stderr.write(f"model {folder} on {ocr.device} ({ocr.dtype_name}), {ocr.code_source}, "
                     f"{len(images)} image(s)\n")
    texts = ocr.recognize(images, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size)
    for path, text in zip(args.image, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_main(main, build_parser().parse_args()))
