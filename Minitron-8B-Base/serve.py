"""Serve a causal LM (Minitron-8B-Base or any AutoModelForCausalLM) over an OpenAI-compatible HTTP API.

    python serve.py --model_path smollm2 --port 8000            # the real SmolLM2-135M-Instruct (PyPI GGUF)
    python serve.py --model_path models/Minitron-8B-Base --device npu --dtype bf16 --api-key KEY

/v1/completions continues the prompt as is, tokenized as inference.py does (same special tokens), so a greedy
completion equals `python inference.py --prompt P --max_new_tokens K`; token-id prompts are taken as given.
/v1/chat/completions applies the tokenizer's chat template (as inference.py --chat); a model without one (a base
model such as Minitron-8B-Base) answers 400 and is served through /v1/completions. Prompt + max_tokens must fit the
model's context (config.max_position_embeddings, or a smaller tokenizer model_max_length): otherwise 400, never a
cut prompt. Shared serving flags (--port, --api-key, --max-batch-size, ...): common/serving/server.py.
"""
from __future__ import annotations

import logging
import sys

import torch

from common.cli import UserError, first_line, run_main
from common.serving.backend import GenerationBackend, Prompt, Sampling
from common.serving.server import build_parser as serving_parser
from common.serving.server import serve
from common.serving.protocol import ChatMessage, has_images, message_text
from common.serving.generation import hf_sampling
from inference import (DEFAULT_MAX_NEW_TOKENS, MODEL_NAME, CausalLM, add_model_args, check_fits, context_limit,
                       left_padded)

CHAT_ROLES = {"developer": "system"}  # OpenAI's newer name for the system role; chat templates know "system"


class CausalLMBackend(GenerationBackend):
    """CausalLM behind common.serving.server: prompts tokenized and checked here, rows generated as one left-padded batch."""
    default_max_tokens = DEFAULT_MAX_NEW_TOKENS

    def __init__(self, lm: CausalLM):
        self.lm = lm
        self.tokenizer, self.config = self.lm.tokenizer, self.lm.model.config
        self.max_model_len = context_limit(self.config, self.tokenizer)[0]
        eos = self.lm.model.generation_config.eos_token_id  # set_special_tokens filled it when the checkpoint had none
        self.eos_token_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        # token ids past the embedding table would fail inside the model (500); refused as a bad request instead
        self.vocab_rows = self.lm.model.get_input_embeddings().num_embeddings
        # computed once: /health and /v1/models call describe() from the event loop, not the model thread
        self.described = {"source": str(lm.source), "device": str(lm.device), "dtype": lm.dtype_name,
                          "parameters": lm.num_parameters(), "chat_template": bool(self._chat_template())}

    def describe(self) -> dict:
        return self.described

    def _chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def completion_prompt(self, prompt: str | list[int], max_tokens: int) -> Prompt:
        if isinstance(prompt, str):
            # the tokenizer's own special tokens (a BOS for Llama-style tokenizers), as CausalLM.encode adds them
            ids = self.tokenizer(prompt, verbose=False)["input_ids"]
            if not ids:
                raise UserError(f"the prompt {prompt[:40]!r} gives no token; give text to continue")
        else:
            bad = [i for i in prompt if not 0 <= i < self.vocab_rows]
            if bad:
                raise UserError(f"token id {bad[0]} is outside the model's vocabulary (0..{self.vocab_rows - 1})")
            ids = list(prompt)
        return self._checked(ids, max_tokens, "the prompt")

    def chat_prompt(self, messages: list[ChatMessage], max_tokens: int) -> Prompt:
        if has_images(messages):  # before decoding them: whatever the URL, this model cannot read it
            raise UserError(f"{MODEL_NAME} reads text only; remove the image_url parts")
        if not self._chat_template():
            raise UserError("this model has no chat template; use /v1/completions (base models continue plain text)")
        conversation = [{"role": CHAT_ROLES.get(m.role, m.role), "content": message_text(m)} for m in messages]
        try:
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - a template's own raise_exception (e.g. roles must alternate)
            raise UserError(f"the chat template refused these messages: {first_line(exc)}") from None
        # tokenized as inference.py --chat does (checked_prompt): the text with the tokenizer's default special tokens
        return self._checked(self.tokenizer(text, verbose=False)["input_ids"], max_tokens, "the chat prompt")

    def _checked(self, ids: list[int], max_tokens: int, what: str) -> Prompt:
        check_fits(len(ids), max_tokens, self.config, self.tokenizer, prompt=what, flag="max_tokens",
                   fix="shorten it or send fewer messages")
        return Prompt(token_count=len(ids), payload=ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def batch(self, prompts: list[Prompt]) -> dict:
        """input_ids + attention_mask left-padded with the tokenizer's pad id: CausalLM.encode's batch, from ids."""
        return left_padded([p.payload for p in prompts], self.tokenizer.pad_token_id, self.lm.device)

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], sampling: Sampling, hooks: dict) -> None:
        # eos and pad come from the model's generation_config (set_special_tokens), as in CausalLM.generate
        self.lm.model.generate(**self.batch(prompts), max_new_tokens=sampling.max_tokens, **hf_sampling(sampling),
                               **hooks)


def build_parser():
    parser = serving_parser(__doc__.split("\n")[0], default_name=MODEL_NAME)
    add_model_args(parser)
    return parser


def main(args) -> int:
    # CausalLM loads the tokenizer and config first: a bad --model_path is a one-line error before the weights load
    return serve(args, lambda: CausalLMBackend(CausalLM(args.model_path, device=args.device, dtype=args.dtype)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_main(main, build_parser().parse_args()))
