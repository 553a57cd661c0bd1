"clvq_nb.viz: figure data (values, order, colours), run loading, widgets driven programmatically, explore notebooks headless."
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from clvq_nb import viz
from clvq_nb.viz import (DEAD_COLOR, ACTIVE_COLOR, PAPER_REFERENCE, code_usage_figure, usage_stats, training_curves_figure,
                         concept_records, token_concept_heatmap, concept_label_heatmap, concept_top_tokens_figure,
                         comparison_figure, sweep_summary_figure, sentence_html, concept_color, demo_run, load_run,
                         load_method, comparison_table, codebook_usage_widget, concept_heatmap_widget, concept_explorer_widget)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz")
    mp = pytest.MonkeyPatch(); mp.setenv("CLVQ_HOME", str(d / "home"))
    yield demo_run(d / "demo", seed=1)
    mp.undo()


def test_code_usage_dead_codes_and_order():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=100); counts[[3, 7, 11]] = 0; counts[5] = 2
    fig = code_usage_figure(counts, dead_threshold=2)
    active, dead = fig.data
    assert np.all(np.diff(active.y) <= 0)                                  # sorted, most used first
    assert sorted(active.customdata.tolist() + dead.customdata[:, 0].tolist()) == list(range(100))
    assert set(dead.customdata[:, 0].astype(int)) == set(np.flatnonzero(counts <= 2))
    assert dead.marker.color == DEAD_COLOR and active.marker.color == ACTIVE_COLOR
    assert min(dead.x) > max(active.x)                                     # dead codes at the tail
    assert fig.layout.yaxis.type == "log"
    st = usage_stats(counts, 2)
    assert st["active_codes"] == len(active.y) and f"{st['active_codes']}/100 active" in fig.layout.title.text


def test_perplexity_matches_entropy():
    c = np.array([10, 10, 0, 0]); assert usage_stats(c)["perplexity"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="negative"): usage_stats([1, -1])


def test_training_curves_from_demo_history(demo):
    h = load_run(demo)["clvqvae"].history
    fig = training_curves_figure(h, metrics=("loss", "perplexity", "active_codes"))
    assert len(fig.data) == 6                                               # 3 metrics x {train, dev}
    dev_pp = [t for t in fig.data if t.name == "dev"][1]
    assert list(dev_pp.y) == h[h.split == "dev"]["perplexity"].tolist() and list(dev_pp.x) == h[h.split == "dev"]["epoch"].tolist()



def test_training_curves_x_axis_is_step_when_validations_share_an_epoch():
    # TrainConfig.eval_every: several validation records per epoch -> the x axis is the step
    recs = [dict(type="epoch", epoch=e, step=s, train_loss=1.0 / s, val_loss=1.1 / s, train_perplexity=float(s), val_perplexity=float(s))
            for e, s in [(0, 50), (0, 100), (1, 150), (1, 200)]]
    fig = training_curves_figure(recs, metrics=("perplexity",))
    assert all(list(tr.x) == [50, 100, 150, 200] for tr in fig.data)
    per_epoch = [dict(r, step=r["step"], epoch=k) for k, r in enumerate(recs)]  # one validation per epoch -> epoch
    steps = [dict(type="step", epoch=0, step=s, loss=0.5, perplexity=3.0, active_codes=4) for s in (20, 40)]  # trainer step lines
    mixed = training_curves_figure(steps + [dict(r, type="epoch") for r in recs], metrics=("perplexity",))
    assert all(list(tr.x) == [50, 100, 150, 200] for tr in mixed.data)  # only the validation records are drawn
    assert all(list(tr.x) == [0, 1, 2, 3] for tr in training_curves_figure(per_epoch, metrics=("perplexity",)).data)

