"""GSM8K scoring as lm-eval gsm8k v3 does it: extraction filters, normalisation, pass@k, prompt layout."""
from __future__ import annotations

import importlib.machinery
import json
import random
import sys
import types

import huggingface_hub
import pandas as pd
import pytest

from tests.support import MINITRON_FOLDER, load_script

E = load_script(MINITRON_FOLDER, "eval_gsm8k")
DATA = sys.modules[E.load_data.__module__]  # gsm8k_data: where the data loading lives (eval_gsm8k re-exports it)
GOLD_1000 = "She pays 10 * 100 = <<10*100=1000>>1,000 dollars.\n#### 1000"


@pytest.mark.parametrize("text, strict, flexible", [
    ("So the answer is 18.\n#### 18", "18", "18"),
    ("The total is $1,000.\n#### 1,000", "1,000", "1,000"),
    ("#### $1,000", "[invalid]", "$1,000"),  # strict needs a digit or '-' right after '#### '
    ("It costs 5 dollars.", "[invalid]", "5"),
    ("Costs 12.5 then 7.", "[invalid]", "7."),  # the last match keeps its trailing period; normalise drops it
    ("He lost 3, then -12 more.\n#### -12", "-12", "-12"),
    ("no number at all", "[invalid]", "[invalid]"),
    ("#### 4\nQuestion again #### 5", "4", "5"),  # several '####': strict takes the first, flexible the last
    ("", "[invalid]", "[invalid]"),
])
def test_extraction(text, strict, flexible):
    assert E.extract_strict(text) == strict
    assert E.extract_flexible(text) == flexible


@pytest.mark.parametrize("extracted, gold, correct", [
    ("1,000", GOLD_1000, True),
    ("$1,000", GOLD_1000, True),
    ("1000.", GOLD_1000, True),
    ("1000.0", GOLD_1000, False),  # exact match after normalisation, no numeric comparison (like lm-eval)
    ("-12", "#### -12", True),
    ("12", "#### -12", False),
    ("[invalid]", GOLD_1000, False),
])
def test_normalised_match(extracted, gold, correct):
    assert E.is_correct(extracted, gold) is correct


def test_normalize_strips_everything_up_to_the_last_hashes():
    assert E.normalize("work\n#### 7") == "7"
    assert E.normalize("a #### b #### $3,5.") == "35"


def test_score_reports_both_filters():
    s = E.score("Total 10 * 100 = 1,000 dollars", GOLD_1000)
    assert s["extracted"] == {"strict-match": "[invalid]", "flexible-extract": "1,000"}
    assert s["correct"] == {"strict-match": False, "flexible-extract": True}


def test_pass_at_k():
    assert E.pass_at_k(2, 0, 1) == 0.0
    assert E.pass_at_k(2, 1, 1) == pytest.approx(0.5)
    assert E.pass_at_k(2, 1, 2) == 1.0
    assert E.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)


def test_accuracy_uncertainty():
    u = E.accuracy_uncertainty(5, 10)
    assert u["stderr"] == pytest.approx((0.25 / 9) ** 0.5)  # lm-eval: sample std / sqrt(n)
    assert u["ci95"] == pytest.approx({"low": 0.2366, "high": 0.7634}, abs=1e-4)  # Wilson, 95%
    zero = E.accuracy_uncertainty(0, 10)  # no hit in 10 still allows up to ~28%
    assert zero["stderr"] == 0 and zero["ci95"] == pytest.approx({"low": 0, "high": 0.2775}, abs=1e-4)
    assert E.accuracy_uncertainty(1, 1)["stderr"] is None and E.accuracy_uncertainty(0, 0)["ci95"] is None


