"""common.errors, textio, results, timing, model_path and report: everything that touches files, argv or stderr."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common import model_path as mp
from common import report, timing
from common.device import device_name
from common.errors import ArgumentParser, UserError, non_negative_int, positive_int, run_main
from common.results import append_jsonl, read_jsonl, run_metadata, write_json
from common.textio import read_lines
from common.timing import Stopwatch, summarize, time_calls

CPU = torch.device("cpu")
REPO_ROOT = Path(__file__).resolve().parent.parent


# === errors.py ==============================================================================================


def test_argument_parser_error_is_one_line_exit_2(capsys):
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--n", type=positive_int, required=True)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n", "0"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "must be >= 1, got 0" in lines[0]
    assert "usage:" not in captured.err


def test_argument_parser_unknown_flag(capsys):
    parser = ArgumentParser(prog="tool")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--bogus" in err


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.5", ""])
def test_positive_int_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)


def test_positive_and_non_negative_int_accept():
    assert positive_int("1") == 1
    assert positive_int("42") == 42
    assert non_negative_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        non_negative_int("-1")
    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        non_negative_int("two")


def test_run_main_user_error(capsys):
    def main(args):
        raise UserError(f"bad thing with {args[0]}; fix it")

    assert run_main(main, ["x.txt"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: bad thing with x.txt; fix it\n"
    assert captured.out == ""


def test_run_main_passes_codes_and_args(capsys):
    seen = []
    assert run_main(lambda args: seen.append(args), ["a"]) == 0  # None -> 0
    assert seen == [["a"]]
    assert run_main(lambda args: 3, []) == 3
    assert run_main(lambda args: 0, []) == 0
    assert capsys.readouterr().err == ""


def test_run_main_keyboard_interrupt_and_bugs(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    assert run_main(interrupted, []) == 130
    assert capsys.readouterr().err == "interrupted\n"

    def buggy(args):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):  # programming errors keep their traceback
        run_main(buggy, [])


# === textio.py ==============================================================================================


def test_read_lines_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist; check the path") as info:
        read_lines(tmp_path / "absent.txt")
    assert "absent.txt" in str(info.value)


def test_read_lines_directory(tmp_path):
    with pytest.raises(UserError, match="is a folder, not a file"):
        read_lines(tmp_path)


@pytest.mark.parametrize("content", [b"", b"   \n\t\n\n", b"\r\n\r\n"])
def test_read_lines_empty(tmp_path, content):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is empty") as info:
        read_lines(path, what="--input file")
    assert str(info.value).startswith("--input file ")


@pytest.mark.parametrize("raw, offset", [(b"\xff\xfe\x00bad", 0), ("caf\xe9\n".encode("latin-1"), 3)])
def test_read_lines_not_utf8(tmp_path, raw, offset):
    path = tmp_path / "in.txt"
    path.write_bytes(raw)
    with pytest.raises(UserError) as info:
        read_lines(path)
    message = str(info.value)
    assert "not valid UTF-8" in message
    assert f"offset {offset}" in message
    assert "iconv" in message  # says how to fix it
    assert "\n" not in message


def test_read_lines_skips_and_counts_blank_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("first\n\n   second  \n\t\nthird\n\n", encoding="utf-8")
    assert read_lines(path) == (["first", "second", "third"], 3)


def test_read_lines_crlf_and_no_trailing_newline(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\r\nb\r\nc")
    assert read_lines(path) == (["a", "b", "c"], 0)


def test_read_lines_strips_bom(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffcaf\u00e9\nna\u00efve\n".encode("utf-8"))
    texts, blanks = read_lines(str(path))
    assert texts == ["caf\u00e9", "na\u00efve"]
    assert not texts[0].startswith("\ufeff")
    assert blanks == 0


# === results.py =============================================================================================


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_write_json_atomic(tmp_path):
    target = tmp_path / "sub" / "result.json"  # the parent folder is created
    obj = {"name": "caf\u00e9", "x": 1.5, "rows": [1, 2, 3], "none": None}
    assert write_json(target, obj) == target
    assert json.loads(target.read_text(encoding="utf-8")) == obj
    assert "caf\u00e9" in target.read_text(encoding="utf-8")  # not escaped
    assert target.read_text(encoding="utf-8").endswith("}\n")
    assert _leftovers(target.parent, {"result.json"}) == []

    write_json(target, {"x": 2})  # overwrite
    assert json.loads(target.read_text(encoding="utf-8")) == {"x": 2}
    assert _leftovers(target.parent, {"result.json"}) == []


@pytest.mark.parametrize("bad, error", [({"x": float("nan")}, ValueError), ({"x": float("inf")}, ValueError),
                                        ({"x": {1, 2}}, TypeError)])
def test_write_json_failure_keeps_previous_file(tmp_path, bad, error):
    target = tmp_path / "result.json"
    write_json(target, {"good": True})
    before = target.read_bytes()
    with pytest.raises(error):
        write_json(target, bad)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, {"result.json"}) == []


def test_write_json_nan_leaves_no_file_when_none_existed(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", [float("nan")])
    assert list(tmp_path.iterdir()) == []


def test_write_json_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "r.json"
        write_json(target, {"x": 1})
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_append_and_read_jsonl_roundtrip(tmp_path):
    path = tmp_path / "logs" / "run.jsonl"
    assert read_jsonl(path) == []  # absent log: nothing to resume
    records = [{"i": i, "text": f"na\u00efve {i}", "v": [i * 0.5]} for i in range(4)]
    for record in records:
        append_jsonl(path, record)
    raw = path.read_text(encoding="utf-8")
    assert raw.count("\n") == 4 and raw.endswith("\n")
    assert read_jsonl(path) == records


def test_append_jsonl_rejects_nan_without_writing(tmp_path):
    path = tmp_path / "run.jsonl"
    append_jsonl(path, {"i": 0})
    with pytest.raises(ValueError):
        append_jsonl(path, {"i": 1, "v": float("nan")})
    assert read_jsonl(path) == [{"i": 0}]


def test_read_jsonl_drops_torn_last_line(tmp_path):
    path = tmp_path / "run.jsonl"
    append_jsonl(path, {"i": 0})
    append_jsonl(path, {"i": 1})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"i": 2, "te')  # the crash happened here
    before = path.read_bytes()
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]
    assert path.read_bytes() == before


def test_read_jsonl_corrupt_middle_line(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"i": 0}\n{"i": 1, oops\n{"i": 2}\n', encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"line 2 is not valid JSON") as info:
        read_jsonl(path)
    assert "not modified" in str(info.value)
    assert path.read_bytes() == before


def test_read_jsonl_complete_but_corrupt_last_line_is_an_error(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"i": 0}\n{"i": 1, oops\n', encoding="utf-8")  # ends with a newline: not torn
    with pytest.raises(UserError, match="line 2"):
        read_jsonl(path)


def test_read_jsonl_torn_inside_multibyte_char(tmp_path):
    path = tmp_path / "run.jsonl"
    append_jsonl(path, {"i": 0})
    line = json.dumps({"i": 1, "text": "\u00fc"}, ensure_ascii=False).encode("utf-8")
    cut = line.index(b"\xc3") + 1  # half of the two-byte '\u00fc'
    with open(path, "ab") as f:
        f.write(line[:cut])
    assert read_jsonl(path) == [{"i": 0}]


def test_run_metadata():
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    meta = run_metadata(CPU, "fp32", argv=["bench.py", "--input", "my file.txt"])
    after = dt.datetime.now(dt.timezone.utc)
    for key in ("command", "git_commit", "date_utc", "device_name", "dtype", "versions", "torch_threads"):
        assert key in meta, key
    assert meta["command"] == "python bench.py --input 'my file.txt'"
    assert meta["device"] == "cpu"
    assert meta["device_name"] == device_name(CPU)
    assert meta["dtype"] == "fp32"
    assert meta["torch_threads"] == torch.get_num_threads()
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["numpy"] == np.__version__
    assert meta["versions"]["torch_npu"] is None or isinstance(meta["versions"]["torch_npu"], str)
    date = dt.datetime.fromisoformat(meta["date_utc"])
    assert date.utcoffset() == dt.timedelta(0)
    assert before <= date <= after
    if (REPO_ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", meta["git_commit"]), meta["git_commit"]
    json.dumps(meta, allow_nan=False)  # must be writable by write_json


def test_run_metadata_without_device():
    meta = run_metadata(argv=["x.py"])
    assert meta["device"] is None and meta["device_name"] is None and meta["dtype"] is None
    assert meta["command"] == "python x.py"


# === timing.py ==============================================================================================


def test_summarize_known_samples():
    samples = [0.010, 0.002, 0.003, 0.001, 0.005, 0.004, 0.009, 0.006, 0.008, 0.007, 0.050]
    ms = np.array(samples) * 1e3
    s = summarize(iter(samples))  # any iterable
    assert s["n"] == 11
    assert s["mean_ms"] == pytest.approx(ms.mean())
    assert s["p50_ms"] == pytest.approx(6.0)
    assert s["p50_ms"] == pytest.approx(np.percentile(ms, 50))
    assert s["p90_ms"] == pytest.approx(np.percentile(ms, 90))
    assert s["p99_ms"] == pytest.approx(np.percentile(ms, 99))
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(50.0)
    assert summarize([]) == {"n": 0}


def test_stopwatch_measures_and_syncs(monkeypatch):
    syncs = []
    monkeypatch.setattr(timing, "synchronize", lambda device: syncs.append(device))
    sw = Stopwatch(CPU)
    assert np.isnan(sw.seconds)
    with sw as inside:
        assert inside is sw
        time.sleep(0.02)
    assert 0.02 <= sw.seconds < 1.0
    assert syncs == [CPU, CPU]  # before and after


def test_time_calls_counts_and_skips_warmup():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= 2:
            time.sleep(0.05)  # slow warm-up calls must not be timed

    samples = time_calls(fn, CPU, warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(samples) == 3
    assert all(0 <= s < 0.04 for s in samples)

    calls.clear()
    assert len(time_calls(fn, CPU, warmup=0, repeats=1)) == 1
    assert len(calls) == 1


# === model_path.py ==========================================================================================


def _tiny_safetensors(folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return folder


@pytest.mark.parametrize("spec", ["./nope", "nope", "a/b/c", "/definitely/not/here"])
def test_model_path_missing_folder(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        mp.resolve_model_path(spec)


def test_model_path_is_a_file(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        mp.resolve_model_path(str(file))


def test_model_path_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match="has no weights"):
        mp.resolve_model_path(str(tmp_path))


def test_model_path_garbage_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt") as info:
        mp.resolve_model_path(str(tmp_path))
    assert "model.safetensors" in str(info.value)


def test_model_path_truncated_safetensors(tmp_path):
    _tiny_safetensors(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # an interrupted download
    with pytest.raises(UserError, match="corrupt or truncated"):
        mp.resolve_model_path(str(tmp_path))


def test_model_path_valid_tiny_safetensors(tmp_path):
    folder = _tiny_safetensors(tmp_path / "tiny")
    assert mp.resolve_model_path(str(folder)) == folder
    assert mp.check_weights(folder) == folder


def test_model_path_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MODEL_HUB", "hf")  # never try ModelScope's network, even where it is installed
    with pytest.raises(UserError) as info:
        mp.resolve_model_path("nobody-xyz/definitely-missing")
    message = str(info.value)
    assert "hf download nobody-xyz/definitely-missing" in message
    assert "--model_path models/definitely-missing" in message
    assert "\n" not in message


def test_model_path_unknown_hub_name(monkeypatch):
    monkeypatch.setenv("MODEL_HUB", "github")
    with pytest.raises(UserError, match="unknown hub 'github'"):
        mp.fetch_from_hub("org/name")


def test_model_path_default_is_embedded_minilm(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ACCEL_PORTS_CACHE", str(cache))
    start = time.perf_counter()
    folder = mp.resolve_model_path(None)
    assert time.perf_counter() - start < 10
    assert folder == cache / "all-MiniLM-L6-v2"
    assert (folder / "model.safetensors").stat().st_size > 50 * 2**20
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["all-MiniLM-L6-v2"]  # no half-extracted leftovers
    assert mp.resolve_model_path("") == folder  # extracted once, found again
    assert mp.resolve_model_path(mp.EMBEDDED_MINILM) == folder


# === report.py ==============================================================================================

MARKER = ('<!-- results {"files": "results/*.json", "rows": "rows", '
          '"cols": [["name", "Name"], ["x", "X", ".2f"]]} -->\n<!-- end results -->')


def _meta(command: str, date: str) -> dict:
    return {"command": command, "device_name": "Test CPU", "dtype": "fp32", "date_utc": date,
            "versions": {"torch": "9.9.9"}}


@pytest.fixture
def report_folder(tmp_path) -> Path:
    folder = tmp_path / "model"
    (folder / "results").mkdir(parents=True)
    (folder / "readme.md").write_text(f"# Model\n\nIntro.\n\n{MARKER}\n\nOutro.\n", encoding="utf-8")
    write_json(folder / "results" / "a.json", {"meta": _meta("python run.py --n 1", "2025-01-02T03:04:05+00:00"),
                                               "rows": [{"name": "alpha", "x": 1.234}, {"name": "beta", "x": 2}]})
    write_json(folder / "results" / "b.json", {"meta": _meta("python run.py --n 2", "2025-02-03T00:00:00+00:00"),
                                               "rows": [{"name": "gam|ma", "x": None}]})
    return folder


def test_report_renders_table_and_sources(report_folder, capsys):
    assert report.cli([str(report_folder)]) == 0
    assert "rewrote" in capsys.readouterr().out
    text = (report_folder / "readme.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index("| Name | X |")
    assert lines[start - 1].startswith("<!-- results {")
    assert lines[start + 1:start + 5] == ["|---|---|", "| alpha | 1.23 |", "| beta | 2.00 |", "| gam\\|ma | – |"]
    assert ("<sub>Generated by `python -m common.report` from "
            "`results/a.json` (`python run.py --n 1`; Test CPU, fp32, 2025-01-02, torch 9.9.9); "
            "`results/b.json` (`python run.py --n 2`; Test CPU, fp32, 2025-02-03, torch 9.9.9).</sub>") in lines
    assert text.startswith("# Model\n\nIntro.\n\n<!-- results ")
    assert text.endswith("<!-- end results -->\n\nOutro.\n")


def test_report_has_keeps_only_files_with_the_section(report_folder):
    """A section only some runs write (--trace_ops): the files without it are left out, not an error."""
    marker = ('<!-- results {"files": "results/*.json", "has": "trace", "cols": [["trace.calls", "calls"]]} -->\n'
              '<!-- end results -->')
    (report_folder / "readme.md").write_text(f"# Model\n\n{marker}\n", encoding="utf-8")
    write_json(report_folder / "results" / "c.json", {"meta": _meta("python run.py --trace", "2025-03-04"),
                                                      "trace": {"calls": 7}})
    assert report.cli([str(report_folder)]) == 0
    text = (report_folder / "readme.md").read_text(encoding="utf-8")
    assert "| calls |\n|---|\n| 7 |\n" in text and "`results/c.json`" in text and "a.json" not in text
    (report_folder / "readme.md").write_text(f"# Model\n\n{marker.replace('has', 'hs')}\n", encoding="utf-8")
    assert report.cli([str(report_folder)]) == 2  # without "has", a file lacking the key is an error


def test_report_check(report_folder, capsys):
    assert report.cli([str(report_folder), "--check"]) == 1  # tables never generated yet
    assert report.cli([str(report_folder)]) == 0
    rendered = (report_folder / "readme.md").read_text(encoding="utf-8")
    assert report.cli([str(report_folder), "--check"]) == 0
    assert report.cli([str(report_folder)]) == 0
    assert (report_folder / "readme.md").read_text(encoding="utf-8") == rendered  # idempotent
    capsys.readouterr()

    a = report_folder / "results" / "a.json"
    doc = json.loads(a.read_text(encoding="utf-8"))
    doc["rows"][0]["x"] = 9.5
    write_json(a, doc)
    assert report.cli([str(report_folder), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert (report_folder / "readme.md").read_text(encoding="utf-8") == rendered  # --check never writes

    assert report.cli([str(report_folder)]) == 0
    assert "| alpha | 9.50 |" in (report_folder / "readme.md").read_text(encoding="utf-8")
    assert report.cli([str(report_folder), "--check"]) == 0


def test_report_no_files_and_no_readme(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert report.cli([str(folder)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (folder / "readme.md").write_text(MARKER + "\n", encoding="utf-8")
    assert report.cli([str(folder)]) == 0
    text = (folder / "readme.md").read_text(encoding="utf-8")
    assert "| (no result file yet) |  |" in text
    assert "no file matches `results/*.json`" in text


def test_git_commit_dirty_flag_ignores_result_files(tmp_path):
    import subprocess

    from common.results import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "model" / "results").mkdir(parents=True)
    (tmp_path / "model" / "script.py").write_text("x = 1\n")
    (tmp_path / "model" / "results" / "r.json").write_text("{}\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path / "model")
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "model" / "results" / "r.json").write_text('{"new": 1}\n')
    assert git_commit(tmp_path / "model") == clean  # refreshed results are outputs, not code changes
    (tmp_path / "model" / "script.py").write_text("x = 2\n")
    assert git_commit(tmp_path / "model") == clean + "-dirty"


def test_open_run_log_start_resume_and_refusals(tmp_path):
    from common.errors import UserError
    from common.results import append_run_record, open_run_log

    log = tmp_path / "run.jsonl"
    config = {"data": "x", "limit": 3}
    assert open_run_log(log, config, resume=False, writer="t.py") == []
    assert not log.exists()  # created by the first record, so a run that dies before it leaves nothing
    append_run_record(log, config, {"type": "sample", "id": 1})
    assert log.read_text().splitlines()[0] == '{"type": "config", "config": {"data": "x", "limit": 3}}'
    with open(log, "ab") as f:
        f.write(b'{"type": "sample", "id": 2')  # torn by a crash
    before = log.read_bytes()
    for kwargs, message in (({"resume": False}, "pass --resume"),
                            ({"resume": True, "config": {"data": "y", "limit": 3}}, "different settings (data)")):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            open_run_log(log, kwargs.pop("config", config), writer="t.py", **kwargs)
        assert log.read_bytes() == before  # refused: untouched
    assert open_run_log(log, config, resume=True, writer="t.py") == [{"type": "sample", "id": 1}]
    assert log.read_bytes().endswith(b'"id": 1}\n')  # the torn tail is cut so the next append starts cleanly
    other = tmp_path / "other.jsonl"
    other.write_text('{"type": "sample"}\n')
    with pytest.raises(UserError, match="not a log written by t.py"):
        open_run_log(other, config, resume=True, writer="t.py")


def test_first_line_of_an_exception():
    from common.errors import first_line

    assert first_line(OSError("no such file\n  more detail")) == "no such file"
    assert first_line(ValueError("  ")) == "ValueError"


def test_save_figure_is_atomic_and_closes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.results import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "plot.png")
    assert out.read_bytes().startswith(b"\x89PNG") and not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temp file left behind


def test_report_marker_key_missing_from_a_json_is_an_error(report_folder, capsys):
    text = (report_folder / "readme.md").read_text(encoding="utf-8").replace('["x", "X", ".2f"]', '["y", "Y"]')
    (report_folder / "readme.md").write_text(text, encoding="utf-8")
    assert report.cli([str(report_folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'y'" in err and "a.json" in err and err.count("\n") == 1
    assert (report_folder / "readme.md").read_text(encoding="utf-8") == text  # nothing written


def test_report_null_on_the_way_renders_a_dash(report_folder):
    write_json(report_folder / "results" / "b.json", {"meta": _meta("python run.py", "2025-02-03T00:00:00+00:00"),
                                                      "rows": [{"name": "n", "x": None}]})
    text = (report_folder / "readme.md").read_text(encoding="utf-8").replace('["x", "X", ".2f"]', '["x.deep", "X"]')
    (report_folder / "readme.md").write_text(text, encoding="utf-8")
    (report_folder / "results" / "a.json").unlink()
    assert report.cli([str(report_folder)]) == 0
    assert "| n | – |" in (report_folder / "readme.md").read_text(encoding="utf-8")


def _record(kind: str, headline: dict, device="Test CPU", dtype="fp32", date="2026-01-02T00:00:00+00:00",
            weights="real", model="/models/tiny-bert") -> dict:
    return {"meta": {**_meta("python x.py", date), "device_name": device, "dtype": dtype}, "kind": kind,
            "model": model, "weights": weights, "headline": headline}


def test_overview_one_row_per_folder_model_device_dtype(tmp_path):
    for name in ("enc", "lm"):
        (tmp_path / name / "results").mkdir(parents=True)
        (tmp_path / name / "inference.py").write_text("")
    results = tmp_path / "enc" / "results"
    write_json(results / "parity_a.json", _record("parity", {"passed": True}))
    write_json(results / "parity_b.json", _record("parity", {"passed": False}, date="2026-03-04T00:00:00+00:00"))
    write_json(results / "task.json", _record("task", {"metric": "STS-B Spearman x100", "value": 81.234}))
    write_json(results / "bench.json", _record("benchmark", {"metric": "texts/s", "peer": "ST.encode", "ratio": 1.5}))
    write_json(results / "bf16.json", _record("parity", {"passed": True}, dtype="bf16"))
    write_json(results / "estimate.json", {"kind": "estimate", "rows": []})  # another declared kind: skipped
    write_json(tmp_path / "lm" / "results" / "p.json", _record("parity", {"passed": True}, weights="test checkpoint"))
    text = report.render_overview(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert rows == [
        "| [enc](enc/readme.md) | tiny-bert | real | Test CPU | bf16 | PASS | – | – | 2026-01-02 |",
        "| [enc](enc/readme.md) | tiny-bert | real | Test CPU | fp32 | FAIL (1 of 2 runs) | STS-B Spearman x100: 81.23 "
        "| ×1.50 texts/s vs ST.encode | 2026-03-04 |",
        "| [lm](lm/readme.md) | test checkpoint | test checkpoint | Test CPU | fp32 | PASS | – | – | 2026-01-02 |"]
    assert report.cli(["--overview", "--root", str(tmp_path), "--check"]) == 1  # never written yet
    assert report.cli(["--overview", "--root", str(tmp_path)]) == 0
    assert report.cli(["--overview", "--root", str(tmp_path), "--check"]) == 0
    write_json(results / "nokind.json", {"meta": {}})
    assert report.cli(["--overview", "--root", str(tmp_path)]) == 2  # a JSON that is not a result record


def test_argument_parser_takes_both_spellings_and_no_abbreviations(capsys):
    from common.errors import ArgumentParser, both_spellings

    assert both_spellings(["--model_path"]) == ["--model_path", "--model-path"]
    assert both_spellings(["-n", "--max-new-tokens"]) == ["-n", "--max-new-tokens", "--max_new_tokens"]
    p = ArgumentParser()
    p.add_argument("--model_path")
    p.add_argument("--max-new-tokens", type=int, default=1)
    p.add_argument("--no_plot", action="store_true")
    args = p.parse_args(["--model-path", "m", "--max_new_tokens", "3", "--no-plot"])
    assert (args.model_path, args.max_new_tokens, args.no_plot) == ("m", 3, True)
    assert p.parse_args(["--model_path", "x"]).model_path == "x"
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--model", "m"])  # an abbreviation would be ambiguous between the spellings: refused
    assert info.value.code == 2 and capsys.readouterr().err.startswith("error: unrecognized arguments")


def test_report_reads_list_items(report_folder):
    write_json(report_folder / "results" / "a.json", {"meta": _meta("python run.py", "2025-01-02T00:00:00+00:00"),
                                                      "rows": [{"name": "ci", "x": [1.5, 2.5]}]})
    (report_folder / "results" / "b.json").unlink()
    text = (report_folder / "readme.md").read_text(encoding="utf-8").replace('["x", "X", ".2f"]', '["x.1", "X"]')
    (report_folder / "readme.md").write_text(text, encoding="utf-8")
    assert report.cli([str(report_folder)]) == 0
    assert "| ci | 2.5 |" in (report_folder / "readme.md").read_text(encoding="utf-8")
