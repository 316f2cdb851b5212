"""Readiness check of an OpenAI-compatible server serving AnandaSky (e.g. `vllm serve` on vllm-ascend): the model is
listed, a text chat is answered and an image chat is answered. One PASS/FAIL line per check.

    python serve_check.py --base-url http://127.0.0.1:8000 --model AnandaSky
    python serve_check.py --base-url http://npu-host:8000 --model NAME --image page.png --api-key KEY --output r.json

Checks, in order (all run unless the server cannot be reached at all):
  1. models:     GET {base}/v1/models is 200 and lists --model (otherwise prints the names it does list).
  2. text chat:  POST {base}/v1/chat/completions, "Reply with the word OK.", temperature 0: 200 and a non-empty
                 choices[0].message.content.
  3. image chat: the same with an image_url content part holding a base64 PNG data URL and "Recognize the text in
                 this image."; the image is --image (re-encoded as PNG) or a line of text rendered here with PIL.
A server that is up but cannot answer is not ready. Exit status: 0 all checks pass; 1 a check failed or the server
is not reachable (connection refused, timeout, connection closed mid-answer); 2 bad arguments (malformed --base-url,
missing, non-image or oversized --image, an unwritable --output), found before any request.
Redirects are never followed: urllib would forward the Authorization header (the --api-key) to whatever address the
Location names, and a 302 turns the POST into a GET. A redirect is a FAIL naming the Location; pass the address
the server answers on as --base-url. The key is only ever sent to --base-url.
--base-url may end in /v1 or not. Only the standard library and PIL: no `requests` or `openai` package needed
(`--output` also records library versions through common.results, which imports torch).
"""
from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from common.cli import ArgumentParser, UserError, positive_int, run_main
from common.results import check_outputs, run_metadata, write_json  # torch only once run_metadata is called

DEFAULT_TIMEOUT_S = 60  # per request; a cold server's first image request can take a while
TEXT_PROMPT = "Reply with the word OK."
IMAGE_PROMPT = "Recognize the text in this image."
TEXT_MAX_TOKENS = 16  # enough for "OK" and some politeness
IMAGE_MAX_TOKENS = 64  # enough to read back one rendered line
DEFAULT_IMAGE_TEXT = "AnandaSky OCR 2025"  # what the default image says, for comparing with the answer
ANSWER_CHARS = 80  # printed answers and error bodies are cut to this many characters
# --image cap, in pixels: PIL's decompression-bomb threshold (~89.5M, ~270 MB decoded); a page scan is far smaller
MAX_IMAGE_PIXELS = 89_478_485


class Unreachable(Exception):
    """No HTTP answer at all: connection refused, unknown host, timeout."""


class CutOff(Unreachable):
    """An answer began but did not arrive whole: the connection closed mid-body, a malformed status line."""


class Redirected(Exception):
    """The server answered with a redirect (3xx), which is not followed; the message names the Location."""


