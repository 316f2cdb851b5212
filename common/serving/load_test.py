"""Load test for an OpenAI-compatible server (this repository's serve.py, or vLLM): requests/s, latency, TTFT, errors.

    accel-ports bench-serve --base-url http://127.0.0.1:8000                  # 32 clients x 8 requests
    accel-ports bench-serve --base-url http://127.0.0.1:8000/v1 --clients 32 --requests 16
    accel-ports bench-serve --base-url http://127.0.0.1:8000 --endpoint chat --stream --max-tokens 16

Two phases over loopback, in one run: --clients concurrent clients sending --requests requests each, then the same
number of requests one at a time. The batching gain is concurrent requests/s / one-at-a-time requests/s: what the
server's request batching buys under load. Each phase is bounded by --max-seconds (no request starts after it) and
each request by --timeout. Errors are counted by kind (http_<status>, connection, timeout, bad_response), never
raised. Writes results/serve_<model>_<device>_<dtype>_<endpoint>.json in the current folder (or --output) and a PNG
beside it.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import torch
from tqdm.auto import tqdm

from common.cli import ArgumentParser, UserError, finite_float, first_line, positive_int, run_main
from common.results import check_result_outputs, default_result_path, result_record, save_figure, write_json
from common.textio import read_lines
from common.bench import ratio_text, speed_ratio
from common.timing import summarize

ENDPOINTS = {"embeddings": "/v1/embeddings", "completions": "/v1/completions", "chat": "/v1/chat/completions"}
DEFAULT_CLIENTS = 32  # the load: enough concurrent requests to fill a batch of 32
DEFAULT_REQUESTS = 8  # per client: 256 requests in all, seconds on a 2-core CPU with MiniLM
DEFAULT_MAX_SECONDS = 120.0  # per phase: no request starts later, so a slow server cannot make the run endless
DEFAULT_TIMEOUT = 60.0  # per request: a hung request counts as a timeout error instead of blocking the phase
DEFAULT_MAX_TOKENS = 16  # generation endpoints: short answers keep the load about scheduling, not decode length
DEFAULT_INPUT = "A man is playing a guitar on a stage in front of a small crowd."
WARMUP_REQUESTS = 8  # untimed, sent together: first-call costs (allocator, kernels, batch shapes) stay out
GOAL_GAIN = 2.0  # the goal: concurrent throughput at least twice the one-at-a-time throughput
ERROR_SAMPLES = 5  # error messages kept per phase in the JSON (the counts hold them all)


@dataclass
class Outcome:
    """One request: latency, time to the first content chunk (streams), generated tokens, or the error kind."""
    latency_s: float
    error: str | None = None
    message: str | None = None
    ttft_s: float | None = None
    completion_tokens: int | None = None


@dataclass
class Target:
    """Where and what to send: the base URL, headers, endpoint, model, inputs and generation settings."""
    base_url: str
    headers: dict
    endpoint: str
    model: str
    inputs: list[str]
    max_tokens: int
    stream: bool
    health: dict  # the server's /health JSON ({} when it has none)


# --- checks before any load -----------------------------------------------------------------------------------------

def normalize_base_url(url: str) -> str:
    """'http://host:8000/v1/' -> 'http://host:8000': the endpoint paths below carry /v1 themselves."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--base-url {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    path = path[:-3] if path.endswith("/v1") else path
    return f"{parts.scheme}://{parts.netloc}{path}"


def read_inputs(args) -> list[str]:
    if args.input_file is not None:
        return read_lines(args.input_file, "--input-file")[0]  # (texts, blank lines skipped)
    if not args.input.strip():
        raise UserError("--input is empty; give a sentence to send, or --input-file with one input a line")
    return [args.input]


def unreachable(base_url: str, exc: BaseException) -> UserError:
    port = urlsplit(base_url).port or 8000
    refused = isinstance(getattr(exc, "os_error", exc), ConnectionRefusedError)  # aiohttp wraps the socket error
    timed_out = isinstance(exc, asyncio.TimeoutError)
    reason = "connection refused" if refused else "no answer within --timeout" if timed_out else first_line(exc)
    return UserError(f"no server answers at {base_url} ({reason}); start it with python serve.py --port {port}")


