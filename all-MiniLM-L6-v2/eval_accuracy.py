"""Parity of the encoder on a device+dtype against the CPU float32 reference, for any sentence-transformers model.

    python eval_accuracy.py --device npu --dtype bf16
    python eval_accuracy.py --device cpu --dtype fp32 --file my_texts.txt --model_path path/to/model

Both sides encode the same texts; the metrics (common.parity.parity, computed in float64) are taken on the
sentence embeddings (what users consume) and on the token states before pooling (where a kernel bug would show
first). PASS needs both parts within the thresholds of the dtype under test (common.parity.verdict). Exit 1 on FAIL.
Writes results/parity_<model>_<device>_<dtype>[_compiled].json.
Diagnosis (common.diagnostics.eval_hooks), on one batch of DIAGNOSIS_TEXTS: --trace_ops (every aten op of the forward on the
device, CPU fallbacks, host syncs) and --locate (each module against the reference; automatic after a FAIL).
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from common.diagnostics.eval_hooks import Probe, add_diagnosis_args, eager, locate_if_needed, trace_if_asked
from common.cli import ArgumentParser, run_main
from common.device import dtype_name, resolve_device, resolve_dtype
from common.model_path import resolve_model_path
from common.parity import format_parity, parity, verdict
from common.results import check_outputs, result_path, result_record, write_json
from common.textio import read_lines
from inference import DEFAULT_MODEL, MODEL_CLASS, MODEL_NAME, MiniLMEncoder, add_model_args

HERE = Path(__file__).resolve().parent
# The seed's protocol: 24 fixed texts covering scripts, punctuation, digits and lengths from one word to ~250 tokens.
PROBE_TEXTS = [
    "Hello!",
    "A man is playing a guitar.",
    "A person plays an acoustic guitar on stage.",
    "The cat sat on the mat, and then it fell asleep.",
    "Quarterly revenue rose 12.5% to $4.31 billion, beating estimates of $4.2 billion.",
    "Call 555-0199 before 09:30 on 2024-03-15; ask for room 42B.",
    "What?!... No way -- that's (really) \"unbelievable\" :-)",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "He didn't go to the party because he wasn't feeling well.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "Je voudrais réserver une table pour deux personnes ce soir.",
    "L'intelligence artificielle transforme la recherche scientifique.",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "北京是中国的首都。",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "¿Dónde está la estación de tren más cercana?",
    "def add(a, b): return a + b  # adds two numbers",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "Ascend NPUs run PyTorch models through the torch_npu adapter.",
    "a",
    " ".join(["The committee reviewed the proposal in detail, weighing its costs against the expected benefits"
              " for the community over the next decade."] * 12),  # ~270 tokens: truncated by a limit of 256 or less
    "Sentence embeddings map text to vectors so that similar meanings land close together in the space.",
]
PARITY_BATCH_SIZE = 8  # several batches, so padding between texts of different lengths is exercised
# --trace_ops / --locate: one padded batch of a short, a CJK, a code and the ~270-token text (accumulated error).
DIAGNOSIS_TEXTS = [PROBE_TEXTS[1], PROBE_TEXTS[13], PROBE_TEXTS[18], PROBE_TEXTS[22]]


def token_states(encoder: MiniLMEncoder, texts: list[str]) -> np.ndarray:
    """last_hidden_state of every real (non-padding) token of every text, concatenated: (total_tokens, hidden)."""
    ids, _ = encoder.tokenize(texts)
    rows = []
    with torch.inference_mode():
        for start in range(0, len(ids), PARITY_BATCH_SIZE):
            batch = encoder.batch_tensors(ids[start: start + PARITY_BATCH_SIZE])
            hidden = encoder.model(**batch).last_hidden_state.float().cpu()
            real = batch["attention_mask"].cpu().bool()  # either padding side
            rows += [hidden[i][real[i]] for i in range(hidden.shape[0])]
    return torch.cat(rows).double().numpy()


def measure(encoder: MiniLMEncoder, texts: list[str]) -> dict:
    return {"embeddings": encoder.encode(texts, batch_size=PARITY_BATCH_SIZE, show_progress=False),
            "token_states": token_states(encoder, texts)}


def diagnosis_probe(test: MiniLMEncoder, reference: MiniLMEncoder) -> Probe:
    """The transformer's forward on DIAGNOSIS_TEXTS (one padded batch), both sides; pooling and the head are plain
    tensor ops after it, covered by the embeddings part."""
    ids, _ = reference.tokenize(DIAGNOSIS_TEXTS)
    test_batch, reference_batch = test.batch_tensors(ids), reference.batch_tensors(ids)
    test_model, reference_model = eager(test.model), eager(reference.model)
    return Probe(test_model, reference_model, lambda: test_model(**test_batch),
                 lambda: reference_model(**reference_batch), test.device, test.dtype,
                 f"{len(ids)} texts, {sum(map(len, ids))} tokens, one padded batch")


def main(args) -> int:
    texts = list(PROBE_TEXTS)
    if args.file:
        texts += read_lines(args.file, "--file")[0]
    device = resolve_device(args.device)  # the default output names the device and dtype: resolved before loading
    output = result_path(args.output, HERE, "parity", resolve_model_path(args.model_path, default=DEFAULT_MODEL),
                         device, dtype_name(resolve_dtype(args.dtype, device)), "_compiled" if args.compile else "")
    check_outputs({"--output": output})  # before either model loads
    test = MiniLMEncoder(args.model_path, args.device, args.dtype, compile=args.compile)
    reference = MiniLMEncoder(args.model_path, "cpu", "fp32")
    print(f"{len(texts)} texts, {test.describe()}\n{test.device} {test.dtype_name}"
          f"{' (compiled)' if args.compile else ''} vs cpu fp32 reference")
    probe = partial(diagnosis_probe, test, reference)
    traced = trace_if_asked(args, probe)  # first: torch_npu reports each CPU fallback once per process
    got, want = measure(test, texts), measure(reference, texts)
    parts = {name: parity(got[name], want[name], test.dtype_name) for name in ("embeddings", "token_states")}
    for name, result in parts.items():
        print(f"{name} {tuple(result['shape'])}:\n{format_parity(result)}")
    result = verdict(parts)
    print(f"OVERALL: {'PASS' if result['passed'] else 'FAIL'}")
    diagnosis = {**traced, **locate_if_needed(args, result["passed"], probe)}
    write_json(output, result_record(
        "parity", device=test.device, dtype=test.dtype_name, model=test.model_dir,
        headline={"passed": result["passed"]}, **result, texts=len(texts),
        truncated=test.last_stats.get("truncated"), max_seq_length=test.max_seq_length, compiled=args.compile,
        pipeline=test.describe(), **diagnosis))
    print(f"wrote {output}")
    return 0 if result["passed"] else 1


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"Parity of {MODEL_CLASS} ({MODEL_NAME} or another sentence-transformers model) "
                               "on a device+dtype vs the CPU fp32 reference.")
    add_model_args(p)
    p.add_argument("--file", help="extra texts, one per line, appended to the 24 built-in ones")
    p.add_argument("--output", help="result JSON (default results/parity_<model>_<device>_<dtype>[_compiled].json)")
    add_diagnosis_args(p)
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
