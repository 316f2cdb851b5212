"""Parity of a T5-family model on a device+dtype against the CPU float32 reference, in four parts.

    python eval_accuracy.py --device npu --dtype bf16
    python eval_accuracy.py --device cpu --dtype fp32 --file my_prompts.txt

(a) encoder: last_hidden_state of every real input token (the seed's check), flattened cosine, rel L2, worst row.
(b) decoder_logits: logits under teacher forcing on the reference's own greedy generations, so both sides score the
    same token sequence: top-1 agreement, KL(ref || test), rel L2 (common.parity.parity with logits=True).
(c) generation: greedy outputs of the device compared token for token with the reference's, with the shared rule
    (common.parity.greedy_parity): every divergence must start at a near-tie of the reference, measured on (b).
(d) overflow: every activation of the model under test is watched for NaN/inf (and the fp16 clamp); an overflow is a
    FAIL that names the first module it happened in.
PASS needs all parts; exit code 1 on FAIL. Writes a "parity" result record (common.results.result_record).
Diagnosis (common.diagnostics.eval_hooks), on the first batch, teacher-forced on the reference's generations: --trace_ops (every
aten op on the device, CPU fallbacks, host syncs) and --locate (each module against the reference, in execution
order; automatic after a FAIL), which names the module where an error starts, not only NaN/inf.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from common.diagnostics.eval_hooks import Probe, add_diagnosis_args, locate_if_needed, trace_if_asked
from common.cli import ArgumentParser, positive_int, run_main
from common.parity import format_greedy, format_parity, greedy_parity, parity, verdict
from common.device import dtype_name, resolve_device, resolve_dtype
from common.model_path import resolve_model_path
from common.results import check_outputs, result_path, result_record, write_json
from common.textio import read_lines
from inference import DEFAULT_MODEL, T5Summarizer, add_model_args, check_generation_args, read_examples
from overflow import OverflowWatch, stack_of

HERE = Path(__file__).resolve().parent

PARITY_BATCH_SIZE = 4  # several batches of mixed lengths, so padding is exercised on both sides
MAX_NEW_TOKENS = 24  # reference generation length: long enough for drift to show, short enough to stay quick
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


def teacher_forced_inputs(model: T5Summarizer, seqs: list[list[int]], targets: list[list[int]]) -> dict:
    """Encoder inputs and the decoder inputs that score each target: shifted right (the start token, then the
    target without its last token), right-padded as the encoder inputs are (T5Summarizer.batch_tensors), on the
    model's device."""
    shifted = [[model.decoder_start_id] + tgt[:-1] for tgt in targets]
    return {**model.batch_tensors(seqs), "decoder_input_ids": model.batch_tensors(shifted)["input_ids"]}


@torch.inference_mode()
def teacher_forced_logits(model: T5Summarizer, prompts: list[str], targets: list[list[int]]) -> list[np.ndarray]:
    """Decoder logits at every position of each target sequence: one (len(target), vocab) float64 array per prompt,
    the rows greedy_parity reads a divergence from."""
    ids, _ = model.tokenize(prompts)
    out = []
    for start in range(0, len(ids), PARITY_BATCH_SIZE):
        seqs, tgts = ids[start: start + PARITY_BATCH_SIZE], targets[start: start + PARITY_BATCH_SIZE]
        logits = model.model(**teacher_forced_inputs(model, seqs, tgts)).logits
        logits = logits.float().cpu()  # padding is on the right and the decoder is causal: real rows are exact
        out += [logits[i, : len(t)].double().numpy() for i, t in enumerate(tgts)]
    return out


def overflow_part(report: dict, dtype: str) -> dict:
    """The watch's findings as a pass/fail part: an overflow anywhere fails the run, with the fix."""
    failures = []
    if report["detected"]:
        failures.append(f"NaN/inf activations ({dtype}) first in {report['first_module']} "
                        f"({stack_of(report['first_module'])}); {FIX_HINT}")
    return {**report, "where": stack_of(report["first_module"]), "passed": not failures, "failures": failures}