def normalize_base_url(text: str) -> str:
    """'http://host:8000/' or 'http://host:8000/v1' -> 'http://host:8000'. Raises UserError if it is not a URL."""
    parts = urllib.parse.urlsplit(text.strip())
    try:
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
    except ValueError:
        raise UserError(f"--base-url {text!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--base-url {text!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000")
    if parts.query or parts.fragment:
        raise UserError(f"--base-url {text!r} must not have a query or fragment")
    path = parts.path.rstrip("/")
    path = path[:-3] if path.endswith("/v1") else path
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def render_text_image(text: str = DEFAULT_IMAGE_TEXT) -> bytes:
    """A PNG of one black line of text on white, drawn with PIL's default font (scalable where PIL has FreeType)."""
    try:
        font = ImageFont.load_default(size=32)
    except (TypeError, ImportError, OSError):  # old PIL or no FreeType: the small bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right - left + 40, bottom - top + 40), "white")
    ImageDraw.Draw(image).text((20 - left, 20 - top), text, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_image_png(path: str) -> bytes:
    """Any image PIL can read, re-encoded as PNG (the data URL says image/png). Raises UserError otherwise."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--image {path!r} does not exist or is not a file")
    too_large = (f"--image {path!r} is too large: more than {MAX_IMAGE_PIXELS:,} pixels (serve_check.MAX_IMAGE_PIXELS, "
                 "PIL's decompression-bomb limit); downscale it first")
    try:
        with warnings.catch_warnings():  # PIL only warns between 1x and 2x its limit: refused below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:  # from the header, before decoding anything
                    raise UserError(f"{too_large} ({image.width}x{image.height})")
                image.load()
                rgb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except Image.DecompressionBombError:  # past 2x the limit: Image.open refuses by itself
        raise UserError(too_large) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UserError(f"--image {path!r} is not an image PIL can read ({type(exc).__name__})") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turns every redirect into an HTTPError with its 3xx status: following it would send the Authorization header
    to the Location's address (urllib forwards all headers) and turn a POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib API
        return None


def _opener(base_url: str) -> urllib.request.OpenerDirector:
    """Redirects not followed; direct connections for a loopback server (an http_proxy variable must not send
    127.0.0.1 to a proxy); the environment's proxy settings otherwise."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    handlers = [NoRedirect] + ([urllib.request.ProxyHandler({})] if loopback else [])
    return urllib.request.build_opener(*handlers)


def check_api_key(key: str | None) -> None:
    """A bearer key is one HTTP header value: printable ASCII without spaces (http.client would raise otherwise)."""
    if key is not None and (not key or any(not 33 <= ord(c) <= 126 for c in key)):
        raise UserError("--api_key must be printable ASCII without spaces or line breaks (it is sent as an HTTP "
                        "Authorization header); check the key")


class Server:
    """Where to send requests and how: base URL, model name, per-request timeout, optional bearer key."""

    def __init__(self, base_url: str, model: str, timeout: float, api_key: str | None):
        self.base_url, self.model, self.timeout, self.api_key = base_url, model, timeout, api_key
        self.opener = _opener(base_url)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, str, float]:
        """(HTTP status, body text, seconds). An HTTP error status is an answer and is returned; a redirect raises
        Redirected; no answer at all raises Unreachable, an answer cut short CutOff."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        start = time.perf_counter()
        try:
            status, raw = self._exchange(req)
        except urllib.error.URLError as exc:
            timed_out = isinstance(exc.reason, (TimeoutError, socket.timeout))
            raise Unreachable(f"no answer within {self.timeout} s" if timed_out else str(exc.reason)) from None
        except (TimeoutError, socket.timeout):
            raise Unreachable(f"no answer within {self.timeout} s") from None
        except http.client.IncompleteRead as exc:
            raise CutOff(f"the connection closed mid-answer ({len(exc.partial)} bytes read, "
                         f"{exc.expected} more expected)") from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:  # dropped, bad status line
            raise CutOff(f"connection failed ({type(exc).__name__}: {_cut(str(exc))})") from None
        return status, raw.decode("utf-8", "replace"), time.perf_counter() - start

    def _exchange(self, req: urllib.request.Request) -> tuple[int, bytes]:
        """(status, body bytes) of one request; an error status's body is read too; a redirect raises Redirected."""
        try:
            with self.opener.open(req, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                location = exc.headers.get("Location") or "(no Location header)"
                raise Redirected(f"HTTP {exc.code} redirect to {_cut(location)} not followed (the API key is only "
                                 "sent to --base-url); pass the address the server answers on as --base-url") from None
            return exc.code, exc.read()


def _cut(text: str, limit: int = ANSWER_CHARS) -> str:
    """One line, at most `limit` characters, so every check prints as one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _error_text(status: int, raw: str) -> str:
    """'HTTP 500: <message>' from an OpenAI-style {"error": {"message"}} or vLLM {"message"} body, else the raw body."""
    try:
        body = json.loads(raw)
        message = body.get("error", body) if isinstance(body, dict) else body
        message = message.get("message", message) if isinstance(message, dict) else message
    except ValueError:
        message = raw
    hint = " (the server wants --api-key)" if status == 401 else ""
    return f"HTTP {status}{hint}: {_cut(message)}"


def _result(name: str, passed: bool, seconds: float | None, detail: str, answer: str | None = None) -> dict:
    return {"check": name, "passed": passed, "latency_ms": None if seconds is None else seconds * 1e3,
            "detail": detail, "answer": answer}


def check_models(server: Server) -> dict:
    """GET /v1/models lists the model."""
    status, raw, seconds = server.call("GET", "/v1/models")
    if status != 200:
        return _result("models", False, seconds, _error_text(status, raw))
    try:
        names = [entry["id"] for entry in json.loads(raw)["data"]]
    except (ValueError, KeyError, TypeError):
        return _result("models", False, seconds, f"not an OpenAI model list: {_cut(raw)}")
    if server.model not in names:
        return _result("models", False, seconds, f"{server.model!r} is not served; the server has {names}")
    return _result("models", True, seconds, f"serves {server.model}")


def check_chat(server: Server, name: str, content, max_tokens: int) -> dict:
    """POST /v1/chat/completions with one user message, greedy: 200 and a non-empty answer."""
    body = {"model": server.model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0}
    status, raw, seconds = server.call("POST", "/v1/chat/completions", body)
    if status != 200:
        return _result(name, False, seconds, _error_text(status, raw))
    try:
        answer = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return _result(name, False, seconds, f"no choices[0].message.content in the answer: {_cut(raw)}")
    if not isinstance(answer, str) or not answer.strip():
        return _result(name, False, seconds, f"empty answer ({answer!r})", answer)
    return _result(name, True, seconds, f"answered {_cut(answer)!r}", answer)


def image_content(png: bytes, prompt: str = IMAGE_PROMPT) -> list[dict]:
    """The OpenAI vision message content: the image as a base64 PNG data URL, then the instruction."""
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]


def format_line(result: dict) -> str:
    latency = "-" if result["latency_ms"] is None else f"{result['latency_ms']:.0f} ms"
    return f"{'PASS' if result['passed'] else 'FAIL'}  {result['check']:<10s} {latency:>9s}  {result['detail']}"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_url", required=True,
                        help="the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    parser.add_argument("--model", required=True, help="the served model name (vllm serve --served-model-name)")
    parser.add_argument("--image", default=None, help="image for the OCR check (default: a rendered line of text)")
    parser.add_argument("--timeout", type=positive_int, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    parser.add_argument("--api_key", default=None, help="sent as a bearer token")
    parser.add_argument("--output", default=None, help="write the checks and run metadata to this JSON file")
    return parser


def main(args) -> int:
    base_url = normalize_base_url(args.base_url)
    if not args.model.strip():
        raise UserError("--model is empty; pass the name the server serves (see GET /v1/models)")
    check_api_key(args.api_key)
    if args.output:
        check_outputs({"--output": args.output})  # before any request: the checks' result must not be lost
    png = load_image_png(args.image) if args.image else render_text_image()
    server = Server(base_url, args.model, args.timeout, args.api_key)
    checks = [("models", lambda: check_models(server)),
              ("text chat", lambda: check_chat(server, "text chat", TEXT_PROMPT, TEXT_MAX_TOKENS)),
              ("image chat", lambda: check_chat(server, "image chat", image_content(png), IMAGE_MAX_TOKENS))]
    results = []
    for name, run in checks:
        try:
            results.append(run())
        except Redirected as exc:
            results.append(_result(name, False, None, str(exc)))
        except Unreachable as exc:
            where = "incomplete answer from" if isinstance(exc, CutOff) else "server not reachable at"
            results.append(_result(name, False, None, f"{where} {base_url}: {exc}"))
            print(format_line(results[-1]), flush=True)
            break  # nothing more to learn from the other checks
        print(format_line(results[-1]), flush=True)
    ready = len(results) == len(checks) and all(r["passed"] for r in results)
    if args.output:
        write_json(args.output, {"meta": run_metadata(), "base_url": base_url, "model": args.model, "ready": ready,
                                 "image": args.image or f"rendered: {DEFAULT_IMAGE_TEXT!r}", "checks": results})
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
