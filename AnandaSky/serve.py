"""Serve AnandaSky OCR over an OpenAI-compatible HTTP API (images as base64 data URLs in chat messages).

    python serve.py --model_path models/AnandaSky --port 8000 --max-body-mb 20
    python serve_check.py --base-url http://127.0.0.1:8000 --model anandasky          # readiness check

/v1/chat/completions takes ONE user message: at most one image_url part (a base64 data URL; the server downloads
nothing) and its text parts as the instruction. With an image and no text the instruction is inference.py's
DEFAULT_PROMPT, so a greedy answer equals `python inference.py --image FILE` / AnandaSkyOCR.recognize. Without an
image the decoder answers the text alone (the same Qwen chat format without the vision block): AnandaSky's decoder
is a Qwen3 text model and runs without pixel values. /v1/completions continues raw text (no chat format), like vLLM
does for a vision-language model. An image over processor.MAX_INPUT_PIXELS is refused from its header before it is
decoded; raise --max-body-mb (default 1) for page scans. The prompt with its image tokens plus max_tokens must fit
the decoder's context (config.json text_config.max_position_embeddings). --remote_code runs the weights folder's
own modeling code, as in inference.py. Shared serving flags (--port, --api-key, ...): common/serving/server.py.
"""
from __future__ import annotations

import logging
import sys

import torch

from common.cli import UserError, run_main
from common.serving.backend import GenerationBackend, Prompt, Sampling
from common.serving.server import build_parser as serving_parser
from common.serving.server import serve
from common.serving.protocol import ChatMessage, message_images, message_text
from common.serving.generation import hf_sampling
from inference import (DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT, AnandaSkyOCR, add_model_args, read_image,
                       remote_code_files, resolve_folder, valid_prompt)
from processor import IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START

SERVED_NAME = "anandasky"  # the name the seed's vLLM instructions serve it under (serve_check --model anandasky)
MAX_IMAGES_PER_MESSAGE = 1  # the processor's chat format holds one image per prompt


class AnandaSkyBackend(GenerationBackend):
    """AnandaSkyOCR behind common.serving.server: each prompt is prepared once (image decoded and patched, ids tokenized),
    rows are packed into one left-padded batch for one generate call."""
    default_max_tokens = DEFAULT_MAX_NEW_TOKENS

    def __init__(self, ocr: AnandaSkyOCR):
        self.ocr = ocr
        self.processor = self.ocr.processor
        self.max_model_len = self.processor.context_length
        self.eos_token_ids = {self.processor.eos_token_id}  # <|im_end|>, what recognize() stops on
        self.vocab_rows = self.ocr.model.get_input_embeddings().num_embeddings
        self.vision_ids = {self.processor.token_ids[t] for t in (IMAGE_PAD, VISION_START, VISION_END)}
        # computed once: /health and /v1/models call describe() from the event loop, not the model thread
        self.described = {"source": str(ocr.folder), "device": str(ocr.device), "dtype": ocr.dtype_name,
                          "parameters": ocr.num_parameters(), **ocr.describe()}

    def describe(self) -> dict:
        return self.described

    def chat_prompt(self, messages: list[ChatMessage], max_tokens: int) -> Prompt:
        if len(messages) != 1 or messages[0].role != "user":
            raise UserError(f"{SERVED_NAME} answers one user message (an image and/or an instruction), got roles "
                            f"{[m.role for m in messages]}; send the last user message alone")
        images = message_images(messages[0])
        if len(images) > MAX_IMAGES_PER_MESSAGE:
            raise UserError(f"the message has {len(images)} images; {SERVED_NAME} reads one image per request "
                            "(send one request per image: the server batches them)")
        text = message_text(messages[0])  # as given (not stripped): the prompt recognize(prompt=...) would get
        if not images:
            if not text.strip():
                raise UserError("the message has no text and no image; send an image_url part and/or an instruction")
            return self._text_chat(valid_prompt(text), max_tokens)
        return self._image_chat(images[0], valid_prompt(text if text.strip() else DEFAULT_PROMPT), max_tokens)

    def _image_chat(self, data: bytes, prompt: str, max_tokens: int) -> Prompt:
        image = read_image(data)  # refuses past processor.MAX_INPUT_PIXELS from the header, before decoding
        patches, grid = self.processor.image_patches(image)
        # the ids processor.__call__ builds for this image and prompt, so the answer equals recognize()'s
        ids = self._tokens(self.processor.build_prompt(patches.shape[0], prompt))
        self._check(patches.shape[0], ids, max_tokens, "the prompt with its image")
        return Prompt(token_count=len(ids), payload={"ids": ids, "patches": patches, "grid": grid})

    def _text_chat(self, prompt: str, max_tokens: int) -> Prompt:
        ids = self._tokens(f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n")  # build_prompt, no vision
        self._check(0, ids, max_tokens, "the prompt")
        return Prompt(token_count=len(ids), payload={"ids": ids, "patches": None, "grid": None})

    def completion_prompt(self, prompt: str | list[int], max_tokens: int) -> Prompt:
        if isinstance(prompt, str):
            ids = self._tokens(valid_prompt(prompt))  # no literal special tokens (check_prompt), as in recognize()
        else:
            bad = [i for i in prompt if not 0 <= i < self.vocab_rows or i in self.vision_ids]
            if bad:
                raise UserError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_rows - 1}) or a vision "
                                "token; images go through /v1/chat/completions as image_url parts")
            ids = list(prompt)
        self._check(0, ids, max_tokens, "the prompt")
        return Prompt(token_count=len(ids), payload={"ids": ids, "patches": None, "grid": None})

    def _tokens(self, text: str) -> list[int]:
        ids = self.processor.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            raise UserError("the prompt gives no token; send some text")
        return ids

    def _check(self, image_tokens: int, ids: list[int], max_tokens: int, what: str) -> None:
        try:
            self.processor.check_length(image_tokens, len(ids), max_tokens, what)
        except ValueError as exc:
            raise UserError(str(exc).replace("max_new_tokens", "max_tokens", 1)) from None

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode([ids])[0]  # stripped, as recognize() returns it

    def batch(self, prompts: list[Prompt]) -> dict:
        """processor.__call__'s batch from prepared rows; rows without an image add no patches (the model writes
        image features over <|image_pad|> positions only, in row order)."""
        input_ids, attention_mask = self.processor.left_pad([p.payload["ids"] for p in prompts])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        imaged = [p.payload for p in prompts if p.payload["patches"] is not None]
        if imaged:
            batch["pixel_values"] = torch.cat([p["patches"] for p in imaged])
            batch["image_grid_hw"] = torch.tensor([p["grid"] for p in imaged], dtype=torch.long)
        return {k: v.to(self.ocr.device) for k, v in batch.items()}

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], sampling: Sampling, hooks: dict) -> None:
        self.ocr.model.generate(**self.batch(prompts), max_new_tokens=sampling.max_tokens, **hf_sampling(sampling),
                                eos_token_id=self.processor.eos_token_id, pad_token_id=self.processor.pad_token_id,
                                **hooks)


def build_parser():
    parser = serving_parser(__doc__.split("\n")[0], default_name=SERVED_NAME)
    add_model_args(parser)  # --model_path, --device, --dtype, --remote_code/--trust_remote_code
    return parser


def main(args) -> int:
    folder = resolve_folder(args.model_path)  # a missing or wrong folder: one line before anything binds or loads
    if args.remote_code:
        remote_code_files(folder)
    return serve(args, lambda: AnandaSkyBackend(AnandaSkyOCR(folder, args.device, args.dtype,
                                                             remote_code=args.remote_code)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_main(main, build_parser().parse_args()))
