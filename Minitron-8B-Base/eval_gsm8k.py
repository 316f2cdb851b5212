"""GSM8K exactly as lm-evaluation-harness's `gsm8k` task (version 3) scores it, with several runs, pass@k and resume.

    python eval_gsm8k.py --data ../../shared/data/gsm8k/                        # Minitron-8B-Base, 5-shot, greedy
    python eval_gsm8k.py --data ../../shared/data/gsm8k/ --num_runs 2 --temperature 0.7   # run 1 greedy, run 2 sampled
    python eval_gsm8k.py --model_path smollm2 --limit 20 --batch_size 8 --resume
    python eval_gsm8k.py --device npu --compare_to results/task_Minitron-8B-Base_cpu_fp32_gsm8k.json  # + verdict
    python eval_gsm8k.py --compare_only results/npu.json --compare_to results/cpu.json    # two finished runs
    python eval_gsm8k.py --compare_only results/npu.json --baseline 0.22                  # a bare published number

What lm-eval gsm8k v3 does, and this script copies:
  * prompt: 5 exemplars from the *train* split, "Question: {q}\\nAnswer: {full answer with #### N}", joined by
    "\\n\\n", then "\\n\\nQuestion: {q}\\nAnswer:". Exemplars are drawn per question from one random.Random(1234)
    stream in test order (lm-eval's default sampler with fewshot seed 1234); each question's exemplar ids are
    recorded in the log and the summary.
  * generation until "Question:", "</s>" or "<|im_end|>" (greedy in lm-eval; later runs here sample).
  * strict-match: first match of `#### (\\-?[0-9\\.\\,]+)`; flexible-extract: last match of
    `(-?[$0-9.,]{2,})|(-?[0-9]+)`; no match -> "[invalid]".
  * exact match after removing ",", "$", everything up to "#### " and a final "." from both sides, ignoring case.
Runs: run 1 greedy, runs 2..N sampled at --temperature/--top_p with per-run, per-batch seeds. Reported: each run's
accuracy for both filters with its standard error (lm-eval's, sqrt(p(1-p)/(n-1))) and a 95% Wilson interval (which
stays honest at 0/n and n/n, where the normal one shrinks to a point), pass@N "any run correct", and the unbiased
pass@k = 1 - C(n-c,k)/C(n,k) for k = 1..N. The headline is run 1's strict-match accuracy.
--compare_to OTHER (a result JSON of this script, its .jsonl log, or lm-eval's per-sample gsm8k log) compares run 1
with the other run question by question (common/compare.py: paired bootstrap 95% CI, exact McNemar, flips each way)
and says PASS / FAIL / INCONCLUSIVE against --tolerance points; --baseline 0.22 does the unpaired version.
Every sample is appended to a JSONL log as it finishes; --resume continues that log (a torn last line from a
crash is dropped), so nothing is lost or counted twice. The log's first line holds every setting and the data's
content fingerprint: --resume refuses other settings or other data, and takes the same data from another folder.
Checked before the model loads: both outputs (writable, never the same file), the data files, --num_fewshot against
the train split, and every few-shot prompt + --max_new_tokens against the model's context length.
Data and prompts: gsm8k_data.py; filters and metrics: gsm8k_scoring.py (both re-exported here).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from common.compare import DEFAULT_TOLERANCE_POINTS, baseline_comparison, format_comparison, paired_comparison
from common.device import dtype_name, resolve_device, resolve_dtype
from common.cli import (ArgumentParser, UserError, finite_float, non_negative_float, non_negative_int,
                           positive_int, probability, run_main)
from common.results import (append_run_record, check_outputs, check_writable, open_run_log, read_jsonl, result_path,
                            result_record, write_json)
# the data and scoring live in sibling modules; re-exported here, where tests and users have always found them
from gsm8k_data import (FEWSHOT_SEED, HUB_DATASET, MODELSCOPE_DATASET, build_prompt, doc_to_text,  # noqa: F401
                        fewshot_ids, fingerprint, load_data, load_splits)
from gsm8k_scoring import (FILTERS, INVALID, accuracy_uncertainty, extract_flexible, extract_strict,  # noqa: F401
                           is_correct, normalize, pass_at_k, score, summarize)
from inference import CausalLM, add_model_args, check_fits, model_spec

HERE = Path(__file__).resolve().parent
TASK_VERSION = 3
NUM_FEWSHOT = 5  # lm-eval's gsm8k num_fewshot
STOP = ["Question:", "</s>", "<|im_end|>"]
MAX_NEW_TOKENS = 256  # lm-eval's default max_gen_toks


# --- the run -------------------------------------------------------------------------------------------------------

def run_seed(seed: int, run: int, first_id: int) -> int:
    """The sampling seed of one batch, fixed by (seed, run, first question). A resume can start batches elsewhere,
    so resumed sampled answers may differ from an uninterrupted run's; greedy ones do not."""
    return (seed * 1_000_003 + run * 10_007 + first_id) % 2**31