def test_summary_pass_at_n_and_unbiased():
    records = [{"run": r, "doc_id": i, "correct": {f: c for f in E.FILTERS}}
               for (r, i, c) in [(1, 0, False), (2, 0, True), (1, 1, True), (2, 1, True), (1, 2, False), (2, 2, False)]]
    s = E.summarize(records, [0, 1, 2], 2)
    assert [r["accuracy"]["strict-match"] for r in s["runs"]] == pytest.approx([1 / 3, 2 / 3])
    assert s["pass_at_n_any"]["strict-match"] == pytest.approx(2 / 3)
    assert s["pass_at_k_unbiased"]["strict-match"]["1"] == pytest.approx(0.5)  # mean of per-run accuracies
    assert s["pass_at_k_unbiased"]["strict-match"]["2"] == pytest.approx(2 / 3)
    assert s["runs"][1]["stderr"]["strict-match"] == pytest.approx(E.accuracy_uncertainty(2, 3)["stderr"])
    assert s["runs"][1]["ci95"]["strict-match"] == pytest.approx(E.accuracy_uncertainty(2, 3)["ci95"])


def test_prompt_layout_matches_lm_eval():
    shots = [{"question": "A?", "answer": "x\n#### 1"}, {"question": "B?", "answer": "y\n#### 2"}]
    prompt = E.build_prompt({"question": "C?", "answer": "#### 3"}, shots)
    assert prompt == "Question: A?\nAnswer: x\n#### 1\n\nQuestion: B?\nAnswer: y\n#### 2\n\nQuestion: C?\nAnswer:"


def test_fewshot_ids_are_lm_evals_seeded_stream():
    ids = E.fewshot_ids(3, 7473, 5)
    rnd = random.Random(1234)
    assert ids == [rnd.sample(range(7473), 5) for _ in range(3)]
    assert ids == E.fewshot_ids(3, 7473, 5) and ids[0] != ids[1]


# --- where the data comes from: --data, the HF parquet files, the ModelScope mirror, offline ----------------------

def _write_parquet(rows: list[dict], path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def _local_splits(shared_data, n=3):
    test, train = E.load_data(str(shared_data / "gsm8k"))
    return test[:n], train[:n]


def test_hub_parquet_files_are_read(shared_data, tmp_path, monkeypatch):
    """The HF route: hf_hub_download hands back openai/gsm8k's parquet files; they must parse like the jsonl."""
    test, train = _local_splits(shared_data)
    files = {s: _write_parquet(rows, tmp_path / "main" / f"{s}-00000-of-00001.parquet")
             for s, rows in (("test", test), ("train", train))}
    asked = []

    def fake_download(repo_id, filename, repo_type, local_files_only):
        asked.append((repo_id, filename, repo_type))
        return str(files[filename.split("/")[1].split("-")[0]])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert E.load_data(None) == (test, train)
    assert asked[0] == ("openai/gsm8k", "main/test-00000-of-00001.parquet", "dataset")


def test_modelscope_is_tried_when_hf_fails(shared_data, tmp_path, monkeypatch):
    test, train = _local_splits(shared_data)
    snapshot = tmp_path / "ms"
    _write_parquet(train[:1], snapshot / "data" / "socratic" / "train.parquet")  # sorts first; must not be picked
    _write_parquet(test, snapshot / "main" / "test-00000-of-00001.parquet")
    (snapshot / "main" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    fake = types.ModuleType("modelscope")
    fake.__spec__ = importlib.machinery.ModuleSpec("modelscope", None)
    fake.dataset_snapshot_download = lambda dataset_id: str(snapshot) if dataset_id == "modelscope/gsm8k" else None
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    monkeypatch.setattr(DATA, "_from_huggingface", lambda: (_ for _ in ()).throw(ConnectionError("offline")))
    assert E.load_data(None) == (test, train)


def test_offline_without_data_names_both_hubs_and_data(monkeypatch):
    monkeypatch.setattr(DATA, "hub_reachable", lambda: False)
    monkeypatch.setattr(DATA.importlib.util, "find_spec", lambda name: None)  # modelscope not installed
    with pytest.raises(E.UserError) as err:
        E.load_data(None)
    message = str(err.value)
    assert "huggingface" in message and "--data" in message and "\n" not in message
