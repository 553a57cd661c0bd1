"The experiment notebook and `clvq main`: parameters, a small papermill run on a tiny model, streamed stage lines, every option reaching the notebook, clear failures."
import json, os, subprocess, sys, threading, time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest

from clvq_nb.models import tiny_vocab
from clvq_nb.pipeline import NOTEBOOK_PARAMETERS, ExperimentConfig, config_fields, parameters_cell
from clvq_nb.runs import Run

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "nbs" / "experiments" / "run.ipynb"


def test_parameters_cell_declares_every_parameter():
    # papermill must parse every line of the cell; a line it cannot parse becomes an "unknown parameter"
    assert set(pm.inspect_notebook(str(NB))) == set(NOTEBOOK_PARAMETERS) == set(config_fields())
    cell = next(c for c in nbformat.read(NB, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == parameters_cell(), "regenerate run.ipynb's parameters cell from clvq_nb.pipeline.parameters_cell()"


def _run(tmp_path, monkeypatch, **params):
    monkeypatch.setenv("CLVQ_HOME", str(tmp_path / "home"))
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NB), str(out), parameters=params, kernel_name="python3", cwd=str(NB.parent), progress_bar=False)
    return out


def test_small_run_writes_results(tmp_path, monkeypatch, tiny_model):
    # training is capped in steps (never minutes): the outcome does not depend on the machine's speed; with 6 steps
    # the CLVQ-VAE stops before its first validation, and the report must still be written (its figure says so)
    run_dir = tmp_path / "run"
    _run(tmp_path, monkeypatch, model=str(tiny_model), layer_in=2, layer_out=4, max_sentences=240, codebook_size=8,
         methods="kmeans,clvqvae", train_steps=6, train_minutes=None, ig_steps=4, folds=2, output_dir=str(run_dir))
    run = Run(run_dir)
    for f in ("run_json", "table_csv", "table_json", "figure_html", "metrics_json", "sentences_parquet"):
        assert getattr(run, f).exists(), f
    rows = json.loads(run.table_json.read_text())["rows"]
    assert [r["method"] for r in rows] == ["kmeans", "clvqvae"]
    assert all(0 <= r["acc_removed"] <= 1 for r in rows)
    assert "no validation recorded yet" in (tmp_path / "out.ipynb").read_text()


def test_unknown_parameter_fails_clearly(tmp_path, monkeypatch):
    with pytest.raises(pm.PapermillExecutionError, match="did you mean 'codebook_size'"):
        _run(tmp_path, monkeypatch, codebok_size=200)


