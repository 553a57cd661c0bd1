"""`clvq judge` plumbing: a finished tiny run folder -> judge inputs -> ratings JSONL (resumable) -> ranking table.

The run is a random tiny BERT through the real pipeline (kmeans and SAE only, to stay fast); judges are the
local chat-completions test server (`FakeChatServer`) and a tiny causal LM loaded from a folder.
"""
import json, os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clvq_nb.judge import JudgeError, JudgeSentence, ResultStore
from clvq_nb.judge_backends import HFJudge, HTTPJudge, make_backend
from clvq_nb.judge_runner import judge_inputs, judge_run
from clvq_nb.testing import FakeChatServer, OverlapJudge, RandomJudge, tiny_causal_lm

SECRET = "sk-judge-run-test-" + "7" * 20
KEY_ENV = "CLVQ_TEST_JUDGE_RUN_KEY"
COLUMNS = ["dataset", "model", "method", "mean_rating", "pooled_mean", "n_judges", "rank", "winner", "n_rated", "n_missing"]
SINGLE = dict(style="single", sampler="ours", validity=False)       # the project's own protocol, as before


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "A finished `compare` run on a tiny random BERT, with CLVQ_HOME pointing at its caches for the module's tests."
    from clvq_nb.models import tiny_bert
    from clvq_nb.pipeline import ExperimentConfig, compare, prepare
    d = tmp_path_factory.mktemp("judge_run")
    old = os.environ.get("CLVQ_HOME"); os.environ["CLVQ_HOME"] = str(d)
    m, tok = tiny_bert(num_labels=2, hidden=32, layers=4, heads=2)
    m.save_pretrained(d / "tiny"); tok.save_pretrained(d / "tiny")
    cfg = ExperimentConfig(model=str(d / "tiny"), layer_in=2, layer_out=4, max_sentences=240, max_train=100, codebook_size=8,
                           epochs=2, train_steps=6, train_minutes=None, sae_epochs=1, ig_steps=4, folds=2, methods="kmeans,sae",
                           output_dir=str(d / "run"))
    p = prepare(cfg, progress=False, log=lambda *a: None)
    compare(p, progress=False, log=lambda *a: None)
    yield d / "run", p
    if old is None: os.environ.pop("CLVQ_HOME", None)
    else: os.environ["CLVQ_HOME"] = old


def _reply(prompt: str) -> str:
    return f"Rating: {1 + len(prompt) % 3}"


def test_judge_inputs_match_the_run(tiny_run):
    run, p = tiny_run
    sents, concepts, names, task = judge_inputs(run)
    assert task == "movie" and names == json.loads((run / "run.json").read_text())["label_names"]
    assert sorted(concepts) == ["kmeans", "sae"]
    assert all(isinstance(s, JudgeSentence) for s in sents)
    sids = [s.sid for s in sents]
    assert len(set(sids)) == len(sids) and len(sents) >= 0.8 * len(p.data["dev"])
    dev = p.data["dev"]
    text = dict(zip(dev["sid"], dev["text"])); gold = dict(zip(dev["sid"], dev["label"]))
    toks = p.dev_cache.tokens
    tag = toks[toks.is_tag]
    pred = dict(zip(tag.sid, tag.pred))
    for s in sents:
        assert s.text == text[s.sid] and s.label == gold[s.sid] and s.pred == pred[s.sid]
        (w1, k1), (w2, k2) = s.salient["kmeans"], s.salient["sae"]
        assert w1 == w2 and w1 in set(toks.word[(toks.sid == s.sid) & ~toks.is_tag])
        assert k1 in concepts["kmeans"] and k2 in concepts["sae"]
    # the concept is what the saved method assigns to the salient word's layer-l_in vector
    import torch
    from clvq_nb.baselines import load_method
    from clvq_nb.metrics import salient_rows
    from clvq_nb.pipeline import dev_salient
    km = load_method(run / "methods" / "kmeans")
    sal = dev_salient(p, run, progress=False)
    rows = salient_rows(p.dev_cache, sal.index)
    first = np.asarray(p.dev_cache.sentence_offsets)[:-1]
    row_of = dict(zip(toks.sid.to_numpy()[first], rows))
    x = torch.as_tensor(p.dev_cache.layer(2)[torch.as_tensor([row_of[s.sid] for s in sents[:10]])]).float()
    assert km.assign(x).tolist() == [s.salient["kmeans"][1] for s in sents[:10]]
    s2, c2, _, _ = judge_inputs(run, methods=["sae"])
    assert list(c2) == ["sae"] and all(list(s.salient) == ["sae"] for s in s2)


