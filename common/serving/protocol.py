"""The OpenAI / vLLM request and response shapes that common/serving/server.py speaks, as pydantic models, and the helpers a
backend uses to read chat messages (text and image_url parts).

Only what this repository's models can honour is accepted: options that would change the answer in a way we cannot
(logprobs, echo, best_of, penalties, logit_bias) are refused with 400 by `unsupported_options`, never ignored; fields
we do not know are ignored, as vLLM and OpenAI do, so newer clients keep working.
"""
from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from common.cli import UserError

MAX_N = 16  # choices per prompt: each is another row in the batch; OpenAI caps n at 128, vLLM at the batch size
MAX_STOP_STRINGS = 16  # OpenAI caps `stop` at 4, vLLM not at all; lm-eval's local-completions sends its whole list
RETRY_AFTER_S = 1  # the Retry-After of a 503: one batch is usually done by then
MAX_PROMPTS = 256  # prompts (or embedding inputs) in one request: bounds one request's share of the server
DATA_URL = re.compile(r"^data:(?P<mime>image/[\w.+-]+)?(?P<b64>;base64)?,(?P<data>.*)$", re.DOTALL)

TokenIds = list[int]
PromptField = Union[str, list[str], TokenIds, list[TokenIds]]


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None  # None: the served model (vLLM accepts a request without it)
    user: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(Request):
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the chat API's newer name for max_tokens
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)  # OpenAI's default and range
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-2**63, le=2**64 - 1)  # what torch.manual_seed takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    # accepted only at their no-op values (see unsupported_options)
    logprobs: Any = None
    top_logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise UserError(f"'stop' has {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed")
        if any(not s for s in stops):
            raise UserError("'stop' has an empty string; every stop string needs at least one character")
        return stops


class CompletionRequest(SamplingFields):
    prompt: PromptField


class ImageURL(BaseModel):
    url: str


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class EmbeddingRequest(Request):
    input: PromptField
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


def unsupported_options(request: SamplingFields) -> None:
    """UserError for options this server cannot honour: silently ignoring them would return a different answer
    than the client asked for (lm-eval's loglikelihood tasks, for one, send echo + logprobs)."""
    refused = [name for name, value in (("logprobs", request.logprobs not in (None, False, 0)),
                                        ("top_logprobs", request.top_logprobs not in (None, 0)),
                                        ("echo", request.echo), ("best_of", request.best_of not in (None, 1)),
                                        ("presence_penalty", request.presence_penalty != 0),
                                        ("frequency_penalty", request.frequency_penalty != 0),
                                        ("logit_bias", bool(request.logit_bias))) if value]
    if refused:
        raise UserError(f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not supported by this server "
                        "(it returns no log-probabilities); leave them unset, or serve the model with vLLM")


def prompt_list(field, what: str) -> list:
    """An OpenAI `prompt`/`input` as a list of items, each a string or a list of token ids."""
    if isinstance(field, str) or (isinstance(field, list) and field and isinstance(field[0], int)):
        items = [field]
    else:
        items = list(field)
    if not items:
        raise UserError(f"'{what}' is empty; give a string or a list of strings")
    if len(items) > MAX_PROMPTS:
        raise UserError(f"'{what}' has {len(items)} items; at most {MAX_PROMPTS} per request (common.serving.protocol."
                        "MAX_PROMPTS); split them over several requests")
    for item in items:
        if not item:
            raise UserError(f"'{what}' has an empty item; every item needs at least one character or token")
    return items


def message_text(message: ChatMessage) -> str:
    """The text of a message: its string content, or its text parts joined by newlines."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    return "\n".join(part.text or "" for part in message.content if part.type == "text")


def message_images(message: ChatMessage) -> list[bytes]:
    """The image bytes of a message's image_url parts. Only base64 data URLs: this server fetches nothing from the
    network (a URL would let any client make it download anything)."""
    if message.content is None or isinstance(message.content, str):
        return []
    return [decode_data_url(part.image_url.url if part.image_url else "")
            for part in message.content if part.type == "image_url"]


def decode_data_url(url: str) -> bytes:
    match = DATA_URL.match(url.strip())
    if not match or not match["b64"]:
        shown = url[:40] + ("..." if len(url) > 40 else "")
        raise UserError(f"image_url {shown!r} is not a base64 data URL; send the image inline as "
                        "'data:image/png;base64,<...>' (this server downloads nothing)")
    try:
        return base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise UserError("an image_url data URL has invalid base64; encode the file with base64.b64encode") from None


def has_images(messages: list[ChatMessage]) -> bool:
    return any(not isinstance(m.content, (str, type(None))) and any(p.type == "image_url" for p in m.content)
               for m in messages)


# ---- responses ----
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int | None = None) -> dict:
    if completion_tokens is None:  # embeddings
        return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ApiError(Exception):
    """An HTTP error answered as OpenAI's error object; a 503 tells the client when to retry."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        if status == 503 and headers is None:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
        self.status, self.message, self.headers = status, message, headers


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error object (what the openai client raises from); vLLM answers the same shape."""
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 422: "invalid_request_error", 503: "server_overloaded",
             500: "internal_server_error"}
    return {"error": {"message": message, "type": kinds.get(status, "invalid_request_error"), "param": param,
                      "code": status}}
