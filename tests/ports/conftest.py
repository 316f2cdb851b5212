"""Fixtures of the port contract: the tests take a `folder` parameter (every folder model_folders() finds); these
give that folder's family tester (tests/ports/families.py) and its test checkpoint (built once per session)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.ports.families import FamilyTester, family_tester


@pytest.fixture
def family(folder) -> FamilyTester:
    return family_tester(folder)


@pytest.fixture
def checkpoint(folder, family, folder_checkpoint) -> Path:
    return folder_checkpoint(folder, family.checkpoint_script)
