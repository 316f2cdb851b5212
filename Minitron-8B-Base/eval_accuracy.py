"""Parity of a causal LM on a device+dtype against the CPU float32 reference: prefill logits and greedy generation.

    python eval_accuracy.py --model_path smollm2 --device cpu --dtype bf16
    python eval_accuracy.py --model_path models/Minitron-8B-Base --device npu --dtype bf16 --file my_prompts.txt

Both sides get the same token ids (tokenized once), in batches of PARITY_BATCH_SIZE prompts of mixed lengths,
left-padded as inference.CausalLM pads them, with position ids counted from each row's first real token, so a
padded row computes what it would alone (models with learned position tables, like GPT-2, depend on it).
  (a) prefill_logits: the logits at every real prompt position; common.parity.parity(logits=True): rel L2, worst
      row cosine, top-1 agreement, KL(ref || test), with the dtype's thresholds.
  (b) generation: --max_new_tokens greedy tokens on both sides (plain argmax: the checkpoint's generation_config
      processors are off, see inference.plain_greedy), then both models teacher-forced on the reference's
      sequences; common.parity.greedy_parity: every divergence must start at a near-tie of the reference (its
      margin within NEAR_TIE_FACTOR x the logit error at that position), and enough sequences must match exactly.
PASS needs both parts; exit 1 on FAIL. Writes a parity result record (JSON).
Diagnosis (common.diagnostics.eval_hooks), on the first batch of prompts + reference continuations: --trace_ops (every aten op on
the device, CPU fallbacks, host syncs) and --locate (each module against the reference; automatic after a FAIL;
the reference's activations are spilled to a temporary folder, never two full copies in memory).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from common.diagnostics.eval_hooks import Probe, add_diagnosis_args, locate_if_needed, trace_if_asked
from common.device import dtype_name, resolve_device, resolve_dtype
from common.cli import ArgumentParser, positive_int, run_main
from common.parity import format_greedy, format_parity, greedy_parity, parity, verdict
from common.results import check_outputs, result_path, result_record, write_json
from common.textio import read_lines
from inference import MODEL_NAME, CausalLM, add_model_args, check_fits, left_padded, model_spec, plain_greedy

HERE = Path(__file__).resolve().parent
PARITY_BATCH_SIZE = 4  # several batches of mixed lengths, so left padding is exercised on both sides
# --trace_ops / --locate: one left-padded batch of 2 sequences (mixed lengths). Small on purpose: --locate spills
# every module's inputs and outputs of the reference to disk: ~3 MB a token for SmolLM2-135M (measured), ~20 MB a
# token for an 8B model with a 256k vocabulary (estimated from the widths).
DIAGNOSIS_BATCH_SIZE = 2
MAX_NEW_TOKENS = 32  # long enough for drift to show, short enough to stay quick on a CPU reference
LONG_PROMPT = " ".join([  # ~250 tokens: attention over a long context, where accumulated error shows first
    "The harbour town kept its old customs: the fishing boats left before dawn, the market opened at seven, and",
    "the ferry to the islands ran twice a day in summer and once in winter. In 1894 a storm destroyed the pier,",
    "and the town council borrowed 12,500 pounds to rebuild it in stone. The new pier was 310 metres long, had a",
    "lighthouse at its end and a railway line that carried fish straight to the station. Tourists followed the",
    "railway; by 1910 there were four hotels, a bandstand and a theatre. The fishing fleet shrank after the war,",
    "but the pier survived, and today its lighthouse is a small museum about the storm, the loan and the people",
    "who paid it back over forty years. Asked what the town is proudest of, most residents name the pier first,",
    "then the lifeboat crew, and only then the beaches that bring the visitors. Summarise the town's history:"])
PROBE_PROMPTS = [  # what a base LM continues: prose, a GSM8K question, code, numbers, other languages, a long text
    "The three most important inventions of the twentieth century are",
    "Question: A baker makes 24 muffins in the morning and twice as many in the afternoon. He sells 50 of them. "
    "How many muffins are left?\nAnswer:",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "SELECT name, COUNT(*) AS orders FROM customers JOIN orders ON customers.id = orders.customer_id GROUP BY",
    "1, 1, 2, 3, 5, 8, 13, 21, 34,",
    "Pi is 3.14159, e is 2.71828, and 1,000,000 divided by 7 is",
    "La capitale de la France est une ville célèbre pour",
    "Der schnelle braune Fuchs springt über den faulen Hund, und dann",
    "东京是日本的首都，也是",
    "User: What is the boiling point of water at sea level?\nAssistant:",
    "Hi",
    LONG_PROMPT,
]


def all_prompts(extra_file: str | None) -> list[str]:
    return list(PROBE_PROMPTS) + (read_lines(extra_file, "--file")[0] if extra_file else [])


@torch.inference_mode()
def logits_of(lm: CausalLM, seqs: list[list[int]]) -> list[np.ndarray]:
    """Every real position's next-token logits of each sequence: one (len, vocab) float32 array per sequence."""
    out = []
    for start in range(0, len(seqs), PARITY_BATCH_SIZE):
        batch = seqs[start: start + PARITY_BATCH_SIZE]
        # a plain forward: position_ids from each row's first real token, as generate() derives them
        inputs = left_padded(batch, lm.tokenizer.pad_token_id, lm.device, positions=True)
        logits = lm.model(**inputs, use_cache=False).logits
        out += [logits[row, logits.shape[1] - len(seq):].float().cpu().numpy() for row, seq in enumerate(batch)]
    return out


