"""Minitron-8B-Base/serve.py on real servers (its own process, loopback, ephemeral port), through the official
`openai` client and raw HTTP: greedy completions equal inference.py's and CausalLM.generate's (tiny Nemotron, a tiny
Llama the folder was not shaped for, and the real SmolLM2-135M-Instruct), a batch of prompts of different lengths
equals each prompt alone (left padding), streaming, stop strings, seeded n=2, usage, the context limit, the chat
template (SmolLM2) and its absence (the tiny base model), image parts refused."""
from __future__ import annotations

import subprocess
import sys

import pytest
import transformers as t

from tests.serving.client import ROOT, post, run_serve, sse_lines, start_server
from tests.support import MINITRON_FOLDER, load_script

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # the markers in pytest.ini
FOLDER = MINITRON_FOLDER
PROMPTS = ["The three most important inventions of the twentieth century are", "x", "Hello there, my friend"]
MAX_TOKENS = 8




def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def greedy(server, prompt, max_tokens: int = MAX_TOKENS, **extra):
    return client(server).completions.create(model=server.name, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0, **extra)


def error_message(answer: tuple[int, dict, dict], status: int = 400) -> str:
    code, body, _ = answer
    assert code == status, body
    assert body["error"]["code"] == status
    return body["error"]["message"]


@pytest.fixture(scope="module")
def inference():
    return load_script(FOLDER, "inference")


@pytest.fixture(scope="module")
def tiny(tiny_minitron):
    with start_server(FOLDER, ["--model_path", str(tiny_minitron)]) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_lm(tiny_minitron, inference):
    return inference.CausalLM(str(tiny_minitron), device="cpu")


# ---- tiny Nemotron: the folder's own architecture ----
def test_greedy_completion_equals_inference_cli_and_causal_lm(tiny, tiny_minitron, tiny_lm):
    prompt = PROMPTS[0]
    answer = greedy(tiny, prompt)
    text = answer.choices[0].text
    assert [text] == tiny_lm.generate(prompt, max_new_tokens=MAX_TOKENS)
    cli = subprocess.run([sys.executable, "inference.py", "--model_path", str(tiny_minitron), "--prompt", prompt,
                          "--max_new_tokens", str(MAX_TOKENS)], capture_output=True, text=True, cwd=ROOT / FOLDER)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == prompt + text + "\n"  # inference.py prints the prompt, streams the continuation, ends a line
    assert answer.choices[0].finish_reason in ("length", "stop")
    assert answer.model == "Minitron-8B-Base"


def test_usage_counts_tokenizer_tokens(tiny, tiny_lm):
    answer = greedy(tiny, PROMPTS[2], max_tokens=5)
    prompt_tokens = len(tiny_lm.tokenizer(PROMPTS[2])["input_ids"])
    assert answer.usage.prompt_tokens == prompt_tokens
    if answer.choices[0].finish_reason == "length":
        assert answer.usage.completion_tokens == 5
    assert answer.usage.total_tokens == prompt_tokens + answer.usage.completion_tokens


def test_batch_of_prompts_equals_each_alone(tiny):
    """One request, three prompts of different lengths: left-padded rows of one batch, each equal to its prompt
    served alone (a wrong pad side or mask would change the short rows)."""
    together = greedy(tiny, PROMPTS)
    assert [c.index for c in together.choices] == [0, 1, 2]
    assert [c.text for c in together.choices] == [greedy(tiny, p).choices[0].text for p in PROMPTS]


def test_token_id_prompt_equals_text_prompt(tiny, tiny_lm):
    ids = tiny_lm.tokenizer(PROMPTS[0])["input_ids"]
    assert greedy(tiny, ids).choices[0].text == greedy(tiny, PROMPTS[0]).choices[0].text
    message = error_message(post(tiny.url, "/v1/completions", {"prompt": [1, 10**6], "max_tokens": 2}))
    assert "10000" in message.replace(",", "") and "vocabulary" in message