async def get_json(session, url: str, headers: dict, what: str):
    """GET a JSON document; (status, body or None). Connection failures propagate for `unreachable`."""
    async with session.get(url, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text) if text.strip() else None
        except ValueError:
            raise UserError(f"{what} at {url} did not answer JSON (HTTP {response.status}); is this an "
                            "OpenAI-compatible server?") from None


async def probe(session, base_url: str, args) -> tuple[dict, list[str]]:
    """The server's /health JSON ({} when it has none) and its served model ids, before any load."""
    headers = auth_headers(args.api_key)
    try:
        health_status, health = await get_json(session, base_url + "/health", {}, "/health")
        status, models = await get_json(session, base_url + "/v1/models", headers, "/v1/models")
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
        raise unreachable(base_url, exc) from None
    if status == 401:
        raise UserError(f"{base_url} refuses the API key (HTTP 401); pass the server's key with --api-key")
    ids = [m.get("id") for m in (models or {}).get("data", []) if isinstance(m, dict)] if status == 200 else []
    if not ids:
        raise UserError(f"{base_url}/v1/models answered HTTP {status} with no model; is this an OpenAI-compatible "
                        "server?")
    return (health if health_status == 200 and isinstance(health, dict) else {}), ids


def choose_endpoint(args, health: dict) -> str:
    """--endpoint, or the only kind of endpoint /health lists ("embeddings" for MiniLM)."""
    served = health.get("endpoints")
    if args.endpoint is None:
        if not served:
            raise UserError("the server's /health does not list its endpoints; pass --endpoint embeddings, "
                            "completions or chat")
        args.endpoint = served[0]
    if args.endpoint not in ENDPOINTS:
        raise UserError(f"the server lists endpoint {args.endpoint!r}, which this load test does not know")
    if served and args.endpoint not in served:
        raise UserError(f"--endpoint {args.endpoint}: the server serves only {', '.join(served)}")
    if args.stream and args.endpoint == "embeddings":
        raise UserError("--stream applies to completions and chat; embeddings answer in one piece")
    return args.endpoint


def auth_headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# --- one request ----------------------------------------------------------------------------------------------------

def request_body(target: Target, text: str) -> dict:
    if target.endpoint == "embeddings":  # base64, as the openai client asks: the cheapest to encode and decode
        return {"model": target.model, "input": text, "encoding_format": "base64"}
    body = {"model": target.model, "max_tokens": target.max_tokens, "temperature": 0.0}
    if target.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if target.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def check_answer(target: Target, answer: dict) -> int | None:
    """Raise ValueError unless `answer` has the endpoint's shape; the completion token count when given."""
    if target.endpoint == "embeddings":
        vector = base64.b64decode(answer["data"][0]["embedding"])
        if not vector or len(vector) % 4:
            raise ValueError("the embedding is not a float32 vector")
        return None
    if not answer["choices"]:  # KeyError when absent: a bad_response too
        raise ValueError("no choices")
    return (answer.get("usage") or {}).get("completion_tokens")


def chunk_text(chunk: dict) -> str:
    choice = chunk["choices"][0] if chunk.get("choices") else {}
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def read_stream(response, start: float) -> tuple[float | None, int | None]:
    """Read SSE lines to `data: [DONE]`; the time to the first chunk with content, and the usage's token count."""
    ttft, tokens, done = None, None, False
    async for raw in response.content:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if ttft is None and chunk_text(chunk):
            ttft = time.perf_counter() - start
        tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    if not done:
        raise ValueError("the stream ended without data: [DONE]")
    return ttft, tokens


