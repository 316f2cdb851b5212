"""lm-evaluation-harness as a cross-check of Minitron-8B-Base/eval_gsm8k.py, not a copy of it (issue 12 item 4).

eval_gsm8k.py re-implements lm-eval's `gsm8k` task (v3) so that it runs without lm-eval. These tests build lm-eval's
OWN gsm8k task from the installed harness (its yaml, its sampler, its filters, its exact_match), pointed at the local
copy in ../shared/data/gsm8k with no network, and assert that both sides agree:
  * the 5-shot contexts (fewshot seed 1234) of the first 50 test questions, byte for byte (also 0- and 8-shot);
  * the settings that are not in the prompt: stop strings, fewshot seed, default number of shots;
  * per sample, both filters' extracted answers and exact_match, on the recorded generations of
    results/task_smollm2_cpu_fp32_gsm8k.jsonl, the gold answers themselves and ~80 adversarial strings per question;
  * end to end: lm-eval's evaluator (simple_evaluate + EvaluationTracker, as `lm_eval --log_samples`) run on the
    recorded generations writes a real samples_gsm8k_*.jsonl, and eval_gsm8k.py's --compare_to reader finds in it
    the same per-question verdicts as in our own log.
A failure prints the first mismatch. Needs `lm-eval` (requirements-dev.txt); skipped where it is not installed.
"""
from __future__ import annotations

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # read before `datasets` is imported: only the local files, never the hub

import json  # noqa: E402

import pytest  # noqa: E402

from tests.support import MINITRON_FOLDER, REPO_ROOT, load_script  # noqa: E402

lm_eval_tasks = pytest.importorskip("lm_eval.tasks",
                                    reason="lm-eval is not installed (pip install -r requirements-dev.txt)")
from lm_eval import defaults as lm_eval_defaults  # noqa: E402  the evaluator's defaults: fewshot seed, max_gen_toks
from lm_eval.api.model import LM  # noqa: E402

pytestmark = pytest.mark.crosscheck  # the markers in pytest.ini

E = load_script(MINITRON_FOLDER, "eval_gsm8k")
NUM_CONTEXTS = 50  # test questions whose few-shot contexts are compared byte for byte
RECORDED_LOG = REPO_ROOT / MINITRON_FOLDER / "results" / "task_smollm2_cpu_fp32_gsm8k.jsonl"
# test questions the adversarial strings are scored against: plain answers, answers with thousands commas (146, 201),
# negative answers (489, 1113)
ADVERSARIAL_DOCS = [0, 1, 2, 3, 146, 201, 489, 1113]
LONG_FILLER = "The farmer counts 3 cows, 4.5 goats and $12 of feed. " * 400  # ~22k characters with numbers in it
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")

# {n}: the gold's final answer as written ("18", "2,125", "-10"); {bare}: without commas; others derived from it
ADVERSARIAL = [
    "#### {n}", " #### {n}\n\n", "#### {n}.", "#### {n}.0", "#### {n}.00", "####  {n}", "####{n}", "#### ${n}",
    "#### $ {n}", "#### {bare}", "#### {grouped}", "#### -{n}", "#### --{n}", "#### +{n}", "#### 0{n}", "#### .{n}",
    "#### ,{n}", "#### {n},", "#### {n}..", "#### {n}.5", "#### {n},000", "#### {n}%", "#### {n} dollars",
    "#### **{n}**", "#### \\boxed{{{n}}}", "#### {n}e3", "#### {n}/1", "#### {n}\r\n", "#### {n}\tdone",
    "#### {n}\n#### 7", "#### 7\n#### {n}", "#### {n} #### {n}", "#### {n}\n\nQuestion: what is 2+2?\nAnswer: 4",
    "The answer is {n}.", "The answer is ${n}.", "The answer is: {n}", "So the answer is {n} dollars.",
    "The answer is \n{n}", "{n}", "{n}.", "-{n}", "{n}\n", "\n\n{n}\n\n", "${n}", "$ {n}", "{n} apples and 3 pears",
    "In 2023 she had {n}", "{n}, 12", "{n},", "1,2,3 then {n}", "3.14.15 and {n}", "{n}...",
    "#### {arabic}", "#### {fullwidth}", "{arabic}", "The answer is {fullwidth}.", "#### {n}{arabic}",
    "", " ", "\n", "no number here", "#### ", "#### .", "#### ,", "#### -", "#### $", "$", ".", "..", "-", "$$",
    "#### ...", "9", "#### 1e{bare}", "ANSWER: #### {n}", "{long}#### {n}", "#### {n} {long}", "{long}",
]


def _final_answer(gold: str) -> str:
    return gold.split("#### ")[-1].strip()


