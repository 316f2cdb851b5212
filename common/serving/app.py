"""The FastAPI application of common/serving/server.py: routes, the key check, the body limit and OpenAI-shaped errors."""
from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import sys
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from common.cli import UserError
from common.serving.protocol import (ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, error_body, now,
                              prompt_list, unsupported_options, usage)
from common.serving.batcher import Batcher, Job, Overloaded
from common.serving.streaming import collect, next_event, stream

ROUTES = {"embeddings": "/v1/embeddings", "completions": "/v1/completions", "chat": "/v1/chat/completions"}
log = logging.getLogger("common.serving.server")


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a body over the limit is answered 413 before any of it is parsed (by its Content-Length,
    or while a chunked body arrives), so one client cannot make the server buffer gigabytes."""

    def __init__(self, app, limit_bytes: int):
        self.app, self.limit = app, limit_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the real channel: disconnects still reach the streaming responses
        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        mb = self.limit / 2**20
        response = error_response(413, f"the request body is larger than {mb:g} MB (--max-body-mb); send a "
                                       "smaller request, or start the server with a larger --max-body-mb")
        await response(scope, receive, send)


def build_app(backend, args, url: str) -> FastAPI:
    name = args.served_model_name
    batcher = Batcher(backend, args.max_batch_size, args.max_queue, args.max_wait_ms / 1e3)
    created = now()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        sys.stderr.write(ready_line(name, url, backend) + "\n")
        sys.stderr.flush()
        yield
        await batcher.stop()

    app = FastAPI(title=f"{name} (accel-ports)", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)

    async def authorized(request: Request) -> None:
        if args.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), args.api_key.encode()):
            raise ApiError(401, "missing or wrong API key; send 'Authorization: Bearer KEY' with the server's "
                                "--api-key", headers={"WWW-Authenticate": "Bearer"})

    def check_model(requested: str | None, endpoint: str) -> None:
        if requested is not None and requested != name:
            raise ApiError(404, f"the model '{requested}' does not exist; this server serves '{name}'")
        if endpoint not in backend.endpoints:
            raise ApiError(400, f"'{name}' does not support {ROUTES[endpoint]}; it serves "
                                f"{', '.join(ROUTES[e] for e in backend.endpoints)}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "endpoints": list(backend.endpoints), **backend.describe(),
                "max_batch_size": args.max_batch_size, "max_queue": args.max_queue, "max_wait_ms": args.max_wait_ms,
                "threads": args.threads, **batcher.stats()}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        card = {"id": name, "object": "model", "created": created, "owned_by": "accel-ports",
                "root": str(backend.describe().get("source", name)), "max_model_len": backend.max_model_len}
        return {"object": "list", "data": [card]}

    @app.post("/v1/embeddings", dependencies=[Depends(authorized)])
    async def embeddings(body: EmbeddingRequest, request: Request):
        check_model(body.model, "embeddings")
        if body.dimensions is not None:
            raise ApiError(400, "'dimensions' is not supported: this model's embeddings have one fixed size")
        job = Job("embeddings", prompt_list(body.input, "input"), asyncio.get_running_loop())
        event = await run_job(batcher, job, request)
        vectors, counts = event[1], event[2]
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": name, "usage": usage(sum(counts))}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model, "completions")
        return await generation(body, prompt_list(body.prompt, "prompt"), "completions", request)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(body: ChatRequest, request: Request):
        check_model(body.model, "chat")
        return await generation(body, [body.messages], "chat", request)

    async def generation(body, items: list, kind: str, request: Request):
        unsupported_options(body)
        rows = len(items) * body.n
        if rows > args.max_batch_size:
            raise ApiError(400, f"{len(items)} prompt(s) x n={body.n} is {rows} rows; this server batches at most "
                                f"{args.max_batch_size} (--max-batch-size): send fewer prompts or a smaller n")
        max_tokens = body.max_tokens or body.max_completion_tokens or backend.default_max_tokens
        job = Job(kind, items, asyncio.get_running_loop(), n=body.n, max_tokens=max_tokens, stops=body.stop_list(),
                  temperature=body.temperature, top_p=body.top_p, seed=body.seed)
        if body.stream:
            first = await run_job(batcher, job, request, release=False)  # errors before any byte is sent
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(batcher, job, first, kind, name, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        first = await run_job(batcher, job, request, release=False)
        try:
            return await collect(job, first, kind, name, request)
        finally:
            batcher.release(job)

    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit_bytes=int(args.max_body_mb * 2**20))
    return app


async def run_job(batcher: Batcher, job: Job, request: Request, release: bool = True) -> tuple:
    """Admit the job and wait for its first event; an error event becomes its HTTP error. A client that leaves
    while waiting frees its slot."""
    try:
        batcher.admit(job)
    except Overloaded as exc:
        raise ApiError(503, str(exc)) from None
    done = False
    try:
        event = await next_event(job, request)
        done = True
        return event
    finally:
        if release or not done:
            batcher.release(job)


def ready_line(name: str, url: str, backend) -> str:
    described = backend.describe()
    where = ", ".join(str(described[k]) for k in ("device", "dtype") if k in described)
    return f"ready: serving {name!r} at {url} ({where}; {', '.join(ROUTES[e] for e in backend.endpoints)})"


def encode_vector(vector, encoding_format: str):
    if encoding_format == "base64":  # little-endian float32 bytes: what the openai client decodes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(UserError)
    async def user_error(request, exc: UserError):
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        broken = [e for e in errors if e.get("type") == "json_invalid"]
        if broken:
            where = broken[0].get("loc", ("body", "?"))[-1]
            return error_response(400, f"the request body is not valid JSON (error at character {where}); send a "
                                       "JSON object")
        if any(tuple(e.get("loc", ())) == ("body",) for e in errors):  # a list, a number, or not JSON at all
            return error_response(400, "the request body must be a JSON object, sent with 'Content-Type: "
                                       "application/json'")
        return error_response(422, f"invalid request: {_first_error(errors)}")

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}; see /v1/models, /v1/embeddings, "
                        "/v1/completions, /v1/chat/completions, /health",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request, exc: Exception):
        log.exception("request failed")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def _first_error(errors: list) -> str:
    if not errors:
        return "no details"
    error = errors[0]
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where or 'body'}: {error.get('msg', 'invalid')}{more}"


