"""Readme tables and RESULTS.md, generated from the result JSONs, so no figure is typed by hand.

    accel-ports report all-MiniLM-L6-v2            # rewrite that folder's readme tables in place
    accel-ports report all-MiniLM-L6-v2 --check    # exit 1 if the readme is out of date (for CI)
    accel-ports report --overview                  # rewrite RESULTS.md at the repository root
    accel-ports report --all [--check]             # every model folder's readme, then RESULTS.md

A table is declared in the readme by a marker holding JSON, and everything up to the end marker is regenerated:

    <!-- results {"files": "results/parity_*.json", "cols": [["meta.device_name", "Device"], ["x", "X", ".2e"]]} -->
    <!-- end results -->

"files" is a glob relative to the folder, one row per file; with "rows": "key" each file gives one row per item
of that list. A column key is dotted ("ours.p50_ms"; "spearman_ci95.0" for a list's item), looked up in the row
and then in the file's top level; the optional third item is a format spec ("verdict" renders a boolean as
PASS/FAIL). "where" ({"key": value}) filters rows; "has": "key" keeps only the files that have that (dotted,
top-level) key, for a section only some runs write (a parity run's --trace_ops). A key that is in neither place is
an error naming the file and the key (a typo must not render as "–"); a JSON null, or a null on the way down a
dotted key, renders "–". Under each table a line names the source files with the command, device, dtype, date and
torch version recorded in them.

RESULTS.md has one row per model folder x model x device x dtype, built from the `headline` of every result record
(common.results.result_record): the parity verdict, the task metric, the speed ratio against the peer, the device,
the date and whether the weights were real or a test checkpoint.
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from common.cli import ArgumentParser, UserError, run_main
from common.porting.folders import REPO_ROOT, model_folders
from common.results import RESULT_KINDS, model_tag

MARKER = re.compile(r"<!-- results (\{.*?\}) -->\n.*?<!-- end results -->", re.S)
MISSING = object()
OVERVIEW_FILE = "RESULTS.md"


def lookup(obj, dotted: str):
    """obj["a"]["b"] for "a.b"; MISSING when a key is absent, None when a value on the way is null."""
    for part in dotted.split("."):
        if obj is None:
            return None
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]  # "spearman_ci95.0": an item of a list
        else:
            return MISSING
    return obj


def format_cell(value, spec: str | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        if spec == "verdict":
            return "PASS" if value else "FAIL"
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and spec:
        return format(value, spec)
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value).replace("|", "\\|")


def _rows_of(doc: dict, rows_key: str | None, file: Path) -> list[dict]:
    if not rows_key:
        return [doc]
    items = lookup(doc, rows_key)
    if not isinstance(items, list):
        raise UserError(f"{file}: the marker's \"rows\" key {rows_key!r} is not a list in this file")
    return items


def _value(row: dict, doc: dict, key: str, file: Path):
    value = lookup(row, key)
    value = lookup(doc, key) if value is MISSING else value
    if value is MISSING:
        raise UserError(f"{file}: a readme results marker names the key {key!r}, which this file does not have; "
                        "fix the marker, or rerun the script that writes the file")
    return value


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not valid JSON ({exc}); rerun the script that writes it") from None


def _has(doc: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return False
        doc = doc[part]
    return True


def render_table(folder: Path, spec: dict) -> str:
    files = sorted(folder.glob(spec["files"]))
    if spec.get("has"):
        files = [file for file in files if _has(_read_json(file), spec["has"])]
    header = [c[1] for c in spec["cols"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sources = []
    for file in files:
        doc = _read_json(file)
        for row in _rows_of(doc, spec.get("rows"), file):
            if any(_value(row, doc, k, file) != v for k, v in spec.get("where", {}).items()):
                continue
            cells = [format_cell(_value(row, doc, col[0], file), col[2] if len(col) > 2 else None)
                     for col in spec["cols"]]
            lines.append("| " + " | ".join(cells) + " |")
        meta = doc.get("meta", {})
        sources.append(f"`{file.relative_to(folder)}` (`{meta.get('command', '?')}`; {meta.get('device_name', '?')}, "
                       f"{meta.get('dtype', '?')}, {str(meta.get('date_utc', '?'))[:10]}, "
                       f"torch {meta.get('versions', {}).get('torch', '?')})")
    if not files:
        lines.append("| " + " | ".join(["(no result file yet)"] + [""] * (len(header) - 1)) + " |")
    source_text = "; ".join(sources) if sources else f"no file matches `{spec['files']}`"
    return "\n".join(lines) + f"\n\n<sub>Generated by `accel-ports report` from {source_text}.</sub>\n"


def render_readme(folder: Path) -> str:
    readme = folder / "readme.md"
    text = readme.read_text(encoding="utf-8")

    def replace(match: re.Match) -> str:
        try:
            spec = json.loads(match.group(1))
        except ValueError as exc:
            raise UserError(f"{readme}: a results marker is not valid JSON ({exc})") from None
        return f"<!-- results {match.group(1)} -->\n{render_table(folder, spec)}<!-- end results -->"

    return MARKER.sub(replace, text)


# --- RESULTS.md ---------------------------------------------------------------------------------------------------

def result_records(folder: Path) -> list[tuple[Path, dict]]:
    """The folder's result records (kind parity/task/benchmark). Files of other declared kinds (an estimate, say)
    are skipped; a JSON without a kind is an error, so nothing silently drops out of the overview."""
    records = []
    for file in sorted((folder / "results").glob("*.json")):
        doc = _read_json(file)
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind is None:
            raise UserError(f"{file} has no \"kind\": every result JSON must be a common.results.result_record; "
                            "rerun the script that writes it")
        if kind in RESULT_KINDS:
            records.append((file, doc))
    return records


def _headline_text(kind: str, headline: dict) -> str:
    if kind == "parity":
        return "PASS" if headline.get("passed") else "FAIL"
    if kind == "task":
        value = headline.get("value")
        return f"{headline.get('metric')}: {'not scored' if value is None else format(value, '.4g')}"
    ratio = headline.get("ratio")
    return (f"×{ratio:.2f} {headline.get('metric')} vs {headline.get('peer')}" if ratio is not None
            else f"{headline.get('metric')} (no peer run)")


def _group_cells(entries: dict) -> list[str]:
    cells = []
    for kind in RESULT_KINDS:
        texts = entries.get(kind, [])
        if kind == "parity" and texts:
            failed = sum(t == "FAIL" for t in texts)
            cells.append("PASS" if not failed else f"FAIL ({failed} of {len(texts)} runs)")
        else:
            cells.append("; ".join(dict.fromkeys(texts)) or "–")
    return cells


def overview_rows(root: Path) -> list[list[str]]:
    groups: dict[tuple, dict] = defaultdict(lambda: {"entries": defaultdict(list), "dates": [], "files": []})
    for folder in model_folders(root):
        for file, doc in result_records(folder):
            meta = doc.get("meta", {})
            model = model_tag(doc["model"]) if doc.get("model") else "–"
            if doc.get("weights") == "test checkpoint":
                model = "test checkpoint"
            key = (folder.name, model, doc.get("weights", "?"), meta.get("device_name", "?"), meta.get("dtype", "?"))
            group = groups[key]
            text = _headline_text(doc["kind"], doc.get("headline", {}))
            if doc.get("compiled") is True and "compile" not in text:  # an eager and a compiled run side by side
                text += " (torch.compile)"
            group["entries"][doc["kind"]].append(text)
            group["dates"].append(str(meta.get("date_utc", "?"))[:10])
    rows = []
    for (folder, model, weights, device, dtype), group in sorted(groups.items()):
        rows.append([f"[{folder}]({folder}/readme.md)", model, weights, device, dtype,
                     *_group_cells(group["entries"]), max(group["dates"])])
    return rows


def render_overview(root: Path = REPO_ROOT) -> str:
    header = ["folder", "model", "weights", "device", "dtype", "parity vs CPU fp32", "task", "speed vs peer",
              "date"]
    lines = ["# Results overview", "",
             "Generated by `accel-ports report --overview` from every model folder's `results/*.json`; do not "
             "edit by hand. One row per folder, model, device and dtype. \"test checkpoint\" rows ran on random "
             "weights built by the repository: they prove the code path, not the model's quality. Each figure's "
             "command, versions and details are in the folder's readme and JSON files.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in overview_rows(root)]
    return "\n".join(lines) + "\n"


# --- command line -------------------------------------------------------------------------------------------------

def _update(path: Path, new: str, check: bool, fix: str) -> int:
    if check:
        if not path.is_file() or new != path.read_text(encoding="utf-8"):
            print(f"{path} is out of date: run {fix}", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    print(f"rewrote {path}")
    return 0


def main(args) -> int:
    if not (args.folder or args.overview or args.all):
        raise UserError("name a model folder, or pass --overview or --all")
    folders = model_folders(args.root) if args.all else ([args.folder] if args.folder else [])
    status = 0
    for folder in folders:
        readme = folder / "readme.md"
        if not readme.is_file():
            raise UserError(f"{readme} does not exist")
        status |= _update(readme, render_readme(folder), args.check, f"accel-ports report {folder}")
    if args.overview or args.all:
        status |= _update(Path(args.root) / OVERVIEW_FILE, render_overview(Path(args.root)), args.check,
                          "accel-ports report --overview")
    return status


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, nargs="?", help="model folder holding readme.md and results/")
    p.add_argument("--overview", action="store_true", help=f"rewrite {OVERVIEW_FILE} from every folder's results")
    p.add_argument("--all", action="store_true", help=f"every model folder's readme, then {OVERVIEW_FILE}")
    p.add_argument("--check", action="store_true", help="exit 1 if a file is not what the JSONs give; write nothing")
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    return p


def cli(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return run_main(main, args)


if __name__ == "__main__":
    sys.exit(cli())
