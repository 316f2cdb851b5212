"""Serve Flan-T5 (or any T5-family checkpoint) as OpenAI/vLLM-compatible /v1/completions and /v1/chat/completions.

    python serve.py --port 8000                                  # google/flan-t5-small (hub id or local folder)
    python serve.py --model_path path/to/t5-folder --device npu --dtype bf16 --api_key KEY

    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"prompt": "translate English to German: How old are you?", "max_tokens": 32, "temperature": 0}'

Greedy requests (temperature 0) give the text `python inference.py --text PROMPT` prints: the same tokenizer, the
same right-padded `model.generate` call. Unlike inference.py, a prompt longer than --max_input_length tokens is
REFUSED with 400 naming the limit (as OpenAI and vLLM do) instead of cut: the answer to the start of a prompt is a
wrong answer the client cannot see. max_tokens is limited as inference.py's --max_new_tokens (the tokenizer's
model_max_length, else MAX_NEW_TOKENS). Chat messages become chat.py's Flan prompt: the system message(s) as the
preamble (chat.py's default preamble when there is none), then one `User: ...` / `Assistant: ...` line per turn,
ending in `Assistant:`. A prompt may also be token ids, used as given (no </s> added).
Unlike inference.py, --dtype fp16 is not watched for overflow here (T5 overflows in fp16): serve in bf16 or fp32.
Shared flags (--host, --port, --api_key, --max_batch_size, --max_queue, ...): common/serving/server.py.
"""
from __future__ import annotations

import sys

import torch

from common.device import resolve_device, resolve_dtype
from common.cli import UserError, check_at_most, run_main
from common.model_path import resolve_model_path
from common.serving.backend import GenerationBackend, Prompt
from common.serving.server import build_parser as serve_parser
from common.serving.server import serve
from common.serving.protocol import has_images, message_text
from common.serving.generation import hf_sampling
from chat import CONTEXT, DEFAULT_SPEAKERS
from inference import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL, MODEL_NAME, T5Summarizer, add_model_args, describe
from inference import new_token_limit

ROLE_NAMES = {"user": DEFAULT_SPEAKERS[0], "assistant": DEFAULT_SPEAKERS[1]}  # chat.py's speakers


def chat_text(messages) -> str:
    """chat.py's prompt for an OpenAI conversation: the preamble lines (system/developer messages, else chat.py's
    CONTEXT), one `Speaker: text` line per turn, then the model's cue `Assistant:` (Chat.prompt's format)."""
    preamble, turns = [], []
    for message in messages:
        text = message_text(message).strip()
        if message.role in ("system", "developer"):
            preamble += [line.rstrip() for line in text.splitlines() if line.strip()]
        else:
            turns.append(f"{ROLE_NAMES[message.role]}: {text}")
    lines = (preamble or [CONTEXT]) + turns
    return "\n".join(lines) + f"\n{DEFAULT_SPEAKERS[1]}:"


class T5Backend(GenerationBackend):
    """T5Summarizer behind the server; every method runs in the server's one model thread."""
    default_max_tokens = DEFAULT_MAX_NEW_TOKENS

    def __init__(self, args):
        model_dir = resolve_model_path(args.model_path, default=DEFAULT_MODEL)
        self.new_token_limit, self.new_token_source = new_token_limit(model_dir)  # inference.py's limit
        self.t5 = T5Summarizer(str(model_dir), args.device, args.dtype, args.max_input_length)
        self.max_model_len = self.t5.max_input_length  # the encoder's input limit (T5 has no position table)
        self.eos_token_ids = {self.t5.eos_id}
        # ids at or past the embedding table's rows would fail the whole batch inside the model: refuse them first
        self.vocab_size = self.t5.model.get_input_embeddings().num_embeddings

    def describe(self) -> dict:
        t5 = self.t5
        return {"source": str(t5.model_dir), "device": str(t5.device), "dtype": t5.dtype_name,
                "max_input_length": t5.max_input_length, "max_new_tokens": self.new_token_limit,
                "architecture": describe(t5.model)}

    def completion_prompt(self, prompt: str | list[int], max_tokens: int) -> Prompt:
        check_at_most(max_tokens, self.new_token_limit, "max_tokens", self.new_token_source)
        if isinstance(prompt, str):
            # no truncation here: T5Summarizer.tokenize would cut a long prompt, the server refuses it instead
            ids = self.t5.tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
        else:
            ids = list(prompt)
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise UserError(f"token id {bad[0]} is outside the model's vocabulary (0-{self.vocab_size - 1}); "
                                "send ids from this model's tokenizer")
        limit = self.t5.max_input_length
        if len(ids) > limit:
            raise UserError(f"the prompt is {len(ids)} tokens, over this server's input limit of {limit} tokens "
                            "(--max_input_length); shorten it, or restart the server with a larger "
                            "--max_input_length")
        return Prompt(token_count=len(ids), payload=ids)

    def chat_prompt(self, messages, max_tokens: int) -> Prompt:
        if has_images(messages):
            raise UserError(f"{MODEL_NAME} reads text only; send the messages without image_url parts")
        return self.completion_prompt(chat_text(messages), max_tokens)

    def decode(self, ids: list[int]) -> str:
        return self.t5.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], sampling, hooks: dict) -> None:
        # T5Summarizer.generate_ids' call (right padding, the checkpoint's pad/eos/decoder start); greedy at
        # temperature 0 is its do_sample=False, num_beams=1. The core's hooks stream and stop each row.
        batch = self.t5.batch_tensors([p.payload for p in prompts])
        self.t5.model.generate(**batch, max_new_tokens=sampling.max_tokens, **hf_sampling(sampling), **hooks)


def build_parser():
    parser = serve_parser(__doc__.split("\n")[0], default_name=MODEL_NAME)
    add_model_args(parser)
    for action in parser._actions:  # inference.py's help says "truncated"; the server refuses instead
        if action.dest == "max_input_length":
            action.help = "prompts longer than this many tokens are refused with 400 (default: %(default)s)"
    return parser


def main(args) -> int:
    device = resolve_device(args.device)  # bad --device / --dtype: one line before the port is even bound
    resolve_dtype(args.dtype, device)
    return serve(args, lambda: T5Backend(args))


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
