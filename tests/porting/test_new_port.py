"""python -m common.porting.new_port: scaffold an encoder port and a causal-LM port for models that are not in the repository,
into a temporary copy of the repository, then run the shared port contract (tests/ports/, selected for the new folder)
and eval_accuracy.py there, as a user would. new_port writes no test file: the contract finds the folder by itself."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from transformers import AutoTokenizer, BertConfig, BertModel, Qwen3Config, Qwen3ForCausalLM

from common.cli import run_main
from common.model_path import embedded_weights
from common.porting import new_port

REPO = Path(__file__).resolve().parents[2]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "test_checkpoint", "*.egg-info",
                                     ".new_port-*", "models")
TEXTS = ["A man is playing a guitar.", "Someone plays an instrument on stage tonight.", "Le chat dort.",
         "Quarterly revenue rose 12.5% to $4.31 billion.", "hi"]


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """The repository's files in a temporary folder, with ../shared beside it like the real checkout."""
    base = tmp_path_factory.mktemp("checkout")
    shutil.copytree(REPO, base / "repo", ignore=COPY_IGNORE)
    (base / "shared").symlink_to(REPO.parent / "shared")
    return base / "repo"


def run(argv: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """A command in the copy, with the copy's `common` first on the path (not this checkout's editable install)."""
    env = {**os.environ, "PYTHONPATH": str(cwd if (cwd / "common").is_dir() else cwd.parent), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def scaffold(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """new_port in the copy; it must leave tests/ as it was (no test file to write: the contract covers the folder)."""
    before = files_under_tests(repo)
    made = run([sys.executable, "-m", "common.porting.new_port", *args], repo)
    assert files_under_tests(repo) == before, f"new_port wrote test files: {sorted(files_under_tests(repo) ^ before)}"
    return made


def files_under_tests(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for p in (repo / "tests").rglob("*") if "__pycache__" not in p.parts}


def passes_the_port_contract(repo: Path, folder: str) -> None:
    """The shared port contract (tests/ports/), selected for FOLDER only, passes in the copy, with tests to run."""
    done = run([sys.executable, "-m", "pytest", "-v", "tests/ports", "-k", folder], repo, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    results = re.findall(r"^tests/ports/\S+::(\S+) (PASSED|FAILED|ERROR|SKIPPED)", done.stdout, re.M)
    assert results and all(outcome == "PASSED" for _, outcome in results), done.stdout[-3000:]
    assert all(f"[{folder}" in test for test, _ in results), results  # the new folder's own contract tests
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(rf"\b{len(results)} passed\b", summary) and "failed" not in summary, summary


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory) -> Path:
    """A sentence-transformers model the repository knows nothing of: BERT 64 wide, CLS pooling, no Normalize,
    saved by the installed sentence-transformers (its current config format)."""

    folder = tmp_path_factory.mktemp("bert-cls")
    hf = folder / "hf"

    AutoTokenizer.from_pretrained(embedded_weights("all-MiniLM-L6-v2")).save_pretrained(hf)

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128)).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=96)
    model = SentenceTransformer(modules=[transformer, Pooling(64, "cls")], device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory, smollm2) -> Path:
    """A causal LM of another architecture than the folder's (Qwen3, tied embeddings, 2 KV heads), random weights,
    with SmolLM2's real tokenizer: a local model folder the repository has never seen."""
    folder = tmp_path_factory.mktemp("qwen3-small")
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _nothing_left(repo: Path, before: set) -> bool:
    return {p.name for p in repo.iterdir()} == before and not list(repo.glob(".new_port-*"))


@pytest.mark.parametrize("case", ["unknown folder", "existing name", "bad name", "unreadable model",
                                  "custom modeling code"])
def test_bad_arguments_are_one_line_and_leave_nothing(case, repo_copy, cls_model, capsys):
    args = {"unknown folder": ["--from", "no-such-folder", "--name", "x", "--model", str(cls_model)],
            "existing name": ["--from", "all-MiniLM-L6-v2", "--name", "google_flan-t5-small", "--model",
                              str(cls_model)],
            "bad name": ["--from", "all-MiniLM-L6-v2", "--name", "../escape", "--model", str(cls_model)],
            "unreadable model": ["--from", "all-MiniLM-L6-v2", "--name", "ghost", "--model", "nobody/nothing"],
            "custom modeling code": ["--from", "AnandaSky", "--name", "other-vlm", "--model", str(cls_model)]}[case]
    before = {p.name for p in repo_copy.iterdir()}
    tests_before = sorted(p.name for p in (repo_copy / "tests").iterdir())
    code = run_main(new_port.main, new_port.build_parser().parse_args([*args, "--root", str(repo_copy)]))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert _nothing_left(repo_copy, before)
    assert sorted(p.name for p in (repo_copy / "tests").iterdir()) == tests_before