def test_output_dir_of_another_experiment_is_refused(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"; run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"key": ExperimentConfig(dataset="news").key()}))
    with pytest.raises(pm.PapermillExecutionError, match="holds another experiment"):
        _run(tmp_path, monkeypatch, output_dir=str(run_dir))


def _csv(path: Path, n: int = 200) -> Path:
    "A local data set with other column names, in latin-1."
    rng = np.random.default_rng(0)
    words = [w for w in tiny_vocab() if w.isalpha()]
    lab = rng.integers(0, 2, n)
    txt = [" ".join(rng.choice(words, rng.integers(4, 9))) + f" item{i}" for i in range(n)]
    pd.DataFrame({"review": txt, "sentiment": np.where(lab == 1, "pos", "neg")}).to_csv(path, index=False, encoding="latin-1")
    return path


EXPECTED_STAGES = ["data", "classifier", "activations", "salient", "fit:kmeans", "evaluate:kmeans", "kmeans",
                   "fit:clvqvae", "evaluate:clvqvae", "clvqvae", "report"]


def _clvq_main(values: dict, home: Path):
    argv = [sys.executable, "-m", "clvq_nb.cli", "main"]
    for k, v in values.items():
        opt = "--" + k.replace("_", "-")
        argv += [opt] if v is True else ["--no-" + k.replace("_", "-")] if v is False else [opt, str(v)]
    env = {**os.environ, "CLVQ_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


@pytest.mark.slow
def test_every_option_reaches_the_notebook(tmp_path, tiny_model):
    "Every config field set to a non-default value on the command line is the executed notebook's config (run.json)."
    run_dir = tmp_path / "run"
    values = dict(dataset=str(_csv(tmp_path / "reviews.csv")), max_sentences=200, text_col="review", label_col="sentiment",
                  encoding="latin-1", model=str(tiny_model), finetune_epochs=2, max_train=100, prompt_template="Review: {text}",
                  verbalisers="bad,good", shots=2, sentence_vector="mean", lm_dtype="bfloat16", layer_in=2, layer_out=4,
                  merge="first", methods="kmeans", codebook_size=8, agglo_max_tokens=500, sae_epochs=2, profile="cpu",
                  top_k=2, temperature=0.5, memory="continuous", normalize=False, amp="off", epochs=2, train_steps=6, train_minutes=30.0,
                  ig_steps=4, folds=3, probe_labels="pred", protocol="sound", protocol_seeds=2, seed=1, output_dir=str(run_dir),
                  overwrite=True)
    defaults = config_fields()
    assert set(values) == set(defaults) and all(values[k] != defaults[k] for k in values), "set every field to a non-default"
    proc = _clvq_main(values, tmp_path / "home")
    out = proc.communicate()[0]
    # (the run itself may stop later: a random tiny model can predict one class, which the 'pred' probe refuses)
    got = Run(run_dir).info()["config"]
    assert ExperimentConfig.from_dict(got).flat() == {**values, "output_dir": str(run_dir.resolve())}, out[-2000:]


@pytest.mark.slow
def test_clvq_main_streams_stage_lines_and_writes_the_report(tmp_path, tiny_model):
    "Stage lines arrive while the job runs, in order; the report opens with the headline and shows no code."
    run_dir = tmp_path / "run"
    values = dict(model=str(tiny_model), layer_in=2, layer_out=4, max_sentences=200, max_train=100, methods="kmeans,clvqvae",
                  codebook_size=8, train_steps=6, train_minutes="None", ig_steps=4, folds=2, output_dir=str(run_dir))
    proc = _clvq_main(values, tmp_path / "home")
    seen, table_existed_at_first_line, out = [], None, []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("[") and "] [" in line:
            tag = line.split("] [", 1)[1].split("]", 1)[0]
            if table_existed_at_first_line is None: table_existed_at_first_line = (run_dir / "comparison.csv").exists()
            if not seen or seen[-1] != tag: seen.append(tag)
    assert proc.wait() == 0, "".join(out)[-3000:]
    assert table_existed_at_first_line is False, "stage lines must arrive while the job runs, not after it"
    assert [s for s in seen if s in EXPECTED_STAGES] == EXPECTED_STAGES, seen
    html = Run(run_dir).report.read_text()
    assert "Concept removal:" in html and "dropped rows" in html and "check_parameters" not in html  # headline, no code
    assert html.index("Concept removal:") < html.index("Codebook of the CLVQ-VAE")


def test_user_error_inside_the_notebook_is_one_line(tmp_path, tiny_model):
    "A bad input found in the kernel (a Latin-1 file read as UTF-8) ends `clvq main` with one line and exit code 2."
    p = tmp_path / "reviews.csv"
    p.write_bytes("review,sentiment\nun café crème,pos\nà éviter,neg\n".encode("latin-1"))
    proc = _clvq_main({"model": tiny_model, "dataset": p, "text_col": "review", "label_col": "sentiment", "quiet": True},
                      tmp_path / "home")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, out[-3000:]
    err = [l for l in out.splitlines() if l.startswith("clvq main: error:")]
    assert len(err) == 1 and "reviews.csv" in err[0] and "--encoding" in err[0], out[-3000:]
    assert "Traceback" not in out and "PapermillExecutionError" not in out, out[-3000:]


def test_quiet_kernel_has_no_progress_bars(monkeypatch, capsys):
    "`clvq main --quiet` sets CLVQ_TEXT_PROGRESS=quiet for the kernel, whose first cell calls text_progress(quiet=True)."
    import tqdm.auto, tqdm.autonotebook
    from clvq_nb.config import text_progress
    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.auto.tqdm); monkeypatch.setattr(tqdm.autonotebook, "tqdm", tqdm.autonotebook.tqdm)
    text_progress(quiet=True)
    assert tqdm.auto.tqdm(range(3), disable=False).disable            # even a bar that asks to be shown
    list(tqdm.auto.tqdm(range(3), desc="hidden"))
    text_progress(quiet=False)
    bar = tqdm.auto.tqdm(range(3), desc="shown")
    assert not bar.disable and bar.mininterval == 10.0; list(bar); bar.close()
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err


# ---------------------------------------------------------------- faithfulness.ipynb
FAITH_NB = ROOT / "nbs" / "experiments" / "faithfulness.ipynb"


def test_faithfulness_parameters_cell_is_generated_and_parsed():
    from clvq_nb.faithfulness import NOTEBOOK_EXTRA, notebook_parameters_cell
    # every line parsed by papermill (a '=' in a comment used to make `n_seeds` an "unknown parameter")
    assert set(pm.inspect_notebook(str(FAITH_NB))) == set(config_fields()) | set(NOTEBOOK_EXTRA)
    cell = next(c for c in nbformat.read(FAITH_NB, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == notebook_parameters_cell(), \
        "regenerate faithfulness.ipynb's parameters cell from clvq_nb.faithfulness.notebook_parameters_cell()"


def test_faithfulness_notebook_small_run(tmp_path, monkeypatch, tiny_model):
    from clvq_nb.metrics import LEAK_FLAG
    monkeypatch.setenv("CLVQ_HOME", str(tmp_path / "home"))
    run_dir, out = tmp_path / "run", tmp_path / "out.ipynb"
    pm.execute_notebook(str(FAITH_NB), str(out), kernel_name="python3", cwd=str(FAITH_NB.parent), progress_bar=False,
                        parameters=dict(model=str(tiny_model), layer_in=2, layer_out=4, max_sentences=240, codebook_size=8,
                                        methods="kmeans,clvqvae", train_steps=6, ig_steps=4, folds=2, protocol="both",
                                        protocol_seeds=1, causal=True, ablation=False, output_dir=str(run_dir)))
    removal = pd.read_csv(run_dir / "faithfulness" / "removal.csv")
    assert sorted(zip(removal["protocol"], removal["method"])) == [("paper", "clvqvae"), ("paper", "kmeans"),
                                                                   ("sound", "clvqvae"), ("sound", "kmeans")]
    assert (removal.loc[removal["protocol"] == "paper", "protocol_flag"] == LEAK_FLAG).all()
    assert removal.loc[removal["protocol"] == "sound", "protocol_flag"].isna().all()
    for f in ("causal.csv", "splice.csv", "removal_seeds.csv", "report.json"): assert (run_dir / "faithfulness" / f).exists(), f
    text = out.read_text()
    assert "run time:" in text and "Traceback" not in text


def test_faithfulness_notebook_refuses_a_typo(tmp_path, monkeypatch):
    monkeypatch.setenv("CLVQ_HOME", str(tmp_path / "home"))
    with pytest.raises(pm.PapermillExecutionError, match="n_seeds"):
        pm.execute_notebook(str(FAITH_NB), str(tmp_path / "out.ipynb"), kernel_name="python3", cwd=str(FAITH_NB.parent),
                            progress_bar=False, parameters=dict(n_seeds=3))
