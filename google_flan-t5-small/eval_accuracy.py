"""Parity of Flan-T5 on a device+dtype against the CPU float32 reference, in three parts, plus an overflow watch.

    python eval_accuracy.py --device npu --dtype bf16
    python eval_accuracy.py --device cpu --dtype fp32 --file my_prompts.txt

(a) encoder: last_hidden_state of every real input token (the seed's check), flattened cosine, rel L2, worst row.
(b) decoder: logits under teacher forcing on the reference's own greedy generations, so both sides score the same
    token sequence: top-1 agreement, KL(ref || test), rel L2 (common.metrics.parity with logits=True).
(c) generation: greedy outputs of the device compared token for token with the reference's; exact-match rate.
Every activation of the model under test is watched for NaN/inf (and the fp16 clamp): an overflow is a FAIL that
names the first module it happened in. PASS needs all parts; exit code 1 on FAIL. Writes a JSON.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.errors import ArgumentParser, positive_int, run_main  # noqa: E402
from common.metrics import format_parity, parity  # noqa: E402
from common.results import run_metadata, write_json  # noqa: E402
from common.textio import read_lines  # noqa: E402
from inference import T5Summarizer, add_model_args, read_examples  # noqa: E402
from overflow import OverflowWatch, stack_of  # noqa: E402

PARITY_BATCH_SIZE = 4  # several batches of mixed lengths, so padding is exercised on both sides
MAX_NEW_TOKENS = 24  # reference generation length: long enough for drift to show, short enough to stay quick
# Greedy decoding is discontinuous: where the reference's best two tokens are nearly tied, a tiny logit error
# flips the choice and changes everything after it, on any device (even fp32 with other kernels). So a mismatch
# is accepted only when it starts at such a near-tie: the reference's margin between its token and the device's
# token is within NEAR_TIE_FACTOR x the logit error measured at that very position (part b). Any other mismatch
# fails the run. The exact-match rate must also stay above a floor (it falls with sequence length).
GENERATION_EXACT_MIN = {"fp32": 0.9, "bf16": 0.4, "fp16": 0.4}
NEAR_TIE_FACTOR = 2.0
FIX_HINT = "use --dtype bf16 or fp32"  # what to do about an fp16 overflow
PROBE_PROMPTS = [  # every task the port is used for, short and long, plus one input past the 512-token limit
    "summarize: The regional airport will close its old terminal in March after passenger numbers doubled, and a "
    "new building with twelve gates is expected to open the following year.",
    "translate English to French: I forgot my umbrella at the station.",
    "translate English to German: The children are playing football in the park.",
    "question: How many legs does a spider have? context: Spiders are arachnids; unlike insects, which have six "
    "legs, they have eight legs and two body segments.",
    "Solve for x: 7x + 2 = 30.",
    "Is the sentiment of this review positive or negative? Review: Cold food, rude waiter, never again.",
    "List the named entities in this sentence: Ingrid Olsen met the mayor of Oslo at the Nobel Institute.",
    "What is the intent of this message? Options: book_flight, cancel_order, check_weather. Message: Will it "
    "rain in Porto tomorrow?",
    "Summarize this article in one sentence. A volunteer group planted four thousand trees along the river this "
    "autumn to reduce flooding, and the council has promised to fund a second phase.",
    "Which topic is this article about? Options: sports, business, science, politics. Article: The central bank "
    "raised interest rates by a quarter point.",
    "Extract the keywords from this text: solar roofs, heat pumps and insulation grants.",
    "The following is a conversation with a helpful assistant.\nUser: My cat is called Miso.\nAssistant: What a "
    "lovely name!\nUser: What is my cat called?\nAssistant:",
    "Hi",
    "summarize: " + " ".join(["The committee met again to review the long report on water quality, transport "
                              "costs and the housing plan for the next decade."] * 30),  # > 512 tokens: truncated
]


def all_prompts(extra_file: str | None) -> list[str]:
    prompts = list(PROBE_PROMPTS) + [e["prompt"] for e in read_examples()]
    return prompts + (read_lines(extra_file, "--file")[0] if extra_file else [])


@torch.inference_mode()
def encoder_states(model: T5Summarizer, prompts: list[str]) -> np.ndarray:
    """last_hidden_state of every real input token, all prompts concatenated: (tokens, d_model) float64."""
    ids, _ = model.tokenize(prompts)
    rows = []
    for start in range(0, len(ids), PARITY_BATCH_SIZE):
        seqs = ids[start: start + PARITY_BATCH_SIZE]
        hidden = model.model.encoder(**model.batch_tensors(seqs)).last_hidden_state.float().cpu()
        rows += [hidden[i, : len(s)] for i, s in enumerate(seqs)]
    return torch.cat(rows).double().numpy()


@torch.inference_mode()
def teacher_forced_logits(model: T5Summarizer, prompts: list[str], targets: list[list[int]]) -> np.ndarray:
    """Decoder logits at every position of the given target sequences: (positions, vocab) float64."""
    ids, _ = model.tokenize(prompts)
    rows = []
    for start in range(0, len(ids), PARITY_BATCH_SIZE):
        seqs, tgts = ids[start: start + PARITY_BATCH_SIZE], targets[start: start + PARITY_BATCH_SIZE]
        width = max(len(t) for t in tgts)
        decoder_ids = torch.full((len(tgts), width), model.pad_id, dtype=torch.long)
        for row, tgt in enumerate(tgts):  # shifted right: the start token, then the target without its last token
            decoder_ids[row, : len(tgt)] = torch.tensor([model.decoder_start_id] + tgt[:-1])
        logits = model.model(**model.batch_tensors(seqs), decoder_input_ids=decoder_ids.to(model.device)).logits
        logits = logits.float().cpu()  # padding is on the right and the decoder is causal: real rows are exact
        rows += [logits[i, : len(t)] for i, t in enumerate(tgts)]
    return torch.cat(rows).double().numpy()


def first_divergence(got: list[int], want: list[int]) -> int:
    return next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def generation_parity(got: list[list[int]], want: list[list[int]], got_logits: np.ndarray, want_logits: np.ndarray,
                      dtype: str) -> dict:
    """Exact-match rate of the greedy sequences; each mismatch is checked for a near-tie where it starts, using
    the teacher-forced logits of both sides (rows of prompt i start at the sum of the earlier reference lengths)."""
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in want])])
    mismatches = []
    for i, (g, w) in enumerate(zip(got, want)):
        if g == w:
            continue
        k = first_divergence(g, w)
        entry = {"prompt": i, "first_divergence": k, "reference_tokens": len(w), "near_tie": False}
        if k < min(len(g), len(w)):
            ref_row, test_row = want_logits[offsets[i] + k], got_logits[offsets[i] + k]
            margin = float(ref_row[w[k]] - ref_row[g[k]])
            error = float(np.abs(test_row - ref_row).max())
            finite = bool(np.isfinite(margin) and np.isfinite(error))  # NaN logits (an overflow) explain nothing
            entry.update(reference_margin=margin if finite else None, logit_error=error if finite else None,
                         near_tie=finite and margin <= NEAR_TIE_FACTOR * error)
        mismatches.append(entry)
    rate = 1.0 - len(mismatches) / max(len(want), 1)
    unexplained = sum(not m["near_tie"] for m in mismatches)
    agreed = sum(first_divergence(g, w) if g != w else len(w) for g, w in zip(got, want))
    failures = [f"exact_match_rate={rate:.3g} < {GENERATION_EXACT_MIN[dtype]:g}"] * (rate < GENERATION_EXACT_MIN[dtype])
    failures += [f"{unexplained} mismatch(es) not at a near-tie of the reference"] * (unexplained > 0)
    return {"dtype_under_test": dtype, "sequences": len(want), "exact_match_rate": rate,
            "unexplained_divergences": unexplained, "prefix_token_agreement": agreed / max(sum(map(len, want)), 1),
            "mismatches": mismatches, "thresholds": {"exact_match_rate": {"min": GENERATION_EXACT_MIN[dtype]},
                                                     "unexplained_divergences": {"max": 0}},
            "passed": not failures, "failures": failures}


def format_generation(result: dict) -> str:
    bound = result["thresholds"]["exact_match_rate"]["min"]
    lines = [f"  exact_match_rate     {result['exact_match_rate']:<14.6g} (>= {bound:g})  "
             f"{'PASS' if result['exact_match_rate'] >= bound else 'FAIL'}",
             f"  unexplained_divergences {result['unexplained_divergences']:<11d} (<= 0)  "
             f"{'PASS' if result['unexplained_divergences'] == 0 else 'FAIL'}",
             f"  prefix_token_agreement {result['prefix_token_agreement']:.6g}"]
    for m in result["mismatches"][:10]:
        detail = (f", reference margin {m['reference_margin']:.3g} vs logit error {m['logit_error']:.3g}"
                  if m.get("reference_margin") is not None else "")
        lines.append(f"  prompt {m['prompt']}: first divergence at token {m['first_divergence']} of "
                     f"{m['reference_tokens']}{detail}: {'near-tie' if m['near_tie'] else 'NOT a near-tie'}")
    return "\n".join(lines)


def overflow_part(report: dict, dtype: str) -> dict:
    """The watch's findings as a pass/fail part: an overflow anywhere fails the run, with the fix."""
    failures = []
    if report["detected"]:
        failures.append(f"NaN/inf activations ({dtype}) first in {report['first_module']} "
                        f"({stack_of(report['first_module'])}); {FIX_HINT}")
    return {**report, "where": stack_of(report["first_module"]), "passed": not failures, "failures": failures}


