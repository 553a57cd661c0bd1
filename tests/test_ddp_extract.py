"""Activation extraction under torchrun (2 CPU processes, gloo): each rank writes its own shards, rank 0 the manifest;
the cache equals a one-process extraction (encoder and decoder models)."""
import os, socket, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from clvq_nb.activations import ActivationCache

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_extract_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_two_process_extraction_equals_one_process(tmp_path, kind):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"): env.pop(v, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(HERE / "ddp_extract_worker.py"), str(tmp_path / "ddp"), kind]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    two = ActivationCache(tmp_path / "ddp", verify=True)
    one = ddp_extract_worker.run(str(tmp_path / "one"), kind)
    assert two.manifest["world_size"] == 2 and "world_size" not in one.manifest
    assert {s["file"].split("/")[0] for s in two.manifest["shards"]} == {"rank000", "rank001"}   # each rank its own shards
    for k in ("n_sentences", "n_tokens", "n_words", "dataset_fingerprint", "layers", "tag_word", "label_names"):
        assert two.manifest[k] == one.manifest[k], k
    pd.testing.assert_frame_equal(two.tokens, one.tokens)                 # same rows in the same order, global sids
    assert two.tokens.sid.tolist() == sorted(two.tokens.sid.tolist())
    for l in (1, 3):
        torch.testing.assert_close(two.layer(l)[:], one.layer(l)[:], atol=1e-5, rtol=1e-5)
    assert len(two.sentence_pairs(1, 3)) == len(ddp_extract_worker.TEXTS)