# --- comparing with another run (--compare_to, --baseline, --compare_only) -------------------------------------------

def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {str(path)!r} does not exist; pass a result JSON or .jsonl log of eval_gsm8k.py") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {str(path)!r} is not a JSON file ({type(exc).__name__}); pass a result JSON or "
                        "its .jsonl log") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {str(path)!r} is not a GSM8K result of eval_gsm8k.py (no JSON object)")
    return data


def _log_of(result_path: Path, result: dict, what: str) -> Path:
    """A result JSON's per-question log: the recorded path (as written, or beside the JSON), else <json>.jsonl."""
    recorded = Path(result["log"]) if result.get("log") else None
    candidates = [recorded, result_path.parent / recorded.name] if recorded else []
    candidates.append(result_path.with_suffix(".jsonl"))
    for log in candidates:
        if log.is_file():
            return log
    raise UserError(f"{what} {str(result_path)!r}: its per-question log {str(candidates[0])!r} is missing; keep the "
                    ".jsonl beside the JSON or pass the log itself")


def _per_question(records: list[dict], log: Path, what: str) -> dict[int, dict]:
    """{doc_id: {"correct": {filter: bool}, "gold": str | None}} of run 1, from this script's log (config line +
    samples) or lm-eval's samples_gsm8k_*.jsonl (one line per question and filter: doc_id, filter, exact_match)."""
    out: dict[int, dict] = {}
    if records and records[0].get("type") == "config":
        if records[0].get("config", {}).get("task") != "gsm8k":
            raise UserError(f"{what} {str(log)!r} is not a GSM8K log (its config names another task)")
        for r in records[1:]:
            if r.get("type") == "sample" and r.get("run") == 1:
                out[r["doc_id"]] = {"correct": dict(r["correct"]), "gold": r.get("gold")}
        return out
    for r in records:  # lm-eval's per-sample log
        if not ("doc_id" in r and r.get("filter") in FILTERS and "exact_match" in r):
            raise UserError(f"{what} {str(log)!r} is not a GSM8K per-question log (neither eval_gsm8k.py's nor "
                            "lm-eval's samples format)")
        row = out.setdefault(r["doc_id"], {"correct": {}, "gold": r.get("target")})
        row["correct"][r["filter"]] = bool(r["exact_match"])
    return out


def load_run(path: str, what: str = "--compare_to") -> dict[int, dict]:
    """Run 1's per-question correctness of a GSM8K run: a result JSON of this script or a .jsonl log."""
    path = Path(path).expanduser()
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise UserError(f"{what} {str(path)!r} does not exist; pass a result JSON or .jsonl log of eval_gsm8k.py")
        log = path
    else:
        result = _read_json(path, what)
        if result.get("kind") != "task" or result.get("config", {}).get("task") != "gsm8k":
            raise UserError(f"{what} {str(path)!r} is not a GSM8K result of eval_gsm8k.py (kind "
                            f"{result.get('kind')!r}, task {result.get('config', {}).get('task')!r})")
        log = _log_of(path, result, what)
    per_question = _per_question(read_jsonl(log), log, what)
    if not per_question:
        raise UserError(f"{what} {str(log)!r} holds no run-1 question; compare a finished run")
    return per_question


def check_same_questions(this: dict[int, dict], other: dict[int, dict], other_name: str) -> None:
    """A paired comparison needs the very same questions: same ids and, where both logs record it, the same gold."""
    shared = set(this) & set(other)
    if not shared:
        raise UserError(f"no question is shared with {other_name} (ids {min(this)}..{max(this)} here, "
                        f"{min(other)}..{max(other)} there); compare runs of the same questions")
    if set(this) != set(other):
        raise UserError(f"the question sets differ: {len(this)} here, {len(other)} in {other_name}, {len(shared)} "
                        "shared; rerun with the same --limit (or finish the other run)")
    for i in sorted(shared):
        gold_here, gold_there = this[i].get("gold"), other[i].get("gold")
        if gold_here is not None and gold_there is not None and gold_here != gold_there:
            raise UserError(f"question {i} has another gold answer in {other_name}; the two runs did not use the "
                            "same test set (or order)")


