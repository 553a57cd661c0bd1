"""`torchrun --nproc_per_node 2 -m clvq_nb.cli train` (2 CPU processes, gloo) against `clvq train` in one process with
the same settings, on the tiny model: data, fine-tune, activation extraction (split over the ranks) and DDP training,
all through the real command line.

What is equal and what is only close. Under DDP the global batches, the held-out split, the codebook init (from
`init_tokens`, the cpu profile's) and every step's gradient (each rank's loss weighted by its share of the batch's
tokens) are the one-process ones, and `--top-k 1` samples no code. But the CLI's model keeps the paper's decoder
dropout 0.1 (not a command-line setting), and each process draws its own masks, so the trained weights cannot equal
the one-process weights bit for bit. This test asks for: the same split, steps and stop; one printed result (rank 0
only); a checkpoint holding both ranks' RNG states; the ranks ending with identical states (the trainer checks that
itself and fails the command otherwise); held-out and dev FVU within 0.02 of the one-process values and the same
number of live codes; every code within 0.05 of its one-process value (codes have norm ~2; measured: FVU gap 0.001,
largest code difference 0.003; with each rank's own k-means init or unweighted rank losses the codes would not pair up). Exact equality with dropout 0 is tests/test_ddp.py's.
About 30 s on an idle 2-core machine (the 2-process run fine-tunes the classifier and extracts; the 1-process run
reuses both from the shared CLVQ_HOME)."""
import os, re, socket, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--layer-in", "2", "--layer-out", "4", "--max-sentences", "160", "--max-train", "80", "--codebook-size", "8",
        "--top-k", "1", "--profile", "cpu", "--epochs", "2", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _result(stdout: str) -> dict:
    "The numbers `clvq train` prints."
    m = re.search(r"stopped by (\w+) after (\d+) steps, (\d+) validations.*?(\d+) train / (\d+) held-out", stdout)
    out = dict(stop=m[1], steps=int(m[2]), validations=int(m[3]), n_train=int(m[4]), n_val=int(m[5]))
    for name in ("held-out", "dev"):
        f = re.search(rf"^{name}\s+FVU ([\d.]+)\s+perplexity ([\d.]+)\s+active codes (\d+)/", stdout, re.M)
        out[name] = dict(fvu=float(f[1]), perplexity=float(f[2]), active=int(f[3]))
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    "One CLVQ_HOME for the module: the first 2-process command fine-tunes and extracts, later commands reuse them."
    return tmp_path_factory.mktemp("ddp_cli")


def _clvq(d: Path, model: Path, command: str, out: str, processes: int, *extra: str):
    "`clvq COMMAND` in 1 process, or under torchrun in `processes` processes, writing to d/out."
    env = {**os.environ, "CLVQ_HOME": str(d / "home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CLVQ_FAULT"): env.pop(v, None)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(_free_port())]
              if processes > 1 else [sys.executable])
    p = subprocess.run([*launch, "-m", "clvq_nb.cli", command, "--model", str(model), *ARGS, *extra, "--output-dir", str(d / out)],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def runs(home, tiny_model):
    return _clvq(home, tiny_model, "train", "two", 2), _clvq(home, tiny_model, "train", "one", 1), home


def test_rank0_alone_prints_and_writes(runs):
    two, _, d = runs
    assert two.stdout.count("held-out  FVU") == 1 and two.stdout.count("[data] loading") == 1, two.stdout
    ck = torch.load(d / "two" / "train" / "clvqvae" / "checkpoint.pt", weights_only=True)
    assert len(ck["rng"]) == 2 and ck["state"]["finished"]
    assert (d / "two" / "train" / "clvqvae" / "model" / "model.safetensors").exists()


def test_two_processes_match_one(runs):
    two, one, d = runs
    r2, r1 = _result(two.stdout), _result(one.stdout)
    for k in ("stop", "steps", "validations", "n_train", "n_val"): assert r2[k] == r1[k], (k, r2, r1)
    assert r1["steps"] == 10 and r1["validations"] == 1   # 2 epochs of 5 global batches of 32 sentences
    for name in ("held-out", "dev"):
        assert abs(r2[name]["fvu"] - r1[name]["fvu"]) < 0.02, (name, r2, r1)
        assert r2[name]["active"] == r1[name]["active"], (name, r2, r1)
    c2, c1 = (torch.load(d / w / "train" / "clvqvae" / "checkpoint.pt", weights_only=True) for w in ("two", "one"))
    assert c2["model_config"] == c1["model_config"] and c2["data"] == c1["data"]
    assert c2["state"]["global_step"] == c1["state"]["global_step"] == 10
    e2, e1 = c2["model"]["quantizer.embed"], c1["model"]["quantizer.embed"]
    assert (e2 - e1).abs().max() < 0.05 < e1.norm(dim=1).min(), ((e2 - e1).abs().max(), e1.norm(dim=1))


@pytest.mark.slow   # ~40 s more: Integrated Gradients, k-means and the removal probes, in both runs
def test_compare_under_torchrun(home, tiny_model):
    """`clvq compare` under torchrun: the CLVQ-VAE trains with DDP over both processes, rank 0 alone does the rest and
    writes the table; k-means (one process in both runs) gives the identical row, the CLVQ-VAE the same dev FVU within 0.02."""
    import pandas as pd
    extra = ("--methods", "clvqvae,kmeans", "--ig-steps", "4", "--folds", "2")
    two = _clvq(home, tiny_model, "compare", "cmp2", 2, *extra)
    _clvq(home, tiny_model, "compare", "cmp1", 1, *extra)
    assert two.stdout.count("table: ") == 1, two.stdout
    t2, t1 = (pd.read_csv(home / d / "comparison.csv").set_index("method") for d in ("cmp2", "cmp1"))
    pd.testing.assert_series_equal(t2.loc["kmeans"], t1.loc["kmeans"])
    assert abs(t2.loc["clvqvae", "dev_fvu"] - t1.loc["clvqvae", "dev_fvu"]) < 0.02, (t2.T, t1.T)
    ck = torch.load(home / "cmp2" / "train" / "clvqvae" / "checkpoint.pt", weights_only=True)
    assert len(ck["rng"]) == 2   # trained by both processes