async def send(session, target: Target, text: str) -> Outcome:
    """One timed request; any failure becomes an Outcome with its kind, so the load goes on."""
    url, start = target.base_url + ENDPOINTS[target.endpoint], time.perf_counter()
    try:
        async with session.post(url, json=request_body(target, text), headers=target.headers) as response:
            if response.status != 200:
                message = (await response.text())[:200]
                return Outcome(time.perf_counter() - start, f"http_{response.status}", message)
            if target.stream:
                ttft, tokens = await read_stream(response, start)
                return Outcome(time.perf_counter() - start, ttft_s=ttft, completion_tokens=tokens)
            tokens = check_answer(target, await response.json(content_type=None))
            return Outcome(time.perf_counter() - start, completion_tokens=tokens)
    except asyncio.TimeoutError:
        return Outcome(time.perf_counter() - start, "timeout", "no answer within --timeout")
    except aiohttp.ClientError as exc:
        return Outcome(time.perf_counter() - start, "connection", f"{type(exc).__name__}: {exc}"[:200])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Outcome(time.perf_counter() - start, "bad_response", f"{type(exc).__name__}: {exc}"[:200])


# --- phases ---------------------------------------------------------------------------------------------------------

async def run_phase(session, target: Target, clients: int, per_client: int, max_seconds: float, name: str):
    """`clients` coroutines each sending `per_client` requests back to back; none starts after max_seconds."""
    outcomes: list[Outcome] = []
    label = f"{clients} concurrent client{'s' * (clients != 1)}" if name == "concurrent" else "one at a time"
    bar = tqdm(total=clients * per_client, desc=label, unit="req", file=sys.stderr, leave=False)
    load_before, cpu_before = load_average(), time.process_time()
    start = time.perf_counter()
    deadline = start + max_seconds

    async def client(index: int) -> None:
        for i in range(per_client):
            if time.perf_counter() >= deadline:
                return
            outcomes.append(await send(session, target, target.inputs[(index * per_client + i) % len(target.inputs)]))
            bar.update()

    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    bar.close()
    # what else used the CPU: this load generator's own CPU seconds, and the machine's load average
    stats = {"phase": name, "label": label, **phase_stats(outcomes, clients, clients * per_client, wall),
             "client_cpu_s": time.process_time() - cpu_before,
             "load_average_1m": {"before": load_before, "after": load_average()}}
    return stats, outcomes


def load_average() -> float | None:
    """The machine's 1-minute load average: a phase run while other jobs share the cores is slower for it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has none
        return None


def percentiles(samples_s) -> dict:
    """common.timing.summarize, with every key present (None without samples) so readme tables always render."""
    stats = summarize(samples_s)
    return stats if stats["n"] else {"n": 0, **dict.fromkeys(("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms",
                                                              "max_ms"))}


def phase_stats(outcomes: list[Outcome], clients: int, planned: int, wall_s: float) -> dict:
    """Counts, rates and latency percentiles of one phase; latency and TTFT over the successful requests."""
    ok = [o for o in outcomes if o.error is None]
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error:
            errors[o.error] = errors.get(o.error, 0) + 1
    tokens = [o.completion_tokens for o in ok if o.completion_tokens is not None]
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    return {"clients": clients, "requests_planned": planned, "requests_sent": len(outcomes),
            "requests_ok": len(ok), "errors_total": len(outcomes) - len(ok), "errors": errors,
            "error_samples": [f"{o.error}: {o.message}" for o in outcomes if o.error][:ERROR_SAMPLES],
            "stopped_by_max_seconds": len(outcomes) < planned, "wall_s": wall_s,
            "requests_per_s": len(ok) / wall_s if wall_s > 0 else None,
            "latency": percentiles(o.latency_s for o in ok), "ttft": percentiles(ttft) if ttft else None,
            "completion_tokens_per_s": sum(tokens) / wall_s if tokens and wall_s > 0 else None}


async def load_test(args, target: Target, session) -> dict:
    """Warm-up, the concurrent phase, then (unless --no-sequential) the same requests one at a time; the phases'
    statistics and, per phase label, the successful requests' latencies (for the plot)."""
    await asyncio.gather(*(send(session, target, target.inputs[i % len(target.inputs)])
                           for i in range(WARMUP_REQUESTS)))
    plan = [("concurrent", args.clients, args.requests)]
    if not args.no_sequential:
        plan.append(("sequential", 1, args.clients * args.requests))
    phases, latencies = [], {}
    for name, clients, per_client in plan:
        stats, outcomes = await run_phase(session, target, clients, per_client, args.max_seconds, name)
        phases.append(stats)
        latencies[stats["label"]] = [o.latency_s for o in outcomes if o.error is None]
    return {"phases": phases, "latencies": latencies}


