"The experiment notebook: its parameters cell, a small papermill run on a tiny model, and clear failures."
import json
from pathlib import Path

import papermill as pm
import pytest

from clvq_nb.models import tiny_bert
from clvq_nb.pipeline import NOTEBOOK_PARAMETERS, ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "nbs" / "experiments" / "run.ipynb"


def test_parameters_cell_declares_every_parameter():
    # papermill must parse every line of the cell; a line it cannot parse becomes an "unknown parameter"
    assert set(pm.inspect_notebook(str(NB))) == set(NOTEBOOK_PARAMETERS)
    fields = set(ExperimentConfig.__dataclass_fields__)
    assert set(NOTEBOOK_PARAMETERS.values()) <= fields


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    m, t = tiny_bert(num_labels=2, hidden=32, layers=4, heads=2)
    m.save_pretrained(d); t.save_pretrained(d)
    return d


def _run(tmp_path, monkeypatch, **params):
    monkeypatch.setenv("CLVQ_HOME", str(tmp_path / "home"))
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NB), str(out), parameters=params, kernel_name="python3", cwd=str(NB.parent), progress_bar=False)
    return out


def test_small_run_writes_results(tmp_path, monkeypatch, tiny_model):
    run_dir = tmp_path / "run"
    _run(tmp_path, monkeypatch, model=str(tiny_model), layer_in=2, layer_out=4, max_sentences=240, codebook_size=8,
         method="kmeans,clvqvae", train_minutes=0.1, ig_steps=4, folds=2, output_dir=str(run_dir))
    for f in ("run.json", "comparison.csv", "comparison.json", "comparison.html", "metrics.json"):
        assert (run_dir / f).exists(), f
    rows = json.loads((run_dir / "comparison.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["kmeans", "clvqvae"]
    assert all(0 <= r["acc_removed"] <= 1 for r in rows)


def test_unknown_parameter_fails_clearly(tmp_path, monkeypatch):
    with pytest.raises(pm.PapermillExecutionError, match="did you mean 'codebook_size'"):
        _run(tmp_path, monkeypatch, codebok_size=200)


def test_output_dir_of_another_experiment_is_refused(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"; run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"config": {**ExperimentConfig().to_dict(), "dataset": "news"}}))
    with pytest.raises(pm.PapermillExecutionError, match="holds another experiment"):
        _run(tmp_path, monkeypatch, output_dir=str(run_dir))