def test_judge_inputs_bad_input(tiny_run, tmp_path):
    run, _ = tiny_run
    with pytest.raises(JudgeError, match="no run.json"): judge_inputs(tmp_path)
    with pytest.raises(JudgeError, match="membership"): judge_inputs(run, membership="last")
    with pytest.raises(ValueError, match="not saved"): judge_inputs(run, methods=["clvqvae"])


def test_http_judge_run_resume_and_no_key_leak(tiny_run, tmp_path, monkeypatch):
    run, _ = tiny_run
    out = tmp_path / "judge"
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeChatServer(reply_fn=_reply) as srv:
        b = make_backend(srv.url, api_key_env=KEY_ENV, model="fake-judge")
        assert isinstance(b, HTTPJudge)
        t = judge_run(run, b, n=16, out=out, progress=False, **SINGLE)
        asked = len(srv.requests)
        t_again = judge_run(run, b, n=16, out=out, progress=False, **SINGLE)
        assert len(srv.requests) == asked                                   # resumed: nothing new asked
    assert srv.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    lines = (out / "http_fake-judge.jsonl").read_text().splitlines()
    recs = [json.loads(l) for l in lines]
    assert len(recs) == asked == 32                                         # 16 sentences x 2 methods, once each
    assert {(r["judge"], r["method"]) for r in recs} == {("http:fake-judge", "kmeans"), ("http:fake-judge", "sae")}
    assert all(r["rating"] in (1, 2, 3) and r["dataset"] == "movie" for r in recs)
    assert len({r["sid"] for r in recs}) == 16
    assert list(t.columns) == COLUMNS and sorted(t.method) == ["kmeans", "sae"]
    pd.testing.assert_frame_equal(t, t_again)
    means = pd.DataFrame(recs).groupby("method").rating.mean()
    assert t.set_index("method").mean_rating.to_dict() == pytest.approx(means.to_dict())
    assert t.winner.sum() >= 1 and (t.n_rated == 16).all() and (t.n_missing == 0).all()
    for f in ("ranking.csv", "ranking.json", "ratings.html"): assert (out / f).exists(), f
    assert pd.read_csv(out / "ranking.csv").columns.tolist() == COLUMNS
    meta = json.loads((out / "ranking.json").read_text())
    assert meta["judges"] == ["http:fake-judge"] and meta["agreement"] is None and meta["n_sentences"] == 16
    assert sum(meta["strata"].values()) == 16
    for f in out.iterdir(): assert SECRET not in f.read_text(), f
    assert not (run / "judge").exists() or all(SECRET not in f.read_text() for f in (run / "judge").iterdir())


def test_interrupted_run_asks_only_the_rest(tiny_run, tmp_path):
    run, _ = tiny_run

    class Dies:
        name = "dies"
        def __init__(self, after=None): self.calls, self.after = 0, after
        def complete(self, prompt):
            self.calls += 1
            if self.after is not None and self.calls > self.after: raise RuntimeError("killed")
            return _reply(prompt)

    with pytest.raises(RuntimeError, match="killed"): judge_run(run, Dies(after=7), n=8, out=tmp_path, progress=False, **SINGLE)
    assert len(ResultStore(tmp_path / "dies.jsonl").records()) == 7
    b = Dies(); t = judge_run(run, b, n=8, out=tmp_path, progress=False, **SINGLE)
    assert b.calls == 16 - 7 and (t.n_rated == 8).all()