def compare(this: dict[int, dict], other: dict[int, dict] | None, baseline: float | None, args) -> dict:
    """The "comparison" block of the result JSON: per filter, paired (other run) or unpaired (bare baseline)."""
    ids = sorted(this)
    if other is not None:
        filters = [f for f in FILTERS if all(f in other[i]["correct"] for i in ids)]
        per_filter = {f: paired_comparison([this[i]["correct"][f] for i in ids], [other[i]["correct"][f] for i in ids],
                                           args.tolerance) for f in filters}
        against = str(args.compare_to)
    else:
        f = args.baseline_filter
        per_filter = {f: baseline_comparison(sum(this[i]["correct"][f] for i in ids), len(ids), baseline,
                                             args.tolerance)}
        against = f"baseline {baseline:.4f} ({f})"
    return {"against": against, "run": 1, "filters": per_filter}


def check_compare_args(args) -> dict[int, dict] | None:
    """Flag checks and the other run's loading, before any data or model: returns the other run (or None)."""
    if args.compare_to and args.baseline is not None:
        raise UserError("--compare_to and --baseline exclude each other: compare with a per-question run or with a "
                        "bare number, not both")
    if args.baseline is not None and not 0.0 <= args.baseline <= 1.0:
        raise UserError(f"--baseline is a fraction between 0 and 1 (0.22 for 22%), got {args.baseline}")
    if not args.tolerance > 0:
        raise UserError(f"--tolerance must be > 0 accuracy points, got {args.tolerance}")
    if args.compare_only and not args.compare_to and args.baseline is None:
        raise UserError("--compare_only needs --compare_to OTHER or --baseline NUMBER")
    return load_run(args.compare_to) if args.compare_to else None


def compare_only(args, other: dict[int, dict] | None) -> int:
    """Compare an existing result JSON with another run or a baseline; the comparison is written into it."""
    path = Path(args.compare_only).expanduser()
    if path.suffix == ".jsonl":
        raise UserError("--compare_only takes the result JSON (the comparison is written into it), not the .jsonl log")
    result = _read_json(path, "--compare_only")
    check_writable(path, "--compare_only")  # the comparison is written back into it: fail now, not after the work
    this = load_run(str(path), "--compare_only")
    if other is not None:
        check_same_questions(this, other, str(args.compare_to))
    result["comparison"] = compare(this, other, args.baseline, args)
    write_json(path, result)
    print(format_comparison(result["comparison"]["filters"], result["comparison"]["against"]))
    print(f"wrote the comparison into {path}")
    return 0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--data", default=None, help="folder with GSM8K test.jsonl and train.jsonl (default: hub)")
    parser.add_argument("--num_fewshot", type=non_negative_int, default=NUM_FEWSHOT,
                        help="exemplars per prompt (lm-eval: 5; at most the train split's size)")
    parser.add_argument("--num_runs", type=positive_int, default=1, help="run 1 greedy, later runs sampled")
    parser.add_argument("--temperature", type=non_negative_float, default=0.7, help="sampling temperature of runs 2..N")
    parser.add_argument("--top_p", type=probability, default=1.0, help="nucleus mass of runs 2..N, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the sampled runs")
    parser.add_argument("--limit", type=positive_int, default=None, help="first N test questions only")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="questions per generate() call")
    parser.add_argument("--max_new_tokens", type=positive_int, default=MAX_NEW_TOKENS,
                        help="at most the model's context length minus the longest few-shot prompt")
    parser.add_argument("--output", default=None,
                        help="summary JSON (default results/task_<model>_<device>_<dtype>_gsm8k.json)")
    parser.add_argument("--log", default=None,
                        help="per-sample JSONL log (default: the output with .jsonl; never the output itself)")
    parser.add_argument("--resume", action="store_true", help="continue the log of an interrupted run")
    parser.add_argument("--compare_to", default=None,
                        help="another run of the same questions (result JSON, its .jsonl log, or lm-eval's samples "
                             "log): paired difference per filter with a 95%% CI and a verdict")
    parser.add_argument("--baseline", type=finite_float, default=None,
                        help="a bare published accuracy (fraction, e.g. 0.22): unpaired difference and verdict")
    parser.add_argument("--baseline_filter", choices=FILTERS, default=FILTERS[0],
                        help="the filter --baseline was measured with (default strict-match)")
    parser.add_argument("--tolerance", type=finite_float, default=DEFAULT_TOLERANCE_POINTS,
                        help="accuracy points a difference may have and still PASS (default 1)")
    parser.add_argument("--compare_only", default=None, metavar="THIS.json",
                        help="compare an existing result JSON (no model run) with --compare_to or --baseline")
    return parser


