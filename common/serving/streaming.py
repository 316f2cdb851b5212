"""The answers of /v1/completions and /v1/chat/completions from a job's events (common/serving/batcher.py): one JSON
response (`collect`), or server-sent events (`stream`) in OpenAI's chunk format ending in `data: [DONE]`."""
from __future__ import annotations

import asyncio
import json

from common.serving.protocol import ApiError, error_body, new_id, now, usage

DISCONNECT_POLL_S = 0.5  # how often a waiting non-streamed request checks whether its client is still there

OBJECTS = {"completions": ("cmpl", "text_completion", "text_completion"),
           "chat": ("chatcmpl", "chat.completion", "chat.completion.chunk")}  # id prefix, response, stream chunk


def _choice(kind: str, index: int, text: str, finish: str | None, streamed: bool) -> dict:
    if kind == "completions":
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
    body = {"delta": {"content": text} if text else {}} if streamed else {
        "message": {"role": "assistant", "content": text}}
    return {"index": index, **body, "logprobs": None, "finish_reason": finish}


async def next_event(job, request) -> tuple:
    """The job's next event; an error event is raised as its ApiError, and a client that left raises
    CancelledError (so the caller's cleanup frees the slot and stops the rows)."""
    while True:
        try:
            event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise asyncio.CancelledError("client disconnected") from None
            continue
        if event[0] == "error":
            raise ApiError(event[1], event[2])
        return event


async def collect(job, started: tuple, kind: str, model: str, request) -> dict:
    """The whole answer once every choice finished. A client that leaves meanwhile stops its rows."""
    prompt_counts = started[1]
    finished: dict[int, tuple] = {}
    while len(finished) < len(prompt_counts) * job.n:
        event = await next_event(job, request)
        if event[0] == "finish":
            _, choice, reason, _, text, tokens = event
            finished[choice] = (text, reason, tokens)
    prefix, obj, _ = OBJECTS[kind]
    choices = [_choice(kind, i, finished[i][0], finished[i][1], False) for i in sorted(finished)]
    completion_tokens = sum(f[2] for f in finished.values())
    return {"id": new_id(prefix), "object": obj, "created": now(), "model": model, "choices": choices,
            "usage": usage(sum(prompt_counts), completion_tokens)}


def _sse(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def stream(batcher, job, started: tuple, kind: str, model: str, include_usage: bool):
    """Server-sent events: chunks as tokens arrive, a last chunk per choice with its finish_reason, the usage chunk
    when asked (stream_options.include_usage), then `data: [DONE]`. Leaving mid-stream stops the job's rows and
    frees its slot (the finally below runs when Starlette cancels the response on a disconnect)."""
    prefix, _, chunk_object = OBJECTS[kind]
    head = {"id": new_id(prefix), "object": chunk_object, "created": now(), "model": model}
    prompt_counts, open_choices, completion_tokens = started[1], len(started[1]) * job.n, 0
    try:
        if kind == "chat":  # OpenAI's first chunk of each choice names the role
            for index in range(open_choices):
                yield _sse({**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]})
        while open_choices:
            event = await job.events.get()
            if event[0] == "error":
                yield _sse(error_body(event[1], event[2]))
                break
            if event[0] == "delta":
                yield _sse({**head, "choices": [_choice(kind, event[1], event[2], None, True)]})
            elif event[0] == "finish":
                _, choice, reason, delta, _, tokens = event
                completion_tokens += tokens
                open_choices -= 1
                yield _sse({**head, "choices": [_choice(kind, choice, delta, reason, True)]})
        if include_usage and not open_choices:
            yield _sse({**head, "choices": [], "usage": usage(sum(prompt_counts), completion_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        batcher.release(job)
