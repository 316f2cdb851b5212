"""Character and word error rate of AnandaSky on a folder of text-line images with a `labels.tsv`, resumable.

    python eval_ocr.py --model-path models/AnandaSky --data ../../shared/data/ocr/uw3_500/
    python eval_ocr.py --model-path models/AnandaSky --data ../../shared/data/ocr/uw3_500/ --limit 50 --resume
    python eval_ocr.py --model-path test_checkpoint --data ../../shared/data/ocr/uw3_500/ --limit 8   # pipeline only

Data: `labels.tsv` with a header `image<TAB>text`, image paths relative to the folder (the layout of
`shared/data/ocr/uw3_500/`: 500 printed English lines). One of those images is rotated 90 degrees (the text runs
bottom to top); with `--rotate auto` (default) an image more than twice as tall as it is wide is turned clockwise
before recognition, and the sample records that it was.

Scoring: both sides are stripped and runs of whitespace become one space (the transcriptions keep line-end hyphens,
so nothing else is changed). CER = total character edits (Levenshtein) / total reference characters; WER the same
over space-separated words; both are corpus-level (long lines weigh more), and the mean per-line CER and the share of
exactly recognised lines are reported beside them. Every line is appended to a JSONL log as it finishes; --resume
continues that log (a torn last line from a crash is dropped), so nothing is lost or counted twice.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repo root, for `common`

from common.errors import ArgumentParser, UserError, positive_int, run_main  # noqa: E402
from common.results import append_run_record, open_run_log, run_metadata, write_json  # noqa: E402
from inference import DEFAULT_PROMPT, AnandaSkyOCR, add_model_args, read_image  # noqa: E402

DEFAULT_BATCH_SIZE = 8  # lines per recognize() call: their images are packed into one vision-encoder pass
DEFAULT_MAX_NEW_TOKENS = 128  # the longest uw3_500 line has 167 characters, roughly 50 Qwen3 tokens
ROTATE_ASPECT = 2.0  # --rotate auto turns an image whose height exceeds this many widths (a vertical text line)


# --- scoring ------------------------------------------------------------------------------------------------------

def normalize(text: str) -> str:
    return " ".join(text.split())


def edit_distance(hyp, ref) -> int:
    """Levenshtein distance between two sequences (characters or words), O(len(hyp)·len(ref)) time, O(len(ref))
    memory; substitutions, insertions and deletions each cost 1."""
    previous = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        current = [i]
        for j, r in enumerate(ref, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
        previous = current
    return previous[-1]


def score_line(hypothesis: str, reference: str) -> dict:
    hyp, ref = normalize(hypothesis), normalize(reference)
    return {"char_errors": edit_distance(hyp, ref), "ref_chars": len(ref),
            "word_errors": edit_distance(hyp.split(), ref.split()), "ref_words": len(ref.split()),
            "exact": hyp == ref}


def summarize(samples: list[dict]) -> dict:
    """Corpus-level CER/WER (edits over reference length) plus the mean per-line CER and the exact-line rate."""
    n = len(samples)
    chars, words = sum(s["ref_chars"] for s in samples), sum(s["ref_words"] for s in samples)
    return {"num_lines": n,
            "cer": sum(s["char_errors"] for s in samples) / max(chars, 1),
            "wer": sum(s["word_errors"] for s in samples) / max(words, 1),
            "cer_line_mean": sum(s["char_errors"] / max(s["ref_chars"], 1) for s in samples) / max(n, 1),
            "exact_line_rate": sum(s["exact"] for s in samples) / max(n, 1),
            "ref_chars": chars, "ref_words": words,
            "rotated": [s["image"] for s in samples if s["rotated"]]}


# --- data ---------------------------------------------------------------------------------------------------------

def load_labels(data: str) -> tuple[Path, list[dict]]:
    """(folder, [{"image", "text"}]) from `<data>/labels.tsv`; one-line errors for a missing or malformed file."""
    folder = Path(data).expanduser()
    labels = folder / "labels.tsv"
    if not labels.is_file():
        raise UserError(f"--data {data!r} has no labels.tsv; pass a folder holding labels.tsv (image<TAB>text) and "
                        "its images, e.g. --data ../../shared/data/ocr/uw3_500/")
    try:
        with open(labels, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError:
        raise UserError(f"{labels} is not UTF-8 text") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "text"]:
        raise UserError(f"{labels} must start with the header line 'image<TAB>text'")
    items = []
    for number, row in enumerate(rows[1:], 2):
        if len(row) != 2 or not row[0]:
            raise UserError(f"{labels} line {number} is not 'image<TAB>text'")
        items.append({"image": row[0], "text": row[1]})
    if not items:
        raise UserError(f"{labels} lists no images")
    return folder, items


def load_line_image(path: Path, rotate: str):
    """(RGB PIL image, rotated?) A vertical line (height > ROTATE_ASPECT × width) is turned clockwise under
    --rotate auto: the one rotated uw3_500 image reads bottom to top."""
    image = read_image(path)  # one-line errors for missing, truncated and non-image files
    if rotate == "auto" and image.height > ROTATE_ASPECT * image.width:
        from PIL import Image
        return image.transpose(Image.Transpose.ROTATE_270), True
    return image, False


# --- the run ------------------------------------------------------------------------------------------------------

def recognize_batch(ocr: AnandaSkyOCR, folder: Path, items: list[dict], args) -> list[dict]:
    """Recognise one batch of lines and score each against its transcription."""
    loaded = [load_line_image(folder / item["image"], args.rotate) for item in items]
    texts = ocr.recognize([image for image, _ in loaded], prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    return [{"type": "sample", "image": item["image"], "reference": item["text"], "hypothesis": text,
             "rotated": rotated, **score_line(text, item["text"])}
            for item, (_, rotated), text in zip(items, loaded, texts)]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--data", required=True, help="folder with labels.tsv and the images it lists")
    parser.add_argument("--limit", type=positive_int, default=None, help="first N lines only")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int,
                        default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=positive_int,
                        default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--rotate", choices=["auto", "none"], default="auto",
                        help="auto: turn vertical lines clockwise (default)")
    parser.add_argument("--output", default=None, help="summary JSON (default results/ocr_<model>_<data>.json)")
    parser.add_argument("--resume", action="store_true", help="continue the JSONL log of an interrupted run")
    return parser


def main(args) -> int:
    from tqdm import tqdm

    folder, items = load_labels(args.data)
    items = items[: args.limit] if args.limit else items
    missing = [item["image"] for item in items if not (folder / item["image"]).is_file()]
    if missing:  # checked before the model loads, not 400 lines into the run
        raise UserError(f"{len(missing)} image(s) listed in {folder / 'labels.tsv'} do not exist, the first: "
                        f"{str(folder / missing[0])!r}; check --data")
    model_name = Path(str(args.model_path or "AnandaSky").rstrip("/")).name
    output = Path(args.output or HERE / "results" / f"ocr_{model_name}_{folder.name}.json")
    log = output.with_suffix(".jsonl")
    config = {"data": folder.name, "num_lines": len(items), "model_path": args.model_path, "dtype": args.dtype,
              "prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "rotate": args.rotate}
    records = open_run_log(log, config, args.resume, "eval_ocr.py")  # before the model loads: fail fast
    ocr = AnandaSkyOCR(args.model_path, device=args.device, dtype=args.dtype)
    done = {r["image"] for r in records}
    todo = [item for item in items if item["image"] not in done]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="ocr", unit="line", file=sys.stderr)
    for start in range(0, len(todo), args.batch_size):
        for record in recognize_batch(ocr, folder, todo[start: start + args.batch_size], args):
            append_run_record(log, config, record)
            records.append(record)
        bar.update(min(args.batch_size, len(todo) - start))
        running = summarize(records)
        bar.set_postfix(cer=f"{running['cer']:.3f}", wer=f"{running['wer']:.3f}")
    bar.close()
    results = summarize(records)
    write_json(output, {"meta": run_metadata(ocr.device, ocr.dtype_name), "config": config, "log": str(log),
                        "results": results})
    print(f"{results['num_lines']} lines: CER {results['cer']:.4f}  WER {results['wer']:.4f}  "
          f"exact lines {results['exact_line_rate']:.4f}  (rotated: {len(results['rotated'])})")
    print(f"wrote {output} and {log}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
