"""Tests of clvq_nb.concepts: concept extraction on a real activation cache with a real baseline, save/load,
salient tokens by Integrated Gradients on a tiny BERT with a planted word, the IG cache and bad input."""
import json

import numpy as np
import pytest
import torch

from clvq_nb.concepts import (Concepts, _planted_task, _train_planted, assign_tokens, extract_concepts,
                              salient_tokens)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import datasets
    from clvq_nb.activations import extract_activations
    from clvq_nb.models import tiny_bert
    sents, labels = _planted_task(60, seed=4)
    ds = datasets.Dataset.from_dict({"text": [" ".join(s) for s in sents], "label": labels, "sid": list(range(100, 160))})
    model, tok = tiny_bert(num_labels=3, hidden=16, layers=2, heads=2, seed=0, max_position=32)
    keep = [[j % 4 != 3 for j in range(len(s))] for s in sents]
    return extract_activations(model, tok, ds, [1, 2], tmp_path_factory.mktemp("acts"), keep_mask=keep, progress=False)


def _frame(cache):
    t = cache.tokens
    return t.to_pandas() if hasattr(t, "to_pandas") else t


def test_extract_concepts_kmeans(cache, tmp_path):
    from clvq_nb.baselines import KMeans
    km = KMeans(n_clusters=5, seed=0); km.fit(cache, 1, 1)
    c = extract_concepts(km, cache, 1, top_n=3, n_examples=2, out_dir=tmp_path, progress=False)
    df = _frame(cache)
    tc = km.assign(cache.layer(1)[np.arange(cache.n_tokens)].float()).numpy()
    assert np.array_equal(c.token_concepts, tc)
    kept = df["keep"].to_numpy(bool)
    assert sum(x["size"] for x in c.concepts) == kept.sum()
    for x in c.concepts:
        m = (tc == x["id"]) & kept
        assert x["size"] == m.sum() and x["empty"] == (m.sum() == 0)
        assert np.isclose(x["tag_share"], df["is_tag"].to_numpy()[m].mean() if m.any() else 0.0)
        top = df["word"][m].value_counts()
        assert [n for _, n in x["words"]] == list(top.values[:3])
        assert sum(x["labels"].values()) == df["sid"][m].nunique()
        for e in x["examples"]:
            assert tc[e["row"]] == x["id"] and df["sid"].iloc[e["row"]] == e["sid"]
            assert (e["is_tag"] and "[[" not in e["text"]) or f"[[{e['word']}]]" in e["text"]
        assert len({e["sid"] for e in x["examples"]}) == len(x["examples"]) <= 2
    c2 = Concepts.load(tmp_path)
    assert c2.concepts == c.concepts and np.array_equal(c2.token_concepts, c.token_concepts)
    assert json.loads((tmp_path / "concepts.json").read_text())["n_tokens"] == cache.n_tokens
    assert not list(tmp_path.glob(".*.tmp"))


def test_empty_concepts_are_kept_and_flagged(cache):
    class Two:
        name, n_concepts = "two", 4
        def assign(self, x): return (x[:, 0] > 0).long() * 3      # concepts 1 and 2 are never used
        def concept_vector(self, k): return torch.eye(16)[k]
    c = extract_concepts(Two(), cache, 1, progress=False)
    assert len(c) == 4 and c.empty_ids == [1, 2] and c[1]["words"] == [] and c[1]["examples"] == []
    assert c.summary().shape[0] == 4


def test_extract_bad_input(cache):
    with pytest.raises(TypeError, match="no assign"): assign_tokens(object(), cache, 1)
    class Wrong:
        name, n_concepts = "w", 2
        def assign(self, x): return torch.zeros(len(x) + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="one concept id per token"): extract_concepts(Wrong(), cache, 1, progress=False)
    with pytest.raises(FileNotFoundError, match="extract_concepts"): Concepts.load("/nonexistent/dir")


@pytest.fixture(scope="module")
def planted():
    torch.manual_seed(0)
    return _train_planted()


def test_salient_token_finds_planted_word(planted, tmp_path):
    model, tok = planted
    sents, labels = _planted_task(30, seed=7)
    sents = [s for s, y in zip(sents, labels) if y < 2]
    p = tmp_path / "ig.json"
    st = salient_tokens(model, tok, [" ".join(s) for s in sents], sents, n_steps=24, batch_size=4, cache_path=p,
                        progress=False)
    assert np.mean([st.word(i) in ("great", "worst") for i in range(len(sents))]) >= 0.9
    for sc, w in zip(st.scores, sents):
        assert len(sc) == len(w) and np.isclose(np.linalg.norm(sc), 1.0, atol=1e-5)
    # resume: drop half of the cached sentences; the rerun recomputes them and gives the same answer
    c = json.loads(p.read_text())
    c["done"] = {k: v for k, v in c["done"].items() if int(k) % 2}
    p.write_text(json.dumps(c))
    st2 = salient_tokens(model, tok, [" ".join(s) for s in sents], sents, n_steps=24, batch_size=4, cache_path=p,
                         progress=False)
    assert np.array_equal(st2.index, st.index)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(st.scores, st2.scores))
    assert len(json.loads(p.read_text())["done"]) == len(sents)
    # a cap on path points x length per pass (flat memory for long texts): same words, scores equal to float precision
    st3 = salient_tokens(model, tok, [" ".join(s) for s in sents], sents, n_steps=24, batch_size=4, progress=False,
                         max_pass_tokens=40)
    assert np.array_equal(st3.index, st.index) and all(np.allclose(a, b, atol=1e-5) for a, b in zip(st.scores, st3.scores))


def test_salient_subwords_merged_by_max_and_truncation(planted):
    model, tok = planted
    words = [["the", "greatest", "film"], ["the"] * 40 + ["great"]]    # 'greatest' splits into pieces
    assert len(tok.tokenize("greatest")) > 1
    st = salient_tokens(model, tok, [" ".join(w) for w in words], words, n_steps=8, max_length=12, progress=False)
    assert len(st.scores[0]) == 3 and np.isfinite(st.scores[0]).all()
    assert np.isnan(st.scores[1][-1]) and 0 <= st.index[1] < 10      # truncated words get no score


def test_salient_bad_input(planted):
    model, tok = planted
    with pytest.raises(TypeError, match="list of strings"): salient_tokens(model, tok, "a film", progress=False)
    with pytest.raises(ValueError, match="one per text"): salient_tokens(model, tok, ["a", "b"], [["a"]], progress=False)
    with pytest.raises(ValueError, match="at least 2 steps"): salient_tokens(model, tok, ["a"], [["a"]], n_steps=1)


def test_ig_bench_script_runs_small(capsys, run_bench):
    "bench/ig.py runs end to end on the embedded default (4 sentences, 4 steps) and both IG paths pick the same words."
    r = run_bench("ig", "--n", "4", "--steps", "4", "--repeats", "1", "--threads", "1")
    out = capsys.readouterr().out
    assert r > 0 and "same picks: True" in out and "peer: captum LayerIntegratedGradients" in out
