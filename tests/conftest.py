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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    "A saved tiny random BERT classifier (2 labels, hidden 32, 4 layers): a model folder for `model=`."
    from clvq_nb.models import tiny_bert
    d = tmp_path_factory.mktemp("tiny")
    m, t = tiny_bert(num_labels=2, hidden=32, layers=4, heads=2)
    m.save_pretrained(d); t.save_pretrained(d)
    return d
