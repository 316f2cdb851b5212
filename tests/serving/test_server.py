"""common/serving/server.py's own behaviour on a real server (uvicorn process, loopback, ephemeral port) whose model is the
test-only toy of tests/fixtures/toy_serve.py: batching, streaming, stop strings, limits, every error status,
disconnects and SIGTERM. The folders' tests (test_serve_<model>.py) check the real models behind the same code."""
from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serving.client import get, post, run_serve, sse_lines, start_server

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # the markers in pytest.ini

TOY = "fixtures/toy_serve.py"  # run from tests/, as a folder runs its serve.py





def start_toy(*args, **kwargs):
    return start_server("tests", ["--port", "0", *args], script=TOY, **kwargs)


def is_error(body: dict, status: int) -> bool:
    error = body.get("error", {})
    return error.get("code") == status and isinstance(error.get("message"), str) and error["message"]


# ---- one server for the request-level checks ----
@pytest.fixture(scope="module")
def toy():
    with start_toy("--api_key", "sekret", "--max_body_mb", "0.01", "--threads", "1") as server:
        yield server


def test_health_models_and_auth(toy):
    health = get(toy.url, "/health")[1]  # no key needed: load balancers probe it
    assert health["status"] == "ok" and health["threads"] == 1 and health["max_wait_ms"] == 5.0
    status, body = get(toy.url, "/v1/models")
    assert status == 401 and is_error(body, 401)
    status, body = get(toy.url, "/v1/models", key="wrong")
    assert status == 401 and "api key" in body["error"]["message"].lower()
    status, body = get(toy.url, "/v1/models", key="sekret")
    assert status == 200 and [m["id"] for m in body["data"]] == ["toy"] and body["data"][0]["max_model_len"] == 64
    status, body, headers = post(toy.url, "/v1/completions", {"prompt": "ab"})
    assert status == 401 and headers.get("www-authenticate") == "Bearer"


def test_openai_client_completion_chat_and_stream(toy):
    client = openai.OpenAI(base_url=toy.base_url, api_key="sekret", max_retries=0)
    out = client.completions.create(model="toy", prompt="hello", max_tokens=10, temperature=0)
    assert out.choices[0].text == "olleh" and out.choices[0].finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (5, 6)  # the end token counts, as in vLLM
    chat = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "abc"}], n=2,
                                          temperature=0)
    assert [c.message.content for c in chat.choices] == ["cba", "cba"] and chat.choices[1].index == 1
    chunks = list(client.completions.create(model="toy", prompt="stream me", max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "em maerts"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 10
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=toy.base_url, api_key="nope", max_retries=0).models.list()


def test_sse_wire_format_ends_with_done():
    with start_toy() as server:
        lines = sse_lines(server.url, {"prompt": "xyz", "max_tokens": 5, "temperature": 0})
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "zyx"
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize("stop, text, reason", [("ba", "dc", "stop"), (["q", "c"], "d", "stop"), ("zz", "dcba", "stop")])
def test_stop_strings_cut_the_text(toy, stop, text, reason):
    client = openai.OpenAI(base_url=toy.base_url, api_key="sekret", max_retries=0)
    out = client.completions.create(model="toy", prompt="abcd", max_tokens=10, temperature=0, stop=stop)
    assert (out.choices[0].text, out.choices[0].finish_reason) == (text, reason)
    streamed = client.completions.create(model="toy", prompt="abcd", max_tokens=10, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text  # a stop string split over tokens is held back


def test_max_tokens_length_and_several_prompts(toy):
    status, body, _ = post(toy.url, "/v1/completions", {"prompt": ["abcdef", "xy"], "max_tokens": 3, "n": 2,
                                                        "temperature": 0}, key="sekret")
    assert status == 200
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "fed", "length"), (1, "fed", "length"), (2, "yx", "stop"), (3, "yx", "stop")]
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "a" * 60, "max_tokens": 10}, 400, "context of 64"),  # the backend's refusal, its message kept
    ({"prompt": "ab", "logprobs": 2}, 400, "logprobs"),
    ({"prompt": "ab", "echo": True}, 400, "echo"),
    ({"prompt": "ab", "model": "gpt-4"}, 404, "does not exist"),
    ({"prompt": "ab", "n": "two"}, 422, "n:"),
    ({"prompt": "ab", "temperature": -1}, 422, "temperature"),
    ({"prompt": "ab", "max_tokens": 0}, 422, "max_tokens"),
    ({"prompt": [], "max_tokens": 2}, 400, "empty"),
    ({"prompt": "ab", "n": 40}, 422, "n:"),
    ({"prompt": "ab", "stop": [chr(65 + i) for i in range(17)]}, 400, "at most 16"),
    ({"prompt": "ab", "stop": ["a", ""]}, 400, "empty string"),
    ({"no_prompt": 1}, 422, "prompt"),
])
def test_bad_requests_get_openai_errors(toy, body, status, words):
    got, answer, _ = post(toy.url, "/v1/completions", body, key="sekret")
    assert got == status and is_error(answer, status) and words in answer["error"]["message"]


