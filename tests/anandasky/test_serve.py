"""AnandaSky/serve.py on a real server (its own process, loopback, ephemeral port) with the seeded random test
checkpoint: AnandaSky/serve_check.py passes against it (with the key; 401 without), a greedy image chat equals
AnandaSkyOCR.recognize and inference.py, streaming, text-only chat and completions, rows of one batch (image and
text, different prompts) equal to each alone, and the refusals: a URL that is not a data URL, broken base64, an image
past processor.MAX_INPUT_PIXELS, a body past --max-body-mb (413), two images, a conversation, max_tokens past the
context."""
from __future__ import annotations

import base64
import io
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image, ImageDraw

from common.serving.protocol import ChatMessage
from tests.serving.client import ROOT, post, run_serve, start_server
from tests.support import ANANDASKY_FOLDER, load_script

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # the markers in pytest.ini
FOLDER = ANANDASKY_FOLDER
KEY = "test-key"
MAX_BODY_MB = 0.1  # small enough to test 413 with a modest body, large enough for the small test images
MAX_TOKENS = 8


def png(text: str = "AnandaSky 2025", size=(160, 32)) -> bytes:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((4, 8), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_message(data: bytes, prompt: str | None = None) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(data)}}]
    return parts + ([{"type": "text", "text": prompt}] if prompt is not None else [])



def chat_error(server, content, status: int = 400, **extra) -> str:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}
    code, answer, _ = post(server.url, "/v1/chat/completions", body, key=KEY)
    assert code == status, answer
    return answer["error"]["message"]


@pytest.fixture(scope="module")
def server(anandasky_checkpoint):
    args = ["--model_path", str(anandasky_checkpoint), "--api_key", KEY, "--max_body_mb", str(MAX_BODY_MB),
            "--max_wait_ms", "300"]  # a long wait, so concurrent requests share one batch
    with start_server(FOLDER, args) as running:
        yield running


@pytest.fixture(scope="module")
def serve_module():
    return load_script(FOLDER, "serve")


@pytest.fixture(scope="module")
def ocr(serve_module, anandasky_checkpoint):
    return serve_module.AnandaSkyOCR(anandasky_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def backend(serve_module, ocr):
    return serve_module.AnandaSkyBackend(ocr)


def user(content) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": "user", "content": content})]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


def chat(client, server, content, max_tokens: int = MAX_TOKENS, **extra):
    extra = {"temperature": 0, **extra}
    return client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": content}],
                                          max_tokens=max_tokens, **extra)


def serve_check(server, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "serve_check.py", "--base-url", server.url, "--model", "anandasky", *args],
                          capture_output=True, text=True, cwd=ROOT / FOLDER, timeout=300)


def test_serve_check_passes_with_the_key_and_fails_without(server):
    assert server.name == "anandasky"  # the default --served-model-name
    passed = serve_check(server, "--api-key", KEY)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert [line.split()[0] for line in passed.stdout.splitlines()] == ["PASS"] * 3
    refused = serve_check(server)
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stdout and "PASS" not in refused.stdout


def test_image_chat_equals_recognize_and_inference_cli(server, client, ocr, anandasky_checkpoint, tmp_path):
    image = png()
    answer = chat(client, server, image_message(image, "Recognize the text in this image."))
    assert answer.choices[0].message.content == ocr.recognize([image], max_new_tokens=MAX_TOKENS)[0]
    # no text part: the instruction is inference.py's default prompt
    assert chat(client, server, image_message(image)).choices[0].message.content == answer.choices[0].message.content
    other = ocr.recognize([image], prompt="Read it.", max_new_tokens=MAX_TOKENS)[0]
    assert chat(client, server, image_message(image, "Read it.")).choices[0].message.content == other
    (tmp_path / "line.png").write_bytes(image)
    cli = subprocess.run([sys.executable, "inference.py", "--model_path", str(anandasky_checkpoint), "--image",
                          str(tmp_path / "line.png"), "--max_new_tokens", str(MAX_TOKENS)], capture_output=True,
                         text=True, cwd=ROOT / FOLDER)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == f"{tmp_path / 'line.png'}\t{answer.choices[0].message.content}\n"


def test_usage_counts_image_and_prompt_tokens(server, client, ocr):
    image = png()
    answer = chat(client, server, image_message(image, "Recognize the text in this image."), max_tokens=3)
    batch = ocr.encode([image], "Recognize the text in this image.")  # processor.__call__ on the same bytes
    assert answer.usage.prompt_tokens == batch["input_ids"].shape[1]
    assert answer.usage.completion_tokens <= 3


