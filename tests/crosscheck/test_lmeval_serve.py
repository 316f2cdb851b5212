"""lm-eval pointed at serve.py, as the readmes tell users to: `local-completions` (and `local-chat-completions`)
with lm-eval's own gsm8k task on the local data, through the harness's evaluator and its HTTP client. Each answer
lm-eval records must be the folder's own greedy continuation of the same prompt, cut at the same stop strings."""
from __future__ import annotations

import json

import pytest

from tests.serving.client import start_server
from tests.support import MINITRON_FOLDER, load_script

pytestmark = [pytest.mark.crosscheck, pytest.mark.serving, pytest.mark.slow]  # the markers in pytest.ini

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -r requirements-dev.txt)")
MAX_GEN_TOKS = 8  # a few tokens per question: the point is the plumbing, not the score
LIMIT = 2  # questions


def _evaluate(model: str, model_args: str, task, **kwargs) -> list[dict]:
    from lm_eval import tasks as lm_eval_tasks
    from lm_eval.evaluator import simple_evaluate

    results = simple_evaluate(model=model, model_args=model_args, tasks=[task], limit=LIMIT, num_fewshot=0,
                              gen_kwargs=f"max_gen_toks={MAX_GEN_TOKS}", log_samples=True,
                              task_manager=lm_eval_tasks.TaskManager(include_defaults=False), **kwargs)
    return results["samples"]["gsm8k"]


def _request(sample: dict) -> tuple[str, list[str]]:
    context, settings = sample["arguments"][0]  # (context, gen_kwargs) as the task built the request
    return context, list(settings["until"])


def test_local_completions_records_the_ports_own_greedy_answers(tiny_minitron, lmeval_gsm8k_task):
    with start_server(MINITRON_FOLDER, ["--model_path", str(tiny_minitron)]) as server:
        samples = _evaluate("local-completions", f"model=Minitron-8B-Base,base_url={server.base_url}/completions,"
                            "num_concurrent=2,max_retries=1,tokenized_requests=False,tokenizer_backend=None",
                            lmeval_gsm8k_task)
        log = server.log()
    # one sample per question and filter (strict-match, flexible-extract); one request per question
    assert len({s["doc_id"] for s in samples}) == LIMIT and log.count("POST /v1/completions HTTP/1.1\" 200") == LIMIT
    lm = load_script(MINITRON_FOLDER, "inference").CausalLM(str(tiny_minitron), device="cpu")
    for sample in samples:
        context, until = _request(sample)
        assert sample["resps"][0][0] == lm.generate(context, max_new_tokens=MAX_GEN_TOKS, stop=until)[0]
        assert sample["exact_match"] in (0.0, 1.0)


def test_local_chat_completions_on_the_real_smollm2(smollm2, lmeval_gsm8k_task):
    """The chat path on a model with a chat template (SmolLM2-135M-Instruct, real weights): lm-eval sends the
    messages, serve.py applies the template, as `inference.py --chat` does."""
    with start_server(MINITRON_FOLDER, ["--model_path", "smollm2", "--served_model_name", "smollm2"]) as server:
        samples = _evaluate("local-chat-completions", f"model=smollm2,base_url={server.base_url}/chat/completions,"
                            "num_concurrent=1,max_retries=1,tokenized_requests=False,tokenizer_backend=None",
                            lmeval_gsm8k_task, apply_chat_template=True)
    lm = load_script(MINITRON_FOLDER, "inference").CausalLM("smollm2", device="cpu")
    for sample in samples:
        context, until = _request(sample)
        messages = json.loads(context[0])  # lm-eval's chat request: the messages as one JSON string
        assert messages[-1]["role"] == "user" and messages[-1]["content"].startswith("Question: ")
        prompt = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert sample["resps"][0][0] == lm.generate(prompt, max_new_tokens=MAX_GEN_TOKS, stop=until)[0]
