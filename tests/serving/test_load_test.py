"""common.serving.load_test against the REAL servers on loopback: MiniLM's embeddings (the real weights) and a tiny T5's
streamed completions; the JSON, the PNG, errors counted by kind, and one-line exit-2 refusals before any load.
Tiny loads (a few clients, a few requests) and no timed assertions: the 2-core CI machine is shared."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.serving.client import start_server

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # the markers in pytest.ini

CLIENTS, REQUESTS = 4, 3  # 12 requests a phase: enough to overlap, seconds on a CPU
KEY = "test-key"  # the MiniLM server requires it, so every load test also proves the key is sent


def bench(args: list[str], cwd=REPO_ROOT, key: str | None = KEY) -> subprocess.CompletedProcess:
    key_args = ["--api-key", key] if key else []
    return subprocess.run([sys.executable, "-m", "common.serving.load_test", *args, *key_args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def minilm_url():
    with start_server("all-MiniLM-L6-v2", ["--max-batch-size", "8", "--api-key", KEY]) as server:
        yield server.url


def test_embeddings_load_both_phases(minilm_url, tmp_path):
    output = tmp_path / "serve.json"
    result = bench(["--base-url", minilm_url + "/v1", "--clients", str(CLIENTS), "--requests", str(REQUESTS),
                    "--output", str(output)])
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text())
    assert record["kind"] == "benchmark" and record["server"]["endpoint"] == "embeddings"  # inferred from /health
    assert record["server"]["model"] == "all-MiniLM-L6-v2"
    assert record["server"]["health"]["max_batch_size"] == 8
    assert record["meta"]["command"].startswith("python -m common.serving.load_test --base-url")
    concurrent, sequential = record["phases"]  # a list: one readme table row each
    for phase, name, clients in ((concurrent, "concurrent", CLIENTS), (sequential, "sequential", 1)):
        assert phase["phase"] == name and phase["clients"] == clients
        assert phase["requests_ok"] == phase["requests_sent"] == CLIENTS * REQUESTS
        assert phase["errors_total"] == 0 and phase["errors"] == {}
        assert phase["latency"]["n"] == CLIENTS * REQUESTS and phase["latency"]["p99_ms"] > 0
        assert phase["requests_per_s"] > 0 and phase["ttft"] is None  # no stream: no TTFT
    assert record["batching_gain"] == pytest.approx(concurrent["requests_per_s"] / sequential["requests_per_s"])
    assert record["headline"]["ratio"] == record["batching_gain"] > 0
    assert record["goal"] == {"batching_gain_at_least": 2.0, "met": record["batching_gain"] >= 2.0}
    assert concurrent["batching_gain"] == record["batching_gain"] and sequential["batching_gain"] is None
    assert [phase["label"] for phase in record["phases"]] == [f"{CLIENTS} concurrent clients", "one at a time"]
    assert output.with_suffix(".png").stat().st_size > 0
    assert "batching gain x" in result.stdout
    assert not list(tmp_path.glob(".*tmp*"))


def test_default_output_in_current_folder_and_no_sequential(minilm_url, tmp_path):
    result = bench(["--base-url", minilm_url, "--clients", "2", "--requests", "2", "--no-sequential"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = list((tmp_path / "results").glob("serve_*_cpu_*_embeddings.json"))
    assert len(files) == 1, list((tmp_path / "results").iterdir())
    record = json.loads(files[0].read_text())
    assert [phase["phase"] for phase in record["phases"]] == ["concurrent"] and record["batching_gain"] is None
    assert record["goal"]["met"] is None and files[0].with_suffix(".png").exists()


def test_refused_requests_are_counted_by_kind(minilm_url, tmp_path):
    """An input past MiniLM's token limit is refused (400) by the server for every request: the load test
    counts them by kind and still writes its record, instead of stopping at the first error."""
    too_long = tmp_path / "long.txt"
    too_long.write_text(" ".join(["word"] * 2000) + "\n")
    output = tmp_path / "serve.json"
    result = bench(["--base-url", minilm_url, "--clients", "2", "--requests", "2", "--input-file", str(too_long),
                    "--output", str(output)])
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text())
    for phase in record["phases"]:
        assert phase["requests_ok"] == 0 and phase["errors"] == {"http_400": 4}
        assert phase["error_samples"] and phase["latency"]["p50_ms"] is None
    assert record["batching_gain"] is None and "4 http_400" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["--clients", "0"], "--clients: must be >= 1"),
    (["--max-seconds", "nan"], "expected a finite number"),
    (["--timeout", "-1"], "must be > 0"),
    (["--endpoint", "chat"], "--endpoint chat: the server serves only embeddings"),
    (["--stream"], "--stream applies to completions and chat"),
    (["--model", "nope"], "--model 'nope' is not served at"),
    (["--input", " "], "--input is empty"),
    (["--input-file", "/no/such/file.txt"], "--input-file"),
])
def test_bad_flags_refused_before_load(minilm_url, tmp_path, args, expected):
    result = bench(["--base-url", minilm_url, "--output", str(tmp_path / "serve.json"), *args])
    assert_one_line_error(result, expected)
    assert not list(tmp_path.iterdir())


def test_missing_api_key_refused_before_load(minilm_url, tmp_path):
    result = bench(["--base-url", minilm_url, "--output", str(tmp_path / "serve.json")], key=None)
    assert_one_line_error(result, "refuses the API key (HTTP 401); pass the server's key with --api-key")
    assert not list(tmp_path.iterdir())


def test_max_seconds_bounds_a_phase(minilm_url, tmp_path):
    """No request starts after --max-seconds: 50 one-by-one requests cannot all fit in a millisecond."""
    output = tmp_path / "serve.json"
    result = bench(["--base-url", minilm_url, "--clients", "1", "--requests", "50", "--max-seconds", "0.001",
                    "--output", str(output)])
    assert result.returncode == 0, result.stderr
    for phase in json.loads(output.read_text())["phases"]:
        assert phase["stopped_by_max_seconds"] is True and phase["requests_planned"] == 50
        assert phase["requests_sent"] < 50 and phase["errors_total"] == 0


def test_unwritable_output_refused_before_load(minilm_url, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = bench(["--base-url", minilm_url, "--output", str(blocker / "serve.json")])
    assert_one_line_error(result, "is not a writable folder")
    png = tmp_path / "serve.png"
    result = bench(["--base-url", minilm_url, "--output", str(png)])  # the plot would overwrite the JSON
    assert_one_line_error(result, "is the same file as")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_unreachable_server_and_bad_url(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on: bound, then closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert_one_line_error(bench(["--base-url", url], cwd=tmp_path),
                          f"no server answers at {url} (connection refused); start it with python serve.py "
                          f"--port {port}")
    assert_one_line_error(bench(["--base-url", "ftp://x"], cwd=tmp_path), "is not an http(s) URL")
    assert not list(tmp_path.iterdir())


def test_streamed_completions_measure_ttft(tiny_t5, tmp_path):
    """A generation server (a tiny T5) streamed: TTFT per request, completion tokens/s, and --endpoint given."""
    output = tmp_path / "serve.json"
    with start_server("google_flan-t5-small", ["--port", "0", "--model_path", str(tiny_t5)]) as server:
        result = bench(["--base-url", server.url, "--endpoint", "completions", "--stream", "--max-tokens", "4",
                        "--clients", "3", "--requests", "2", "--output", str(output)])
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text())
    assert record["settings"]["stream"] is True and record["server"]["endpoint"] == "completions"
    for phase in record["phases"]:
        assert phase["errors_total"] == 0 and phase["requests_ok"] == 6
        assert phase["ttft"]["n"] == 6  # every stream had a first content chunk
        assert 0 < phase["ttft"]["p50_ms"] <= phase["latency"]["max_ms"]
        assert phase["completion_tokens_per_s"] > 0
