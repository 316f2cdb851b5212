"""eval_gsm8k.py --compare_to / --baseline / --compare_only: verdicts on two runs of the same GSM8K questions.

Fake runs are written in the exact format eval_gsm8k.py writes (a result JSON naming its JSONL log: a config line,
then one sample record per question with each filter's correctness); one test runs the tiny checkpoint for real."""
from __future__ import annotations

import json

import pytest

import common.results
from tests.support import MINITRON_FOLDER, load_script

E = load_script(MINITRON_FOLDER, "eval_gsm8k")
FILTERS = ("strict-match", "flexible-extract")


def write_run(folder, name: str, strict: list[bool], flexible: list[bool] | None = None, ids=None, golds=None):
    """A result JSON + log as eval_gsm8k.py writes them; returns the JSON's path."""
    flexible = strict if flexible is None else flexible
    ids = list(range(len(strict))) if ids is None else ids
    log = folder / f"{name}.jsonl"
    lines = [{"type": "config", "config": {"task": "gsm8k", "task_version": 3, "num_runs": 1}}]
    for k, i in enumerate(ids):
        lines.append({"type": "sample", "doc_id": i, "run": 1, "temperature": 0.0, "generation": "#### 1",
                      "gold": (golds or {}).get(i, f"#### {i}"),
                      "correct": {"strict-match": strict[k], "flexible-extract": flexible[k]}})
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = folder / f"{name}.json"
    result.write_text(json.dumps({"kind": "task", "config": lines[0]["config"], "log": str(log),
                                  "num_questions": len(ids), "headline": {"metric": "m", "value": 0.0}}))
    return result


def test_compare_only_two_runs(tmp_path, cli, capsys):
    this = write_run(tmp_path, "npu", [True, False, False, True, True], [True, True, False, True, True])
    other = write_run(tmp_path, "cpu", [True, True, True, True, False], [True, True, False, True, True])
    assert cli(E, "--compare_only", this, "--compare_to", other) == 0
    comparison = json.loads(this.read_text())["comparison"]
    assert comparison["against"] == str(other) and comparison["run"] == 1
    strict, flexible = comparison["filters"]["strict-match"], comparison["filters"]["flexible-extract"]
    assert strict["flipped"] == {"right_to_wrong": 2, "wrong_to_right": 1} and strict["n"] == 5
    assert strict["acc_this"] == pytest.approx(0.6) and strict["acc_other"] == pytest.approx(0.8)
    assert strict["diff_points"] == pytest.approx(-20.0) and strict["mcnemar_p"] == pytest.approx(1.0)
    assert strict["verdict"] == "INCONCLUSIVE" and strict["tolerance"] == 1.0  # 5 questions cannot tell
    assert flexible["flipped"] == {"right_to_wrong": 0, "wrong_to_right": 0} and flexible["diff_points"] == 0
    out = capsys.readouterr().out
    assert f"comparison against {other}:" in out and "2/1" in out and "INCONCLUSIVE" in out


def test_identical_long_runs_pass_and_a_lost_block_fails(tmp_path, cli, capsys):
    answers = [i % 4 == 0 for i in range(1319)]
    this, same = write_run(tmp_path, "this", answers), write_run(tmp_path, "same", answers)
    assert cli(E, "--compare_only", this, "--compare_to", tmp_path / "same.jsonl") == 0  # the log itself works too
    assert {f["verdict"] for f in json.loads(this.read_text())["comparison"]["filters"].values()} == {"PASS"}
    worse = write_run(tmp_path, "worse", [a and i > 200 for i, a in enumerate(answers)])  # 51 questions lost
    assert cli(E, "--compare_only", worse, "--compare_to", same, "--tolerance", "2") == 0
    strict = json.loads(worse.read_text())["comparison"]["filters"]["strict-match"]
    assert strict["flipped"] == {"right_to_wrong": 51, "wrong_to_right": 0} and strict["verdict"] == "FAIL"
    assert strict["tolerance"] == 2.0 and strict["ci95"][1] < -2


def test_baseline_is_unpaired(tmp_path, cli, capsys):
    this = write_run(tmp_path, "run", [i < 281 for i in range(1319)])  # 21.30%
    assert cli(E, "--compare_only", this, "--baseline", "0.22") == 0
    comparison = json.loads(this.read_text())["comparison"]
    assert list(comparison["filters"]) == ["strict-match"] and comparison["against"] == "baseline 0.2200 (strict-match)"
    row = comparison["filters"]["strict-match"]
    assert row["verdict"] == "INCONCLUSIVE" and row["flipped"] is None and row["ci95"] == pytest.approx([-2.82, 1.60], abs=0.01)
    assert "INCONCLUSIVE" in capsys.readouterr().out