@pytest.mark.slow
def test_encoder_port_for_a_cls_pooled_model(repo_copy, cls_model):
    made = scaffold(repo_copy, "--from", "all-MiniLM-L6-v2", "--name", "bert-cls-64", "--model", str(cls_model))
    assert made.returncode == 0, made.stderr[-3000:]
    folder = repo_copy / "bert-cls-64"
    assert not [p for p in (folder / "results").iterdir() if p.name != ".gitkeep"]
    readme = (folder / "readme.md").read_text(encoding="utf-8")
    assert readme.startswith("# bert-cls-64 on") and "Port checklist" in readme
    assert "BertCls64Encoder" in (folder / "inference.py").read_text(encoding="utf-8")
    assert "MiniLMEncoder" not in (folder / "inference.py").read_text(encoding="utf-8")
    assert "tests/ports -k bert-cls-64" in readme and "no test file to write" in made.stdout

    passes_the_port_contract(repo_copy, "bert-cls-64")

    parity = run([sys.executable, "eval_accuracy.py"], folder)  # on the default model: the CLS model itself
    assert parity.returncode == 0, parity.stdout[-2000:] + parity.stderr[-2000:]
    result = json.loads(next((folder / "results").glob("parity_*_cpu_fp32.json")).read_text())
    assert result["passed"] is True and result["kind"] == "parity" and result["weights"] == "real"

    # the new folder's encoder against SentenceTransformer.encode on the CLS model (the 0.34 bug)
    script = ("import json, sys, numpy as np; from inference import BertCls64Encoder as E; "
              f"v = E(device='cpu').encode({TEXTS!r}, batch_size=2); np.save('ours.npy', v)")
    ours = run([sys.executable, "-c", script], folder)
    assert ours.returncode == 0, ours.stderr[-2000:]
    reference = SentenceTransformer(str(cls_model), device="cpu").encode(TEXTS, batch_size=2)
    got = np.load(folder / "ours.npy")
    assert got.shape == reference.shape == (len(TEXTS), 64)
    assert float(np.abs(got - reference).max()) <= 1e-5


@pytest.mark.slow
def test_causal_lm_port_for_another_architecture(repo_copy, qwen_model):
    made = scaffold(repo_copy, "--from", "Minitron-8B-Base", "--name", "Qwen3-small", "--model", str(qwen_model))
    assert made.returncode == 0, made.stderr[-3000:]
    folder = repo_copy / "Qwen3-small"
    spec = json.loads((folder / "tiny_model" / "config.json").read_text())
    assert spec["model_type"] == "qwen3" and spec["num_key_value_heads"] < spec["num_attention_heads"]
    assert f"DEFAULT_MODEL = {str(qwen_model)!r}" in (folder / "inference.py").read_text(encoding="utf-8")

    passes_the_port_contract(repo_copy, "Qwen3-small")

    parity = run([sys.executable, "eval_accuracy.py", "--max_new_tokens", "8"], folder)
    assert parity.returncode == 0, parity.stdout[-2000:] + parity.stderr[-2000:]
    result = json.loads(next((folder / "results").glob("parity_*_cpu_fp32.json")).read_text())
    assert result["passed"] is True and set(result["parts"]) >= {"prefill_logits", "generation"}

    report = run([sys.executable, "-m", "common.report", "--all", "--check"], repo_copy)
    assert report.returncode == 1 and "RESULTS.md is out of date" in report.stderr  # a new result to show
    assert run([sys.executable, "-m", "common.report", "--all"], repo_copy).returncode == 0
    assert run([sys.executable, "-m", "common.report", "--all", "--check"], repo_copy).returncode == 0


def test_a_local_model_with_its_own_code_is_linted(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "modeling_x.py").write_text("import torch\nfrom flash_attn import flash_attn_func\n")
    new_port.lint_model_code(tmp_path)
    out = capsys.readouterr().out
    assert "modeling_x.py:2:1: flash-attn" in out and "flash_attn_compat.install()" in out
    new_port.lint_model_code(tmp_path / "modeling_x.py")  # a hub id or a file: nothing to lint, nothing printed
    assert capsys.readouterr().out == ""