def measure(test: T5Summarizer, reference: T5Summarizer, prompts: list[str], max_new_tokens: int) -> dict:
    """All three parts; the model under test runs inside the overflow watch."""
    want_gen = reference.generate_ids(prompts, max_new_tokens, 1, PARITY_BATCH_SIZE)
    want = {"encoder": encoder_states(reference, prompts),
            "decoder_logits": teacher_forced_logits(reference, prompts, want_gen)}
    test.watch_overflow = False  # the watch below covers every pass of the model under test
    with OverflowWatch(test.model) as watch:
        got = {"encoder": encoder_states(test, prompts),
               "decoder_logits": teacher_forced_logits(test, prompts, want_gen)}
        got_gen = test.generate_ids(prompts, max_new_tokens, 1, PARITY_BATCH_SIZE)
    dtype = test.dtype_name
    return {"encoder": parity(got["encoder"], want["encoder"], dtype),
            "decoder_logits": parity(got["decoder_logits"], want["decoder_logits"], dtype, logits=True),
            "generation": generation_parity(got_gen, want_gen, got["decoder_logits"], want["decoder_logits"], dtype),
            "overflow": overflow_part(watch.report(), dtype)}


def main(args) -> int:
    prompts = all_prompts(args.file)
    test = T5Summarizer(args.model_path, args.device, args.dtype, args.max_input_length)
    reference = T5Summarizer(args.model_path, "cpu", "fp32", args.max_input_length, watch_overflow=False)
    print(f"{len(prompts)} prompts: {test.device} {test.dtype_name} vs cpu fp32 reference ({test.model_dir})")
    report = measure(test, reference, prompts, args.max_new_tokens)
    for name in ("encoder", "decoder_logits"):
        print(f"{name} {tuple(report[name]['shape'])}:\n{format_parity(report[name])}")
    print(f"generation ({report['generation']['sequences']} greedy sequences, up to {args.max_new_tokens} tokens):\n"
          f"{format_generation(report['generation'])}")
    overflow = report["overflow"]
    print(f"overflow watch: {overflow['checked_outputs']} module outputs checked, "
          + (f"FAIL: {overflow['failures'][0]}" if overflow["detected"] else "none non-finite"))
    passed = all(part["passed"] for part in report.values())
    print(f"OVERALL: {'PASS' if passed else 'FAIL'}")
    output = Path(args.output or HERE / "results" / f"parity_{test.device.type}_{test.dtype_name}.json")
    write_json(output, {"meta": run_metadata(test.device, test.dtype_name), "model": str(test.model_dir),
                        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                        "truncated": reference.tokenize(prompts)[1], "passed": passed, **report})
    print(f"wrote {output}")
    return 0 if passed else 1


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Parity of Flan-T5 on a device+dtype vs the CPU fp32 reference.")
    p.add_argument("--file", help="extra prompts, one per line, appended to the built-in ones")
    p.add_argument("--max_new_tokens", type=positive_int, default=MAX_NEW_TOKENS, help="reference generation length")
    p.add_argument("--output", help="result JSON (default results/parity_<device>_<dtype>.json)")
    return add_model_args(p)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