def test_lm_eval_samples_log(tmp_path, cli):
    """lm-eval's samples_gsm8k_*.jsonl: one line per (question, filter) with exact_match."""
    this = write_run(tmp_path, "this", [True, False, True])
    lm_eval = tmp_path / "samples_gsm8k.jsonl"
    lm_eval.write_text("".join(json.dumps({"doc_id": i, "filter": f, "exact_match": float(i != 1), "target": f"#### {i}"})
                               + "\n" for i in range(3) for f in FILTERS))
    assert cli(E, "--compare_only", this, "--compare_to", lm_eval) == 0
    assert json.loads(this.read_text())["comparison"]["filters"]["strict-match"]["diff_points"] == 0


@pytest.mark.parametrize("case, message", [
    ("mismatched", "question sets differ"),
    ("disjoint", "no question is shared"),
    ("other_gold", "another gold answer"),
    ("parity", "not a GSM8K result"),
    ("not_json", "not a JSON file"),
    ("absent", "does not exist"),
    ("both", "exclude each other"),
    ("percent", "fraction between 0 and 1"),
    ("nothing", "needs --compare_to"),
])
def test_bad_input(tmp_path, cli, capsys, case, message):
    this = write_run(tmp_path, "this", [True, False, True])
    before = this.read_text()
    other = {"mismatched": lambda: write_run(tmp_path, "o", [True, True]),
             "disjoint": lambda: write_run(tmp_path, "o", [True] * 3, ids=[10, 11, 12]),
             "other_gold": lambda: write_run(tmp_path, "o", [True] * 3, golds={2: "#### 99"}),
             "parity": lambda: tmp_path / "parity.json", "not_json": lambda: tmp_path / "notes.txt",
             "absent": lambda: tmp_path / "absent.json"}.get(case, lambda: this)()
    (tmp_path / "parity.json").write_text(json.dumps({"kind": "parity", "passed": True}))
    (tmp_path / "notes.txt").write_bytes(b"\xff\xfe not json")
    argv = {"both": ["--compare_to", other, "--baseline", "0.2"], "percent": ["--baseline", "22"],
            "nothing": []}.get(case, ["--compare_to", other])
    assert cli(E, "--compare_only", this, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert this.read_text() == before  # refused before writing anything


@pytest.mark.slow
def test_model_run_with_compare_to(tiny_minitron, shared_data, cli, tmp_path, capsys, monkeypatch):
    """A real run of 2 questions compared with a fake other run; a mismatched one is refused before the model loads."""
    golds = {i: json.loads(line)["answer"]
             for i, line in enumerate((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:2])}
    other = write_run(tmp_path, "cpu", [True, True], golds=golds)
    output = tmp_path / "run.json"
    common = ["--model_path", tiny_minitron, "--data", shared_data / "gsm8k", "--limit", "2", "--max_new_tokens", "4",
              "--output", output]
    assert cli(E, *common, "--compare_to", other) == 0
    strict = json.loads(output.read_text())["comparison"]["filters"]["strict-match"]
    assert strict["n"] == 2 and strict["acc_other"] == 1.0 and strict["verdict"] in ("FAIL", "INCONCLUSIVE")
    assert "comparison against" in capsys.readouterr().out

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the comparison was checked")

    monkeypatch.setattr(E, "CausalLM", no_model)
    mismatched = write_run(tmp_path, "short", [True], golds=golds)
    assert cli(E, *common[:-1], tmp_path / "run2.json", "--compare_to", mismatched) == 2
    assert "question sets differ" in capsys.readouterr().err and not (tmp_path / "run2.json").exists()


def test_compare_only_into_an_unwritable_folder_is_refused_before_the_work(tmp_path, cli, capsys, monkeypatch):
    this = write_run(tmp_path, "npu", [True, False, True])
    other = write_run(tmp_path, "cpu", [True, True, True])
    before = this.read_text()
    real_probe = common.results._can_create_in  # the write probe: os.access says yes to root everywhere
    monkeypatch.setattr(common.results, "_can_create_in", lambda folder: folder != tmp_path and real_probe(folder))
    assert cli(E, "--compare_only", this, "--compare_to", other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --compare_only") and "not a writable folder" in err[0]
    assert this.read_text() == before