def test_hf_judge_from_folder_and_two_judges(tiny_run, tmp_path, monkeypatch):
    run, _ = tiny_run
    out = tmp_path / "judge"
    lm, tok = tiny_causal_lm(); lm.save_pretrained(tmp_path / "lm"); tok.save_pretrained(tmp_path / "lm")
    hj = make_backend(str(tmp_path / "lm"))
    assert isinstance(hj, HFJudge) and hj.name == "hf:lm"
    t = judge_run(run, hj, n=10, out=out, progress=False, **SINGLE)
    recs = ResultStore(out / "hf_lm.jsonl").records()
    assert len(recs) == 20 and all(r["rating"] in (1, 2, 3) and len(r["probs"]) == 3 for r in recs)
    assert (t.n_judges == 1).all()
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeChatServer(reply_fn=_reply) as srv:
        t2 = judge_run(run, make_backend(srv.url, api_key_env=KEY_ENV, model="fake-judge"), n=10, out=out, progress=False, **SINGLE)
    assert (t2.n_judges == 2).all() and (t2.n_rated == 20).all()
    meta = json.loads((out / "ranking.json").read_text())
    assert meta["judges"] == ["hf:lm", "http:fake-judge"] and meta["agreement"]["n_units"] == 20
    assert set(meta["per_judge"]) == {"hf:lm", "http:fake-judge"}