def eos_ids(lm: CausalLM) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


@torch.inference_mode()
def greedy(lm: CausalLM, seqs: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Plain greedy continuations, each up to and including its first end-of-sequence token."""
    stop, out = eos_ids(lm), []
    for start in range(0, len(seqs), PARITY_BATCH_SIZE):
        # no position_ids: generate() derives them from the mask, step by step
        batch = left_padded(seqs[start: start + PARITY_BATCH_SIZE], lm.tokenizer.pad_token_id, lm.device)
        with plain_greedy(lm.model):
            new = lm.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        for row in new[:, batch["input_ids"].shape[1]:].tolist():
            end = next((k + 1 for k, token in enumerate(row) if token in stop), len(row))
            out.append(row[:end])
    return out


def prompt_rows(logits: list[np.ndarray], seqs: list[list[int]]) -> np.ndarray:
    """The rows of every prompt position, all prompts stacked: (prompt tokens, vocab)."""
    return np.concatenate([x[: len(s)] for x, s in zip(logits, seqs)])


def forced_rows(logits: list[np.ndarray], seqs: list[list[int]], want: list[list[int]]) -> list[np.ndarray]:
    """Per sequence, the rows that predict the reference continuation's tokens: row k predicts want[i][k]."""
    return [x[len(s) - 1: len(s) - 1 + len(w)] for x, s, w in zip(logits, seqs, want)]


def measure(test: CausalLM, reference: CausalLM, seqs: list[list[int]], max_new_tokens: int) -> tuple[dict, list]:
    """Both parts, and the reference's continuations. One forward per side over prompt + reference continuation
    gives both the prompt positions' logits and the teacher-forced rows (the model is causal)."""
    want = greedy(reference, seqs, max_new_tokens)
    got = greedy(test, seqs, max_new_tokens)
    full = [s + w for s, w in zip(seqs, want)]
    ref_logits, test_logits = logits_of(reference, full), logits_of(test, full)
    dtype = test.dtype_name
    parts = {"prefill_logits": parity(prompt_rows(test_logits, seqs), prompt_rows(ref_logits, seqs), dtype,
                                      logits=True),
             "generation": greedy_parity(got, want, forced_rows(test_logits, seqs, want),
                                         forced_rows(ref_logits, seqs, want), dtype)}
    return parts, want


def diagnosis_probe(test: CausalLM, reference: CausalLM, seqs: list[list[int]]) -> Probe:
    """One left-padded batch of the first DIAGNOSIS_BATCH_SIZE sequences (prompts + the reference's continuations
    for --locate; the prompts alone for --trace_ops, which runs before anything is generated), both sides."""
    batch = seqs[:DIAGNOSIS_BATCH_SIZE]
    test_inputs = left_padded(batch, test.tokenizer.pad_token_id, test.device, positions=True)
    reference_inputs = left_padded(batch, reference.tokenizer.pad_token_id, reference.device, positions=True)
    return Probe(test.model, reference.model, lambda: test.model(**test_inputs, use_cache=False),
                 lambda: reference.model(**reference_inputs, use_cache=False), test.device, test.dtype,
                 f"{len(batch)} sequences, {sum(map(len, batch))} tokens, left-padded")


def output_path(args) -> Path:
    """--output (or the default result path), checked writable before the two models load."""
    device = resolve_device(args.device)
    output = result_path(args.output, HERE, "parity", model_spec(args.model_path), device,
                         dtype_name(resolve_dtype(args.dtype, device)))
    check_outputs({"--output": output})
    return output


def check_prompts_fit(tokenizer, config, prompts: list[str], max_new_tokens: int) -> None:
    """The longest probe prompt + --max_new_tokens must fit in the model's context: checked before any weights."""
    longest = max(len(ids) for ids in tokenizer(prompts, verbose=False)["input_ids"])
    check_fits(longest, max_new_tokens, config, tokenizer, prompt="the longest probe prompt",
               fix="drop it from --file")


def main(args) -> int:
    prompts = all_prompts(args.file)
    output = output_path(args)
    test = CausalLM(args.model_path, args.device, args.dtype, before_weights=lambda tokenizer, config:
                    check_prompts_fit(tokenizer, config, prompts, args.max_new_tokens))
    reference = CausalLM(args.model_path, "cpu", "fp32")
    seqs = [reference.tokenizer(p)["input_ids"] for p in prompts]  # one tokenization: both sides see the same ids
    print(f"{MODEL_NAME} parity, {len(prompts)} prompts ({sum(map(len, seqs))} tokens): {test.device} "
          f"{test.dtype_name} vs cpu fp32 reference ({test.source})")
    # first: torch_npu reports each CPU fallback once per process
    traced = trace_if_asked(args, lambda: diagnosis_probe(test, reference, seqs))
    parts, want = measure(test, reference, seqs, args.max_new_tokens)
    print(f"prefill_logits {tuple(parts['prefill_logits']['shape'])}:\n{format_parity(parts['prefill_logits'])}")
    print(f"generation ({len(seqs)} greedy sequences, up to {args.max_new_tokens} new tokens):\n"
          f"{format_greedy(parts['generation'])}")
    result = verdict(parts)
    print(f"OVERALL: {'PASS' if result['passed'] else 'FAIL'}")
    full = [s + w for s, w in zip(seqs, want)]  # prompts + the reference's continuations
    diagnosis = {**traced, **locate_if_needed(args, result["passed"], lambda: diagnosis_probe(test, reference, full))}
    write_json(output, result_record(
        "parity", device=test.device, dtype=test.dtype_name, model=test.spec, headline={"passed": result["passed"]},
        **result, source=str(test.source), prompts=len(prompts), prompt_tokens=[len(s) for s in seqs],
        max_new_tokens=args.max_new_tokens, reference_new_tokens=[len(w) for w in want], **diagnosis))
    print(f"wrote {output}")
    return 0 if result["passed"] else 1


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--max_new_tokens", type=positive_int, default=MAX_NEW_TOKENS,
                        help="greedy tokens generated per prompt on both sides (prompt + these fit the context)")
    parser.add_argument("--file", default=None, help="extra prompts, one per line, appended to the built-in ones")
    parser.add_argument("--output", default=None,
                        help="result JSON (default results/parity_<model>_<device>_<dtype>.json)")
    add_diagnosis_args(parser)
    return parser


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