def generate_all(lm: CausalLM, test: list[dict], train: list[dict], shots: list[list[int]], doc_ids: list[int],
                 records: list[dict], log: Path, config: dict, args) -> None:
    """Every (run, question) not in the log yet, in batches; each sample is scored and appended as it finishes."""
    done = {(r["run"], r["doc_id"]) for r in records}
    bar = tqdm(total=args.num_runs * len(doc_ids), initial=len(done), desc="gsm8k", unit="sample", file=sys.stderr)
    try:
        for run in range(1, args.num_runs + 1):
            temperature = 0.0 if run == 1 else args.temperature
            todo = [i for i in doc_ids if (run, i) not in done]
            for start in range(0, len(todo), args.batch_size):
                ids = todo[start: start + args.batch_size]
                prompts = [build_prompt(test[i], [train[j] for j in shots[i]]) for i in ids]
                texts = lm.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=temperature,
                                    top_p=args.top_p, seed=None if run == 1 else run_seed(args.seed, run, ids[0]),
                                    stop=STOP)
                for i, text in zip(ids, texts):
                    record = {"type": "sample", "doc_id": i, "run": run, "temperature": temperature,
                              "fewshot_ids": shots[i], "generation": text, "gold": test[i]["answer"],
                              **score(text, test[i]["answer"])}
                    append_run_record(log, config, record)
                    records.append(record)
                rows = [r for r in records if r["run"] == run]
                bar.update(len(ids))
                bar.set_postfix(run=run, strict=f"{sum(r['correct']['strict-match'] for r in rows) / len(rows):.3f}",
                                flex=f"{sum(r['correct']['flexible-extract'] for r in rows) / len(rows):.3f}")
    finally:
        bar.close()  # ends the bar's line, so an error raised mid-run is printed on a line of its own


def print_results(results: dict, args) -> None:
    for row in results["runs"]:
        acc, ci = row["accuracy"], row["ci95"]
        print(f"run {row['run']} ({'greedy' if row['run'] == 1 else f'T={args.temperature}'}, {row['samples']} "
              f"questions): " + "  ".join(f"{f} {acc[f]:.4f} (95% CI {ci[f]['low']:.3f}-{ci[f]['high']:.3f})"
                                          for f in FILTERS))
    if args.num_runs > 1:
        for f in FILTERS:
            print(f"{f}: pass@{args.num_runs} (any run) {results['pass_at_n_any'][f]:.4f}  unbiased pass@k "
                  + "  ".join(f"k={k}: {v:.4f}" for k, v in results["pass_at_k_unbiased"][f].items()))


def output_paths(args) -> tuple[Path, Path]:
    """The summary JSON and the per-sample log, checked before any work: each writable, and never one file (a
    summary named x.jsonl would overwrite its own log, which a --resume then could not read)."""
    device = resolve_device(args.device)  # resolved before the model loads: a bad device fails at once
    output = result_path(args.output, HERE, "task", model_spec(args.model_path), device,
                         dtype_name(resolve_dtype(args.dtype, device)), "_gsm8k")
    log = Path(args.log) if args.log else output.with_suffix(".jsonl")
    check_outputs({"--output": output, "--log" if args.log else "the per-sample log beside --output": log})
    return output, log