def test_concept_records_accepts_objects_and_shapes():
    class FakeConcepts:                                    # the shape clvq_nb.concepts may return
        def to_records(self):
            return [dict(concept=1, members=[dict(word="a", count=2), dict(word="b", count=5)], label_distribution={"1": 4})]
    r = concept_records(FakeConcepts())[0]
    assert r["id"] == 1 and r["words"] == [("b", 5), ("a", 2)] and r["size"] == 7 and r["label_counts"] == {"1": 4}
    with pytest.raises(ValueError, match="no id"): concept_records([dict(words={"a": 1})])


def test_heatmaps_data(demo):
    m = load_run(demo)["clvqvae"]
    s = m.sentence(m.sentence_ids[3])
    fig = token_concept_heatmap(s["words"], s["concepts"])
    z = np.asarray(fig.data[0].z)
    assert z.shape == (len(s["words"]), len(set(s["concepts"]))) and (z.sum(1) == 1).all()
    cols = [int(c[1:]) for c in fig.data[0].x]
    assert [cols[int(np.argmax(row))] for row in z] == s["concepts"]      # each word's 1 sits under its concept
    fig = concept_label_heatmap(m.concepts, m.label_names, top=5)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (5, 2) and np.allclose(z.sum(1), 1) and list(fig.data[0].x) == list(m.label_names)
    sizes = [int(y.split("n=")[1].rstrip(")")) for y in fig.data[0].y]
    assert sizes == sorted(sizes, reverse=True)                            # largest concepts first


def test_top_tokens_and_sentence_html(demo):
    m = load_run(demo)["kmeans"]
    r = m.concepts[0]
    fig = concept_top_tokens_figure(r, n=3)
    assert list(fig.data[0].y) == [w for w, _ in r["words"][:3]] and list(fig.data[0].x) == [c for _, c in r["words"][:3]]
    assert fig.data[0].marker.color == concept_color(r["id"])
    h = sentence_html(["x", "y"], [r["id"], 999], highlight=0)
    assert concept_color(r["id"]) in h and concept_color(999) in h and h.index("underline") < h.index(">y<")


def test_comparison_figure_from_json_percent(tmp_path):
    rows = [dict(method="clvq-vae", acc_original=80.0, acc_removed=12.0, acc_random=78.0, ci_low=10.0, ci_high=15.0)]
    (tmp_path / "c.json").write_text(json.dumps({"rows": rows}))
    fig = comparison_figure(tmp_path / "c.json")
    orig, rem, rnd = fig.data
    assert list(rem.y) == [12.0, PAPER_REFERENCE["acc_removed"]] and list(orig.y) == [80.0, 89.5]
    assert list(rem.error_y.arrayminus) == [2.0, 0.0] and list(rem.error_y.array) == [3.0, 0.0]
    assert list(rnd.y) == [78.0, 83.1]


def test_demo_comparison_is_computed(demo):
    t = comparison_table(demo)
    assert list(t["method"]) == ["clvqvae", "kmeans"]
    assert np.allclose(t["relative_drop"], (t["acc_original"] - t["acc_removed"]) / t["acc_original"])
    assert (t["acc_original_ci_low"] <= t["acc_original"]).all() and (t["acc_original"] <= t["acc_original_ci_high"]).all()


def test_single_method_folder_and_errors(tmp_path, demo):
    m = load_method(demo / "methods" / "kmeans")
    assert m.name == "kmeans" and m.history is None and m.counts.sum() > 0
    (tmp_path / "bad").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished run"): load_run(tmp_path / "bad")


def test_widgets_update_figures(demo):
    ms = load_run(demo)
    h = concept_heatmap_widget(ms)
    h.controls["method"].value = "clvqvae"
    seen = []
    for i in (0, 4):
        h.controls["sentence"].value = i
        s = ms["clvqvae"].sentence(ms["clvqvae"].sentence_ids[i])
        assert [y.split(": ", 1)[1] for y in h.figures["tokens"].data[0].y] == s["words"]
        seen.append(tuple(h.figures["tokens"].data[0].y))
    assert seen[0] != seen[1]
    e = concept_explorer_widget(ms)
    target = ms[e.controls["method"].value].concepts[2]
    e.controls["concept"].value = target["id"]
    assert list(e.figures["words"].data[0].x) == [c for _, c in target["words"][:10]]
    w = codebook_usage_widget({"a": dict(counts=[5, 0, 1]), "b": dict(counts=[1, 1, 1, 1])})
    assert len(w.figures["usage"].data[1].x) == 1
    w.controls["run"].value = "b"
    assert len(w.figures["usage"].data[0].y) == 4 and "perplexity 4.0" in w.html["stats"].value


