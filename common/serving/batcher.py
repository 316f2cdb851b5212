"""The batching worker of common/serving/server.py: requests wait in one queue; a single model thread takes them in batches.

Why one thread: the model and its tokenizer are touched from one thread only (fast tokenizers raise "Already
borrowed" when two threads use one at once, and a second model thread would only fight the first for the cores).
The event loop never runs model code: it admits requests (or answers 503 when --max-queue are already in), and the
model thread talks back through each request's asyncio queue (`Job.push`, thread-safe).

A batch is the oldest request plus every later one that can share its generate call (same sampling settings), up
to --max-batch-size rows (a row is one choice of one prompt, or one embedding input). When fewer rows are waiting
and the last batch had more than one row (clients are sending at once), the worker waits at most --max-wait-ms for
more: a bounded delay that lets concurrent clients share a batch, and that a lone client never pays.
Seeded requests run alone, so a seed gives the same answer whatever else arrived at the time.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.cli import UserError
from common.serving.generation import Row, Sampling, generate_hooks

SHUTDOWN_MARGIN_S = 1.0  # requests still running this long before --shutdown-timeout ends get their 503
log = logging.getLogger("common.serving.server")


class Overloaded(Exception):
    """The queue is full or the server is stopping: answered 503 with Retry-After."""


@dataclass(eq=False)
class Job:
    """One admitted request. `items` are its prompts (completions, embeddings) or [messages] (chat)."""
    kind: str  # "embeddings" | "completions" | "chat"
    items: list
    loop: asyncio.AbstractEventLoop
    n: int = 1
    max_tokens: int = 0
    stops: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    released: bool = False

    @property
    def rows(self) -> int:
        return len(self.items) * self.n

    @property
    def group(self) -> Any:
        """Requests of one group can share a batch."""
        if self.kind == "embeddings":
            return "embeddings"
        if self.seed is not None and self.temperature > 0:
            return ("seeded", id(self))  # alone: its sampling must not depend on other rows (greedy needs no seed)
        return ("generate", self.temperature, self.top_p if self.temperature else None)

    def push(self, *event) -> None:
        """Hand an event to the request's handler; safe from the model thread."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def emit_row(self, row: Row, delta: str, finish: str | None) -> None:
        if finish is None:
            self.push("delta", row.choice, delta)
        elif finish != "cancelled":
            self.push("finish", row.choice, finish, delta, row.text, len(row.ids))


