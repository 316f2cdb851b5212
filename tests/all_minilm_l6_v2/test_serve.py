"""all-MiniLM-L6-v2/serve.py on the real weights: a real server process on loopback (ephemeral port), spoken to with
the official `openai` client and raw HTTP. Its embeddings must equal MiniLMEncoder.encode (inference.py) within
1e-5; an input past the model's 256 tokens is refused (encode would cut it). Also, once for a real model, the core's
generic statuses (401, 400, 422, 413, 503 + Retry-After) and serve.py's one-line refusals (exit 2)."""
from __future__ import annotations

import base64
import socket
import threading
import time

import numpy as np
import pytest

from tests.serving.client import get, post, run_serve, start_server
from tests.support import load_script

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # the markers in pytest.ini
FOLDER = "all-MiniLM-L6-v2"
NAME = "all-MiniLM-L6-v2"
KEY = "test-key-123"
TEXTS = ["A man is eating food.", "A man eats something.",
         "The new movie is awesome and everybody in the cinema laughed a lot during the whole evening.", "Hi"]
LONG_TEXT = "word " * 300  # ~300 tokens: past all-MiniLM-L6-v2's 256
SLOW_INPUTS = 32  # 250-token inputs, one forward pass each: ~1 s on an idle CPU, long enough to hold the one slot


def error_message(body: dict, status: int) -> str:
    assert body["error"]["code"] == status, body
    return body["error"]["message"]


@pytest.fixture(scope="module")
def backend():
    """The server's backend class in this process (its encoder is the reference: MiniLMEncoder on CPU)."""
    module = load_script(FOLDER, "serve")
    return module.MiniLMBackend(module.build_parser().parse_args(["--device", "cpu"]))


@pytest.fixture(scope="module")
def server():
    with start_server(FOLDER, ["--device", "cpu"]) as running:
        yield running


@pytest.fixture(scope="module")
def strict():
    """A key, one request at a time, one input per forward pass (so a big request takes long), a 0.2 MB body cap."""
    with start_server(FOLDER, ["--device", "cpu", "--api-key", KEY, "--max-queue", "1", "--max-batch-size", "1",
                               "--max-body-mb", "0.2"]) as running:
        yield running


def client(server, key: str = "unused"):
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


# ---- the numbers ----
def test_backend_padding_does_not_change_vectors(backend):
    """One padded batch of mixed lengths (what the server runs) equals encode(), which batches by length."""
    prompts = [backend.embedding_input(text) for text in TEXTS]
    together = backend.embed(prompts)
    assert together.dtype == np.float32 and together.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(together, backend.encoder.encode(TEXTS), atol=1e-6, rtol=0)
    for text, row in zip(TEXTS, together):  # and each text alone (no padding at all)
        np.testing.assert_allclose(row, backend.embed([backend.embedding_input(text)])[0], atol=1e-6, rtol=0)


def test_openai_client_embeddings_equal_encode(server, backend):
    answer = client(server).embeddings.create(model=NAME, input=TEXTS)  # the client asks for base64
    got = np.array([item.embedding for item in answer.data], dtype=np.float32)
    assert [item.index for item in answer.data] == list(range(len(TEXTS)))
    np.testing.assert_allclose(got, backend.encoder.encode(TEXTS), atol=1e-5, rtol=0)
    token_counts = [len(ids) for ids in backend.encoder.tokenize(TEXTS)[0]]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(token_counts)
    assert answer.model == NAME


def test_raw_http_float_and_base64(server, backend):
    reference = backend.encoder.encode(TEXTS)
    status, body, _ = post(server.url, "/v1/embeddings", {"model": NAME, "input": TEXTS, "encoding_format": "float"})
    assert status == 200 and body["object"] == "list"
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), reference, atol=1e-5, rtol=0)
    status, body, _ = post(server.url, "/v1/embeddings", {"input": TEXTS[2], "encoding_format": "base64"})
    assert status == 200 and len(body["data"]) == 1  # a bare string is one input; no "model" = the served one
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, reference[2], atol=1e-5, rtol=0)
    assert body["usage"]["prompt_tokens"] == len(backend.encoder.tokenize([TEXTS[2]])[0][0])


def test_token_id_inputs_equal_text_inputs(server, backend):
    ids = backend.encoder.tokenize(TEXTS[:2])[0]
    reference = backend.encoder.encode(TEXTS[:2])
    answer = client(server).embeddings.create(model=NAME, input=ids)  # [[int]]: two inputs
    np.testing.assert_allclose(np.array([d.embedding for d in answer.data]), reference, atol=1e-5, rtol=0)
    assert answer.usage.prompt_tokens == sum(map(len, ids))
    status, body, _ = post(server.url, "/v1/embeddings", {"input": ids[1], "encoding_format": "float"})  # [int]
    assert status == 200 and len(body["data"]) == 1
    np.testing.assert_allclose(body["data"][0]["embedding"], reference[1], atol=1e-5, rtol=0)