def test_make_backend_specs():
    b = make_backend("https://api.example.com/v1/", model="gpt-x", api_key_env="SOME_KEY", timeout=5)
    assert (b.base_url, b.model, b.api_key_env, b.timeout) == ("https://api.example.com/v1", "gpt-x", "SOME_KEY", 5)
    with pytest.raises(ValueError, match="=MODEL"): make_backend("http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="only for endpoint URLs"): make_backend("local", model="x")
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        make_backend("http://127.0.0.1:8000/v1", model="m", api_key_env="sk-abc")
    with pytest.raises(ValueError, match="empty"): make_backend("")


def test_paper_style_two_judges_validity_and_http(tiny_run, tmp_path, monkeypatch):
    "The authors' protocol on a run folder: one prompt per sentence, controls, several judges in one call, the validity verdicts."
    run, _ = tiny_run
    monkeypatch.setenv(KEY_ENV, SECRET)
    seen = []
    def reply(prompt):
        seen.append(prompt)
        return RandomJudge(seed=len(seen)).complete(prompt)
    with FakeChatServer(reply_fn=reply) as srv:
        judges = [OverlapJudge(), make_backend(f"{srv.url}=coin", api_key_env=KEY_ENV)]
        t = judge_run(run, judges, n=24, out=tmp_path, progress=False)
        asked = len(srv.requests)
        judge_run(run, judges, n=24, out=tmp_path, progress=False)
        assert len(srv.requests) == asked                                  # resumed
    assert asked == 2 * 24                                                  # one methods prompt + one controls prompt per sentence
    assert sum('Configuration "kmeans"' in p and 'Configuration "sae"' in p for p in seen) == 24
    assert sum('Configuration "Concept A"' in p for p in seen) == 24
    v = pd.read_csv(tmp_path / "validity.csv").set_index("judge")
    # a random tiny BERT's concepts are noise, so only the coin's verdict is known here (the truth-following
    # judge is checked on planted concepts in test_judge_protocol.py)
    assert bool(v.cannot_discriminate["http:coin"]) and (v.n_real == 24).all() and (v.n_random == 24).all()
    flagged = ", ".join(sorted(v.index[v.cannot_discriminate]))
    assert (t.cannot_discriminate == flagged).all()
    assert "CANNOT DISCRIMINATE" in t.attrs["text"] and "judge fake:overlap" in t.attrs["text"]
    meta = json.loads((tmp_path / "ranking.json").read_text())
    assert meta["style"] == "paper" and meta["reference"] == "kmeans" and meta["paper_aggregate"]["judges"] == ["fake:overlap", "http:coin"]
    assert set(meta["paper_aggregate"]["alpha_interval"]) == {"kmeans", "sae"}
    assert "(cannot discriminate)" in (tmp_path / "ratings.html").read_text()
    for f in tmp_path.iterdir(): assert SECRET not in f.read_text(), f


def test_sampled_membership(tiny_run, tmp_path):
    "membership='sampled' equals argmin for methods without a sampler (k-means), and is cached in the judge folder."
    run, _ = tiny_run
    s1, c1, _, _ = judge_inputs(run, methods=["kmeans"])
    s2, c2, _, _ = judge_inputs(run, methods=["kmeans"], membership="sampled")
    assert c1 == c2 and [s.salient for s in s1] == [s.salient for s in s2]
    assert (run / "judge" / "membership-sampled" / "kmeans" / "concepts.json").exists()


def _old_judge_inputs(run, p, membership, sampled_dir):
    "What `judge_inputs` computed before it read the dev-sentence table: prepare's caches, IG's salient words, `method.assign`."
    import torch
    from clvq_nb.baselines import load_method
    from clvq_nb.concepts import Concepts
    from clvq_nb.judge import concept_views
    from clvq_nb.judge_runner import sampled_concepts
    from clvq_nb.metrics import salient_rows
    from clvq_nb.pipeline import dev_salient
    sal, dev, cfg = dev_salient(p, run, progress=False), p.dev_cache, p.cfg
    toks = dev.tokens
    first = np.asarray(dev.sentence_offsets, dtype=np.int64)[:-1]
    rows = salient_rows(dev, sal.index)
    ok = np.flatnonzero(rows >= 0)
    words = toks["word"].astype(str).to_numpy()
    x = torch.as_tensor(dev.layer(cfg.layer_in)[torch.as_tensor(rows[ok])]).float()
    names = sorted(d.name for d in (run / "methods").iterdir())
    concepts, ids = {}, {}
    for m in names:
        meth, cs = load_method(run / "methods" / m), Concepts.load(run / "methods" / m)
        if membership == "sampled": cs = sampled_concepts(meth, p.train_cache, cfg.layer_in, sampled_dir / m, cfg.seed)
        with torch.no_grad(): ids[m] = torch.as_tensor(meth.assign(x)).long().numpy()
        concepts[m] = concept_views(cs)
    text = dict(zip(p.data["dev"]["sid"], p.data["dev"]["text"]))
    sents = []
    for j, i in enumerate(ok):
        sid = int(toks["sid"].to_numpy()[first][i])
        sal_i = {m: (words[rows[i]], int(ids[m][j]) if int(ids[m][j]) in concepts[m] else None) for m in names}
        sents.append(JudgeSentence(sid, text[sid], int(toks["label"].to_numpy()[first][i]), int(toks["pred"].to_numpy()[first][i]), sal_i))
    return sents, concepts, list(p.clf.label_names), "movie"


def test_judge_and_human_read_the_run_without_recomputing(tiny_run, tmp_path, monkeypatch):
    "judge_inputs (both memberships) and study_from_run read the run folder only; they give what the old recomputing path gave."
    import shutil
    import clvq_nb.activations, clvq_nb.concepts, clvq_nb.data, clvq_nb.models, clvq_nb.pipeline
    from clvq_nb.human import make_study_items, study_from_run
    run, p = tiny_run
    old = {mb: _old_judge_inputs(run, p, mb, tmp_path / "old-sampled") for mb in ("argmin", "sampled")}
    shutil.rmtree(run / "judge" / "membership-sampled", ignore_errors=True)   # the sampled path must draw again, over the train cache
    def recompute(*a, **k): raise AssertionError("the run folder's inputs were recomputed")
    for mod, name in [(clvq_nb.pipeline, "prepare"), (clvq_nb.pipeline, "dev_salient"), (clvq_nb.data, "load_data"),
                      (clvq_nb.models, "get_classifier"), (clvq_nb.activations, "get_activations"), (clvq_nb.concepts, "salient_tokens")]:
        monkeypatch.setattr(mod, name, recompute)
    for mb in ("argmin", "sampled"):
        new = judge_inputs(run, membership=mb)
        assert len(new[0]) == len(old[mb][0]) >= 0.8 * len(p.data["dev"])
        assert new == old[mb], mb
    assert (run / "judge" / "membership-sampled" / "kmeans" / "concepts.json").exists()
    st = study_from_run(run, tmp_path / "study", n=8)
    sents, concepts, names, _ = old["argmin"]
    shown = [s for s in sents if all(k is not None for _, k in s.salient.values())]
    assert st.label_names == names and st.items == make_study_items(shown, concepts, len(names), n=8)
    assert {i.method for i in st.items} == {"kmeans", "sae"}


def test_judge_inputs_need_the_dev_sentence_table(tiny_run, tmp_path):
    "A run folder without the table, with a table of the old layout, or without its train cache (sampled): one clear error each."
    import shutil
    from clvq_nb.config import ClvqError, read_json, write_json
    run, _ = tiny_run
    cp = tmp_path / "run"
    shutil.copytree(run, cp, ignore=shutil.ignore_patterns("judge", "train"))
    f = cp / "dev_sentences.parquet"
    old = pd.read_parquet(f); old.attrs = {}; old.to_parquet(f, index=False)    # as layout 2 wrote it
    with pytest.raises(ClvqError, match="older clvq_nb.*rerun `clvq compare`"): judge_inputs(cp)
    f.unlink()
    with pytest.raises(ClvqError, match="dev_sentences.parquet is missing: `clvq compare`"): judge_inputs(cp)
    shutil.copyfile(run / "dev_sentences.parquet", f)
    info = read_json(cp / "run.json"); info["summary"]["train_cache"] = str(tmp_path / "gone")
    write_json(cp / "run.json", info)
    assert judge_inputs(cp)[0]                                                  # argmin never opens the train cache
    with pytest.raises(JudgeError, match="train activation cache.*rerun `clvq compare`"): judge_inputs(cp, membership="sampled")


def test_human_study_notebook_on_a_run(tiny_run, tmp_path):
    "The explore notebook builds its study from a run folder (papermill -p run_dir), in <run>/human."
    import subprocess, sys
    run, _ = tiny_run
    nb = Path(__file__).resolve().parents[1] / "nbs" / "explore" / "human_study.ipynb"
    r = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(tmp_path / "out.ipynb"), "-k", "python3", "-p", "run_dir",
                        str(run), "-p", "n", "4", "--cwd", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"8 items in {run / 'human'}" in (tmp_path / "out.ipynb").read_text()
    assert json.loads((run / "human" / "study.json").read_text())["label_names"] == ["negative", "positive"]


def test_local_spec_runs_every_offline_judge(tiny_run, tmp_path, monkeypatch):
    # 'local' names both offline judges; judge_run once made both and asked only the first (one spec, one judge)
    import clvq_nb.judge_backends as jb
    run, _ = tiny_run
    lm, tok = tiny_causal_lm(); lm.save_pretrained(tmp_path / "lm"); tok.save_pretrained(tmp_path / "lm")
    monkeypatch.setattr(jb, "LOCAL_JUDGES", {"lm-a": lambda: tmp_path / "lm", "lm-b": lambda: tmp_path / "lm"})
    t = judge_run(run, "local", n=6, out=tmp_path / "judge", progress=False, **SINGLE)
    meta = json.loads((tmp_path / "judge" / "ranking.json").read_text())
    assert meta["judges"] == ["hf:lm-a", "hf:lm-b"] and (t.n_judges == 2).all()
    assert sorted(f.name for f in (tmp_path / "judge").glob("*.jsonl")) == ["hf_lm-a.jsonl", "hf_lm-b.jsonl"]


def test_clvqvae_keeps_last_sampled_codes(tiny_run, tmp_path):
    "The authors' membership: each training token's code as last sampled in training, saved with the method, -> concepts."
    from clvq_nb.baselines import fit_rows, get_method, load_method
    from clvq_nb.concepts import extract_concepts
    run, p = tiny_run
    m = get_method("clvqvae", codebook_size=8, seed=0, model=dict(n_layers=1, n_heads=2, d_ff=16, top_k=3),
                   train=dict(max_steps=4, batch_size=16))
    m.fit(p.train_cache, 2, 4, progress=False)
    codes = m.sampled
    assert len(codes) == p.train_cache.n_tokens and codes.min() >= -1 and codes.max() < 8 and (codes >= 0).any()
    m.save(tmp_path / "m"); back = load_method(tmp_path / "m")
    assert np.array_equal(back.sampled, codes)
    c = extract_concepts(back, p.train_cache, 2, token_concepts=back.sampled, progress=False)
    kept = np.zeros(len(codes), bool); kept[fit_rows(p.train_cache)] = True
    want = np.bincount(codes[kept & (codes >= 0)], minlength=8)
    assert [x["size"] for x in c.concepts] == want.tolist()
