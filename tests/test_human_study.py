"""Human study: the state machine driven programmatically, resume after a crash, Wilson intervals, the
ipywidgets front end driven by clicks, and the explore notebook executed headless with papermill."""
import json, math, os, subprocess, sys
from dataclasses import asdict
from pathlib import Path

import pytest

from clvq_nb.human import (AnnotationUI, HumanStudy, StudyItem, concept_figure, demo_study, make_study_items,
                           results_figure, wilson_ci)
from clvq_nb.judge import ConceptView, demo_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    return demo_study(tmp_path / "study", n=6)


def test_items_hide_method_and_prediction(study):
    s = study.session("ann1")
    card = s.current()
    assert set(vars(card)) == {"item_id", "position", "total", "concept"}
    assert isinstance(card.concept, ConceptView)
    assert all(m not in i.item_id for i in study.items for m in ("clvq", "kmeans"))
    assert len(study.items) == 12 and {i.method for i in study.items} == {"clvq-vae", "kmeans"}


def test_orders_differ_per_annotator_and_are_stable(study):
    o1, o2 = study.session("ann1").order, study.session("ann2").order
    assert sorted(o1) == sorted(o2) and o1 != o2
    assert HumanStudy(study.folder).session("ann1").order == o1


def test_answers_saved_immediately_and_resume(study):
    s = study.session("ann1")
    first = s.current().item_id
    s.answer("positive")                                              # by name
    f = study.folder / "answers" / "ann1.jsonl"
    rec = json.loads(f.read_text().splitlines()[0])
    assert rec["item_id"] == first and rec["answer"] == 1 and "method" not in rec
    s.answer(0)
    with open(f, "a") as fh: fh.write('{"annotator": "ann1", "item_')  # crash mid-write
    r = HumanStudy(study.folder).session("ann1")
    assert r.progress == (2, 12) and r.current().position == 2
    r.answer(1)                                                       # the partial line is cut, not glued to
    assert [json.loads(l)["answer"] for l in f.read_text().splitlines()] == [1, 0, 1]


def test_results_accuracy_against_predictions(study):
    # annotator A always right, B right only for clvq-vae items
    a, b = study.session("A"), study.session("B")
    while (c := a.current()): a.answer(study.by_id[c.item_id].pred)
    while (c := b.current()):
        it = study.by_id[c.item_id]
        b.answer(it.pred if it.method == "clvq-vae" else 1 - it.pred)
    res = study.results().set_index("method")
    assert res.loc["clvq-vae", "accuracy"] == 1.0 and res.loc["kmeans", "accuracy"] == 0.5
    assert res.loc["kmeans", "n"] == 12 and res.loc["kmeans", "correct"] == 6
    lo, hi = wilson_ci(6, 12)
    assert res.loc["kmeans", "ci_low"] == pytest.approx(lo) and lo < 0.5 < hi
    assert len(results_figure(study.results()).data[0].x) == 2


def test_wilson_hand_worked():
    # 8 of 10, z=1.96: centre (0.8 + 0.19208)/1.38416 = 0.71676; half 1.96*sqrt(0.016 + 0.0096040)/1.38416 = 0.22657
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.71676 - 0.22657, abs=1e-4) and hi == pytest.approx(0.71676 + 0.22657, abs=1e-4)


def test_bad_input(study, tmp_path):
    with pytest.raises(ValueError, match="annotator id"): study.session("")
    with pytest.raises(ValueError, match="annotator id"): study.session("a/b")
    with pytest.raises(ValueError, match="out of range"): study.session("x").answer(5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        HumanStudy.create(study.folder, study.items[:3], study.label_names)
    with pytest.raises(ValueError, match="at least one item"): HumanStudy.create(tmp_path / "e", [], ["a"])


def test_widget_driven_by_clicks(study):
    ui = AnnotationUI(study)
    assert all(b.disabled for b in ui.buttons)                       # nothing to click before an id
    ui.id_box.value = "clicker"; ui.start.click()
    assert [b.description for b in ui.buttons] == ["negative", "positive"]
    for i in range(5): ui.buttons[i % 2].click()
    assert ui.bar.value == 5 and study.session("clicker").progress == (5, 12)
    ui2 = AnnotationUI(study, annotator="clicker"); ui2.start.click()
    assert ui2.bar.value == 5 and "Item 6 of 12" in ui2.message.value
    while not ui2.session.done: ui2.buttons[0].click()
    assert "Thank you" in ui2.message.value and study.results().n.sum() == 12


def test_concept_figure_shows_concept_not_prediction():
    _, concepts, _ = demo_inputs()
    f = concept_figure(concepts["kmeans"][0])
    assert list(f.data[0].y)[::-1][:3] == ["film", "movie", "story"]
    assert "positive" not in f.to_json() and "negative" not in f.to_json()


def test_notebook_runs_headless(tmp_path):
    "The explore notebook runs top to bottom without clicks on the demo study (papermill, as a user would)."
    env = {**os.environ, "CLVQ_HOME": str(tmp_path / "home")}
    nb = ROOT / "nbs" / "explore" / "human_study.ipynb"
    out = tmp_path / "out.ipynb"
    r = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(out), "-k", "python3", "-p", "annotator", "demo-1",
                        "--cwd", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cells = json.loads(out.read_text())["cells"]
    text = json.dumps([c.get("outputs", []) for c in cells])
    assert "12 items in" in text and "application/vnd.jupyter.widget-view+json" in text
    assert (tmp_path / "home" / "human_study" / "demo" / "study.json").exists()