# --- result ---------------------------------------------------------------------------------------------------------

def typed_command() -> str:
    """The command as the user typed it (`accel-ports bench-serve ...` or `python -m common.serving.load_test ...`),
    not the module's file path that sys.argv[0] holds under `python -m`."""
    args = sys.argv[1:]
    if Path(sys.argv[0]).name == "accel-ports" and args[:1] == ["bench-serve"]:
        return "accel-ports " + shlex.join(args)
    return "python -m common.serving.load_test " + shlex.join(args)


def server_device(health: dict):
    """The server's device as a torch.device when this machine knows it (for meta.device_name), else None."""
    try:
        device = torch.device(str(health["device"]))
    except (KeyError, RuntimeError, TypeError):
        return None
    backend = getattr(torch, device.type, None)  # e.g. torch.npu only where torch_npu is installed
    return device if device.type == "cpu" or (backend and backend.is_available()) else None


def build_record(args, target: Target, phases: list[dict]) -> dict:
    """The result record; `phases` (a list, one readme table row each) gets the gain on the concurrent row."""
    concurrent, sequential = phases[0], (phases[1] if len(phases) > 1 else None)
    gain = speed_ratio(concurrent["requests_per_s"], sequential["requests_per_s"]) if sequential else None
    goal_met = None if gain is None else gain >= GOAL_GAIN
    concurrent.update(batching_gain=gain, goal_met=goal_met)
    if sequential:
        sequential.update(batching_gain=None, goal_met=None)
    device = server_device(target.health)
    record = result_record("benchmark", device=device, dtype=target.health.get("dtype"),
                           model=target.health.get("source") or target.model,
                           headline={"metric": f"requests/s at {args.clients} clients ({target.endpoint})",
                                     "peer": "one request at a time", "ratio": gain},
                           server={"url": target.base_url, "model": target.model, "endpoint": target.endpoint,
                                   "health": target.health},
                           settings={"clients": args.clients, "requests_per_client": args.requests,
                                     "max_seconds": args.max_seconds, "timeout_s": args.timeout,
                                     "stream": target.stream, "max_tokens": target.max_tokens,
                                     "inputs": len(target.inputs), "warmup_requests": WARMUP_REQUESTS},
                           phases=phases, batching_gain=gain,
                           goal={"batching_gain_at_least": GOAL_GAIN, "met": goal_met})
    if device is None and target.health.get("device"):  # a device this machine lacks: keep the server's word
        record["meta"]["device"] = str(target.health["device"])
    record["meta"]["device_name"] = target.health.get("device_name") or record["meta"]["device_name"]
    record["meta"]["command"] = typed_command()
    return record