def measure(test: T5Summarizer, reference: T5Summarizer, prompts: list[str], max_new_tokens: int) -> tuple[dict, list]:
    """All four parts, and the reference's generations; the model under test runs inside the overflow watch."""
    want_gen = reference.generate_ids(prompts, max_new_tokens, 1, PARITY_BATCH_SIZE)
    want_encoder = encoder_states(reference, prompts)
    want_logits = teacher_forced_logits(reference, prompts, want_gen)
    test.watch_overflow = False  # the watch below covers every pass of the model under test
    with OverflowWatch(test.model) as watch:
        got_encoder = encoder_states(test, prompts)
        got_logits = teacher_forced_logits(test, prompts, want_gen)
        got_gen = test.generate_ids(prompts, max_new_tokens, 1, PARITY_BATCH_SIZE)
    dtype = test.dtype_name
    return {"encoder": parity(got_encoder, want_encoder, dtype),
            "decoder_logits": parity(np.concatenate(got_logits), np.concatenate(want_logits), dtype, logits=True),
            "generation": greedy_parity(got_gen, want_gen, got_logits, want_logits, dtype),
            "overflow": overflow_part(watch.report(), dtype)}, want_gen


def diagnosis_probe(test: T5Summarizer, reference: T5Summarizer, prompts: list[str], targets: list | None) -> Probe:
    """The first batch, teacher-forced on the reference's generations (before they exist, for --trace_ops: on the
    decoder start token alone): encoder and decoder, every module."""
    seqs = reference.tokenize(prompts[:PARITY_BATCH_SIZE])[0]
    targets = [t or [reference.eos_id] for t in (targets or [[]] * len(seqs))[:PARITY_BATCH_SIZE]]
    test_inputs = teacher_forced_inputs(test, seqs, targets)
    reference_inputs = teacher_forced_inputs(reference, seqs, targets)
    return Probe(test.model, reference.model, lambda: test.model(**test_inputs),
                 lambda: reference.model(**reference_inputs), test.device, test.dtype,
                 f"{len(seqs)} prompts ({sum(map(len, seqs))} tokens) teacher-forced on the reference's "
                 f"{sum(map(len, targets))} generated tokens")


def print_parts(parts: dict, max_new_tokens: int) -> None:
    for name in ("encoder", "decoder_logits"):
        print(f"{name} {tuple(parts[name]['shape'])}:\n{format_parity(parts[name])}")
    print(f"generation ({parts['generation']['sequences']} greedy sequences, up to {max_new_tokens} tokens):\n"
          f"{format_greedy(parts['generation'])}")
    overflow = parts["overflow"]
    print(f"overflow watch: {overflow['checked_outputs']} module outputs checked, "
          + (f"FAIL: {overflow['failures'][0]}" if overflow["detected"] else "none non-finite"))


def main(args) -> int:
    prompts = all_prompts(args.file)
    model_dir = resolve_model_path(args.model_path, default=DEFAULT_MODEL)
    check_generation_args(args, model_dir)
    device = resolve_device(args.device)  # the default output names the device and dtype: resolved before loading
    output = result_path(args.output, HERE, "parity", model_dir, device, dtype_name(resolve_dtype(args.dtype, device)))
    check_outputs({"--output": output})  # every check before the two models load
    test = T5Summarizer(str(model_dir), args.device, args.dtype, args.max_input_length)
    reference = T5Summarizer(str(model_dir), "cpu", "fp32", args.max_input_length, watch_overflow=False)
    print(f"{len(prompts)} prompts: {test.device} {test.dtype_name} vs cpu fp32 reference ({test.model_dir})")
    # first: torch_npu reports each CPU fallback once per process
    traced = trace_if_asked(args, lambda: diagnosis_probe(test, reference, prompts, None))
    parts, want_gen = measure(test, reference, prompts, args.max_new_tokens)
    print_parts(parts, args.max_new_tokens)
    result = verdict(parts)
    print(f"OVERALL: {'PASS' if result['passed'] else 'FAIL'}")
    for failure in result["failures"]:
        print(f"  {failure}")
    diagnosis = {**traced, **locate_if_needed(args, result["passed"],
                                              lambda: diagnosis_probe(test, reference, prompts, want_gen))}
    write_json(output, result_record("parity", device=test.device, dtype=test.dtype_name, model=test.model_dir,
                                     headline={"passed": result["passed"]}, **result, prompts=len(prompts),
                                     max_new_tokens=args.max_new_tokens,
                                     truncated=reference.tokenize(prompts)[1], **diagnosis))
    print(f"wrote {output}")
    return 0 if result["passed"] else 1


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Parity of a T5-family model on a device+dtype vs the CPU fp32 reference.")
    add_model_args(p)
    p.add_argument("--file", help="extra prompts, one per line, appended to the built-in ones")
    p.add_argument("--max_new_tokens", type=positive_int, default=MAX_NEW_TOKENS, help="reference generation length")
    p.add_argument("--output", help="result JSON (default results/parity_<model>_<device>_<dtype>.json)")
    add_diagnosis_args(p)
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