def test_streamed_image_chat_equals_the_whole_answer(server, client):
    content = image_message(png(), "Recognize the text in this image.")
    whole = chat(client, server, content).choices[0]
    chunks = list(chat(client, server, content, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason


def test_seeded_samples_of_an_image_chat_repeat(server, client):
    def sample():
        answer = chat(client, server, image_message(png()), temperature=1.0, top_p=0.9, n=2, seed=7)
        return [c.message.content for c in answer.choices]
    first = sample()
    assert len(first) == 2 and sample() == first


def test_text_only_chat_and_completion_are_answered(server, client, ocr):
    answer = chat(client, server, "Reply with the word OK.")
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 0
    completion = client.completions.create(model=server.name, prompt="Once upon a time", max_tokens=4, temperature=0)
    tokens = ocr.processor.tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    assert completion.usage.prompt_tokens == len(tokens)
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_rows_of_one_batch_equal_each_alone(server, client):
    """Concurrent requests (the server waits 300 ms to fill a batch): two images with different prompts and a text
    chat in one generate call, each equal to its answer alone (the rows' patches and padding must line up)."""
    contents = [image_message(png("first line"), "Recognize the text in this image."), "Reply with the word OK.",
                image_message(png("second, longer line", size=(240, 40)), "Read it.")]
    alone = [chat(client, server, c).choices[0].message.content for c in contents]
    with ThreadPoolExecutor(len(contents)) as pool:
        together = list(pool.map(lambda c: chat(client, server, c).choices[0].message.content, contents))
    assert together == alone


# ---- the backend in-process: the random test checkpoint repeats one token whatever its input, so the answers above
# cannot tell a wrong image or prompt apart; the model inputs and the logits can ----
def test_image_chat_builds_exactly_what_recognize_encodes(backend, ocr, serve_module):
    image = png()
    cases = [(serve_module.DEFAULT_PROMPT, image_message(image)), ("Read it.", image_message(image, "Read it.")),
             (" Read it.", image_message(image, " Read it.")),  # the text as sent, not stripped
             (serve_module.DEFAULT_PROMPT, image_message(image, " \n"))]  # blank text: inference.py's default prompt
    for prompt, content in cases:
        built = backend.batch([backend.chat_prompt(user(content), MAX_TOKENS)])
        expected = ocr.encode([image], prompt)
        assert built.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(built[key], value), key


@torch.no_grad()
def test_rows_of_a_mixed_batch_have_the_logits_they_have_alone(backend, ocr):
    """Image rows of different sizes and a text-only row in one batch: the patches must land on their own row's
    image tokens, and padding must not change any row."""
    contents = [image_message(png("first line"), "Recognize the text in this image."), "Reply with the word OK.",
                image_message(png("second, longer line", size=(240, 40)), "Read it.")]
    prompts = [backend.chat_prompt(user(c), MAX_TOKENS) for c in contents]
    together = ocr.model(**backend.batch(prompts)).logits[:, -1]
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(together[row], ocr.model(**backend.batch([prompt])).logits[0, -1], atol=1e-4,
                                   rtol=1e-4)


def test_bad_images_are_refused(server):
    assert "not a base64 data URL" in chat_error(
        server, [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    assert "invalid base64" in chat_error(
        server, [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not base64@@"}}])
    assert "not a readable image" in chat_error(server, image_message(b"this is not a png"))
    huge = Image.new("1", (9500, 9500))  # 90.25M pixels, past processor.MAX_INPUT_PIXELS; a few KB as a PNG
    buffer = io.BytesIO()
    huge.save(buffer, format="PNG")
    assert "too large" in chat_error(server, image_message(buffer.getvalue()))
    assert "one image" in chat_error(server, image_message(png()) + image_message(png()))


def test_body_past_max_body_mb_is_413(server):
    noise = Image.frombytes("L", (400, 400), random.Random(0).randbytes(160_000))  # ~160 KB of PNG, past 0.1 MB
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > MAX_BODY_MB * 1e6
    chat_error(server, image_message(buffer.getvalue()), status=413)


def test_conversations_and_context_overflow_are_refused(server, ocr):
    code, body, _ = post(server.url, "/v1/chat/completions", key=KEY, body={"max_tokens": 2, "messages": [
        {"role": "system", "content": "You read text."}, {"role": "user", "content": "hi"}]})
    assert code == 400 and "one user message" in body["error"]["message"]
    limit = ocr.processor.context_length
    message = chat_error(server, image_message(png()), max_tokens=limit)
    assert f"{limit:,}" in message and "max_tokens" in message


def test_missing_model_folder_is_one_line_before_serving(tmp_path):
    result = run_serve(FOLDER, ["--model_path", str(tmp_path / "nowhere")])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr
