"""all-MiniLM-L6-v2 sentence embeddings on any device (Ascend NPU, CUDA, MPS, CPU).

    python inference.py --text "A man is eating food." --text "A man eats something."
    python inference.py --batch_file sample.txt --device npu --dtype bf16 --output emb.npy

Python:
    from inference import MiniLMEncoder
    enc = MiniLMEncoder(device="auto")            # compile=True: faster steady state, ~30 s one-time warm-up on CPU
    vectors = enc.encode(["first text", "second text"])   # (2, 384) float32, unit length

Same math as SentenceTransformer (BERT -> mean pooling over real tokens -> L2 normalise), with one change that
matters for speed: texts are tokenized once up front and batched by *token* count, so each batch pads to almost
nothing. sentence-transformers sorts by character length, which pads ~15% more tokens on mixed text.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repo root, for `common`

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from common.device import dtype_name, resolve_device, resolve_dtype  # noqa: E402
from common.errors import ArgumentParser, UserError, first_line, positive_int, run_main  # noqa: E402
from common.model_path import resolve_model_path  # noqa: E402
from common.pooling import POOLERS, l2_normalize  # noqa: E402
from common.results import write_json  # noqa: E402
from common.textio import read_lines  # noqa: E402

MAX_SEQ_LENGTH = 256  # the model was trained with 256-token inputs (sentence_bert_config.json); longer is truncated
DEFAULT_BATCH_SIZE = 32  # sentence-transformers' default, so comparisons are like for like
SIMILARITY_TABLE_MAX = 10  # print the cosine table only when it fits on a screen
EMBEDDING_DIM = 384


def load_transformer(model_dir: Path, dtype: torch.dtype):
    """Tokenizer and BertModel from a sentence-transformers folder; load errors become one clear line."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise for a 90 MB model
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load the model from {str(model_dir)!r}: {first_line(exc)}") from None
    return tokenizer, model.eval()


def read_pooling_mode(model_dir: Path) -> str:
    """The pooling the checkpoint was trained with (1_Pooling/config.json); mean when the folder has none."""
    config = model_dir / "1_Pooling" / "config.json"
    if not config.exists():
        return "mean"
    settings = json.loads(config.read_text(encoding="utf-8"))
    for mode in ("cls", "max", "mean"):
        if settings.get(f"pooling_mode_{mode}_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"):
            return mode
    return "mean"


class MiniLMEncoder:
    """Sentence encoder: `encode(texts) -> (n, 384)` float32 numpy, in the input order."""

    def __init__(self, model_path: str | None = None, device: str = "auto", dtype: str = "auto",
                 max_seq_length: int = MAX_SEQ_LENGTH, compile: bool = False):
        if max_seq_length < 3:
            raise UserError(f"max_seq_length must be >= 3 ([CLS] + a token + [SEP]), got {max_seq_length}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model_dir = resolve_model_path(model_path)
        self.tokenizer, model = load_transformer(self.model_dir, self.dtype)
        self.max_seq_length = min(max_seq_length, model.config.max_position_embeddings)
        self.pooling = read_pooling_mode(self.model_dir)
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

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Token ids per text, truncated to max_seq_length keeping [SEP]; returns (ids, number truncated)."""
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        limit, truncated = self.max_seq_length, 0
        for i, seq in enumerate(ids):
            if len(seq) > limit:  # same result as the tokenizer's own right truncation: [CLS] head... [SEP]
                ids[i] = seq[: limit - 1] + seq[-1:]
                truncated += 1
        return ids, truncated

    def batch_tensors(self, seqs: list[list[int]]) -> dict:
        width = max(len(s) for s in seqs)
        input_ids = np.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, seq in enumerate(seqs):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        tensors = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        tensors["token_type_ids"] = torch.zeros_like(tensors["input_ids"])
        return {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}

    @torch.inference_mode()
    def embed_batch(self, seqs: list[list[int]], normalize: bool = True) -> torch.Tensor:
        """One padded forward pass -> pooled (and normalised) float32 embeddings on the device."""
        batch = self.batch_tensors(seqs)
        hidden = self.model(**batch).last_hidden_state
        pooled = POOLERS[self.pooling](hidden, batch["attention_mask"])
        return l2_normalize(pooled) if normalize else pooled

    def encode(self, texts, batch_size: int = DEFAULT_BATCH_SIZE, normalize: bool = True,
               show_progress: bool | None = None) -> np.ndarray:
        """Embed texts in their input order. Batches are formed by token count, longest first."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        ids, truncated = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep input order
        batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, vectors)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for text, vec in zip(texts, vectors):
                f.write(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vec]}) + "\n")
    tmp.replace(path)


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


def main(args) -> int:
    if args.output and Path(args.output).suffix not in (".npy", ".jsonl"):
        raise UserError(f"--output {args.output!r} must end in .npy or .jsonl")
    texts = gather_texts(args)
    encoder = MiniLMEncoder(args.model_path, args.device, args.dtype, args.max_seq_length, compile=args.compile)
    print(f"model {encoder.model_dir} on {encoder.device} ({encoder.dtype_name}), pooling={encoder.pooling}")
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


def add_model_args(p: ArgumentParser) -> ArgumentParser:
    """The flags that choose the model, device and precision: shared by every script in this folder."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | npu[:N] | mps")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (auto: fp32 on CPU, bf16 on accelerators)")
    p.add_argument("--model_path", default=None, help="model folder or hub id (default: the embedded weights)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (one-time warm-up, faster after)")
    return p


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Encode texts with all-MiniLM-L6-v2.")
    p.add_argument("--text", action="append", help="a text to encode (repeatable)")
    p.add_argument("--batch_file", help="UTF-8 file with one text per line (blank lines are skipped)")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--max_seq_length", type=positive_int, default=MAX_SEQ_LENGTH)
    p.add_argument("--output", help="write embeddings to .npy or .jsonl")
    return add_model_args(p)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