def _adversarial(gold: str) -> list[str]:
    n = _final_answer(gold)
    bare = n.replace(",", "")
    fields = {"n": n, "bare": bare, "grouped": f"{int(bare):,}", "arabic": bare.translate(ARABIC_INDIC),
              "fullwidth": bare.translate(FULLWIDTH), "long": LONG_FILLER}
    return [template.format(**fields) for template in ADVERSARIAL]


@pytest.fixture(scope="module")
def gsm8k_data(shared_data) -> tuple[list[dict], list[dict]]:
    return E.load_data(str(shared_data / "gsm8k"))


@pytest.fixture(scope="module")
def lmeval_task(lmeval_gsm8k_task):
    return lmeval_gsm8k_task


def _contexts(task, num_fewshot: int, limit: int) -> list[str]:
    """What lm-eval's evaluator feeds the model: fewshot seed set once, then build_all_requests in test order."""
    default = task.config.num_fewshot
    task.set_config("num_fewshot", num_fewshot)
    try:
        task.set_fewshot_seed(lm_eval_defaults.DEFAULT_OTHER_SEED)  # simple_evaluate's default fewshot_random_seed
        task.build_all_requests(limit=limit)
    finally:
        task.set_config("num_fewshot", default)  # the module's other tests see the yaml's setting
    return [instance.args[0] for instance in task.instances]


def _first_difference(a: str, b: str) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    window = slice(max(0, at - 40), at + 40)
    return f"first difference at character {at}: lm-eval {a[window]!r} vs ours {b[window]!r}"


def test_task_settings_match(lmeval_task):
    """What is not in the prompt text: default shots, fewshot seed and split, stop strings, greedy, max tokens."""
    config = lmeval_task.config
    assert config.num_fewshot == E.NUM_FEWSHOT
    assert lm_eval_defaults.DEFAULT_OTHER_SEED == E.FEWSHOT_SEED
    assert lm_eval_defaults.DEFAULT_MAX_GEN_TOKS == E.MAX_NEW_TOKENS
    assert (config.fewshot_split, config.test_split) == ("train", "test")
    assert config.generation_kwargs["until"] == E.STOP
    assert config.generation_kwargs["do_sample"] is False
    assert int(config.metadata["version"]) == E.TASK_VERSION
    metric = config.metric_list[0]  # the options _lmeval_scores exercises; ours are checked by behaviour there
    assert (metric["metric"], metric["ignore_case"], metric["ignore_punctuation"]) == ("exact_match", True, False)
    assert [f["name"] for f in config.filter_list] == list(E.FILTERS)


@pytest.mark.parametrize("num_fewshot", [E.NUM_FEWSHOT, 0, 8])
def test_fewshot_contexts_are_byte_identical(lmeval_task, gsm8k_data, num_fewshot):
    test, train = gsm8k_data
    theirs = _contexts(lmeval_task, num_fewshot, NUM_CONTEXTS)
    assert [instance.doc for instance in lmeval_task.instances] == test[:NUM_CONTEXTS]  # same questions, same order
    shots = E.fewshot_ids(NUM_CONTEXTS, len(train), num_fewshot)  # its default seed, as main() calls it
    ours = [E.build_prompt(test[i], [train[j] for j in shots[i]]) for i in range(NUM_CONTEXTS)]
    mismatches = [i for i in range(NUM_CONTEXTS) if theirs[i].encode("utf-8") != ours[i].encode("utf-8")]
    assert len(theirs) == len(ours) == NUM_CONTEXTS
    assert not mismatches, (f"{len(mismatches)}/{NUM_CONTEXTS} contexts differ at {num_fewshot}-shot; question "
                            f"{mismatches[0]}: " + _first_difference(theirs[mismatches[0]], ours[mismatches[0]]))


def _samples(test: list[dict]) -> list[tuple[str, int, str]]:
    """(origin, test doc id, generation): the recorded model outputs, every gold answer of the compared questions
    as a generation, and the adversarial strings."""
    samples = []
    for line in RECORDED_LOG.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("type") == "sample":
            assert record["gold"] == test[record["doc_id"]]["answer"], "the recorded log is of another GSM8K copy"
            samples.append((f"recorded run {record['run']}", record["doc_id"], record["generation"]))
    samples += [("gold", i, test[i]["answer"]) for i in range(NUM_CONTEXTS)]
    for i in ADVERSARIAL_DOCS:
        samples += [(f"adversarial {k}", i, text) for k, text in enumerate(_adversarial(test[i]["answer"]))]
    return samples


