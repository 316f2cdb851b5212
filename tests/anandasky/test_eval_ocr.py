"""AnandaSky eval_ocr.py (CER/WER, rotated lines, resume) and benchmark.py, on the random test checkpoint."""
from __future__ import annotations

import json

import pytest

from tests.support import load_script

FOLDER = "AnandaSky"
LINES = ["images/0005_010001.bin.png", "images/0011_010111.bin.png", "images/1150_010008.bin.png"]  # 3rd: rotated


@pytest.fixture(scope="module")
def E():
    return load_script(FOLDER, "eval_ocr")


# --- scoring on hand-written cases ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("hyp, ref, distance", [
    ("", "", 0), ("abc", "abc", 0), ("", "abc", 3), ("abc", "", 3), ("kitten", "sitting", 3),
    ("conduct-", "conduct", 1), ("flaw", "lawn", 2),
])
def test_edit_distance(E, hyp, ref, distance):
    assert E.edit_distance(hyp, ref) == distance
    assert E.edit_distance(hyp.split(), ref.split()) == E.edit_distance(ref.split(), hyp.split())


def test_score_line_normalises_whitespace_only(E):
    s = E.score_line("  Encore  GigaMax\tand ", "Encore GigaMax and")
    assert s == {"char_errors": 0, "ref_chars": 18, "word_errors": 0, "ref_words": 3, "exact": True}
    s = E.score_line("Encore gigamax", "Encore GigaMax and")  # case counts; a missing word is 1 word + 4 chars
    assert (s["char_errors"], s["word_errors"], s["exact"]) == (6, 2, False)


def test_cer_interval_is_a_seeded_bootstrap_over_lines(E):
    samples = [{**E.score_line("abcd"[: i % 4], "abcd"), "image": str(i), "rotated": False} for i in range(40)]
    interval = E.cer_interval(samples)
    assert interval["low"] < E.summarize(samples)["cer"] < interval["high"] and E.cer_interval(samples) == interval
    assert E.cer_interval(samples[:1]) is None  # one line: no interval


@pytest.mark.slow
def test_default_output_names_model_device_dtype_and_data(E, anandasky_checkpoint, line_set, tmp_path, cli,
                                                          monkeypatch):
    monkeypatch.setattr(E, "HERE", tmp_path)
    assert cli(E, "--model-path", anandasky_checkpoint, "--data", line_set, "--limit", "1", "--max-new-tokens",
               "2") == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "task_test_checkpoint_cpu_fp32_ocr_lines.json", "task_test_checkpoint_cpu_fp32_ocr_lines.jsonl"]


def test_summary_is_corpus_level(E):
    """CER weighs lines by length: 1 error in a 1-char line + 0 in a 99-char line is 1/100, the line mean 0.5."""
    samples = [{**E.score_line("x", "y"), "image": "a", "rotated": False},
               {**E.score_line("z" * 99, "z" * 99), "image": "b", "rotated": True}]
    out = E.summarize(samples)
    assert out["cer"] == pytest.approx(0.01) and out["cer_line_mean"] == pytest.approx(0.5)
    assert out["exact_line_rate"] == 0.5 and out["rotated"] == ["b"]


# --- end to end ---------------------------------------------------------------------------------------------------