def check_log_data(log: Path, config: dict, resume: bool) -> None:
    """A --resume must continue a log of the same GSM8K data (its fingerprint; the folder may have moved). A log
    written before the data was recorded cannot be checked, so it is refused too, with what to do."""
    if not (resume and log.is_file() and log.stat().st_size > 0):
        return
    records = read_jsonl(log)
    saved = records[0].get("config") if records and records[0].get("type") == "config" else None
    if not isinstance(saved, dict) or saved.get("task") != "gsm8k":
        return  # not a log of this script: open_run_log says so
    if "data_sha256" not in saved:
        raise UserError(f"cannot resume {str(log)!r}: it predates the record of which GSM8K data a log was made "
                        "from, so it cannot be checked against --data; start a new log (another --output or --log); "
                        "it was not modified")
    if saved["data_sha256"] != config["data_sha256"]:
        raise UserError(f"cannot resume {str(log)!r}: it was made from other GSM8K data (fingerprint "
                        f"{saved['data_sha256'][:12]}, here {config['data_sha256'][:12]}); pass the --data it was "
                        "made from, or start a new log; it was not modified")


def check_prompts_fit(tokenizer, model_config, prompts: dict[int, str], args) -> None:
    """Every question's few-shot prompt + --max_new_tokens must fit in the model's context, checked before the
    weights load: a run must not fail at question 900, and a prompt is never cut to fit."""
    lengths = dict(zip(prompts, (len(ids) for ids in tokenizer(list(prompts.values()), verbose=False)["input_ids"])))
    longest = max(lengths, key=lengths.get)
    check_fits(lengths[longest], args.max_new_tokens, model_config, tokenizer,
               prompt=f"the longest {args.num_fewshot}-shot prompt (question {longest})",
               fix="use a smaller --num_fewshot")


def run_config(args, data_sha256: str) -> dict:
    """What --resume compares: every setting that changes a sample, and the data's fingerprint (not its path)."""
    return {"task": "gsm8k", "task_version": TASK_VERSION, "model_path": args.model_path,
            "num_fewshot": args.num_fewshot, "fewshot_seed": FEWSHOT_SEED, "num_runs": args.num_runs,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "limit": args.limit,
            "max_new_tokens": args.max_new_tokens, "stop": STOP, "dtype": args.dtype, "data_sha256": data_sha256}


def main(args) -> int:
    if args.num_runs > 1 and args.temperature <= 0:
        raise UserError("--num_runs > 1 needs --temperature > 0 (runs 2..N sample)")
    other = check_compare_args(args)
    if args.compare_only:
        return compare_only(args, other)
    output, log = output_paths(args)
    test, train, data = load_splits(args.data)
    doc_ids = list(range(len(test) if args.limit is None else min(args.limit, len(test))))
    if other is not None:  # before the model loads: a mismatched other run fails at once
        check_same_questions({i: {"gold": test[i]["answer"]} for i in doc_ids}, other, str(args.compare_to))
    shots = fewshot_ids(len(doc_ids), len(train), args.num_fewshot)
    config = run_config(args, data["sha256"])
    check_log_data(log, config, args.resume)
    records = open_run_log(log, config, args.resume, "eval_gsm8k.py")  # before the model loads: fail fast
    prompts = {i: build_prompt(test[i], [train[j] for j in shots[i]]) for i in doc_ids}
    lm = CausalLM(args.model_path, device=args.device, dtype=args.dtype,
                  before_weights=lambda tokenizer, model_config: check_prompts_fit(tokenizer, model_config, prompts,
                                                                                   args))
    generate_all(lm, test, train, shots, doc_ids, records, log, config, args)
    results = summarize(records, doc_ids, args.num_runs)
    if other is not None or args.baseline is not None:
        this = {r["doc_id"]: {"correct": r["correct"], "gold": r.get("gold")} for r in records if r["run"] == 1}
        results["comparison"] = compare(this, other, args.baseline, args)
    headline = {"metric": f"GSM8K {args.num_fewshot}-shot strict-match accuracy (run 1, greedy)",
                "value": results["runs"][0]["accuracy"]["strict-match"]}
    write_json(output, result_record("task", device=lm.device, dtype=lm.dtype_name, model=lm.spec, headline=headline,
                                     config=config, data=data, model_source=str(lm.source),
                                     num_questions=len(doc_ids), log=str(log), **results,
                                     fewshot_exemplars={str(i): shots[i] for i in doc_ids}))
    print_results(results, args)
    if "comparison" in results:
        print(format_comparison(results["comparison"]["filters"], results["comparison"]["against"]))
    print(f"wrote {output} and {log}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
