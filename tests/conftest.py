"""Shared pytest setup for the whole test suite.

1. The repository root goes on sys.path, so `import common` (and the model folders) work from any cwd.
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