@pytest.fixture
def line_set(shared_data, tmp_path):
    """A labels.tsv in tmp_path naming three real uw3_500 lines by absolute path (no data copied)."""
    labels = {}
    for row in (shared_data / "ocr" / "uw3_500" / "labels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        image, text = row.split("\t")
        labels[image] = text
    folder = tmp_path / "lines"
    folder.mkdir()
    rows = [f"{shared_data / 'ocr' / 'uw3_500' / image}\t{labels[image]}" for image in LINES]
    (folder / "labels.tsv").write_text("image\ttext\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return folder


def ocr_args(checkpoint, data, output, *more):
    return ["--model-path", checkpoint, "--data", data, "--output", output, "--max-new-tokens", "4",
            "--batch-size", "2", *more]


@pytest.mark.slow
def test_eval_ocr_end_to_end_and_resume(E, anandasky_checkpoint, line_set, tmp_path, cli):
    output = tmp_path / "ocr.json"
    assert cli(E, *ocr_args(anandasky_checkpoint, line_set, output)) == 0
    summary = json.loads(output.read_text())
    log = output.with_suffix(".jsonl")
    full = log.read_bytes()
    samples = [json.loads(line) for line in full.decode().splitlines()[1:]]
    assert summary["results"]["num_lines"] == 3 and [s["image"].split("/")[-1] for s in samples] == \
        [p.split("/")[-1] for p in LINES]
    assert [s["rotated"] for s in samples] == [False, False, True]
    assert summary["results"]["cer"] == pytest.approx(
        sum(s["char_errors"] for s in samples) / sum(s["ref_chars"] for s in samples))
    assert summary["meta"]["dtype"] == "fp32" and summary["config"]["rotate"] == "auto"
    assert summary["kind"] == "task" and summary["weights"] == "test checkpoint"
    assert summary["headline"] == {"metric": "CER % on lines", "value": 100 * summary["results"]["cer"]}
    interval = summary["results"]["cer_ci95"]
    assert interval["low"] <= summary["results"]["cer"] <= interval["high"]

    # a crash after the second line, mid-write of the third: the torn tail is dropped and only line 3 is redone
    lines = full.split(b"\n")
    log.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][: len(lines[3]) // 2])
    assert cli(E, *ocr_args(anandasky_checkpoint, line_set, output, "--resume")) == 0
    assert log.read_bytes() == full  # greedy: the resumed log is byte-identical, nothing lost or doubled
    assert json.loads(output.read_text())["results"] == summary["results"]


def test_eval_ocr_refuses_to_clobber_or_mix_logs(E, anandasky_checkpoint, line_set, tmp_path, cli, capsys):
    output = tmp_path / "ocr.json"
    log = output.with_suffix(".jsonl")
    log.write_text("not json\n")
    assert cli(E, *ocr_args(anandasky_checkpoint, line_set, output)) == 2  # exists, no --resume
    assert cli(E, *ocr_args(anandasky_checkpoint, line_set, output, "--resume")) == 2  # not our log
    assert log.read_text() == "not json\n"
    log.write_text(json.dumps({"type": "config", "config": {"data": "other"}}) + "\n")
    assert cli(E, *ocr_args(anandasky_checkpoint, line_set, output, "--resume")) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "--resume" in errors[0] and "different settings" in errors[2], errors


@pytest.mark.slow
def test_eval_ocr_failing_before_the_first_line_leaves_no_log(E, anandasky_checkpoint, line_set, tmp_path, cli,
                                                              capsys):
    output = tmp_path / "ocr.json"
    assert cli(E, *ocr_args(anandasky_checkpoint, line_set, output, "--device", "npu")) == 2
    assert "torch_npu" in capsys.readouterr().err
    assert not output.with_suffix(".jsonl").exists()  # so the corrected rerun needs no --resume
    assert cli(E, *ocr_args(anandasky_checkpoint, line_set, output, "--limit", "1")) == 0


@pytest.mark.parametrize("labels, message", [
    (None, "has no labels.tsv"),
    ("path\tlabel\nimages/a.png\tx\n", "must start with the header"),
    ("image\ttext\nimages/a.png\n", "line 2 is not"),
    ("image\ttext\n", "lists no images"),
])
def test_eval_ocr_bad_labels(E, anandasky_checkpoint, tmp_path, cli, capsys, labels, message):
    if labels is not None:
        (tmp_path / "labels.tsv").write_text(labels, encoding="utf-8")
    assert cli(E, "--model-path", anandasky_checkpoint, "--data", tmp_path, "--output", tmp_path / "o.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_eval_ocr_missing_image_is_one_line(E, anandasky_checkpoint, tmp_path, cli, capsys):
    (tmp_path / "labels.tsv").write_text("image\ttext\nimages/missing.png\thello\n", encoding="utf-8")
    assert cli(E, "--model-path", anandasky_checkpoint, "--data", tmp_path, "--output", tmp_path / "o.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.png" in err[0], err


# --- benchmark ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_benchmark_writes_json_and_plot(anandasky_checkpoint, tmp_path, cli):
    bench = load_script(FOLDER, "benchmark")
    output = tmp_path / "bench.json"
    assert cli(bench, "--model-path", anandasky_checkpoint, "--sizes", "28x112", "42x420", "--images", "3",
               "--new-tokens", "3", "--warmup", "0", "--output", output) == 0
    result = json.loads(output.read_text())
    assert [r["size"] for r in result["sizes"]] == ["28x112", "42x420"]
    small, large = result["sizes"]
    assert small["patches_per_image"] == 2 * 8 and large["patches_per_image"] == 3 * 30
    for row in result["sizes"]:
        # TTFT and E2E are separate calls: under load their medians need not be ordered (no timing assertions)
        assert row["ttft"]["n"] == row["e2e"]["n"] == 3 and row["e2e"]["p50_ms"] > 0 and row["ttft"]["p50_ms"] > 0
        assert row["packed_speedup"] == pytest.approx(row["packed_images_per_s"] / row["single_images_per_s"])
    assert result["parameters"] > 30e6 and result["memory"]["weights_mib"] > 100 and result["load_s"] > 0
    assert result["kind"] == "benchmark" and result["headline"]["peer"] == "single-image generate"
    assert result["headline"]["ratio"] == large["packed_speedup"] and "42x420" in result["headline"]["metric"]
    assert output.with_suffix(".png").stat().st_size > 10_000


def test_benchmark_bad_size(anandasky_checkpoint, cli, capsys):
    bench = load_script(FOLDER, "benchmark")
    assert cli(bench, "--model-path", anandasky_checkpoint, "--sizes", "28by112") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HEIGHTxWIDTH" in err[0], err