def test_sweep_summary_figure_marks_failures():
    df = pd.DataFrame(dict(k=[1, 2, 3], status=["done", "failed", "done"], acc=[0.2, None, 0.4]))
    fig = sweep_summary_figure(df, "acc", "k")
    assert list(fig.data[0].x) == [1, 3] and fig.data[1].name == "failed" and list(fig.data[1].x) == [2]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["codebook_usage", "concept_heatmaps", "concept_explorer"])
def test_explore_notebook_runs_headless(tmp_path, demo, name):
    "Each explore notebook runs top to bottom with papermill on a run folder and keeps plotly figures in its outputs."
    out = tmp_path / f"{name}.ipynb"
    r = subprocess.run([sys.executable, "-m", "papermill", "-k", "python3", "--no-progress-bar",
                        str(ROOT / "nbs" / "explore" / f"{name}.ipynb"), str(out), "-p", "run_dir", str(demo)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    nb = json.loads(out.read_text())
    mimes = [k for c in nb["cells"] for o in c.get("outputs", []) for k in o.get("data", {})]
    assert "application/vnd.plotly.v1+json" in mimes and "application/vnd.jupyter.widget-view+json" in mimes


def test_run_written_with_real_concepts_and_trainer_files(tmp_path):
    "A run folder as the pipeline writes it: Concepts.save (concepts.json + token_concepts.npy), tokens.parquet, metrics.jsonl."
    from clvq_nb.concepts import Concepts, summarise_concepts
    tokens = pd.DataFrame(dict(sid=[0, 0, 0, 1, 1], pos=[0, 1, 2, 0, 1], word=["[CLS]", "good", "film", "[CLS]", "bad"],
                               is_tag=[True, False, False, True, False], label=[1, 1, 1, 0, 0], pred=[1, 1, 1, 0, 0]))
    tc = np.array([0, 1, 2, 0, 1])
    cs = summarise_concepts(tc, tokens, np.array([0, 3, 5]), 3, ["neg", "pos"])
    d = tmp_path / "run" / "methods" / "clvq-vae"
    Concepts("clvq-vae", 3, 3, ["neg", "pos"], cs, tc).save(d)
    tokens.to_parquet(tmp_path / "run" / "tokens.parquet")
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        dict(type="epoch", epoch=0, step=3, train_loss=1.0, val_loss=1.2, train_perplexity=2.0, val_perplexity=1.5,
             train_active_codes=3, val_active_codes=2)]) + "\n")
    m = load_run(tmp_path / "run")["clvq-vae"]
    assert m.label_names == ["neg", "pos"] and list(m.counts) == [2, 2, 1]
    assert m.sentence(0)["concepts"] == [0, 1, 2]
    c1 = next(r for r in m.concepts if r["id"] == 1)
    assert dict(c1["words"]) == {"good": 1, "bad": 1} and c1["label_counts"] == {"neg": 1, "pos": 1}
    assert all(e["words"][e["pos"]] in ("good", "bad") for e in c1["examples"])
    fig = training_curves_figure(m.history)
    assert [t.name for t in fig.data[:2]] == ["train", "dev"] and list(fig.data[1].y) == [1.5]
    w = concept_explorer_widget({"clvq-vae": m}); w.controls["search"].value = "bad"
    assert w.controls["concept"].value == 1 and list(w.figures["labels"].data[0].x) == ["neg", "pos"]
