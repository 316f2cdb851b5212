"""Character and word error rate of AnandaSky on a folder of text-line images with a `labels.tsv`, resumable.

    python eval_ocr.py --model_path models/AnandaSky --data ../../shared/data/ocr/uw3_500/
    python eval_ocr.py --model_path models/AnandaSky --data ../../shared/data/ocr/uw3_500/ --limit 50 --resume
    python eval_ocr.py --model_path test_checkpoint --data ../../shared/data/ocr/uw3_500/ --limit 8   # pipeline only

Data: `labels.tsv` with a header `image<TAB>text`, image paths relative to the folder (the layout of
`shared/data/ocr/uw3_500/`: 500 printed English lines). One of those images is rotated 90 degrees (the text runs
bottom to top); with `--rotate auto` (default) an image more than twice as tall as it is wide is turned clockwise
before recognition, and the sample records that it was.

Scoring: both sides are stripped and runs of whitespace become one space (the transcriptions keep line-end hyphens,
so nothing else is changed). CER = total character edits (Levenshtein) / total reference characters; WER the same
over space-separated words; both are corpus-level (long lines weigh more), and the mean per-line CER and the share of
exactly recognised lines are reported beside them, and a 95% bootstrap interval of the corpus CER over lines (two
CERs whose intervals overlap are not shown to differ by this sample). The headline is the CER in percent. Every line
is appended to a JSONL log as it finishes; --resume continues that log (a torn last line from a crash is dropped),
so nothing is lost or counted twice. The log is --output with the suffix .jsonl (an --output ending in .jsonl is
refused: the summary would overwrite the log). Before the model loads, every listed image is opened and verified
(missing, non-image, oversized), the prompt's length checked against the context and both outputs probed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.device import dtype_name, resolve_device, resolve_dtype
from common.cli import ArgumentParser, UserError, positive_int, run_main
from common.results import append_run_record, check_outputs, open_run_log, result_path, result_record, write_json
from common.textio import read_text_file
from inference import (DEFAULT_PROMPT, AnandaSkyOCR, add_model_args, check_image, check_lengths, load_processor,
                       read_image, resolve_folder)

HERE = Path(__file__).resolve().parent
BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 1000, 0  # the CER interval: resampled line sets, seeded (same data, same interval)
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


def cer_interval(samples: list[dict]) -> dict | None:
    """95% bootstrap interval of the corpus CER: lines resampled with replacement, CER of each resample."""
    if len(samples) < 2:
        return None
    errors = np.array([s["char_errors"] for s in samples], dtype=np.float64)
    chars = np.array([s["ref_chars"] for s in samples], dtype=np.float64)
    picks = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(samples), (BOOTSTRAP_SAMPLES, len(samples)))
    cers = errors[picks].sum(1) / np.maximum(chars[picks].sum(1), 1)
    return {"low": float(np.percentile(cers, 2.5)), "high": float(np.percentile(cers, 97.5))}


def summarize(samples: list[dict]) -> dict:
    """Corpus-level CER/WER (edits over reference length) with the CER's bootstrap interval, plus the mean per-line
    CER and the exact-line rate."""
    n = len(samples)
    chars, words = sum(s["ref_chars"] for s in samples), sum(s["ref_words"] for s in samples)
    return {"num_lines": n,
            "cer": sum(s["char_errors"] for s in samples) / max(chars, 1), "cer_ci95": cer_interval(samples),
            "wer": sum(s["word_errors"] for s in samples) / max(words, 1),
            "cer_line_mean": sum(s["char_errors"] / max(s["ref_chars"], 1) for s in samples) / max(n, 1),
            "exact_line_rate": sum(s["exact"] for s in samples) / max(n, 1),
            "ref_chars": chars, "ref_words": words,
            "rotated": [s["image"] for s in samples if s["rotated"]]}


# --- data ---------------------------------------------------------------------------------------------------------

def load_labels(data: str) -> tuple[Path, list[dict]]:
    """(folder, [{"image", "text"}]) from `<data>/labels.tsv`; one-line errors for a missing or malformed file.
    Split by hand, not with csv: a field has no length limit (csv stops at 128 KB) and no quoting; blank lines are
    skipped."""
    folder = Path(data).expanduser()
    labels = folder / "labels.tsv"
    if not labels.is_file():
        raise UserError(f"--data {data!r} has no labels.tsv; pass a folder holding labels.tsv (image<TAB>text) and "
                        "its images, e.g. --data ../../shared/data/ocr/uw3_500/")
    lines = read_text_file(labels, "labels file").split("\n")
    rows = [(number, line.rstrip("\r").split("\t")) for number, line in enumerate(lines, 1) if line.strip()]
    if not rows or [c.strip().lower() for c in rows[0][1][:2]] != ["image", "text"]:
        raise UserError(f"{labels} must start with the header line 'image<TAB>text'")
    items = []
    for number, row in rows[1:]:
        if len(row) != 2 or not row[0].strip():
            raise UserError(f"{labels} line {number} is not 'image<TAB>text' (it has {len(row)} tab-separated "
                            "field(s)); fix that line")
        items.append({"image": row[0], "text": row[1]})
    if not items:
        raise UserError(f"{labels} lists no images")
    return folder, items


def check_line_images(folder: Path, items: list[dict]) -> list[tuple[int, int]]:
    """(width, height) of every listed image, each opened and verified without decoding (cheap), so a missing,
    non-image or oversized file fails before the model loads, not 400 lines into the run."""
    missing = [item["image"] for item in items if not (folder / item["image"]).is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) listed in {folder / 'labels.tsv'} do not exist, the first: "
                        f"{str(folder / missing[0])!r}; check --data")
    return [check_image(folder / item["image"]) for item in items]


def load_line_image(path: Path, rotate: str):
    """(RGB PIL image, rotated?) A vertical line (height > ROTATE_ASPECT × width) is turned clockwise under
    --rotate auto: the one rotated uw3_500 image reads bottom to top."""
    image = read_image(path)  # one-line errors for missing, truncated and non-image files
    if rotate == "auto" and image.height > ROTATE_ASPECT * image.width:
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
    parser.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--max_new_tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--rotate", choices=["auto", "none"], default="auto",
                        help="auto: turn vertical lines clockwise (default)")
    parser.add_argument("--output", default=None,
                        help="summary JSON (default results/task_<model>_<device>_<dtype>_ocr_<data>.json)")
    parser.add_argument("--resume", action="store_true", help="continue the JSONL log of an interrupted run")
    return parser


def main(args) -> int:
    folder, all_items = load_labels(args.data)
    items = all_items[: args.limit] if args.limit else all_items
    sizes = check_line_images(folder, items)
    model = resolve_folder(args.model_path)
    check_lengths(load_processor(model), sizes, args.prompt, args.max_new_tokens)  # the context, before loading
    device = resolve_device(args.device)  # resolved before the model loads: a bad device fails at once
    output = result_path(args.output, HERE, "task", model, device, dtype_name(resolve_dtype(args.dtype, device)),
                         f"_ocr_{folder.name}{'_remote_code' if args.remote_code else ''}")
    log = output.with_suffix(".jsonl")
    # both before the model loads; `--output x.jsonl` would make the summary overwrite its own log: refused
    check_outputs({"--output": output, "the per-sample log beside --output": log})
    config = {"data": folder.name, "num_lines": len(items), "model_path": args.model_path, "dtype": args.dtype,
              "prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "rotate": args.rotate,
              "remote_code": args.remote_code}  # a resumed run must use the same modeling code
    records = open_run_log(log, config, args.resume, "eval_ocr.py")  # before the model loads: fail fast
    ocr = AnandaSkyOCR(model, device=args.device, dtype=args.dtype, remote_code=args.remote_code)
    run_lines(ocr, folder, items, records, lambda record: append_run_record(log, config, record), args)
    results = summarize(records)
    subset = f" (first {len(items)} of {len(all_items)} lines)" if len(items) < len(all_items) else ""
    headline = {"metric": f"CER % on {folder.name}{subset}", "value": 100 * results["cer"]}
    write_json(output, result_record("task", device=ocr.device, dtype=ocr.dtype_name, model=model, headline=headline,
                                     config=config, log=str(log), results=results, **ocr.describe()))
    interval = results["cer_ci95"]
    print(f"{results['num_lines']} lines: CER {results['cer']:.4f}"
          + (f" (95% CI {interval['low']:.4f}-{interval['high']:.4f})" if interval else "")
          + f"  WER {results['wer']:.4f}  exact lines {results['exact_line_rate']:.4f}  "
          f"(rotated: {len(results['rotated'])})")
    print(f"wrote {output} and {log}")
    return 0


def run_lines(ocr: AnandaSkyOCR, folder: Path, items: list[dict], records: list[dict], save, args) -> None:
    """Recognise the lines not yet in `records`, batch by batch, saving and appending each record, under a progress
    bar. The bar is closed (its line ended) whatever happens, so an error message starts on a line of its own."""
    done = {r["image"] for r in records}
    todo = [item for item in items if item["image"] not in done]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="ocr", unit="line", file=sys.stderr)
    try:
        for start in range(0, len(todo), args.batch_size):
            for record in recognize_batch(ocr, folder, todo[start: start + args.batch_size], args):
                save(record)
                records.append(record)
            bar.update(min(args.batch_size, len(todo) - start))
            running = summarize(records)
            bar.set_postfix(cer=f"{running['cer']:.3f}", wer=f"{running['wer']:.3f}")
    finally:
        bar.close()


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
