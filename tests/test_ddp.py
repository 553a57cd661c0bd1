"""Two CPU processes (gloo) under torchrun train the same tiny CLVQ-VAE as one process on the concatenated
batches: codebooks must be identical across ranks and equal to the 1-process run.

The problem is deterministic on purpose (see tests/ddp_worker.py): top_k=1 and dropout=0; otherwise as real runs are:
sentences of different lengths, batches grouped by length, the codebook init from a sample of training tokens or
from the first batch.
"""
import os, socket, subprocess, sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    """The key part of attention in_proj biases has a zero gradient in exact arithmetic (adding a constant to
    every key logit leaves the softmax unchanged); its float noise is turned into ±lr steps by Adam, so it is
    left out of the cross-run comparison (the two DDP ranks still agree on it bit for bit)."""
    if name.endswith("in_proj_bias"):
        d = t.shape[0] // 3
        return torch.cat([t[:d], t[2 * d:]])
    return t


@pytest.fixture(scope="module", params=["sample", "first-batch"])
def runs(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"): env.pop(v, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(HERE / "ddp_worker.py"), str(out / "ddp"), "16", request.param]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ranks = [torch.load(out / "ddp" / f"state_rank{r}.pt", weights_only=False) for r in (0, 1)]
    (out / "single").mkdir()
    single = ddp_worker.run(str(out / "single"), 16, request.param)  # same global batch of 16 sentences, one process
    return ranks, single, out


def test_ranks_identical(runs):
    (r0, r1), _, _ = runs
    assert r0["world"] == r1["world"] == 2 and (r0["rank"], r1["rank"]) == (0, 1)
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"{k} differs between ranks"
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert drop(r0["history"]) == drop(r1["history"])  # same numbers -> same LR/early-stop decisions


def test_codebook_moved(runs):
    "The EMA updated the codes (an init sets every count N to 1): the comparisons below are not of untouched codebooks."
    (r0, _), _, _ = runs
    assert (r0["state"]["quantizer.cluster_size"] - 1).abs().max() > 0.1


def test_equals_one_process(runs):
    (r0, _), single, _ = runs
    for k in ("quantizer.embed", "quantizer.embed_avg", "quantizer.cluster_size", "quantizer.usage"):
        torch.testing.assert_close(r0["state"][k], single[k], atol=1e-5, rtol=1e-5, msg=f"{k}: 2 ranks vs 1 process")
    for k, v in single.items():
        if v.is_floating_point():
            torch.testing.assert_close(_key_bias(k, r0["state"][k]), _key_bias(k, v), atol=1e-5, rtol=1e-4, msg=k)


def test_checkpoint_written_once(runs):
    *_, out = runs
    ck = torch.load(out / "ddp" / "run" / "checkpoint.pt", weights_only=True)
    assert len(ck["rng"]) == 2  # RNG states of both ranks, for an exact resume
    assert ck["state"]["finished"] and ck["state"]["epoch"] == 2


def test_sampled_codes_equal_one_process(runs):
    # top_k=1: the "sampled" code is the argmin, so the ranks' merged record must equal one process's, row for row
    ranks, single, out = runs
    one = torch.load(out / "single" / "state_rank0.pt", weights_only=False)["sampled"]
    n_train_rows = int((one >= 0).sum())
    assert n_train_rows > 0 and (one[n_train_rows:] == -1).all()        # the held-out sentences come last
    for r in ranks: assert torch.equal(r["sampled"], one)