def test_stream_refusal_is_an_error_status_not_a_broken_stream(toy):
    got, answer, _ = post(toy.url, "/v1/completions", {"prompt": "a" * 60, "max_tokens": 10, "stream": True},
                          key="sekret")
    assert got == 400 and "context" in answer["error"]["message"]


@pytest.mark.parametrize("raw, content_type, status, words", [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b"[1, 2]", "application/json", 400, "JSON object"),
    (b'{"prompt": "ab"}', "text/plain", 400, "Content-Type"),
    (b"x" * 20000, "application/json", 413, "--max-body-mb"),
])
def test_body_errors(toy, raw, content_type, status, words):
    got, answer, _ = post(toy.url, "/v1/completions", None, key="sekret", raw=raw, content_type=content_type)
    assert got == status and is_error(answer, status) and words in answer["error"]["message"]


def test_chunked_body_over_the_limit_is_413(toy):
    """No Content-Length: the limit is counted as the chunks arrive."""
    host, port = toy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"y" * 4096
        try:
            for _ in range(8):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the whole body is sent
        answer = sock.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413")


def test_unknown_route_and_method(toy):
    assert get(toy.url, "/v2/nothing", key="sekret")[0] == 404
    status, body = get(toy.url, "/v1/completions", key="sekret")
    assert status == 405 and is_error(body, 405)
    status, body, _ = post(toy.url, "/v1/embeddings", {"input": "x"}, key="sekret")
    assert status == 400 and "/v1/completions" in body["error"]["message"]


# ---- batching, queue, disconnects, shutdown: each with its own server ----
def test_concurrent_requests_share_batches(tmp_path):
    log = tmp_path / "batches.txt"
    with start_toy("--step_s", "0.05", "--max_batch_size", "8", "--max_wait_ms", "50",
                   "--batch_log", str(log)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        with ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(lambda i: client.completions.create(
                model="toy", prompt=f"p{i}", max_tokens=4, temperature=0).choices[0].text, range(8)))
        seeded = [client.completions.create(model="toy", prompt="seed", max_tokens=4, temperature=0.5,
                                            seed=7).choices[0].text for _ in range(2)]
    assert texts == [f"{i}p" for i in range(8)] and seeded == ["dees", "dees"]
    sizes = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert max(sizes) > 1 and sum(sizes) == 10 and max(sizes) <= 8  # shared, never past --max-batch-size


def test_a_shared_batch_never_runs_past_the_context(tmp_path):
    """Each request fits alone (prompt + its max_tokens); together, the longest prompt and the largest max_tokens
    would not: the batch is split into one call per request instead of failing (500) or cutting an answer."""
    log = tmp_path / "batches.txt"
    with start_toy("--max_wait_ms", "500", "--batch_log", str(log)) as server:
        with ThreadPoolExecutor(2) as pool:
            long_prompt = pool.submit(post, server.url, "/v1/completions",
                                      {"prompt": "a" * 50, "max_tokens": 4, "temperature": 0})
            long_answer = pool.submit(post, server.url, "/v1/completions",
                                      {"prompt": "b", "max_tokens": 60, "temperature": 0})
            answers = [long_prompt.result(), long_answer.result()]
    assert [a[0] for a in answers] == [200, 200]
    assert [a[1]["choices"][0]["text"] for a in answers] == ["aaaa", "b"]
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["1", "1"]


