"""google_flan-t5-small/serve.py on tiny random T5 checkpoints: a real server process on loopback (ephemeral port),
spoken to with the official `openai` client and raw HTTP. Greedy answers must equal T5Summarizer.summarize and the
text `python inference.py` writes; streaming, n, stop strings, max_tokens, seeds, chat (chat.py's prompt format),
the refusals (too long, past the new-token limit, logprobs, images) and a client leaving mid-stream are checked.
Other T5-family shapes (mT5, ByT5: byte-level, so a streamed character can span tokens) run through the same code."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest

from tests.google_flan_t5_small.test_generality import build_variant
from tests.serving.client import post, sse_lines, start_server
from tests.support import REPO_ROOT, T5_FOLDER, load_script

HANG_GUARD_S = 120  # a freed slot is answered at once; this only keeps a broken server from hanging the suite

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # the markers in pytest.ini
NAME = "google_flan-t5-small"
PROMPTS = ["translate English to German: Where is the train station?",
           "summarize: the city council approved a new budget"]
TOKENS = 12  # new tokens per answer: the tiny random model never ends this soon on PROMPTS (checked below)
CONVERSATION = [{"role": "system", "content": "A chat about trains."},
                {"role": "user", "content": "Hello, I am Ana."}, {"role": "assistant", "content": "Hi Ana."},
                {"role": "user", "content": "Where is the station?"}]



def refused(url: str, path: str, body: dict) -> str:
    status, answer, _ = post(url, path, body)
    assert status == 400 and answer["error"]["code"] == 400, answer
    return answer["error"]["message"]


@pytest.fixture(scope="module")
def t5(tiny_t5):
    return load_script(T5_FOLDER, "inference").T5Summarizer(str(tiny_t5), device="cpu")


@pytest.fixture(scope="module")
def server(tiny_t5):
    with start_server(T5_FOLDER, ["--device", "cpu", "--model_path", str(tiny_t5)]) as running:
        yield running


def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def greedy(server, **kwargs):
    return client(server).completions.create(model=NAME, temperature=0, **kwargs)


# ---- greedy answers equal inference.py ----
def test_greedy_completions_equal_summarize_and_the_cli(server, t5, tiny_t5, tmp_path):
    expected = t5.summarize(PROMPTS, max_new_tokens=TOKENS)
    ids = t5.generate_ids(PROMPTS, max_new_tokens=TOKENS)
    assert all(len(row) == TOKENS and t5.eos_id not in row for row in ids)  # so every answer runs to the limit
    answer = greedy(server, prompt=PROMPTS, max_tokens=TOKENS)
    assert [c.text for c in answer.choices] == expected and all(expected)
    assert [c.finish_reason for c in answer.choices] == ["length", "length"]
    assert answer.usage.completion_tokens == 2 * TOKENS
    assert answer.usage.prompt_tokens == sum(len(t5.tokenizer(p)["input_ids"]) for p in PROMPTS)
    out = tmp_path / "cli.jsonl"
    texts = [arg for prompt in PROMPTS for arg in ("--text", prompt)]
    cli = subprocess.run([sys.executable, "inference.py", "--model_path", str(tiny_t5), "--device", "cpu",
                          "--max_new_tokens", str(TOKENS), "--output", str(out), *texts],
                         cwd=REPO_ROOT / T5_FOLDER, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert [json.loads(line)["generated_text"] for line in out.read_text().splitlines()] == expected


def test_token_id_prompt_and_n(server, t5):
    expected = t5.summarize(PROMPTS[:1], max_new_tokens=TOKENS)[0]
    answer = greedy(server, prompt=t5.tokenizer(PROMPTS[0])["input_ids"], max_tokens=TOKENS, n=2)
    assert [c.text for c in answer.choices] == [expected, expected] and [c.index for c in answer.choices] == [0, 1]
    assert answer.usage.completion_tokens == 2 * TOKENS


def test_a_short_max_tokens_ends_with_length(server, t5):
    answer = greedy(server, prompt=PROMPTS[0], max_tokens=3)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 3
    assert answer.choices[0].text == t5.summarize(PROMPTS[:1], max_new_tokens=3)[0]


def test_stop_string_cuts_the_text(server, t5):
    full = t5.summarize(PROMPTS[:1], max_new_tokens=TOKENS)[0]
    stop = full[len(full) // 2: len(full) // 2 + 2]  # a piece of the greedy answer
    answer = greedy(server, prompt=PROMPTS[0], max_tokens=TOKENS, stop=[stop])
    assert answer.choices[0].text == full[: full.index(stop)] and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens < TOKENS
    streamed = greedy(server, prompt=PROMPTS[0], max_tokens=TOKENS, stop=stop, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == full[: full.index(stop)]


# ---- streaming ----
def test_stream_equals_the_whole_answer(server):
    whole = greedy(server, prompt=PROMPTS, max_tokens=TOKENS, n=2)
    texts, finishes, usage = {}, {}, None
    for chunk in greedy(server, prompt=PROMPTS, max_tokens=TOKENS, n=2, stream=True,
                        stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            assert choice.index not in finishes, "a chunk after the choice's finish_reason"
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    assert finishes == {i: "length" for i in range(4)}
    assert usage.completion_tokens == whole.usage.completion_tokens == 4 * TOKENS
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_raw_sse_lines_end_with_done(server):
    events = sse_lines(server.url, {"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0})
    assert all(event.startswith("data: ") for event in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(event[len("data: "):]) for event in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[0]["object"] == "text_completion"


# ---- sampling ----
def test_the_same_seed_gives_the_same_sample(server):
    def sample(seed):
        return client(server).completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=TOKENS, temperature=1,
                                                 seed=seed).choices[0].text
    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))  # the seed is used: other seeds give other samples


# ---- chat ----
def test_chat_answers_chat_py_prompt(server, t5):
    chat = load_script(T5_FOLDER, "chat")
    conversation = chat.Chat(t5, context="A chat about trains.")
    conversation.turns = [("User", "Hello, I am Ana."), ("Assistant", "Hi Ana."), ("User", "Where is the station?")]
    expected = t5.summarize([conversation.prompt()], max_new_tokens=TOKENS)[0]
    answer = client(server).chat.completions.create(model=NAME, messages=CONVERSATION, temperature=0,
                                                    max_tokens=TOKENS)
    assert answer.choices[0].message.content == expected and answer.choices[0].message.role == "assistant"
    assert answer.usage.prompt_tokens == t5.token_count(conversation.prompt())
    no_system = chat.Chat(t5)  # no system message: chat.py's default preamble
    no_system.turns = [("User", "Where is the station?")]
    answer = client(server).chat.completions.create(model=NAME, messages=CONVERSATION[-1:], temperature=0,
                                                    max_tokens=TOKENS)
    assert answer.choices[0].message.content == t5.summarize([no_system.prompt()], max_new_tokens=TOKENS)[0]


# ---- refusals ----
def test_refusals_name_the_limit(server):
    long_prompt = "the city council " * 400  # over --max_input_length's 512 tokens
    message = refused(server.url, "/v1/completions", {"prompt": long_prompt, "max_tokens": 2})
    assert "input limit of 512 tokens (--max_input_length)" in message
    message = refused(server.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": long_prompt}]})
    assert "input limit of 512 tokens" in message
    message = refused(server.url, "/v1/completions", {"prompt": "Hi", "max_tokens": 513})
    assert message == "max_tokens 513 is past this port's MAX_NEW_TOKENS (512); use at most 512"
    assert "outside the model's vocabulary" in refused(server.url, "/v1/completions", {"prompt": [5, 10 ** 6]})
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client(server).completions.create(model=NAME, prompt="Hi", logprobs=2)
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
    assert "text only" in refused(server.url, "/v1/chat/completions", {"messages": [image]})
    status, answer, _ = post(server.url, "/v1/embeddings", {"input": "Hi"})
    assert status == 400 and "/v1/completions" in answer["error"]["message"]


# ---- a client that leaves ----
def open_stream_and_leave(url: str, body: dict) -> None:
    """POST a streaming request over a raw socket, read until the first event arrived, then close the socket."""
    address = urlparse(url)
    payload = json.dumps({**body, "stream": True}).encode()
    with socket.create_connection((address.hostname, address.port), timeout=120) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        received = b""
        while b"data: " not in received:
            data = sock.recv(4096)
            assert data, received
            received += data
        assert received.startswith(b"HTTP/1.1 200"), received


def test_a_client_leaving_mid_stream_frees_its_slot(tiny_t5):
    """--max-queue 1: once the client of a long stream (8 rows x 384 tokens) leaves, its slot is free and the next
    request is served (that its rows also stop generating is checked on the toy model in test_serve_core.py, by
    the steps its generate ran)."""
    long = {"prompt": PROMPTS[0], "max_tokens": 384, "n": 8, "temperature": 0}
    with start_server(T5_FOLDER, ["--device", "cpu", "--model_path", str(tiny_t5), "--max-queue", "1"]) as server:
        open_stream_and_leave(server.url, long)
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            status, answer, _ = post(server.url, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
            if status != 503:
                break
            assert time.monotonic() < deadline, "the slot of the client that left was never freed"
            time.sleep(0.05)
        assert status == 200 and answer["choices"][0]["finish_reason"] in ("stop", "length"), answer


# ---- other T5-family shapes ----
@pytest.mark.parametrize("variant", ["mt5", "byt5"])
def test_other_t5_family_checkpoints(variant, tmp_path):
    folder = build_variant(variant, tmp_path / variant)
    model = load_script(T5_FOLDER, "inference").T5Summarizer(str(folder), device="cpu")
    expected = model.summarize(PROMPTS, max_new_tokens=TOKENS)
    with start_server(T5_FOLDER, ["--device", "cpu", "--model_path", str(folder)]) as server:
        answer = greedy(server, prompt=PROMPTS, max_tokens=TOKENS)
        assert [c.text for c in answer.choices] == expected
        streamed = {0: "", 1: ""}
        for chunk in greedy(server, prompt=PROMPTS, max_tokens=TOKENS, stream=True):
            for choice in chunk.choices:
                assert "\ufffd" not in choice.text  # no half character (ByT5 emits UTF-8 bytes one by one)
                streamed[choice.index] += choice.text
        assert [streamed[0], streamed[1]] == expected