class Batcher:
    def __init__(self, backend, max_batch_size: int, max_queue: int, max_wait_s: float):
        self.backend, self.max_batch_size, self.max_queue, self.max_wait_s = (backend, max_batch_size, max_queue,
                                                                              max_wait_s)
        self.pending: deque[Job] = deque()
        self.running: list[Job] = []
        self.admitted = 0
        self.last_batch_rows = 0  # rows of the batch the worker last took: is the server seeing concurrent traffic?
        self.closing = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.arrived = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())

    def admit(self, job: Job) -> None:
        if self.closing:
            raise Overloaded("the server is shutting down; retry on another replica or after the restart")
        if self.admitted >= self.max_queue:
            raise Overloaded(f"the server is full: {self.admitted} requests are queued or running (--max-queue "
                             f"{self.max_queue}); retry after the Retry-After seconds")
        self.admitted += 1
        self.pending.append(job)
        self.arrived.set()

    def release(self, job: Job) -> None:
        """The request's handler is done (answered, failed or its client left): free its slot, stop its rows."""
        if not job.released:
            job.released, job.cancelled = True, True
            self.admitted -= 1

    def stats(self) -> dict:
        return {"admitted": self.admitted, "queued": len(self.pending), "running": len(self.running)}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_work()
            batch = self._take_batch()
            if not batch:
                continue
            self.running = batch
            self.last_batch_rows = sum(job.rows for job in batch)
            try:
                await loop.run_in_executor(self.executor, self.execute, batch)
            finally:
                self.running = []

    def begin_shutdown(self, timeout_s: float) -> None:
        """SIGTERM: admit nothing more; what is still queued or running a little before timeout_s is failed."""
        self.closing = True
        margin = min(SHUTDOWN_MARGIN_S, timeout_s / 2)
        asyncio.get_running_loop().call_later(timeout_s - margin, self.fail_all,
                                              f"the server shut down before this request finished (--shutdown-"
                                              f"timeout {timeout_s:g} s); retry")

    def fail_all(self, message: str) -> None:
        for job in [*self.pending, *self.running]:
            if not job.released:
                job.push("error", 503, message)
                job.cancelled = True
        self.pending.clear()

    async def stop(self) -> None:
        """Shutdown: fail what is still queued (503), stop the rows being generated, end the worker."""
        self.closing = True
        for job in self.pending:
            job.push("error", 503, "the server is shutting down before this request started; retry")
        self.pending.clear()
        for job in self.running:
            job.cancelled = True
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def _wait_for_work(self) -> None:
        while not self.pending:
            self.arrived.clear()
            await self.arrived.wait()
        if self.last_batch_rows <= 1:
            return  # light traffic (the last batch had one row): waiting would only add latency to a lone request
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while self._ready_rows() < self.max_batch_size:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                break

    def _ready_rows(self) -> int:
        group = self.pending[0].group
        return sum(job.rows for job in self.pending if job.group == group)

    def _take_batch(self) -> list[Job]:
        """The oldest live request and the later ones of its group that fit; the others keep their order."""
        live = [job for job in self.pending if not job.cancelled]
        if not live:
            self.pending.clear()
            return []
        first, batch, rest = live[0], [live[0]], deque()
        rows = first.rows
        for job in live[1:]:
            if job.group == first.group and rows + job.rows <= self.max_batch_size:
                batch.append(job)
                rows += job.rows
            else:
                rest.append(job)
        self.pending = rest
        return batch

    # ---- the model thread ----
    def execute(self, batch: list[Job]) -> None:
        try:
            if batch[0].kind == "embeddings":
                self._embed(batch)
            else:
                self._generate(batch)
        except Exception as exc:  # noqa: BLE001 - a model failure fails its batch, never the server
            log.exception("batch of %d request(s) failed", len(batch))
            for job in batch:
                job.push("error", 500, f"the model failed on this batch: {type(exc).__name__}: {exc}")

    def _prepare(self, job: Job) -> list | None:
        """The job's prompts as the backend prepares them, or None after answering 400 with the backend's reason."""
        backend = self.backend
        try:
            if job.kind == "embeddings":
                return [backend.embedding_input(item) for item in job.items]
            if job.kind == "chat":
                return [backend.chat_prompt(job.items[0], job.max_tokens)]
            return [backend.completion_prompt(item, job.max_tokens) for item in job.items]
        except UserError as exc:
            job.push("error", 400, str(exc))
            return None

    def _embed(self, batch: list[Job]) -> None:
        prepared = [(job, prompts) for job in batch if (prompts := self._prepare(job)) is not None]
        flat = [prompt for _, prompts in prepared for prompt in prompts]
        if not flat:
            return
        step, chunks = self.max_batch_size, []
        for i in range(0, len(flat), step):
            if all(job.cancelled for job, _ in prepared):  # every client left (or shutdown): stop between chunks
                return
            chunks.append(np.asarray(self.backend.embed(flat[i:i + step]), dtype=np.float32))
        vectors = np.concatenate(chunks)
        start = 0
        for job, prompts in prepared:
            job.push("embeddings", vectors[start:start + len(prompts)], [p.token_count for p in prompts])
            start += len(prompts)

    def _generate(self, batch: list[Job]) -> None:
        parts = []  # (rows, prompts) per job
        for job in batch:
            prepared = self._prepare(job)
            if prepared is None or job.cancelled:
                continue
            job.push("started", [p.token_count for p in prepared])
            rows, prompts = [], []
            for index, prompt in enumerate(prepared):
                for copy in range(job.n):
                    rows.append(Row(choice=index * job.n + copy, max_tokens=job.max_tokens, stops=job.stops,
                                    emit=job.emit_row, cancelled=lambda job=job: job.cancelled))
                    prompts.append(prompt)
            parts.append((rows, prompts))
        for rows, prompts in self._fitting_calls(parts):
            self._run_generate(batch[0], rows, prompts)

    def _fitting_calls(self, parts: list[tuple]) -> list[tuple]:
        """One generate call for the batch, unless its longest prompt plus its largest max_tokens would pass the
        context (each request was checked alone, but a shared batch is as wide as its longest prompt and runs as
        long as its largest max_tokens, positions included): then one call per request, each of which fits."""
        rows = [row for part in parts for row in part[0]]
        prompts = [prompt for part in parts for prompt in part[1]]
        limit = self.backend.max_model_len
        if not rows or len(parts) == 1 or limit is None or (
                max(p.token_count for p in prompts) + max(r.max_tokens for r in rows) <= limit):
            return [(rows, prompts)] if rows else []
        return parts

    def _run_generate(self, first: Job, rows: list[Row], prompts: list) -> None:
        sampling = Sampling(first.temperature, first.top_p, max(row.max_tokens for row in rows), first.seed)
        if first.seed is not None:
            torch.manual_seed(first.seed)  # seeds every device torch knows (CUDA, NPU through torch_npu)
        hooks = generate_hooks(rows, self.backend.decode, self.backend.eos_token_ids)
        self.backend.generate(prompts, sampling, hooks)
        hooks["streamer"].end()  # idempotent: generate already called it, unless a backend returned early