def _occupy(url: str, prompt: str = "abcdefghij", max_tokens: int = 10) -> threading.Thread:
    """A slow request in a thread (the toy sleeps per token), to hold the queue's one slot."""
    thread = threading.Thread(target=post, args=(url, "/v1/completions", {"prompt": prompt,
                                                                           "max_tokens": max_tokens}))
    thread.start()
    return thread


def _wait_admitted(url: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while get(url, "/health")[1]["admitted"] < count:
        assert time.monotonic() < deadline, "the occupying request was never admitted"
        time.sleep(0.02)


def test_full_queue_is_503_with_retry_after_and_a_disconnect_frees_the_slot(tmp_path):
    log = tmp_path / "batches.txt"
    with start_toy("--step_s", "0.2", "--max_queue", "1", "--batch_log", str(log)) as server:
        busy = _occupy(server.url)
        _wait_admitted(server.url)
        status, body, headers = post(server.url, "/v1/completions", {"prompt": "x", "max_tokens": 1})
        assert status == 503 and is_error(body, 503) and headers.get("retry-after") == "1"
        busy.join()
        # a stream whose client leaves after its first chunk: its rows stop and its slot is free again
        host, port = server.url.removeprefix("http://").split(":")
        payload = json.dumps({"prompt": "q" * 40, "max_tokens": 20, "stream": True}).encode()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            received = b""
            while b"data: " not in received:  # the headers may come in a packet of their own
                more = sock.recv(4096)
                assert more, "the stream closed before its first chunk"
                received += more
        began = time.monotonic()
        while get(server.url, "/health")[1]["admitted"]:
            assert time.monotonic() - began < 10, "the disconnected stream kept its slot"
            time.sleep(0.05)
        status, body, _ = post(server.url, "/v1/completions", {"prompt": "ok", "max_tokens": 3, "temperature": 0})
        assert status == 200 and body["choices"][0]["text"] == "ko"
    stream_steps = int(log.read_text().splitlines()[1].split()[1])
    assert stream_steps < 20  # its generate stopped when the client left, not after the 20 steps it asked for


def test_sigterm_finishes_requests_in_flight_and_exits_0():
    with start_toy("--step_s", "0.1", check_exit=False) as server:
        results = {}
        thread = threading.Thread(target=lambda: results.update(answer=post(
            server.url, "/v1/completions", {"prompt": "abcdefgh", "max_tokens": 12, "temperature": 0})))
        thread.start()
        _wait_admitted(server.url)
        status = server.stop(signal.SIGTERM)
        thread.join(30)
        log = server.log()
    assert status == 0
    assert results["answer"][0] == 200 and results["answer"][1]["choices"][0]["text"] == "hgfedcba"
    assert "Traceback" not in log


def test_sigterm_fails_requests_past_the_shutdown_timeout_cleanly():
    with start_toy("--step_s", "0.5", "--shutdown_timeout", "2", check_exit=False) as server:
        results = {}
        thread = threading.Thread(target=lambda: results.update(answer=post(
            server.url, "/v1/completions", {"prompt": "abcdefghijklmnop", "max_tokens": 20})))
        thread.start()
        _wait_admitted(server.url)
        status = server.stop(signal.SIGTERM)
        thread.join(30)
    assert status == 0 and not thread.is_alive()
    code, body, headers = results["answer"]  # an error object, not a cut connection or uvicorn's bare 500
    assert code == 503 and "shut down" in body["error"]["message"]


def test_refusals_before_serving(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_serve("tests", ["--port", str(port)], script=TOY)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is in use; stop the other server or pass another --port (0 picks a free one)"]
    for args, words in ((["--port", "70000"], "not a TCP port"), (["--api_key", "a b"], "printable ASCII"),
                        (["--max_body_mb", "0"], "more than 0"), (["--max_wait_ms", "nan"], "finite"),
                        (["--served_model_name", " "], "empty")):
        result = run_serve("tests", args, script=TOY)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]
