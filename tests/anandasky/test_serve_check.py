"""AnandaSky/serve_check.py against a fake OpenAI-compatible server in a thread, one behaviour per test: healthy
(it validates each request: model name, message shape, a decodable base64 PNG data URL), chat failing with 500,
another model served, empty answers, an API key required, a slow server, a redirect to another server (never
followed: the key must not leave --base-url), a connection closed mid-answer; plus an unreachable port and bad
arguments (a decompression-bomb --image, an unwritable --output), which must not send any request."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # the markers in pytest.ini

SCRIPT = Path(__file__).resolve().parents[2] / "AnandaSky" / "serve_check.py"
MODEL = "AnandaSky-test"


def load_serve_check():
    spec = importlib.util.spec_from_file_location("anandasky_serve_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def serve_check():
    return load_serve_check()


def run(module, argv, monkeypatch) -> int:
    """`python serve_check.py ARGV` in-process (as conftest's run_cli does); returns the exit code."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, argv)])
    try:
        return module.run_main(module.main, module.build_parser().parse_args())
    except SystemExit as exc:
        return int(exc.code)


def bad_request(message: str):
    return 400, {"object": "error", "message": message}


def validate_chat(body: dict, model: str):
    """The request a real vLLM would accept; returns an error (status, body) or None."""
    if body.get("model") != model:
        return 404, {"object": "error", "message": f"The model `{body.get('model')}` does not exist."}
    messages = body.get("messages")
    if not (isinstance(messages, list) and len(messages) == 1 and messages[0].get("role") == "user"):
        return bad_request("messages must be one user message")
    content = messages[0].get("content")
    if isinstance(content, str):
        return None if content.strip() else bad_request("empty prompt")
    kinds = [part.get("type") for part in content]
    if sorted(kinds) != ["image_url", "text"]:
        return bad_request(f"content parts {kinds}")
    url = next(p for p in content if p["type"] == "image_url")["image_url"]["url"]
    prefix = "data:image/png;base64,"
    if not url.startswith(prefix):
        return bad_request("image is not a PNG data URL")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):], validate=True)))
        image.load()
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad request
        return bad_request(f"undecodable image: {exc}")
    return None if image.format == "PNG" else bad_request(f"image is {image.format}")


class FakeOpenAI(BaseHTTPRequestHandler):
    """Behaviours: healthy, chat_500, wrong_model, empty, slow; `api_key` demands a bearer token."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self) -> bool:
        key = self.server.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self.reply(401, {"error": {"message": "Unauthorized", "type": "invalid_request_error"}})
            return False
        return True

    def redirect(self):
        """Behaviour 'redirect': every request is sent on to server.location with server.redirect_status."""
        self.send_response(self.server.redirect_status)
        self.send_header("Location", self.server.location + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def cut_off(self):
        """Behaviour 'cut_off': announces 1000 bytes, sends 10 and closes the connection."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b'{"data": [')
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self):  # noqa: N802 - http.server API
        self.server.requests.append(("GET", self.path, None, dict(self.headers)))
        if self.server.behaviour in ("redirect", "cut_off"):
            return getattr(self, self.server.behaviour)()
        if not self.authorised():
            return
        if self.path != "/v1/models":
            return self.reply(404, {"detail": "Not Found"})
        name = "other-model" if self.server.behaviour == "wrong_model" else MODEL
        self.reply(200, {"object": "list", "data": [{"id": name, "object": "model"}, {"id": "lora-x"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, body, dict(self.headers)))
        behaviour = self.server.behaviour
        if behaviour in ("redirect", "cut_off"):
            return getattr(self, behaviour)()
        if not self.authorised():
            return
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"detail": "Not Found"})
        if behaviour == "chat_500":
            return self.reply(500, {"object": "error", "message": "EngineCore died", "code": 500})
        if behaviour == "slow":
            time.sleep(2)
        error = validate_chat(body, "other-model" if behaviour == "wrong_model" else MODEL)
        if error:
            return self.reply(*error)
        answer = "" if behaviour == "empty" else ("OK" if isinstance(body["messages"][0]["content"], str)
                                                  else "AnandaSky OCR 2025")
        self.reply(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                      "finish_reason": "stop"}]})


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the client hung up on the slow server: expected
        pass