def plot(record: dict, latencies: dict, path: Path) -> None:
    """Left: requests/s of both phases with the gain; right: latency CDF of both phases."""
    import matplotlib  # only when the plot is drawn: a run that fails early never pays its import

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, (bars, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [phase["label"] for phase in record["phases"]]
    bars.bar(labels, [phase["requests_per_s"] or 0.0 for phase in record["phases"]],
             color=["tab:blue", "tab:gray"][:len(labels)])
    bars.set_ylabel("requests/s")
    bars.set_title(f"batching gain {ratio_text(record['batching_gain'])} (goal x{GOAL_GAIN:g})")
    for label in labels:
        ms = np.sort(np.asarray(latencies[label]) * 1e3)
        if ms.size:
            cdf.plot(ms, np.arange(1, ms.size + 1) / ms.size, label=label)
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of requests")
    cdf.set_title(f"{record['server']['model']} {record['server']['endpoint']}")
    cdf.legend()
    save_figure(fig, path)


def summary_lines(record: dict) -> list[str]:
    lines = []
    for row in record["phases"]:
        lat, errors = row["latency"], ", ".join(f"{n} {kind}" for kind, n in row["errors"].items())
        latency = f"latency p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms" if lat["n"] else "no latency"
        lines.append(f"{row['label']}: {row['requests_ok']}/{row['requests_planned']} ok, {row['errors_total']} "
                     f"errors{f' ({errors})' if errors else ''}, {row['requests_per_s'] or 0:.1f} req/s, {latency}")
    gain, met = record["batching_gain"], record["goal"]["met"]
    if gain is not None:
        lines.append(f"batching gain {ratio_text(gain)} ({'PASS' if met else 'FAIL'} against the x{GOAL_GAIN:g} goal)")
    return lines


# --- CLI ------------------------------------------------------------------------------------------------------------

async def bench(args) -> tuple[dict, dict, Path]:
    base_url = normalize_base_url(args.base_url)
    inputs = read_inputs(args)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.clients)  # one connection per client, as N real clients hold
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        health, ids = await probe(session, base_url, args)
        if args.model is not None and args.model not in ids:
            raise UserError(f"--model {args.model!r} is not served at {base_url}; it serves {', '.join(ids)}")
        target = Target(base_url, auth_headers(args.api_key), choose_endpoint(args, health), args.model or ids[0],
                        inputs, args.max_tokens, args.stream, health)
        output = Path(args.output) if args.output else default_output(target)
        check_result_outputs(output)  # before the load: a run must not end in an unwritable path
        result = await load_test(args, target, session)
    return build_record(args, target, result["phases"]), result["latencies"], output


def default_output(target: Target) -> Path:
    suffix = f"_{target.endpoint}" + ("_stream" if target.stream else "")
    return default_result_path(Path.cwd(), "serve", target.health.get("source") or target.model,
                               target.health.get("device") or "server", target.health.get("dtype") or "na", suffix)


def main(args) -> int:
    if args.output is not None:
        check_result_outputs(args.output)  # an explicit path is refused before the server is even asked
    record, latencies, output = asyncio.run(bench(args))
    write_json(output, record)
    plot(record, latencies, output.with_suffix(".png"))
    for line in summary_lines(record):
        print(line)
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return 0


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Load-test an OpenAI-compatible server: requests/s, latency, TTFT, errors, "
                                   "and the batching gain over one request at a time.")
    p.add_argument("--base_url", required=True, help="the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is ok)")
    p.add_argument("--model", default=None, help="served model name (default: the first of GET /v1/models)")
    p.add_argument("--endpoint", choices=sorted(ENDPOINTS), default=None,
                   help="what to call (default: the first endpoint the server's /health lists)")
    p.add_argument("--clients", type=positive_int, default=DEFAULT_CLIENTS, help="concurrent clients")
    p.add_argument("--requests", type=positive_int, default=DEFAULT_REQUESTS, help="requests per client")
    p.add_argument("--max_seconds", type=positive_float, default=DEFAULT_MAX_SECONDS,
                   help="per phase: no request starts after this many seconds")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="seconds per request")
    p.add_argument("--stream", action="store_true", help="stream completions/chat (measures TTFT)")
    p.add_argument("--max_tokens", type=positive_int, default=DEFAULT_MAX_TOKENS, help="tokens per generation")
    p.add_argument("--input", default=DEFAULT_INPUT, help="the text every request sends")
    p.add_argument("--input_file", default=None, help="a text file, one input a line, sent in turn")
    p.add_argument("--api_key", default=None, help="the server's --api-key, sent as a Bearer token")
    p.add_argument("--output", default=None, help="result JSON (default: results/serve_<model>_<device>_<dtype>_"
                                                  "<endpoint>.json here); the PNG goes beside it")
    p.add_argument("--no_sequential", action="store_true", help="skip the one-at-a-time phase (no batching gain)")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
