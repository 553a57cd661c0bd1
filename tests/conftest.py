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
    "A folder holding a random tiny BERT sequence classifier and its tokenizer (stands in for a real model)."
    from clvq_nb.models import tiny_bert
    d = tmp_path_factory.mktemp("tiny")
    m, t = tiny_bert(num_labels=2, hidden=32, layers=4, heads=2)
    m.save_pretrained(d); t.save_pretrained(d)
    return d


@pytest.fixture
def run_bench():
    """`run_bench(name, *args)`: `main(args)` of bench/<name>.py (loaded from its file, as `python bench/<name>.py` runs
    it) with the torch thread count restored after; returns what `main` returns."""
    import importlib.util, pathlib
    import torch
    def run(name: str, *args: str):
        path = pathlib.Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        threads = torch.get_num_threads()
        try: return mod.main(list(args))
        finally: torch.set_num_threads(threads)
    return run
