"""T5-family text2text generation on any device (Ascend NPU, CUDA, MPS, CPU): summaries, translation, QA, any prompt.

    python inference.py                                         # a default prompt set, each prompt and its output
    python inference.py --task summarize --text "The council approved ..." --num_beams 4
    python inference.py --task qa --text "Who founded it? || The company was founded by Ada in 1990."
    python inference.py --examples                              # the multi-task prompts of examples.jsonl, a table
    python inference.py --batch_file prompts.txt --output out.jsonl --device npu --dtype bf16

Python:
    from inference import T5Summarizer
    model = T5Summarizer(device="auto")                         # default google/flan-t5-small
    model.summarize(["summarize: ...", "translate English to German: ..."], max_new_tokens=64, num_beams=1)
    model(["question: ... context: ..."])                       # [{"generated_text": "..."}], like a pipeline

Any T5-family checkpoint loads through --model_path with no code change: Flan-T5 of every size, T5 v1.0 (t5-small
..., ReLU feed-forward, tied embeddings), T5 v1.1, mT5 and ByT5. Nothing here assumes a width, depth, vocabulary or
special-token id: they come from the checkpoint's config and tokenizer. In fp16, T5 activations can overflow; this
port watches every encoder/decoder module in fp16 and says where (use bf16 or fp32 then).
Sizes are refused above a limit, before the model loads: --max_new_tokens above the tokenizer's model_max_length
(MAX_NEW_TOKENS when the tokenizer sets none), --num_beams above MAX_NUM_BEAMS, --batch_size above MAX_BATCH_SIZE.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from common.device import dtype_name, resolve_device, resolve_dtype
from common.cli import ArgumentParser, UserError, check_at_most, first_line, positive_int, run_main
from common.cli import add_model_args as add_common_model_args
from common.model_path import resolve_model_path
from common.results import atomic_file, check_outputs
from common.strict_load import load_strictly
from common.textio import read_lines, read_text_file
from overflow import OverflowWatch

# The port's identity: `python -m common.porting.new_port` rewrites these lines when it copies this folder.
MODEL_NAME = "google_flan-t5-small"  # headings, messages, result labels
DEFAULT_MODEL = "google/flan-t5-small"  # --model_path default: hub id (offline and not cached: the download command)
MODEL_FAMILY = "seq2seq"  # sentence-transformers | seq2seq | causal-lm
MODEL_CLASS = "T5Summarizer"  # the class users import

HERE = Path(__file__).resolve().parent
MAX_INPUT_LENGTH = 512  # T5 and Flan-T5 were trained on 512-token inputs; longer prompts are cut (and counted)
DEFAULT_MAX_NEW_TOKENS = 64  # enough for a one-sentence summary, a short translation or an answer
DEFAULT_NUM_BEAMS = 1  # greedy; 4 is the usual beam width for summaries
DEFAULT_BATCH_SIZE = 16  # prompts per generate() call, grouped by token length so batches pad little
# Limits where the model sets none (T5's relative positions have no table to run past). Each is refused above it:
MAX_NEW_TOKENS = 512  # when the tokenizer's model_max_length is unset: Flan-T5's own value; a longer answer than
#                       the 512-token sequences T5 was trained on mostly repeats itself, and 1e9 would never end
MAX_NUM_BEAMS = 64  # beam search gains nothing past ~8 (T5's papers use 4) while each beam is another sequence
MAX_BATCH_SIZE = 1024  # prompts per generate() call: the speed-up is flat long before, the memory is not
EXAMPLES_FILE = HERE / "examples.jsonl"  # the multi-task prompt set behind --examples
QA_SEPARATOR = "||"  # --task qa input: "QUESTION || CONTEXT"
TASKS = {  # --task: how a plain input is wrapped into the Flan prompt
    "summarize": "summarize: {text}",
    "translate_fr": "translate English to French: {text}",
    "translate_de": "translate English to German: {text}",
    "qa": "question: {question} context: {context}",
    "raw": "{text}",
}
DEFAULT_PROMPTS = [  # run when no input is given, as the seed's `python inference.py --device npu` did
    "summarize: The city council voted on Monday to spend two million dollars on new bicycle lanes, saying that "
    "safer streets would cut traffic and pollution in the centre within five years.",
    "translate English to French: The museum opens at nine in the morning.",
    "translate English to German: I would like two tickets to Hamburg, please.",
    "question: Where do penguins live? context: Penguins are flightless birds that live almost exclusively in "
    "the Southern Hemisphere, most of them in Antarctica.",
    "Is this review positive or negative? The battery died after two days and support never answered.",
    "Solve for x: 4x - 6 = 10.",
]


class _UntiedHeadNotice(logging.Filter):
    """Drops one transformers 5.x warning that every untied T5 load (Flan-T5, T5 v1.1, mT5) triggers: it builds the
    model with a tied lm_head, finds the checkpoint's own lm_head and (correctly) keeps it untied, then warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "both are present in the checkpoints with different values" not in record.getMessage()


