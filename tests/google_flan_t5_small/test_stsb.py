"""eval_stsb.py: Flan's STS-B prompt, the score extractor, scoring, the per-pair log and --resume, bad input."""
from __future__ import annotations

import json

import pytest

from common.cli import UserError
from common.stsb import load_local, load_pairs
from tests.support import T5_FOLDER, load_script


@pytest.fixture
def stsb():
    return load_script(T5_FOLDER, "eval_stsb")


@pytest.fixture
def data(shared_data):
    return shared_data / "stsb" / "test.tsv"


@pytest.mark.parametrize("text, score", [
    ("3", 3.0), ("3.8", 3.8), ("The answer is 4.", 4.0), ("2.5 out of 5", 2.5), ("7", 5.0), ("-1", 0.0),
    ("no", None), ("", None), ("five", None),
])
def test_extract_score(stsb, text, score):
    assert stsb.extract_score(text) == score


def test_prompt_is_flans_stsb_template(stsb):
    assert stsb.build_prompt("A man plays.", "A woman sings.") == (
        "A man plays.\nA woman sings.\n\nRate the textual similarity of these two sentences on a scale from 0 to 5, "
        "where 0 is \"no meaning overlap\" and 5 is \"means the same thing\".\n\n"
        "OPTIONS:\n- 0\n- 1\n- 2\n- 3\n- 4\n- 5")


def answer_gold(stsb, data, unanswered: int):
    """A stand-in for generation that answers each pair's gold score, except `unanswered` with no number."""
    gold = {stsb.build_prompt(s1, s2): score for score, s1, s2 in load_pairs(str(data))[0]}
    calls = []

    def summarize(self, prompts, *args):
        calls.extend(prompts)
        return [f"{gold[p]:.1f}" if i >= unanswered else "I cannot say" for i, p in enumerate(prompts)]
    return summarize, calls


@pytest.mark.slow
def test_scores_are_correlated_with_gold_and_unparsed_answers_count_as_the_midpoint(stsb, cli, tiny_t5, data,
                                                                                      tmp_path, monkeypatch):
    summarize, calls = answer_gold(stsb, data, unanswered=1)
    monkeypatch.setattr(stsb.T5Summarizer, "summarize", summarize)
    out = tmp_path / "stsb.json"
    assert cli(stsb, "--model_path", tiny_t5, "--device", "cpu", "--data", data, "--limit", 20, "--batch_size", 10,
               "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 20 and len(calls) == 20 and result["unparsed"] == 2  # one per batch of 10
    assert 90 < result["spearman_x100"] < 100 and result["headline"]["value"] == result["spearman_x100"]
    low, high = result["spearman_ci95"]
    assert low <= result["spearman_x100"] <= high
    log = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()[1:]]
    assert sum(r["extracted"] is None and r["score"] == stsb.UNPARSED_SCORE for r in log) == 2


@pytest.mark.slow
def test_resume_continues_the_log_without_redoing_pairs(stsb, cli, tiny_t5, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "stsb.json"
    argv = ["--model_path", tiny_t5, "--device", "cpu", "--data", data, "--limit", 6, "--output", out]
    assert cli(stsb, *argv) == 0
    first = json.loads(out.read_text())
    log = out.with_suffix(".jsonl")
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:4]) + '\n{"type": "sample", "id": 3, "gen')  # config + 3 pairs + a torn line
    assert cli(stsb, *argv) == 2 and "--resume" in capsys.readouterr().err  # never overwritten silently
    assert cli(stsb, *argv[:-4], "--limit", 5, "--output", out, "--resume") == 2
    assert "different settings" in capsys.readouterr().err
    summarize, calls = answer_gold(stsb, data, unanswered=0)
    real_summarize = stsb.T5Summarizer.summarize
    monkeypatch.setattr(stsb.T5Summarizer, "summarize",
                        lambda self, prompts, *a: (calls.extend(prompts), real_summarize(self, prompts, *a))[1])
    assert cli(stsb, *argv, "--resume") == 0
    assert len(calls) == 3  # only the pairs the log did not hold
    records = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    assert [r["id"] for r in records] == list(range(6))
    resumed = json.loads(out.read_text())
    assert resumed["pairs"] == 6 and resumed["answers"] == first["answers"]  # greedy: the same answers again