def test_stream_deltas_equal_the_whole_text(tiny):
    whole = greedy(tiny, PROMPTS[0]).choices[0]
    chunks = list(greedy(tiny, PROMPTS[0], stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason
    lines = sse_lines(tiny.url, {"prompt": PROMPTS[0], "max_tokens": 3, "temperature": 0})
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_stop_string_cuts_the_text(tiny):
    whole = greedy(tiny, PROMPTS[0], max_tokens=12).choices[0].text
    stop = next(ch for ch in whole[1:] if ch != "\ufffd" and not ch.isspace())
    cut = greedy(tiny, PROMPTS[0], max_tokens=12, stop=[stop]).choices[0]
    assert cut.text == whole[:whole.index(stop)]
    assert cut.finish_reason == "stop"


def test_seeded_samples_repeat(tiny):
    def sample():
        answer = client(tiny).completions.create(model=tiny.name, prompt=PROMPTS[1], max_tokens=MAX_TOKENS,
                                                 temperature=1.0, top_p=0.95, n=2, seed=1234)
        return [c.text for c in answer.choices]
    first = sample()
    assert len(first) == 2
    assert sample() == first


def test_prompt_past_the_context_is_refused_naming_the_limit(tiny, tiny_lm):
    limit = tiny_lm.model.config.max_position_embeddings
    message = error_message(post(tiny.url, "/v1/completions", {"prompt": "x", "max_tokens": limit}))
    assert str(limit) in message.replace(",", "") and "max_tokens" in message


def test_chat_without_template_and_image_parts_are_refused(tiny):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert "no chat template" in error_message(post(tiny.url, "/v1/chat/completions", body))
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
             {"type": "text", "text": "what is this?"}]
    body = {"messages": [{"role": "user", "content": image}], "max_tokens": 2}
    assert "text only" in error_message(post(tiny.url, "/v1/chat/completions", body))


def test_missing_model_folder_is_one_line_before_serving(tmp_path):
    result = run_serve(FOLDER, ["--model_path", str(tmp_path / "nowhere")])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr
    assert "ready:" not in result.stderr


# ---- a tiny Llama (GQA, one KV head): an architecture the folder was not written for ----
def test_llama_greedy_batch_equals_causal_lm(tmp_path_factory, inference):
    builder = load_script(FOLDER, "make_tiny_checkpoint")
    root = tmp_path_factory.mktemp("serve-llama")
    t.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, vocab_size=512, bos_token_id=2, eos_token_id=3,
                  pad_token_id=1).save_pretrained(root / "spec")
    builder.train_tokenizer().save_pretrained(root / "spec")
    folder = builder.build(root / "llama", source=root / "spec")
    lm = inference.CausalLM(str(folder), device="cpu")
    with start_server(FOLDER, ["--model_path", str(folder), "--served_model_name", "llama"]) as server:
        answer = greedy(server, PROMPTS)
    assert [c.text for c in answer.choices] == [lm.generate(p, max_new_tokens=MAX_TOKENS)[0] for p in PROMPTS]


# ---- the real SmolLM2-135M-Instruct: real text, and a real chat template ----
@pytest.fixture(scope="module")
def smol(smollm2):
    with start_server(FOLDER, ["--model_path", "smollm2"]) as server:
        yield server


def test_smollm2_completion_and_chat_equal_causal_lm(smol, inference):
    lm = inference.CausalLM("smollm2", device="cpu")
    prompt = "The capital of France is"
    answer = greedy(smol, [prompt, "Question: 2+3?\nAnswer:"])
    assert [c.text for c in answer.choices] == lm.generate([prompt, "Question: 2+3?\nAnswer:"],
                                                           max_new_tokens=MAX_TOKENS)
    assert answer.choices[0].text.strip()  # real weights say something
    chat = client(smol).chat.completions.create(model=smol.name, max_tokens=MAX_TOKENS, temperature=0,
                                                messages=[{"role": "user", "content": "What is 2+3?"}])
    expected, = lm.generate(inference.prompt_text(lm.tokenizer, "What is 2+3?", chat=True), max_new_tokens=MAX_TOKENS)
    assert chat.choices[0].message.content == expected
    chat_ids = lm.tokenizer(inference.prompt_text(lm.tokenizer, "What is 2+3?", chat=True))["input_ids"]
    assert chat.usage.prompt_tokens == len(chat_ids)
    streamed = client(smol).chat.completions.create(model=smol.name, max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                                    messages=[{"role": "user", "content": "What is 2+3?"}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected
