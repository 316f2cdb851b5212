"""STS Benchmark zero-shot as text-to-text: Flan's own STS-B instruction, a greedy answer, its first number = the score.

    python eval_stsb.py --data ../../shared/data/stsb/test.tsv                      # the 1,379 test pairs
    python eval_stsb.py --data ../../shared/data/stsb/test.tsv --device npu --dtype bf16 --limit 200 --resume

Prompt (PROMPT_VERSION): the first of the ten "stsb" templates of FLAN (google-research/FLAN, flan/templates.py),
with the answer options written as FLAN's `format_options` writes them. Flan-T5 saw STS-B during instruction tuning
through GLUE (train split, targets rounded to the integers 0..5); the STS Benchmark *test* pairs scored here were not
in it, and no exemplar is given (zero-shot). Other T5-family models get the same prompt; a model that was not
instruction-tuned mostly answers with no number (see below), which the result says.
Extraction (`extract_score`): the first number in the generated text, clamped to 0..5. An answer with no number is
counted (`unparsed`) and scored as the midpoint UNPARSED_SCORE: dropping those pairs would score only the pairs the
model chose to answer and flatter it; the midpoint is the answer that carries no information.
Scores: Spearman and Pearson x100 between extracted and gold scores, each with a bootstrap 95% interval
(common.stsb.correlations); a constant prediction has no correlation (null). Every pair is appended to a JSONL log as
it finishes; --resume continues that log (same model, data, prompt and settings only).
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from common.device import dtype_name, resolve_device, resolve_dtype
from common.cli import ArgumentParser, UserError, positive_int, run_main
from common.model_path import resolve_model_path
from common.results import append_run_record, check_outputs, open_run_log, result_path, result_record, write_json
from common.stsb import correlations, load_pairs, select_pairs
from inference import DEFAULT_MODEL, T5Summarizer, add_model_args, check_generation_args

HERE = Path(__file__).resolve().parent

PROMPT_VERSION = "flan2021-stsb-template0-options"  # changes whenever PROMPT or OPTIONS do; in the log's config
PROMPT = ("{sentence1}\n{sentence2}\n\nRate the textual similarity of these two sentences on a scale from 0 to 5, "
          "where 0 is \"no meaning overlap\" and 5 is \"means the same thing\".\n\n{options_}")  # FLAN stsb template 0
OPTIONS = "OPTIONS:\n- " + "\n- ".join(str(score) for score in range(6))  # FLAN's format_options on '0'..'5'
MAX_NEW_TOKENS = 5  # an answer is "3" or "3.8": a few tokens, then </s>
DEFAULT_BATCH_SIZE = 32  # pairs per generate() call
SCORE_RANGE = (0.0, 5.0)  # STS-B's scale: extracted numbers are clamped into it
UNPARSED_SCORE = 2.5  # the score of an answer with no number: the scale's midpoint
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
METRIC = "STS-B zero-shot Spearman x100"


def build_prompt(sentence1: str, sentence2: str) -> str:
    return PROMPT.format(sentence1=sentence1, sentence2=sentence2, options_=OPTIONS)


def extract_score(text: str) -> float | None:
    """The first number in a generated answer, clamped to 0..5; None when it holds no number."""
    match = NUMBER.search(text)
    if match is None:
        return None
    low, high = SCORE_RANGE
    return min(max(float(match.group()), low), high)


def score_batch(model: T5Summarizer, pairs: list[tuple[int, tuple[float, str, str]]], batch_size: int) -> list[dict]:
    """One log record per (id, (gold, sentence1, sentence2)): the answer, the extracted score and what was scored."""
    prompts = [build_prompt(s1, s2) for _, (_, s1, s2) in pairs]
    answers = model.summarize(prompts, MAX_NEW_TOKENS, 1, batch_size)
    records = []
    for (pair_id, (gold, _, _)), answer in zip(pairs, answers):
        extracted = extract_score(answer)
        records.append({"type": "sample", "id": pair_id, "gold": gold, "generation": answer, "extracted": extracted,
                        "score": UNPARSED_SCORE if extracted is None else extracted})
    return records


def summarize(records: list[dict], ids: list[int]) -> dict:
    """Correlations over the pairs in `ids` (their log records), with the unparsed count and the answers given."""
    by_id = {r["id"]: r for r in records}
    rows = [by_id[i] for i in ids]
    answers = Counter("no number" if r["extracted"] is None else f"{r['extracted']:g}" for r in rows)
    return {"pairs": len(rows), "unparsed": sum(r["extracted"] is None for r in rows),
            **correlations([r["score"] for r in rows], [r["gold"] for r in rows]),
            "answers": dict(answers.most_common(10))}


def check_prompt_lengths(model: T5Summarizer, todo) -> None:
    """Refuse a pair whose prompt is over --max_input_length, before any generation: truncation would cut off the
    instruction and the options at the prompt's end, and the answer would be scored as if the model had seen them."""
    for pair_id, (_, sentence1, sentence2) in todo:
        tokens = model.token_count(build_prompt(sentence1, sentence2))
        if tokens > model.max_input_length:
            raise UserError(f"pair {pair_id + 1} needs {tokens} tokens with the instruction, over --max_input_length "
                            f"{model.max_input_length}; its end (the instruction) would be cut off, so raise "
                            "--max_input_length or remove that pair")


def run_pairs(model: T5Summarizer, todo, log: Path, config: dict, records: list[dict], batch_size: int,
              total: int) -> None:
    bar = tqdm(total=total, initial=total - len(todo), desc="stsb", unit="pair", file=sys.stderr)
    for start in range(0, len(todo), batch_size):
        for record in score_batch(model, todo[start: start + batch_size], batch_size):
            append_run_record(log, config, record)
            records.append(record)
        bar.update(min(batch_size, len(todo) - start))
        bar.set_postfix(unparsed=sum(r["extracted"] is None for r in records))
    bar.close()


def main(args) -> int:
    pairs, source, digest = load_pairs(args.data)  # before anything else: no data, one line naming --data
    pairs = select_pairs(pairs, args.limit)
    device = resolve_device(args.device)
    dtype = dtype_name(resolve_dtype(args.dtype, device))
    model_dir = resolve_model_path(args.model_path, default=DEFAULT_MODEL)
    check_generation_args(args, model_dir)
    output = result_path(args.output, HERE, "task", model_dir, device, dtype, "_stsb")
    log = output.with_suffix(".jsonl")
    check_outputs({"--output": output, "the per-pair log beside --output": log})
    config = {"task": "stsb", "prompt_version": PROMPT_VERSION, "model": str(model_dir), "data_sha256": digest,
              "data": source, "limit": args.limit, "max_new_tokens": MAX_NEW_TOKENS, "device": str(device),
              "dtype": dtype, "max_input_length": args.max_input_length}
    records = open_run_log(log, config, args.resume, "eval_stsb.py")  # before the model loads: fail fast
    model = T5Summarizer(str(model_dir), args.device, args.dtype, args.max_input_length)
    print(f"STS-B: {len(pairs)} pairs from {source}, {model_dir} on {model.device} ({model.dtype_name}), "
          f"prompt {PROMPT_VERSION}")
    done = {r["id"] for r in records}
    todo = [(i, pair) for i, pair in enumerate(pairs) if i not in done]
    check_prompt_lengths(model, todo)
    run_pairs(model, todo, log, config, records, args.batch_size, len(pairs))
    result = summarize(records, list(range(len(pairs))))
    write_json(output, result_record("task", device=model.device, dtype=model.dtype_name, model=model_dir,
                                     headline={"metric": METRIC, "value": result["spearman_x100"]},
                                     task="stsb", prompt_version=PROMPT_VERSION, prompt=PROMPT, options=OPTIONS,
                                     data=source, data_sha256=digest, limit=args.limit,
                                     max_new_tokens=MAX_NEW_TOKENS, unparsed_score=UNPARSED_SCORE, log=log.name,
                                     **result))
    spearman, pearson = result["spearman_x100"], result["pearson_x100"]
    print(f"{result['pairs']} pairs, {result['unparsed']} answers without a number (scored {UNPARSED_SCORE}): "
          + (f"Spearman x100 {spearman:.2f} (95% CI {result['spearman_ci95'][0]:.2f} to "
             f"{result['spearman_ci95'][1]:.2f}), Pearson x100 {pearson:.2f}"
             if spearman is not None else "constant predictions, no correlation"))
    print(f"wrote {output} and {log}")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="STS-B test split, zero-shot with Flan's STS-B instruction: Spearman/Pearson of "
                                   "the generated score vs gold.")
    add_model_args(p)
    p.add_argument("--data", help="local STS-B test file (.tsv with header score/sentence1/sentence2, or .jsonl)")
    p.add_argument("--limit", type=positive_int, help="score only the first N pairs")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="pairs per generate() call")
    p.add_argument("--output", help="result JSON (default results/task_<model>_<device>_<dtype>_stsb.json); the "
                                    "per-pair log is the same path with .jsonl")
    p.add_argument("--resume", action="store_true", help="continue the log of an interrupted run")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