def test_offline_without_data_is_one_line_naming_data(stsb, cli, tiny_t5, tmp_path, capsys):
    assert cli(stsb, "--model_path", tiny_t5, "--output", tmp_path / "x.json") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--data" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--data", "missing.tsv"], "does not exist"),
    (["--limit", "0"], "must be >= 1"),
    (["--batch_size", "x"], "whole number"),
])
def test_bad_input(stsb, cli, tiny_t5, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert cli(stsb, "--model_path", tiny_t5, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err


# --- issue 12: data checks (common.stsb), outputs and limits before the model loads ---------------------------------

def never_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was refused")


HEADER = "score\tsentence1\tsentence2\n"
GOOD_ROWS = "1.0\ta cat\ta dog\n4.5\ta man runs\ta man is running\n"


@pytest.mark.parametrize("name, text, words", [
    ("nan.tsv", HEADER + GOOD_ROWS + "nan\ta\tb\n", "line 4 has gold score 'nan'; STS-B gold scores are 0 to 5"),
    ("high.tsv", HEADER + "5.5\ta\tb\n" + GOOD_ROWS, "line 2 has gold score '5.5'"),
    ("negative.jsonl", '{"score": 1, "sentence1": "a", "sentence2": "b"}\n\n'
                       '{"score": -1, "sentence1": "a", "sentence2": "b"}\n', "line 3 has gold score -1"),
    ("null.jsonl", '{"score": 1, "sentence1": null, "sentence2": "b"}\n', "line 1: sentence1 and sentence2 must be"),
    ("fields.tsv", HEADER + "1.0\ta\tb\textra\n", "line 2 has 4 tab-separated fields, the header 3"),
])
def test_bad_gold_scores_and_rows_are_refused_naming_the_line(tmp_path, name, text, words):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as error:
        load_local(tmp_path / name)
    assert words in str(error.value) and len(str(error.value).splitlines()) == 1, error.value


def test_a_field_past_csvs_128kb_limit_is_read(tmp_path):
    long_sentence = "x" * 200_000  # csv.field_size_limit() is 131072 by default
    (tmp_path / "long.tsv").write_text(HEADER + f"3.0\t{long_sentence}\tshort\n" + GOOD_ROWS, encoding="utf-8")
    assert load_local(tmp_path / "long.tsv")[0] == (3.0, long_sentence, "short")


@pytest.mark.parametrize("argv, words", [
    (["--limit", "1"], "--limit 1 leaves 1 pair(s); a correlation needs at least 3 pairs, so use --limit 3 or more"),
    (["--limit", "2"], "--limit 2 leaves 2 pair(s)"),
    (["--output", "/proc/stsb.json"], "--output /proc/stsb.json: /proc is not a writable folder"),
    (["--output", "stsb.jsonl"], "the per-pair log beside --output stsb.jsonl is the same file as --output"),
    (["--batch_size", "1000000000"], "--batch_size 1000000000 is past this port's MAX_BATCH_SIZE"),
])
def test_refused_before_the_model_loads(stsb, cli, tiny_t5, data, tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stsb, "T5Summarizer", never_load)
    assert cli(stsb, "--model_path", tiny_t5, "--data", data, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {words}") and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_data_with_fewer_than_three_pairs_is_refused(stsb, cli, tiny_t5, tmp_path, monkeypatch, capsys):
    (tmp_path / "two.tsv").write_text(HEADER + GOOD_ROWS, encoding="utf-8")
    monkeypatch.setattr(stsb, "T5Summarizer", never_load)
    assert cli(stsb, "--model_path", tiny_t5, "--data", tmp_path / "two.tsv") == 2
    assert "the data (2 pair(s)) leaves 2 pair(s)" in capsys.readouterr().err


def test_a_pair_past_the_input_limit_is_refused_before_generating(stsb, cli, tiny_t5, tmp_path, monkeypatch, capsys):
    """Truncating the prompt would cut off the instruction at its end: the pair is refused, naming the limit."""
    (tmp_path / "long.tsv").write_text(HEADER + GOOD_ROWS + f"2.0\t{'word ' * 40_000}\tshort\n", encoding="utf-8")
    monkeypatch.setattr(stsb.T5Summarizer, "summarize", never_load)
    out = tmp_path / "stsb.json"
    assert cli(stsb, "--model_path", tiny_t5, "--device", "cpu", "--data", tmp_path / "long.tsv", "--output",
               out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pair 3 needs") and "over --max_input_length 512" in err, err
    assert len(err.splitlines()) == 1 and not out.exists() and not out.with_suffix(".jsonl").exists()