def start_server():
    """A fresh fake server on a free port; set .behaviour / .api_key per test, read .requests afterwards."""
    httpd = FakeServer(("127.0.0.1", 0), FakeOpenAI)
    httpd.behaviour, httpd.api_key, httpd.requests = "healthy", None, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    return httpd


@pytest.fixture
def server():
    httpd = start_server()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def elsewhere():
    """A second healthy server on another port: where a redirect points. It must never hear from serve_check."""
    httpd = start_server()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    return [line for line in (captured.out + captured.err).splitlines() if line.strip()]


def test_healthy_server_is_ready(serve_check, server, monkeypatch, capsys, tmp_path):
    out = tmp_path / "result.json"
    assert run(serve_check, ["--base-url", server.url + "/v1/", "--model", MODEL, "--output", out], monkeypatch) == 0
    printed = lines(capsys)
    assert [line.split()[0] for line in printed] == ["PASS"] * 3, printed
    assert "ms" in printed[1] and "'OK'" in printed[1] and "AnandaSky OCR 2025" in printed[2]
    methods = [(method, path) for method, path, *_ in server.requests]
    assert methods == [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/chat/completions")]
    text_body = server.requests[1][2]
    assert text_body["temperature"] == 0 and 0 < text_body["max_tokens"] <= 32
    result = json.loads(out.read_text())
    assert result["ready"] is True and [c["check"] for c in result["checks"]] == ["models", "text chat", "image chat"]
    assert all(c["passed"] and c["latency_ms"] >= 0 for c in result["checks"])
    assert result["base_url"] == server.url and "serve_check.py" in result["meta"]["command"]


def test_image_file_is_sent_as_png(serve_check, server, monkeypatch, tmp_path):
    picture = tmp_path / "page.jpg"
    Image.new("RGB", (123, 45), "white").save(picture, format="JPEG")
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL, "--image", picture], monkeypatch) == 0
    url = server.requests[2][2]["messages"][0]["content"][0]["image_url"]["url"]
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert (sent.format, sent.size) == ("PNG", (123, 45))


@pytest.mark.parametrize("behaviour, says", [("chat_500", "HTTP 500: EngineCore died"), ("empty", "empty answer")])
def test_server_up_but_not_answering_is_not_ready(serve_check, server, monkeypatch, capsys, behaviour, says):
    server.behaviour = behaviour
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL], monkeypatch) == 1
    printed = lines(capsys)
    assert [line.split()[0] for line in printed] == ["PASS", "FAIL", "FAIL"], printed
    assert says in printed[1] and says in printed[2]


def test_wrong_model_name_lists_what_the_server_has(serve_check, server, monkeypatch, capsys):
    server.behaviour = "wrong_model"  # serves other-model and lora-x
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL], monkeypatch) == 1
    printed = lines(capsys)
    assert [line.split()[0] for line in printed] == ["FAIL"] * 3, printed
    assert f"'{MODEL}' is not served" in printed[0] and "other-model" in printed[0] and "lora-x" in printed[0]
    assert "HTTP 404" in printed[1] and "does not exist" in printed[1]  # the chats name the missing model too
    assert run(serve_check, ["--base-url", server.url, "--model", "other-model"], monkeypatch) == 0


def test_api_key(serve_check, server, monkeypatch, capsys):
    server.api_key = "secret"
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL], monkeypatch) == 1
    assert "HTTP 401 (the server wants --api-key)" in lines(capsys)[0]
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL, "--api-key", "secret"], monkeypatch) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_one_fail_line(serve_check, monkeypatch, capsys, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "r.json"
    assert run(serve_check, ["--base-url", url, "--model", MODEL, "--output", out], monkeypatch) == 1
    printed = lines(capsys)
    assert len(printed) == 1 and printed[0].startswith("FAIL") and f"not reachable at {url}" in printed[0]
    result = json.loads(out.read_text())
    assert result["ready"] is False and len(result["checks"]) == 1


def test_timeout_is_not_reachable(serve_check, server, monkeypatch, capsys):
    server.behaviour = "slow"
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL, "--timeout", 1], monkeypatch) == 1
    printed = lines(capsys)
    assert [line.split()[0] for line in printed] == ["PASS", "FAIL"]
    assert "not reachable" in printed[1] and "no answer within 1 s" in printed[1]