def check_tokenizer_files(model_dir: Path) -> None:
    """A checkpoint that ships only SentencePiece's spiece.model (mT5, T5 v1.1 on the hub) is converted on load, which
    needs the sentencepiece and protobuf packages; without them transformers falls back to a tiktoken reader and fails
    with a misleading message. Say what to install instead."""
    if not (model_dir / "spiece.model").is_file() or (model_dir / "tokenizer.json").is_file():
        return
    missing = [package for package, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
               if not _installed(module)]
    if missing:
        raise UserError(f"{str(model_dir)!r} has only a SentencePiece tokenizer (spiece.model, no tokenizer.json); "
                        f"converting it needs `pip install {' '.join(missing)}`")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (`google`) is absent
        return False


def load_seq2seq(model_dir: Path, dtype: torch.dtype):
    """Tokenizer and seq2seq LM through the ordinary from_pretrained path; load errors become one clear line."""
    hf_logging.disable_progress_bar()
    loader_log = logging.getLogger("transformers.modeling_utils")
    if not any(type(f).__name__ == "_UntiedHeadNotice" for f in loader_log.filters):  # once, even if reloaded
        loader_log.addFilter(_UntiedHeadNotice())
    check_tokenizer_files(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        model = load_strictly(partial(AutoModelForSeq2SeqLM.from_pretrained, model_dir, dtype=dtype), model_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load the model from {str(model_dir)!r}: {first_line(exc)}") from None
    if not model.config.is_encoder_decoder:
        raise UserError(f"{str(model_dir)!r} holds a {model.config.model_type} model, not an encoder-decoder like T5")
    return tokenizer, model.eval()


def describe(model) -> str:
    """One line on the loaded architecture: what differs between T5 v1.0, v1.1/Flan-T5, mT5 and ByT5 checkpoints."""
    c = model.config
    tied = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
    return (f"{c.model_type}, d_model {c.d_model}, {c.num_layers}+{c.num_decoder_layers} layers, {c.num_heads} heads "
            f"x {c.d_kv}, d_ff {c.d_ff} {c.feed_forward_proj}, vocab {c.vocab_size}, "
            f"{'tied' if tied else 'untied'} lm_head")


class T5Summarizer:
    """T5-family text2text: `summarize(prompts) -> list[str]`, `model(prompts) -> [{"generated_text": ...}]`."""

    def __init__(self, model_path: str | None = None, device: str = "auto", dtype: str = "auto",
                 max_input_length: int = MAX_INPUT_LENGTH, watch_overflow: bool | None = None):
        if max_input_length < 2:
            raise UserError(f"max_input_length must be >= 2 (a token and </s>), got {max_input_length}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model_dir = resolve_model_path(model_path, default=DEFAULT_MODEL)
        self.tokenizer, model = load_seq2seq(self.model_dir, self.dtype)
        self.model = model.to(self.device)
        self.max_input_length = max_input_length
        # fp16 is where T5 overflows; the hooks cost a little, so they are on only there unless asked for
        self.watch_overflow = self.dtype is torch.float16 if watch_overflow is None else watch_overflow
        self.last_stats: dict = {}

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def pad_id(self) -> int:
        """The tokenizer's <pad>, else the config's: T5 pads with it and starts decoding from it."""
        pad = self.tokenizer.pad_token_id
        return self.model.config.pad_token_id if pad is None else pad

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return self.model.config.eos_token_id if eos is None else eos

    @property
    def decoder_start_id(self) -> int:
        start = self.model.generation_config.decoder_start_token_id
        return self.model.config.decoder_start_token_id if start is None else start

    def token_count(self, text: str) -> int:
        """Tokens in one prompt before truncation, </s> included."""
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Token ids per prompt, cut to max_input_length keeping the final </s>; returns (ids, number truncated)."""
        ids = self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
        limit, truncated = self.max_input_length, 0
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                tail = seq[-1:] if seq[-1] == self.eos_id else []  # T5 tokenizers end every input with </s>
                ids[i] = seq[: limit - len(tail)] + tail
                truncated += 1
        return ids, truncated

    def batch_tensors(self, seqs: list[list[int]]) -> dict:
        """Right-padded input_ids and attention_mask on the device."""
        width = max(len(s) for s in seqs)
        input_ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, seq in enumerate(seqs):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return {"input_ids": torch.from_numpy(input_ids).to(self.device),
                "attention_mask": torch.from_numpy(mask).to(self.device)}

    def strip_generated(self, row: list[int]) -> list[int]:
        """Generated ids without the decoder start token, cut after the first </s> (what follows is padding)."""
        row = row[1:]
        return row[: row.index(self.eos_id) + 1] if self.eos_id in row else row

    @torch.inference_mode()
    def generate_ids(self, texts, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, num_beams: int = DEFAULT_NUM_BEAMS,
                     batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[int]]:
        """New token ids per prompt (ending in </s> unless max_new_tokens was reached), in the input order."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams), ("batch_size", batch_size)):
            if int(value) < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if not texts:
            return []
        ids, truncated = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # length-sorted: each batch pads to little
        out: list[list[int]] = [[] for _ in texts]
        stats = {"prompts": len(texts), "input_tokens": sum(map(len, ids)), "padded_tokens": 0,
                 "truncated": truncated, "batch_seconds": [], "batch_sizes": []}
        watch = OverflowWatch(self.model) if self.watch_overflow else None
        with watch if watch else _nothing():
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                seqs = [ids[i] for i in idx]
                stats["padded_tokens"] += len(seqs) * max(map(len, seqs))
                began = time.perf_counter()
                generated = self.model.generate(**self.batch_tensors(seqs), max_new_tokens=max_new_tokens,
                                                num_beams=num_beams, do_sample=False).tolist()  # .tolist() syncs
                stats["batch_seconds"].append(time.perf_counter() - began)
                stats["batch_sizes"].append(len(idx))
                for i, row in zip(idx, generated):
                    out[i] = self.strip_generated(row)
        stats["new_tokens"] = sum(map(len, out))
        stats["overflow"] = watch.report() if watch else None
        self.last_stats = stats
        return out

    def summarize(self, texts, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, num_beams: int = DEFAULT_NUM_BEAMS,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
        """Generate for any prompt ("summarize: ...", "translate English to French: ...", a Flan instruction)."""
        ids = self.generate_ids(texts, max_new_tokens, num_beams, batch_size)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True) if ids else []  # batch_decode([]) is [""]

    def __call__(self, texts, **kwargs) -> list[dict]:
        """Pipeline-style: `model(["..."]) -> [{"generated_text": "..."}]`."""
        return [{"generated_text": text} for text in self.summarize(texts, **kwargs)]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def wrap(text: str, task: str) -> str:
    """Plain input -> the Flan prompt for --task; raw passes it through."""
    if task == "qa":
        if QA_SEPARATOR not in text:
            raise UserError(f"--task qa needs 'QUESTION {QA_SEPARATOR} CONTEXT' in each input, got {text[:60]!r}")
        question, context = (part.strip() for part in text.split(QA_SEPARATOR, 1))
        return TASKS["qa"].format(question=question, context=context)
    return TASKS[task].format(text=text)


def read_examples(path: Path = EXAMPLES_FILE) -> list[dict]:
    """examples.jsonl: one {"task": ..., "prompt": ...} per line."""
    rows = []
    for number, line in enumerate(read_text_file(path, "examples file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"task": str(row["task"]), "prompt": str(row["prompt"])})
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path} line {number} is not a JSON object with \"task\" and \"prompt\"") from None
    if not rows:
        raise UserError(f"{path} holds no examples")
    return rows


def gather_prompts(args) -> tuple[list[str], list[str]]:
    """(prompts, labels) from --text, --batch_file and --examples; the default set when none is given."""
    texts = list(args.text or [])
    if any(not t.strip() for t in texts):
        raise UserError("--text is empty; pass the text to generate from, e.g. --text \"summarize: ...\"")
    if args.batch_file:
        lines, blank = read_lines(args.batch_file, "--batch_file")
        if blank:
            print(f"skipped {blank} blank line(s) in {args.batch_file}")
        texts += lines
    prompts = [wrap(t.strip(), args.task) for t in texts]
    labels = [args.task] * len(prompts)
    if args.examples:
        examples = read_examples()
        prompts += [e["prompt"] for e in examples]
        labels += [e["task"] for e in examples]
    if not prompts:
        return list(DEFAULT_PROMPTS), ["default"] * len(DEFAULT_PROMPTS)
    return prompts, labels


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def results_table(labels: list[str], prompts: list[str], outputs: list[str]) -> str:
    """task | prompt | generation, one row per prompt, clipped to fit a terminal."""
    width = max(len("task"), *(len(label) for label in labels))
    lines = [f"{'task':<{width}} | {'prompt':<60} | generation", f"{'-' * width}-+-{'-' * 60}-+-{'-' * 30}"]
    lines += [f"{label:<{width}} | {clip(prompt, 60):<60} | {clip(output, 80)}"
              for label, prompt, output in zip(labels, prompts, outputs)]
    return "\n".join(lines)


def save_outputs(path: Path, labels, prompts, outputs) -> None:
    """One {"task", "prompt", "generated_text"} per line, written via a temp file then renamed."""
    with atomic_file(path) as f:
        for label, prompt, output in zip(labels, prompts, outputs):
            f.write(json.dumps({"task": label, "prompt": prompt, "generated_text": output}, ensure_ascii=False) + "\n")


def new_token_limit(model_dir: Path) -> tuple[int, str]:
    """(the most new tokens a run may ask for, where it comes from): the tokenizer's model_max_length when
    tokenizer_config.json sets a real one, else MAX_NEW_TOKENS. Read from the file, before the model loads."""
    file = model_dir / "tokenizer_config.json"
    try:
        length = json.loads(file.read_text(encoding="utf-8")).get("model_max_length") if file.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        length = None
    if isinstance(length, int) and 0 < length < 10 ** 9:  # transformers writes ~1e30 for "no limit"
        return length, "the tokenizer's model_max_length"
    return MAX_NEW_TOKENS, "this port's MAX_NEW_TOKENS"


def check_generation_args(args, model_dir: Path) -> None:
    """--max_new_tokens, --num_beams and --batch_size against their limits, before the model loads."""
    if getattr(args, "max_new_tokens", None) is not None:
        limit, source = new_token_limit(model_dir)
        check_at_most(args.max_new_tokens, limit, "--max_new_tokens", source)
    if getattr(args, "num_beams", None) is not None:
        check_at_most(args.num_beams, MAX_NUM_BEAMS, "--num_beams", "this port's MAX_NUM_BEAMS")
    if getattr(args, "batch_size", None) is not None:
        check_at_most(args.batch_size, MAX_BATCH_SIZE, "--batch_size", "this port's MAX_BATCH_SIZE")


def overflow_message(report: dict, model: T5Summarizer) -> str:
    return (f"{model.dtype_name} overflow on {model.device}: first NaN/inf activation in {report['first_module']} "
            f"({report['bad_modules']} module output(s) affected); use --dtype bf16 or fp32")


def main(args) -> int:
    if args.output:  # every check happens before the model loads, so a bad input costs nothing
        if Path(args.output).suffix != ".jsonl":
            raise UserError(f"--output {args.output!r} must end in .jsonl")
        check_outputs({"--output": args.output})
    prompts, labels = gather_prompts(args)
    model_dir = resolve_model_path(args.model_path, default=DEFAULT_MODEL)
    check_generation_args(args, model_dir)
    model = T5Summarizer(str(model_dir), args.device, args.dtype, args.max_input_length)
    print(f"model {model.model_dir} ({describe(model.model)}) on {model.device} ({model.dtype_name}), "
          f"max_input_length {model.max_input_length}")
    outputs = model.summarize(prompts, args.max_new_tokens, args.num_beams, args.batch_size)
    stats = model.last_stats
    print(f"{len(prompts)} prompt(s), {stats['truncated']} truncated at {model.max_input_length} tokens, "
          f"{stats['new_tokens']} new tokens in {sum(stats['batch_seconds']):.2f} s")
    if args.examples:
        print(results_table(labels, prompts, outputs))
    else:
        for prompt, output in zip(prompts, outputs):
            print(f"\n> {prompt}\n{output}")
    if args.output:
        save_outputs(Path(args.output), labels, prompts, outputs)
        print(f"wrote {args.output}")
    if stats["overflow"] and stats["overflow"]["detected"]:
        print(f"error: {overflow_message(stats['overflow'], model)}", file=sys.stderr)
        return 1
    return 0


def add_model_args(parser: ArgumentParser) -> ArgumentParser:
    """--model_path, --device, --dtype (common.cli) and this folder's --max_input_length: shared by every script
    here."""
    add_common_model_args(parser, model_help=f"model folder or hub id (default {DEFAULT_MODEL}; any T5, Flan-T5, "
                                             "mT5 or ByT5 works)")
    parser.add_argument("--max_input_length", type=positive_int, default=MAX_INPUT_LENGTH,
                        help="prompts longer than this many tokens are truncated (the count is printed)")
    return parser


def add_generation_args(p: ArgumentParser, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> ArgumentParser:
    p.add_argument("--max_new_tokens", type=positive_int, default=max_new_tokens)
    p.add_argument("--num_beams", type=positive_int, default=DEFAULT_NUM_BEAMS, help="1 = greedy, 4 = beam search")
    return p


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"Generate text with {MODEL_NAME} or any T5-family model (summaries, "
                                   "translation, QA, any instruction).")
    add_model_args(p)
    p.add_argument("--text", action="append", help="an input (repeatable); wrapped according to --task")
    p.add_argument("--batch_file", help="UTF-8 file with one input per line (blank lines are skipped)")
    p.add_argument("--task", default="raw", choices=sorted(TASKS),
                   help=f"wrap plain input into a Flan prompt (qa: 'QUESTION {QA_SEPARATOR} CONTEXT'); raw = as is")
    p.add_argument("--examples", action="store_true", help="also run the multi-task prompts of examples.jsonl")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--output", help="write {task, prompt, generated_text} per line to a .jsonl file")
    return add_generation_args(p)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
