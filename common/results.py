"""Result files: atomic JSON with run metadata, crash-safe JSONL logs.

Every number in a readme comes from one of these files, so each carries what is needed to reproduce it: the
command, the git commit, the date, the device name, the dtype and the library versions.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata as _metadata
from pathlib import Path

import torch

from common.cli import UserError
from common.device import device_name

LIBRARIES = ("torch", "transformers", "sentence-transformers", "torch_npu", "numpy", "tokenizers")


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD's hash, with '-dirty' when tracked files other than result files have uncommitted changes (refreshing
    several results in a row must not mark the later ones dirty); None outside a checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude,glob)**/results/**"], cwd=cwd, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(device=None, dtype: str | None = None, argv: list[str] | None = None) -> dict:
    """What produced a result: command line, commit, UTC date, machine, device, dtype, versions, threads."""

    argv = list(sys.argv if argv is None else argv)
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in argv),
        "git_commit": git_commit(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "device": None if device is None else str(device),
        "device_name": None if device is None else device_name(device),
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "versions": library_versions(),
    }


def check_writable(path: str | os.PathLike, flag: str = "--output") -> None:
    """Refuse an output path that cannot be written (UserError naming `flag`), before the long work starts."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    _check_can_create(path.parent, path, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} exists and is read-only; choose another path or make it writable")


def check_output_folder(path: str | os.PathLike, flag: str = "--output") -> None:
    """Refuse a folder to write into that is a file or cannot be created or written, before the work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; pass a folder to write into")
    _check_can_create(path, path, flag)


def _check_can_create(folder: Path, path: Path, flag: str) -> None:
    """`folder` (made later if absent) can hold new files: its nearest existing ancestor is a writable folder."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not _can_create_in(existing):
        raise UserError(f"{flag} {path}: {existing} is not a writable folder; choose another path")


def _can_create_in(folder: Path) -> bool:
    """Create and remove a probe file: os.access says yes to root for read-only mounts and for /proc."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_outputs(outputs: dict[str, str | os.PathLike]) -> None:
    """Check every file a run will write, before the run: each writable, and no two the same file (a summary must
    never overwrite its own per-sample log, a plot never its JSON). `outputs` maps a description ("--output",
    "the plot beside --output") to the path."""
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        check_writable(path, name)
        resolved = Path(os.path.abspath(path))
        if resolved in seen:
            raise UserError(f"{name} {path} is the same file as {seen[resolved]}; one would overwrite the other, so "
                            "choose another name (e.g. end --output in .json)")
        seen[resolved] = name


def check_result_outputs(output, plot: bool = True) -> None:
    """The result JSON and its PNG beside it: each writable and not the same file (`--output x.png` would have the
    plot overwrite the JSON), checked before any model loads."""
    output = Path(output)
    outputs = {"--output": output}
    if plot:
        outputs["the plot beside --output"] = output.with_suffix(".png")
    check_outputs(outputs)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w"):
    """`with atomic_file(path, "w" or "wb") as f:` a file object on a uniquely named temp file beside `path`,
    fsynced and renamed over `path` when the block ends, deleted when it fails: a failed save leaves neither half a
    file at `path` nor a temp file beside it, and an earlier result stays intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file should follow the umask like open()
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write JSON atomically (atomic_file); NaN and inf are refused, as JSON has no such values."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    return Path(path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out, save and close a matplotlib figure; written to a temp name and renamed, like write_json, so a
    crash never leaves half a PNG beside its JSON."""
    import matplotlib.pyplot as plt  # matplotlib only when a plot is asked for

    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written temp file behind
        raise
    finally:
        plt.close(fig)
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as a line and fsync, so a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL log for resuming. A torn last line (crash mid-write) is dropped; corruption elsewhere is an
    error, and the file is left untouched so nothing is lost."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_bytes().split(b"\n")  # bytes: a torn tail may end inside a multi-byte UTF-8 character
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number == len(lines):  # the last piece has no newline: torn by a crash mid-write, drop it
                break
            raise UserError(f"{path} line {number} is not valid JSON; fix or move the file away, then rerun "
                            "(it was not modified)") from None
    return records


def open_run_log(path: str | os.PathLike, config: dict, resume: bool, writer: str) -> list[dict]:
    """Check a per-sample JSONL log whose first line is the run's config, before any work; returns the sample
    records already there. Resuming needs --resume and the same config; a torn last line from a crash is cut off so
    appends start on a fresh line. Any refusal leaves the file untouched. A new log is not created here but by the
    first `append_run_record`, so a run that fails before its first sample (a bad device, a missing model) leaves
    nothing behind that a rerun would have to --resume. `writer` names the script in messages."""
    path = Path(path)
    if path.exists() and path.stat().st_size > 0:
        if not resume:
            raise UserError(f"sample log {str(path)!r} exists; pass --resume to continue it, or move it away")
        records = read_jsonl(path)
        if not records or records[0].get("type") != "config":
            raise UserError(f"{str(path)!r} is not a log written by {writer} (no config line); it was not modified")
        if records[0]["config"] != config:
            diff = sorted(k for k in config if records[0]["config"].get(k) != config[k])
            raise UserError(f"cannot resume {str(path)!r}: it was run with different settings ({', '.join(diff)}); "
                            "it was not modified")
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        return [r for r in records[1:] if r.get("type") == "sample"]
    return []


def append_run_record(path: str | os.PathLike, config: dict, record: dict) -> None:
    """Append one sample to a log checked by `open_run_log`, writing the config line first if the log is new."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        append_jsonl(path, {"type": "config", "config": config})
    append_jsonl(path, record)


