"""What test modules import: the repository's paths, the model folders' names, and how a test loads and runs a
folder's script in-process (fixtures live in the conftest.py files; this module holds no fixtures)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from common.porting.folders import REPO_ROOT, model_folders

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # the evaluation data beside the checkout (../shared/data)
MINILM_FOLDER = "all-MiniLM-L6-v2"
T5_FOLDER = "google_flan-t5-small"
MINITRON_FOLDER = "Minitron-8B-Base"
ANANDASKY_FOLDER = "AnandaSky"


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


def plant_wrong_op(model_class, monkeypatch) -> list[str]:
    """The model under test (built before the reference) computes one wrong op: the Linear in the middle of its
    module list returns its features in reverse order (a scaled output would not do: a following norm, like Qwen3's
    k_norm, cancels a scale). Returns the planted module's name (filled in once the model is built)."""
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
