"""Faults at every stage of the main job, and determinism: `clvq main` killed (SIGKILL, through `CLVQ_FAULT`) at a stage,
then run again, completes from what was written and gives the same comparison table as an uninterrupted run; the same
command twice gives an identical comparison.csv. On a tiny model: the point is the plumbing, not the numbers."""
import filecmp, os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from clvq_nb.models import tiny_bert

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _main(home: Path, model: Path, out: Path, fault: str | None = None, notebook: bool = False):
    argv = [sys.executable, "-m", "clvq_nb.cli", "main", "--model", str(model), "--layer-in", "2", "--layer-out", "4",
            "--max-sentences", "160", "--max-train", "80", "--codebook-size", "8", "--agglo-max-tokens", "400",
            "--epochs", "2", "--train-steps", "6", "--train-minutes", "None", "--sae-epochs", "1", "--ig-steps", "4",
            "--folds", "2", "--output-dir", str(out), "--quiet"] + ([] if notebook else ["--no-notebook"])
    env = {k: v for k, v in os.environ.items() if k != "CLVQ_FAULT"} | {"CLVQ_HOME": str(home)}
    if fault: env["CLVQ_FAULT"] = fault
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    """An uninterrupted run, and the same command again in a fresh home (fine-tune, caches and all): identical
    comparison.csv (determinism). Returns the table and the first home, whose classifier and activation caches the
    fault tests share (each kills its own run folder)."""
    outs, homes = [], []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"ref{i}")
        r = _main(d / "home", tiny_model, d / "run")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        outs.append(d / "run" / "comparison.csv"); homes.append(d / "home")
    assert filecmp.cmp(*outs, shallow=False), "the same command twice must give an identical comparison.csv"
    return pd.read_csv(outs[0]), homes[0]


STAGES = ["data", "finetune@2", "classifier", "shard", "salient", "fit:agglomerative", "fit:clvqvae", "fit:sae",
          "evaluate:kmeans", "evaluate:vqvae", "table"]
FRESH = {"finetune@2", "shard"}   # inside the fine-tune loop / the activation shard writer: need a home without caches


@pytest.mark.parametrize("stage", STAGES)
def test_kill_at_stage_then_rerun_equals_uninterrupted(tmp_path, tiny_model, reference, stage):
    table, home = reference
    if stage in FRESH: home = tmp_path / "home"
    killed = _main(home, tiny_model, tmp_path / "run", fault=stage)
    assert killed.returncode == -9 and f"CLVQ_FAULT={stage}" in killed.stdout, killed.stdout[-2000:] + killed.stderr[-2000:]
    again = _main(home, tiny_model, tmp_path / "run")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "comparison.csv"), table)


@pytest.mark.parametrize("stage", ["fit:vqvae", "report"])
def test_kill_through_the_notebook_then_rerun(tmp_path, tiny_model, reference, stage):
    "The notebook path: the kernel (fit) or the command after it (report) dies; the rerun reuses what finished."
    table, home = reference
    killed = _main(home, tiny_model, tmp_path / "run", fault=stage, notebook=True)
    assert killed.returncode != 0
    again = _main(home, tiny_model, tmp_path / "run", notebook=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "done in an earlier call" in again.stdout          # finished methods were not run again
    assert (tmp_path / "run" / "report.html").exists()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "comparison.csv"), table)