def _lmeval_scores(task, samples: list[tuple[str, int, str]]) -> list[dict]:
    """lm-eval's evaluator path for each sample: one request per sample, its response set, the task's filter
    ensembles applied, then process_results (exact_match against doc_to_target) per filter."""
    docs = list(task.test_docs())
    instances = [task.construct_requests(doc=docs[i], ctx="", metadata=("gsm8k", i, 1)) for _, i, _ in samples]
    for instance, (_, _, text) in zip(instances, samples):
        instance.resps.append(text)
    task.instances[:] = instances  # what build_all_requests + the model would have left there
    task.apply_filters()
    return [{"extracted": {f: inst.filtered_resps[f] for f in E.FILTERS},
             "correct": {f: bool(task.process_results(inst.doc, [inst.filtered_resps[f]])["exact_match"])
                         for f in E.FILTERS}} for inst in instances]


def test_filters_and_exact_match_agree_per_sample(lmeval_task, gsm8k_data):
    test, _ = gsm8k_data
    samples = _samples(test)
    theirs = _lmeval_scores(lmeval_task, samples)
    ours = [E.score(text, test[i]["answer"]) for _, i, text in samples]
    mismatches = [k for k in range(len(samples)) if theirs[k] != ours[k]]
    recorded = sum(origin.startswith("recorded") for origin, _, _ in samples)
    print(f"{len(samples)} samples compared ({recorded} recorded, {NUM_CONTEXTS} gold, "
          f"{len(samples) - recorded - NUM_CONTEXTS} adversarial): {len(samples) - len(mismatches)} agree")
    if mismatches:
        k = mismatches[0]
        pytest.fail(f"{len(mismatches)}/{len(samples)} samples differ; first: {samples[k][0]} on question "
                    f"{samples[k][1]}, generation {samples[k][2][:200]!r}: lm-eval {theirs[k]} vs ours {ours[k]}")
    assert len(samples) >= 500
    # the comparison must not be vacuous: both filters see right, wrong and invalid answers
    for f in E.FILTERS:
        outcomes = {(s["correct"][f], s["extracted"][f] == E.INVALID) for s in ours}
        assert {(True, False), (False, False), (False, True)} <= outcomes, f


class RecordedLM(LM):
    """Stands in for the model inside lm-eval's real evaluator: answers each request with the generation our
    recorded run gave for that question, and keeps the contexts lm-eval fed it."""

    def __init__(self, generations: dict[int, str]):
        super().__init__()
        self.generations = generations
        self.contexts: dict[int, str] = {}

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        self.contexts.update({r.doc_id: r.args[0] for r in requests})
        return [self.generations[r.doc_id] for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("gsm8k only generates")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("gsm8k only generates")


@pytest.mark.slow
def test_compare_to_reads_a_real_lmeval_samples_log(lmeval_task, gsm8k_data, tmp_path, monkeypatch):
    """lm-eval's evaluator (simple_evaluate + EvaluationTracker, what `lm_eval --log_samples` runs) on our recorded
    run-1 generations writes a real samples_gsm8k_*.jsonl; eval_gsm8k.py's --compare_to reader must read it and find
    the very per-question verdicts and golds of our own log, and the evaluator must have fed our contexts."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    test, train = gsm8k_data
    run1 = [json.loads(line) for line in RECORDED_LOG.read_text(encoding="utf-8").splitlines()]
    generations = {r["doc_id"]: r["generation"] for r in run1 if r.get("type") == "sample" and r["run"] == 1}
    assert sorted(generations) == list(range(len(generations)))  # the first questions, as --limit takes them
    monkeypatch.chdir(tmp_path)  # lm-eval records `git describe` of the cwd: not of this repository
    model = RecordedLM(generations)
    tracker = EvaluationTracker(output_path=str(tmp_path / "lm-eval"))
    results = simple_evaluate(model=model, tasks=[lmeval_task], limit=len(generations), log_samples=True,
                              bootstrap_iters=0, evaluation_tracker=tracker,
                              task_manager=lm_eval_tasks.TaskManager(include_defaults=False))  # not its 16 s index
    samples = results.pop("samples")  # what lm_eval's CLI does with --log_samples next
    tracker.save_results_aggregated(results=results, samples=samples)
    tracker.save_results_samples(task_name="gsm8k", samples=samples["gsm8k"])
    [samples_log] = (tmp_path / "lm-eval").rglob("samples_gsm8k_*.jsonl")

    shots = E.fewshot_ids(len(generations), len(train), E.NUM_FEWSHOT)
    assert model.contexts == {i: E.build_prompt(test[i], [train[j] for j in shots[i]]) for i in generations}
    theirs, ours = E.load_run(str(samples_log)), E.load_run(str(RECORDED_LOG))
    assert sorted(theirs) == sorted(ours) == sorted(generations)
    differing = {i: (theirs[i], ours[i]) for i in ours if theirs[i] != ours[i]}
    assert not differing, f"{len(differing)} questions differ (lm-eval, ours): {differing}"
