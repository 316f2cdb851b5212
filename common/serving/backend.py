"""What a folder's serve.py implements: an embedding or a generation backend, and the two records it trades with the
server (`Prompt`, prepared by the backend; `Sampling`, one batch's decoding settings). The server (server.py) calls
these from one model thread; nothing here imports the HTTP stack, so a backend module stays light to import."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.serving.protocol import ChatMessage


@dataclass
class Prompt:
    """One prompt as a backend prepared it: its token count (for usage) and what its generate/embed needs."""
    token_count: int
    payload: Any


@dataclass
class Sampling:
    """One batch's decoding settings (rows of a batch share them; max_tokens is the largest of its rows)."""
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None


class EmbeddingBackend:
    """What an embedding model's serve.py implements; every method but describe runs in the one model thread."""
    endpoints = ("embeddings",)
    max_model_len: int | None = None

    def describe(self) -> dict:
        """{"source", "device", "dtype", ...} for /health and the load test's record. The one method called from
        the event loop (by /health, /v1/models and the ready line): return what was settled at load time."""
        return {}

    def embedding_input(self, item: str | list[int]) -> Prompt:
        """One input, tokenized and checked against the model's limit (UserError -> 400)."""
        raise NotImplementedError

    def embed(self, inputs: list[Prompt]):
        """(len(inputs), dim) float32 array, in order."""
        raise NotImplementedError


class GenerationBackend:
    """What a generating model's serve.py implements; every method but describe runs in the one model thread."""
    endpoints = ("completions", "chat")
    max_model_len: int | None = None
    default_max_tokens: int = 16
    eos_token_ids: set[int] = set()

    def describe(self) -> dict:
        return {}

    def completion_prompt(self, prompt: str | list[int], max_tokens: int) -> Prompt:
        raise NotImplementedError

    def chat_prompt(self, messages: list[ChatMessage], max_tokens: int) -> Prompt:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def generate(self, prompts: list[Prompt], sampling: Sampling, hooks: dict) -> None:
        raise NotImplementedError
