"""An OpenAI-compatible server (the API vLLM speaks) for one model on one machine: FastAPI + uvicorn, pydantic
requests, one batching worker. Each folder's serve.py is a backend (common/serving/backend.py: how its model tokenizes,
embeds or generates) handed to `serve(args, make_backend)`.

    GET  /health                 200 {"status": "ok", "model": ..., device, dtype, queue}   (no key needed)
    GET  /v1/models              the served model
    POST /v1/embeddings          embedding backends
    POST /v1/completions         generation backends (stream: true = server-sent events ending in data: [DONE])
    POST /v1/chat/completions    generation backends

Errors are OpenAI's {"error": {...}} object: 400 bad request (malformed JSON, an input the model refuses, an option
it cannot honour), 401 missing or wrong key, 404 unknown model or route, 413 body over --max-body-mb, 422 a field of
the wrong type or range, 503 + Retry-After when --max-queue requests are in, 500 the model failed.
SIGTERM or Ctrl-C: no new connections; requests in flight finish (at most --shutdown-timeout s, then they are
failed); exit 0. See common/serving/batcher.py for the batching and common/serving/generation.py for streaming.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from typing import Callable

import torch

from common.cli import ArgumentParser, UserError, positive_int

DEFAULT_PORT = 8000  # vLLM's, so clients and docs carry over
DEFAULT_MAX_BATCH_SIZE = 32  # rows per model call: past ~32 a CPU gains little per row while latency keeps growing
DEFAULT_MAX_QUEUE = 256  # requests queued or running; beyond, 503 tells clients to back off instead of timing out
DEFAULT_MAX_WAIT_MS = 5.0  # how long a part-full batch waits for more requests: small next to any model call
DEFAULT_MAX_BODY_MB = 1.0  # request body cap; raise it for AnandaSky page images sent as data URLs
DEFAULT_SHUTDOWN_TIMEOUT_S = 30  # on SIGTERM, how long requests in flight may take before they are failed


def build_parser(description: str, default_name: str) -> ArgumentParser:
    """The flags every serve.py shares; the folder adds its model flags (--model_path, --device, --dtype, ...)."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port; 0 picks a free one (printed)")
    parser.add_argument("--served_model_name", default=default_name,
                        help=f"the model name clients send and /v1/models lists (default {default_name})")
    parser.add_argument("--api_key", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
    parser.add_argument("--max_batch_size", type=positive_int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="rows per model call (a row: one embedding input, or one choice of one prompt)")
    parser.add_argument("--max_queue", type=positive_int, default=DEFAULT_MAX_QUEUE,
                        help="requests queued or running at once; more are answered 503 with Retry-After")
    parser.add_argument("--max_wait_ms", type=float, default=DEFAULT_MAX_WAIT_MS,
                        help="how long a part-full batch waits for more requests (0: never waits)")
    parser.add_argument("--max_body_mb", type=float, default=DEFAULT_MAX_BODY_MB,
                        help="largest request body in MB; bigger ones are answered 413")
    parser.add_argument("--shutdown_timeout", type=positive_int, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
                        help="seconds requests in flight get to finish after SIGTERM")
    parser.add_argument("--threads", type=positive_int, default=default_threads(),
                        help="torch CPU threads for the model (default: the cores but one, so the HTTP side keeps a "
                             "core; on an accelerator they only run host-side work)")
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"],
                        help="uvicorn's log level (info: one access line per request)")
    return parser


def default_threads() -> int:
    """All cores but one: two torch threads on a 2-core machine made one MiniLM request 5-8x slower under load
    (the threads stall whenever the event loop or a client takes a core; see all-MiniLM-L6-v2/readme.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def check_args(args) -> None:
    """Every serving flag, checked before the model loads."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port; use 0-65535 (0 picks a free one)")
    if not args.served_model_name.strip():
        raise UserError("--served-model-name is empty; give the name clients will send as 'model'")
    if args.api_key is not None and (not args.api_key or any(not 33 <= ord(c) <= 126 for c in args.api_key)):
        raise UserError("--api-key must be printable ASCII without spaces (clients send it in an HTTP header)")
    for flag, value in (("--max-wait-ms", args.max_wait_ms), ("--max-body-mb", args.max_body_mb)):
        if not (value == value and 0 <= value < float("inf")):
            raise UserError(f"{flag} {value} must be a finite number >= 0")
    if args.max_body_mb <= 0:
        raise UserError("--max-body-mb must be more than 0 (every request has a body)")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use is a one-line error now, not minutes
    later, and --port 0 gets its real number for the ready line."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "is in use" if exc.errno in (98, 48, 10048) else f"cannot be bound ({exc.strerror})"
        raise UserError(f"{host}:{port} {reason}; stop the other server or pass another --port (0 picks a free one)"
                        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(args, make_backend: Callable[[], object]) -> int:
    """Check the flags, bind, load the model (make_backend), serve until SIGTERM/SIGINT, return 0."""
    import uvicorn  # the server stack loads only when one starts: --help and the flag checks stay fast

    from common.serving.app import build_app  # FastAPI, likewise

    check_args(args)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    torch.set_num_threads(args.threads)
    try:
        backend = make_backend()
        app = build_app(backend, args, url=f"http://{_url_host(host)}:{port}")
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_timeout,
                                lifespan="on")
        _Server(config, app.state.batcher).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Server:
    """uvicorn.Server with two changes. It exits 0 after a signal-driven shutdown: uvicorn re-raises SIGTERM once
    it has shut down (so the default handler would end the process with -15), and here a SIGTERM is the normal way
    to stop. And requests still running just before --shutdown-timeout ends are failed with a 503 error object
    (uvicorn would cancel them into a bare 500 or a cut connection)."""

    def __new__(cls, config, batcher):
        import uvicorn  # lazy, as in serve()

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                with super().capture_signals():
                    yield
                    self._captured_signals.clear()

            async def shutdown(self, sockets=None):
                batcher.begin_shutdown(self.config.timeout_graceful_shutdown)
                await super().shutdown(sockets)

        return Server(config)


if __name__ == "__main__":
    sys.exit("run a folder's serve.py, e.g. `cd all-MiniLM-L6-v2 && python serve.py --port 8000`")
