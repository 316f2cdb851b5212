"""Generation mechanics of common/serving/server.py: rows of a batch, streamed token by token out of transformers'
`model.generate`, each stopped on its own (its max_tokens, its stop strings, its client gone).

transformers' `generate` takes one `max_new_tokens` and one set of stop strings for the whole batch, and its text
streamers take one row. So the server passes generate a streamer of its own (`RowStreamer`, which follows
BaseStreamer's protocol for a whole batch) and a stopping criterion that reads the same per-row state: when a row is
done, generate pads it from then on and the batch ends once every row is done.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from common.sampling import sampling_kwargs
from common.serving.backend import Sampling

REPLACEMENT = "\ufffd"  # what a tokenizer decodes half of a multi-byte character to: held back until complete


def hf_sampling(sampling: Sampling) -> dict:
    """model.generate keyword arguments of a batch: common.sampling's (the rule inference.py uses too), plus
    num_beams 1, so a checkpoint's generation_config cannot turn a served request into beam search."""
    return {**sampling_kwargs(sampling.temperature, sampling.top_p), "num_beams": 1}


@dataclass
class Row:
    """One choice being generated: one row of the batch."""
    choice: int  # its index in its request's choices
    max_tokens: int
    stops: list[str]
    emit: Callable  # emit(row, delta_text, finish_reason | None): called from the model thread
    cancelled: Callable[[], bool]  # the client went away: stop generating this row
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already emitted
    finish: str | None = None  # "stop" | "length" | "cancelled"


class RowStreamer(BaseStreamer):
    """Receives each step's new token for every row of a generate batch (BaseStreamer protocol: the first put is
    the prompt, or T5's decoder start, and is skipped), decodes each row incrementally and emits its new text."""

    def __init__(self, rows: list[Row], decode: Callable[[list[int]], str], eos_token_ids: set[int]):
        self.rows, self.decode, self.eos = rows, decode, set(eos_token_ids)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(len(self.rows), -1)[:, -1].tolist()
        for row, token in zip(self.rows, tokens):
            if row.finish is None:
                self._advance(row, int(token))

    def end(self) -> None:
        """generate returned: a row still open ran into the batch's token limit."""
        for row in self.rows:
            if row.finish is None:
                self._finish(row, "length")

    def _advance(self, row: Row, token: int) -> None:
        if row.cancelled():
            row.finish = "cancelled"
            return
        row.ids.append(token)  # counted in usage even when it is the end-of-sequence token, as vLLM does
        row.text = self.decode(row.ids)
        cut = first_stop(row.text, row.stops)
        if cut is not None:
            row.text = row.text[:cut]
            self._finish(row, "stop")
        elif token in self.eos:
            self._finish(row, "stop")
        elif len(row.ids) >= row.max_tokens:
            self._finish(row, "length")
        else:
            self._emit_safe_part(row)

    def _emit_safe_part(self, row: Row) -> None:
        """Emit what can no longer change: not a half character, nor the start of a stop string."""
        end = len(row.text)
        if row.text.endswith(REPLACEMENT):
            end = len(row.text.rstrip(REPLACEMENT))
        if row.stops:
            end = min(end, len(row.text) - (max(map(len, row.stops)) - 1))
        if end > row.sent:
            row.emit(row, row.text[row.sent:end], None)
            row.sent = end

    def _finish(self, row: Row, reason: str) -> None:
        row.finish = reason
        row.emit(row, row.text[row.sent:], reason)
        row.sent = len(row.text)


def first_stop(text: str, stops: list[str]) -> int | None:
    """Index of the earliest stop string in text, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class RowsDone(StoppingCriteria):
    """generate's per-row stop: a row is done when RowStreamer finished it (or its client left since)."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        for row in self.rows:
            if row.finish is None and row.cancelled():
                row.finish = "cancelled"  # nothing more is sent to a client that left
        done = [row.finish is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_hooks(rows: list[Row], decode, eos_token_ids: set[int]) -> dict:
    """What a backend passes straight to model.generate(**hooks)."""
    return {"streamer": RowStreamer(rows, decode, eos_token_ids), "stopping_criteria": StoppingCriteriaList(
        [RowsDone(rows)])}