# --- typed result records: what `python -m common.report --overview` reads ------------------------------------------
# Every result JSON a script writes has the same top: meta (how it was produced), kind, model, weights and headline.
# The headline is the one figure the overview (RESULTS.md) shows for that kind:
#   parity:    {"passed": bool}
#   task:      {"metric": "STS-B Spearman x100", "value": float | None}      (None: not scored, e.g. NaN outputs)
#   benchmark: {"metric": "texts/s at batch 32", "peer": "SentenceTransformer.encode", "ratio": float | None}
RESULT_KINDS = ("parity", "task", "benchmark")
TEST_CHECKPOINT_MARKER = "test_checkpoint.json"  # written into every random-weight checkpoint the repository builds


def mark_test_checkpoint(folder: str | os.PathLike, **info) -> None:
    """Label a checkpoint folder as random test weights, so results measured on it say so (never 'real')."""
    write_json(Path(folder) / TEST_CHECKPOINT_MARKER, {"random_weights": True, **info})


def weights_kind(model: str | os.PathLike | None) -> str:
    """'test checkpoint' for a folder the repository built with random weights, otherwise 'real'."""
    if model is None:
        return "real"
    path = Path(model)
    folder = path if path.is_dir() else path.parent
    return "test checkpoint" if (folder / TEST_CHECKPOINT_MARKER).exists() else "real"


def model_tag(model: str | os.PathLike) -> str:
    """A short, file-name-safe name for a model: 'test_checkpoint' for the repository's random checkpoints, the repo
    name for a hub cache snapshot (models--org--name/snapshots/<hash>), otherwise the folder or file stem."""
    if weights_kind(model) == "test checkpoint":
        return "test_checkpoint"
    path = Path(model)
    for part in reversed(path.parts):
        if part.startswith("models--"):
            return part.split("--")[-1]
    name = path.stem if path.suffix in (".gguf", ".bin", ".safetensors") else path.name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def default_result_path(folder: str | os.PathLike, kind: str, model, device, dtype: str, suffix: str = "") -> Path:
    """<folder>/results/<kind>_<model tag>_<device type>_<dtype><suffix>.json: runs on another model, device or
    dtype never overwrite each other; rerunning the same one refreshes its file."""
    device_type = getattr(device, "type", str(device))
    return Path(folder) / "results" / f"{kind}_{model_tag(model)}_{device_type}_{dtype}{suffix}.json"


def result_path(output, folder: str | os.PathLike, kind: str, model, device, dtype: str, suffix: str = "") -> Path:
    """Where a script writes its result JSON: --output when given, else default_result_path under FOLDER/results/.
    One planner for every script, so a default name never depends on which script wrote it."""
    return Path(output) if output else default_result_path(folder, kind, model, device, dtype, suffix)


def result_record(kind: str, *, device, dtype: str, model, headline: dict, **body) -> dict:
    """The JSON-ready record of one result: meta, kind, model, weights, headline, then the script's own fields."""
    if kind not in RESULT_KINDS:
        raise ValueError(f"unknown result kind {kind!r}; use one of {RESULT_KINDS}")
    return {"meta": run_metadata(device, dtype), "kind": kind, "model": None if model is None else str(model),
            "weights": weights_kind(model), "headline": headline, **body}