def test_over_long_inputs_are_refused_with_the_limit(server):
    for request in (["fine", LONG_TEXT], [[101, 102], [101] + [2773] * 300 + [102]]):
        status, body, _ = post(server.url, "/v1/embeddings", {"input": request})
        message = error_message(body, 400)
        assert status == 400 and "256" in message and "sentence_bert_config.json" in message, message
    with pytest.raises(openai.BadRequestError, match="over the model's limit of 256 tokens"):
        client(server).embeddings.create(model=NAME, input=LONG_TEXT)


def test_token_ids_outside_the_vocabulary_are_refused(server):
    for bad in (30522, -1):
        status, body, _ = post(server.url, "/v1/embeddings", {"input": [101, bad, 102]})
        assert status == 400 and f"token id {bad} is outside" in error_message(body, 400)


def test_wrong_endpoint_and_model(server):
    status, body, _ = post(server.url, "/v1/completions", {"model": NAME, "prompt": "hi"})
    assert status == 400 and "/v1/embeddings" in error_message(body, 400)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(server).embeddings.create(model="gpt-4", input="hi")


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [NAME]
    status, body = get(server.url, "/v1/models")
    assert status == 200 and body["data"][0]["max_model_len"] == 256
    status, health = get(server.url, "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == NAME
    assert health["device"] == "cpu" and health["dtype"] == "fp32" and health["embedding_dim"] == 384
    assert "mean pooling" in health["pipeline"] and health["source"]


# ---- the core's generic statuses, on a real model ----
def test_api_key(strict):
    status, body, headers = post(strict.url, "/v1/embeddings", {"input": "hi"})
    assert status == 401 and "API key" in error_message(body, 401) and headers.get("www-authenticate") == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        client(strict, "wrong-key").embeddings.create(model=NAME, input="hi")
    assert len(client(strict, KEY).embeddings.create(model=NAME, input="hi").data[0].embedding) == 384
    assert get(strict.url, "/health")[0] == 200  # health needs no key (load balancers probe it)


def test_malformed_json_and_wrong_types(strict):
    status, body, _ = post(strict.url, "/v1/embeddings", raw=b'{"input": "hi",', key=KEY)
    assert status == 400 and "not valid JSON" in error_message(body, 400)
    for wrong in ({"input": 5}, {"input": "hi", "encoding_format": "xml"}, {"input": [1.5, 2]}):
        status, body, _ = post(strict.url, "/v1/embeddings", wrong, key=KEY)
        assert status == 422 and error_message(body, 422).startswith("invalid request"), wrong


def test_body_over_the_limit(strict):
    big = {"input": ["word " * 1000] * 50}  # ~250 kB, over --max-body-mb 0.2
    status, body, _ = post(strict.url, "/v1/embeddings", big, key=KEY)
    assert status == 413 and "--max-body-mb" in error_message(body, 413)


def test_full_queue_answers_503_with_retry_after(strict):
    """--max-queue 1: while a slow request (SLOW_INPUTS inputs of 250 tokens, one per forward pass) runs, the next
    gets 503 + Retry-After; once it finished, requests are served again."""
    slow = {"input": [" ".join(["a"] * 250)] * SLOW_INPUTS, "encoding_format": "float"}
    answers = []
    worker = threading.Thread(target=lambda: answers.append(post(strict.url, "/v1/embeddings", slow, key=KEY,
                                                                 timeout=600)))
    worker.start()
    try:
        while get(strict.url, "/health")[1]["admitted"] < 1:
            assert worker.is_alive(), answers
            time.sleep(0.02)
        status, body, headers = post(strict.url, "/v1/embeddings", {"input": "hi"}, key=KEY)
        assert worker.is_alive(), "the slow request ended before the second one was sent; make it slower"
        assert status == 503 and headers.get("retry-after") == "1" and "--max-queue" in error_message(body, 503)
    finally:
        worker.join()
    assert answers[0][0] == 200 and len(answers[0][1]["data"]) == SLOW_INPUTS
    assert post(strict.url, "/v1/embeddings", {"input": "hi"}, key=KEY)[0] == 200


# ---- serve.py's refusals: one line, exit 2, before the model loads ----
def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_refusals_exit_2_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert "is in use" in one_error_line(run_serve(FOLDER, ["--port", str(port), "--device", "cpu"]))
    assert "--port 70000" in one_error_line(run_serve(FOLDER, ["--port", "70000"]))
    missing = tmp_path / "no-such-model"
    assert "does not exist" in one_error_line(run_serve(FOLDER, ["--model_path", str(missing), "--device", "cpu"]))
    assert "unknown device 'tpu9'" in one_error_line(run_serve(FOLDER, ["--device", "tpu9"]))
