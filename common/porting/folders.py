"""Which top-level folders are model ports: the one rule that `new_port`, `report --all` and the test suite's port
contract (tests/ports/) share, so a folder `new_port` writes is found by all three with nothing to register."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # common/porting/folders.py -> the checkout
NOT_MODEL_FOLDERS = {"common", "tests"}  # top-level folders that are not ports even if they held an inference.py


def model_folders(root: Path = REPO_ROOT) -> list[Path]:
    """Every model folder: a top-level folder with an inference.py (scaffolded ports included), sorted by name."""
    return sorted(p.parent for p in Path(root).glob("*/inference.py") if p.parent.name not in NOT_MODEL_FOLDERS)
