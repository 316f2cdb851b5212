"""Start a folder's real serve.py on loopback for a test: `with start_server(folder, args) as server: server.url`.

The server runs as its own process (as a user runs it), on --port 0 (a free port the server prints), with its log
in a file (a pipe nobody reads would fill up and block the server). Leaving the block stops it with SIGTERM and
checks it exited 0, so every test that uses it also checks the clean shutdown.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^ready: serving '(?P<name>[^']*)' at (?P<url>http://\S+)", re.MULTILINE)
START_TIMEOUT_S = 180  # model load on a busy 2-core machine
STOP_TIMEOUT_S = 60


class RunningServer:
    def __init__(self, proc: subprocess.Popen, log_path: Path, url: str, name: str):
        self.proc, self.log_path, self.url, self.name = proc, log_path, url, name

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal the server and wait for it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the server did not stop within {timeout} s of signal {sig}:\n{self.log()[-3000:]}")


def server_command(folder: str, args: list[str], script: str = "serve.py") -> list[str]:
    return [sys.executable, str(ROOT / folder / script), "--port", "0", *args]


@contextmanager
def start_server(folder: str, args: list[str] = (), env: dict | None = None, check_exit: bool = True,
                 script: str = "serve.py"):
    """Run `python FOLDER/serve.py --port 0 ARGS` from the folder; yield a RunningServer once it printed its
    ready line; stop it with SIGTERM at the end and (check_exit) assert it exited 0."""
    handle, name = tempfile.mkstemp(prefix="serve-", suffix=".log")
    os.close(handle)
    log_path = Path(name)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(server_command(folder, list(args), script), cwd=ROOT / folder, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = None
    try:
        server = _wait_ready(proc, log_path)
        yield server
        if check_exit:
            status = server.stop()
            assert status == 0, f"serve.py exited {status} after SIGTERM:\n{server.log()[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_path.unlink(missing_ok=True)


def _wait_ready(proc: subprocess.Popen, log_path: Path) -> RunningServer:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        match = READY.search(text)
        if match:
            return RunningServer(proc, log_path, match["url"], match["name"])
        if proc.poll() is not None:
            raise AssertionError(f"serve.py exited {proc.returncode} before it was ready:\n{text[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"serve.py printed no ready line within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def run_serve(folder: str, args: list[str], timeout: float = 120, script: str = "serve.py"
              ) -> subprocess.CompletedProcess:
    """serve.py run to completion (for refusals: exit 2 and one error line before anything starts)."""
    return subprocess.run(server_command(folder, list(args), script), cwd=ROOT / folder, capture_output=True, text=True,
                          timeout=timeout)


# ---- raw HTTP, beside the openai client: statuses and bytes exactly as the server sent them ----
def post(url: str, path: str, body=None, key: str | None = None, raw: bytes | None = None,
         content_type: str = "application/json", timeout: float = 120) -> tuple[int, dict, dict]:
    """(status, JSON body, headers with lower-case names) of a POST; error statuses are answers, not exceptions.
    `raw` sends those bytes instead of `body` as JSON; `key` goes in an Authorization: Bearer header."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), _lower_keys(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), _lower_keys(exc.headers)


def get(url: str, path: str, key: str | None = None, timeout: float = 30) -> tuple[int, dict]:
    """(status, JSON body) of a GET."""
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sse_lines(url: str, body: dict, timeout: float = 120) -> list[str]:
    """The non-empty lines of a streamed POST /v1/completions (one `data: ...` line per event), after checking the
    answer is an event stream."""
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream"), response.headers["Content-Type"]
        return [line for line in response.read().decode().split("\n") if line]


def _lower_keys(headers) -> dict:
    return {name.lower(): value for name, value in headers.items()}
