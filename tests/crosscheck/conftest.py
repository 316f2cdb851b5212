"""Fixtures of the cross-checks against the reference harnesses."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def lmeval_gsm8k_task(shared_data, tmp_path_factory):
    """lm-eval's own gsm8k task from the installed harness: a one-file task folder whose yaml `include`s the
    installed gsm8k.yaml and only swaps the dataset for the local jsonl files (what `lm_eval --include_path` does)."""
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks",
                                        reason="lm-eval is not installed (pip install -r requirements-dev.txt)")
    installed = Path(lm_eval_tasks.__file__).parent / "gsm8k" / "gsm8k.yaml"
    folder = tmp_path_factory.mktemp("lmeval-tasks")
    data = shared_data / "gsm8k"
    (folder / "gsm8k_local.yaml").write_text("\n".join([
        f"include: {installed}",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    train: {data / 'train.jsonl'}",
        f"    test: {data / 'test.jsonl'}",
        f"  cache_dir: {tmp_path_factory.mktemp('hf-datasets')}",  # datasets' arrow cache: not ~/.cache
    ]) + "\n", encoding="utf-8")
    manager = lm_eval_tasks.TaskManager(include_path=str(folder), include_defaults=False)
    task = manager.load_task_or_group(["gsm8k"])["gsm8k"]
    assert task.config.dataset_path == "json", "the task did not take the local dataset"
    return task
