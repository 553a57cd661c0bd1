"""Shared pytest fixtures for clvq_nb.

Tests run offline: the hub is never contacted (the data registry falls back to the offline copies).
"""
import os

for _v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_v, "1")

import pytest

from clvq_nb.config import seed_everything


@pytest.fixture
def seed() -> int:
    "Seed Python, NumPy and torch with 0 before the test; the seed is the fixture's value."
    seed_everything(0)
    return 0