@pytest.mark.parametrize("status", [302, 307])
def test_redirect_is_a_fail_and_the_key_never_leaves_base_url(serve_check, server, elsewhere, monkeypatch, capsys,
                                                              status):
    """urllib follows redirects with every header: the bearer key reached the other port, and a 302 (POST turned
    into GET) still gave three PASS lines. Now nothing is followed and each check FAILs naming the Location."""
    server.behaviour, server.redirect_status, server.location = "redirect", status, elsewhere.url
    elsewhere.api_key = "secret"
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL, "--api-key", "secret"], monkeypatch) == 1
    printed = lines(capsys)
    assert [line.split()[0] for line in printed] == ["FAIL"] * 3, printed
    assert all(f"HTTP {status} redirect to {elsewhere.url}/v1/" in line and "not followed" in line
               for line in printed), printed
    assert elsewhere.requests == []  # the second server never received a request, let alone the key
    assert [headers["Authorization"] for *_, headers in server.requests] == ["Bearer secret"] * 3


def test_connection_closed_mid_answer_is_one_fail_line(serve_check, server, monkeypatch, capsys):
    server.behaviour = "cut_off"  # Content-Length 1000, 10 bytes sent, connection closed
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL], monkeypatch) == 1
    printed = lines(capsys)
    assert len(printed) == 1 and printed[0].startswith("FAIL") and "closed mid-answer" in printed[0], printed
    assert "10 bytes read, 990 more expected" in printed[0]


def png_declaring(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header declares width x height pixels (a decompression bomb when that is huge)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("argv, message", [
    (["--image", "{tmp}/bomb.png"], "is too large"),  # 100000x100000: PIL's DecompressionBombError, a traceback
    (["--image", "{tmp}/big.png"], "is too large"),  # 10000x10000: past the cap, below PIL's error
    (["--output", "/proc/serve_check.json"], "not a writable folder"),  # found after the checks, with a traceback
    (["--output", "{tmp}"], "is a folder"),
    (["--api-key", "line\nbreak"], "printable ASCII"),  # http.client's ValueError, a traceback
    (["--image", "{tmp}/missing.png"], "does not exist"),
    (["--image", "{tmp}/notes.png"], "is not an image"),
    (["--image", "{tmp}"], "is not a file"),
    (["--base-url", "localhost:8000"], "is not an http(s) URL"),
    (["--base-url", "http://"], "is not an http(s) URL"),
    (["--base-url", "ftp://127.0.0.1:21"], "is not an http(s) URL"),
    (["--base-url", "http://127.0.0.1:99999"], "invalid port"),
    (["--timeout", "0"], "must be >= 1"),
    (["--model", " "], "--model is empty"),
])
def test_bad_arguments_exit_2_without_a_request(serve_check, server, monkeypatch, capsys, tmp_path, argv, message):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    (tmp_path / "big.png").write_bytes(png_declaring(10_000, 10_000))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    base = [] if "--base-url" in argv else ["--base-url", server.url]
    model = [] if "--model" in argv else ["--model", MODEL]
    assert run(serve_check, base + model + argv, monkeypatch) == 2
    printed = lines(capsys)
    assert len(printed) == 1 and printed[0].startswith("error:") and message in printed[0], printed
    assert server.requests == []


def test_loopback_server_ignores_proxy_variables(serve_check, server, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")  # a dead proxy: using it would make the check fail
    assert run(serve_check, ["--base-url", server.url, "--model", MODEL], monkeypatch) == 0
