"""GSM8K's test and train splits for eval_gsm8k.py: a local folder (--data) or the hub, checked record by record,
with a fingerprint of their contents, and lm-eval gsm8k v3's few-shot prompts.

    from gsm8k_data import load_splits, build_prompt, fewshot_ids
    test, train, identity = load_splits("../../shared/data/gsm8k")   # identity: {"source", "sha256", ...}

The fingerprint is taken over the parsed (question, answer) pairs of both splits, not over the files' bytes or
paths: the same data moved to another folder, or read from the hub's parquet instead of the jsonl, gives the same
fingerprint, so a --resume from there continues the log; other questions, answers or exemplars (train) do not.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path

import huggingface_hub
import pandas as pd  # parquet (the hub's format) needs pandas + pyarrow, both in requirements-base.txt

from common.cli import UserError, check_at_most
from common.model_path import hub_reachable
from common.textio import read_text_file

FEWSHOT_SEED = 1234  # lm-eval's default --fewshot_random_seed
SPLITS = ("test", "train")  # test: the questions scored; train: where the few-shot exemplars come from
HUB_DATASET = "openai/gsm8k"  # Hugging Face: main/{test,train}-00000-of-00001.parquet
MODELSCOPE_DATASET = "modelscope/gsm8k"  # the ModelScope mirror, tried when HF fails and modelscope is installed


def _record(doc, where: str) -> dict:
    """A {question, answer} pair, both strings (the answer ends in '#### N'); UserError naming `where` otherwise."""
    if not (isinstance(doc, dict) and isinstance(doc.get("question"), str) and isinstance(doc.get("answer"), str)):
        raise UserError(f"{where} is not a GSM8K record (a JSON object with string fields question and answer); "
                        "pass GSM8K's own test.jsonl / train.jsonl")
    return {"question": doc["question"], "answer": doc["answer"]}


def _read_split(path: Path) -> list[dict]:
    """One jsonl split; an unreadable, non-UTF-8, empty or malformed file is a one-line UserError."""
    text = read_text_file(path, "GSM8K file")
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {number} is not JSON; pass GSM8K's own test.jsonl / train.jsonl") from None
        docs.append(_record(doc, f"{path} line {number}"))
    if not docs:
        raise UserError(f"GSM8K file {str(path)!r} holds no question; pass GSM8K's own test.jsonl / train.jsonl")
    return docs


def _read_table(path: Path) -> list[dict]:
    """One split from a .jsonl file (the original release) or a .parquet file (the hub mirrors)."""
    if path.suffix == ".jsonl":
        return _read_split(path)
    df = pd.read_parquet(path)
    docs = [_record({"question": q, "answer": a}, f"{path} row {n}")
            for n, (q, a) in enumerate(zip(df["question"], df["answer"]))]
    if not docs:
        raise UserError(f"GSM8K file {str(path)!r} holds no question")
    return docs


def _split_files(folder: Path) -> list[Path]:
    """test and train files inside a downloaded dataset snapshot, whatever its layout: the `main` config's parquet
    (HF openai/gsm8k) or jsonl/parquet files named after their split (ModelScope mirrors). The `socratic` config
    has other answers and is skipped."""
    files = [f for f in sorted(folder.rglob("*")) if f.suffix in (".jsonl", ".parquet") and "socratic" not in str(f)]
    found = []
    for split in SPLITS:
        matches = [f for f in files if f.name.startswith(split)]
        if not matches:
            raise FileNotFoundError(f"no {split} split (.jsonl or .parquet) under {folder}")
        found.append(matches[0])
    return found


def _from_huggingface() -> list[Path]:
    def fetch(split: str, cached_only: bool) -> Path:
        # looked up on the module at call time, so a test can stand in for the download
        return Path(huggingface_hub.hf_hub_download(HUB_DATASET, f"main/{split}-00000-of-00001.parquet",
                                                    repo_type="dataset", local_files_only=cached_only))
    try:
        return [fetch(s, cached_only=True) for s in SPLITS]
    except Exception:
        if not hub_reachable():  # offline: one quick connect instead of huggingface_hub's retry loop
            raise ConnectionError("huggingface.co is not reachable") from None
        return [fetch(s, cached_only=False) for s in SPLITS]


def _from_modelscope() -> list[Path]:
    from modelscope import dataset_snapshot_download  # optional, imported only when HF fails and it is installed
    return _split_files(Path(dataset_snapshot_download(MODELSCOPE_DATASET)))


def fingerprint(test: list[dict], train: list[dict]) -> str:
    """sha256 of both splits' (question, answer) pairs in order: what a run's prompts and gold answers depend on."""
    canonical = json.dumps([[[d["question"], d["answer"]] for d in split] for split in (test, train)],
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _identity(source: str, files: list[Path], test: list[dict], train: list[dict]) -> dict:
    return {"source": source, "files": [str(Path(f).resolve()) for f in files], "sha256": fingerprint(test, train)}


def load_splits(data: str | None) -> tuple[list[dict], list[dict], dict]:
    """(test, train, identity) from a local folder with test.jsonl and train.jsonl, or from the hub: Hugging Face
    (openai/gsm8k, cached after the first run), then ModelScope (modelscope/gsm8k) when `modelscope` is installed.
    identity: where the data came from (source, resolved files) and its content fingerprint (sha256)."""
    if data:
        folder = Path(data).expanduser()
        missing = [f"{s}.jsonl" for s in SPLITS if not (folder / f"{s}.jsonl").is_file()]
        if missing:
            raise UserError(f"--data {data!r} lacks {', '.join(missing)}; pass the folder with GSM8K's test.jsonl "
                            "and train.jsonl")
        files = [folder / f"{s}.jsonl" for s in SPLITS]
        test, train = _read_split(files[0]), _read_split(files[1])
        return test, train, _identity("--data", files, test, train)
    sources = [("huggingface", _from_huggingface)]
    if importlib.util.find_spec("modelscope") is not None:
        sources.append(("modelscope", _from_modelscope))
    reasons = []
    for name, fetch in sources:
        try:
            files = fetch()
            test, train = _read_table(files[0]), _read_table(files[1])
            return test, train, _identity(name, files, test, train)
        except Exception as exc:
            reasons.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise UserError(f"cannot get GSM8K from the hub ({'; '.join(reasons)}); pass a local copy with --data FOLDER "
                    "holding test.jsonl and train.jsonl, e.g. --data ../../shared/data/gsm8k/")


def load_data(data: str | None) -> tuple[list[dict], list[dict]]:
    """(test, train) docs; see `load_splits`."""
    test, train, _ = load_splits(data)
    return test, train


def fewshot_ids(num_docs: int, train_size: int, k: int, seed: int = FEWSHOT_SEED) -> list[list[int]]:
    """Train indices of each test question's exemplars: one random.Random(seed) stream, k drawn per question."""
    check_at_most(k, train_size, "--num_fewshot", "the GSM8K train split's size")  # rnd.sample cannot draw more
    rnd = random.Random(seed)
    return [rnd.sample(range(train_size), k) for _ in range(num_docs)]


def doc_to_text(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def build_prompt(doc: dict, exemplars: list[dict]) -> str:
    shots = [doc_to_text(ex) + " " + ex["answer"] for ex in exemplars]
    return "\n\n".join(shots + [doc_to_text(doc)])
