"""Tests of clvq_nb.metrics: projection, stratified folds without leakage, the fold-vectorised probe against
scikit-learn's MLP, concept removal end to end on a real activation cache, codebook metrics, bad input."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from clvq_nb.metrics import (code_counts, codebook_metrics, concept_removal, dead_fraction, evaluate_removal, fvu,
                             orthonormal_basis, perplexity, project_out, random_directions, salient_rows,
                             sentence_labels, sentence_vectors, stratified_folds, t_interval, train_fold_probes)


def _blobs(S=400, d=16, C=3, sep=1.5, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, C, S)
    M = g.normal(0, sep, (C, d))
    return torch.tensor(M[y] + g.normal(0, 1, (S, d)), dtype=torch.float32), torch.tensor(y)


def test_project_out_orthogonal_and_minimal(seed):
    X = torch.randn(100, 24)
    for r in (1, 2, 5):
        V = torch.randn(r, 24)
        Xp = project_out(X, V)
        assert (Xp @ V.T).abs().max() < 1e-4
        # only span(V) is removed: the residual equals X minus its least-squares fit on V's rows
        coef = torch.linalg.lstsq(V.T.double(), X.T.double()).solution
        assert torch.allclose(Xp.double(), X.double() - (V.T.double() @ coef).T, atol=1e-4)
    Q = orthonormal_basis(torch.stack([torch.ones(24), 2 * torch.ones(24), torch.eye(24)[0]]))
    assert Q.shape == (24, 2)                               # dependent rows do not add a direction


def test_project_out_bad_input():
    X = torch.randn(5, 8)
    with pytest.raises(ValueError, match="all zeros"): project_out(X, torch.zeros(8))
    with pytest.raises(ValueError, match="no vector"): project_out(X, torch.zeros(0, 8))
    with pytest.raises(ValueError, match="same layer"): project_out(X, torch.randn(9))
    with pytest.raises(ValueError, match=r"\[d\] or \[r, d\]"): project_out(X, torch.randn(2, 2, 8))


def test_random_directions():
    R = random_directions(32, 3, seed=5, n=4)
    assert R.shape == (4, 3, 32) and torch.allclose(R.norm(dim=-1), torch.ones(4, 3))
    assert torch.equal(R, random_directions(32, 3, seed=5, n=4)) and not torch.equal(R, random_directions(32, 3, seed=6, n=4))


@pytest.mark.parametrize("folds", [2, 5, 20])
def test_folds_stratified_disjoint_cover(folds):
    y = np.r_[np.zeros(100, int), np.ones(40, int), np.full(20, 2)]
    sp = stratified_folds(y, folds, seed=3)
    assert len(sp) == folds
    allte = np.concatenate([te for _, te in sp])
    assert np.array_equal(np.sort(allte), np.arange(len(y)))         # each sentence is tested exactly once
    for tr, te in sp:
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y)
        for c in range(3):
            share = (y[te] == c).sum() / len(te)
            assert abs(share - (y == c).mean()) < 0.5 / folds + 0.05


def test_folds_too_few_sentences_per_class():
    y = np.r_[np.zeros(50, int), np.ones(3, int)]
    with pytest.raises(ValueError, match="use folds <= 3"): stratified_folds(y, 5)
    with pytest.raises(ValueError, match="at least 2 folds"): stratified_folds(y, 1)


def test_probe_never_sees_test_fold(seed):
    """Identity features + random labels, no early stopping: the probe memorises what it trains on (train
    accuracy ~100%), so test accuracy is at chance only if it never saw the test rows. A leaky split is refused."""
    S = 160
    y = torch.randint(0, 2, (S,))
    X = torch.eye(S)
    sp = stratified_folds(y.numpy(), 4)
    net, info = train_fold_probes(X, y, sp, max_epochs=150, val_fraction=0)
    pred = net.logits_all(X).argmax(-1)
    for f, (tr, te) in enumerate(sp):
        fit, val = info["fit_val"][f]
        assert len(np.intersect1d(np.r_[fit, val], te)) == 0 and set(np.r_[fit, val]) == set(tr)
        assert (pred[f, fit] == y[fit]).float().mean() > 0.95
        assert (pred[f, te] == y[te]).float().mean() < 0.75
    leaky = [(np.arange(S), te) for _, te in sp]
    with pytest.raises(ValueError, match="disjoint"): train_fold_probes(X, y, leaky, max_epochs=1)
    # with early stopping the held-out part comes from the training fold only
    _, info = train_fold_probes(X, y, sp, max_epochs=3)
    for (tr, te), (fit, val) in zip(sp, info["fit_val"]):
        assert len(val) > 0 and set(np.r_[fit, val]) == set(tr) and len(np.intersect1d(fit, val)) == 0


def test_probe_matches_sklearn_mlp(seed):
    "Reference implementation: sklearn's MLPClassifier (64 hidden, Adam 1e-3, early stopping) on the same folds."
    from sklearn.neural_network import MLPClassifier
    X, y = _blobs(S=600, d=32, C=3, sep=0.6)
    sp = stratified_folds(y.numpy(), 5, seed=0)
    net, _ = train_fold_probes(X, y, sp)
    pred = net.logits_all(X).argmax(-1)
    ours = np.mean([(pred[f, te] == y[te]).float().mean().item() for f, (_, te) in enumerate(sp)])
    ref = np.mean([MLPClassifier((64,), learning_rate_init=1e-3, batch_size=64, early_stopping=True, alpha=0.0,
                                 n_iter_no_change=10, max_iter=200, random_state=0).fit(X[tr], y[tr]).score(X[te], y[te])
                   for tr, te in sp])
    assert 0.5 < ours and abs(ours - ref) < 0.05, (ours, ref)


def test_concept_removal_signal_direction(seed):
    S, d = 400, 24
    y = torch.randint(0, 2, (S,))
    u = torch.randn(d); u = u / u.norm()
    X = torch.randn(S, d) + 3 * (2 * y[:, None].float() - 1) * u
    res = concept_removal(X, y, u.expand(S, d), folds=4, seed=1)
    assert res["acc_original"] > 0.95 and res["acc_random"] > 0.9
    assert res["acc_removed"] < 0.7 and res["drop_ratio"] > 3
    assert res["acc_removed_ci"][0] <= res["acc_removed"] <= res["acc_removed_ci"][1]
    m, lo, hi = t_interval(res["per_fold"]["original"])
    assert math.isclose(m, res["acc_original"]) and math.isclose(hi - m, stats.t.ppf(0.975, 3) *
                                                               np.std(res["per_fold"]["original"], ddof=1) / 2)
    # removing an unrelated direction (orthogonal to u) keeps the accuracy
    w = torch.randn(d); w = w - (w @ u) * u
    assert concept_removal(X, y, w.expand(S, d), folds=4, seed=1)["relative_drop"] < 0.1


def test_concept_removal_bad_input():
    X, y = _blobs(S=60, d=8, C=2)
    u = torch.randn(8)
    with pytest.raises(ValueError, match="one label per sentence"): concept_removal(X, y[:-1], [u] * 60)
    with pytest.raises(ValueError, match=r"\[S=60, d=8\]"): concept_removal(X, y, torch.randn(60, 9))
    dirs = [u] * 60; dirs[7] = None
    with pytest.raises(ValueError, match="sentence 7 has no concept vector"): concept_removal(X, y, dirs)
    with pytest.raises(ValueError, match="use folds <="): concept_removal(X[:8], y[:8], [u] * 8, folds=5)
    with pytest.raises(ValueError, match=r"\[S, d\]"): concept_removal(X[0], y[:1], [u])


def test_codebook_metrics_reference():
    idx = torch.tensor([0, 0, 1, 2, 2, 2, 5])
    c = code_counts(idx, 8)
    assert math.isclose(perplexity(c), math.exp(stats.entropy(c.numpy())), rel_tol=1e-9)
    assert dead_fraction(c) == 4 / 8 and dead_fraction(c, threshold=1) == 6 / 8
    assert codebook_metrics(idx, 8)["active_codes"] == 4
    y = torch.randn(30, 4); yh = y + 0.1 * torch.randn(30, 4)
    ref = ((y - yh) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert math.isclose(fvu(yh, y), float(ref), rel_tol=1e-6)
    assert math.isnan(fvu(torch.ones(3, 2), torch.ones(3, 2)))          # zero variance: undefined
    assert math.isnan(perplexity(torch.zeros(4))) and dead_fraction(torch.zeros(4)) == 1.0   # nothing assigned


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    "A real ActivationCache: tiny BERT over 90 short sentences whose label is carried by one planted word."
    import datasets
    from clvq_nb.activations import extract_activations
    from clvq_nb.models import tiny_bert
    from clvq_nb.concepts import _planted_task
    sents, labels = _planted_task(90, seed=2)
    ds = datasets.Dataset.from_dict({"text": [" ".join(s) for s in sents], "label": labels, "sid": list(range(90))})
    model, tok = tiny_bert(num_labels=3, hidden=16, layers=2, heads=2, seed=0, max_position=32)
    cache = extract_activations(model, tok, ds, [1, 2], tmp_path_factory.mktemp("acts"), progress=False)
    return cache, sents, np.array(labels)


def test_evaluate_removal_on_real_cache(real_cache):
    from clvq_nb.baselines import KMeans
    cache, sents, labels = real_cache
    X = sentence_vectors(cache, 1)
    assert X.shape == (90, cache.dim(1))
    assert torch.allclose(X[3], cache.layer(1)[int(cache.sentence_offsets[3])].float())
    assert np.array_equal(sentence_labels(cache), labels)
    assert sentence_vectors(cache, 1, "mean").shape == (90, cache.dim(1))
    wi = np.array([next((j for j, w in enumerate(s) if w in ("great", "worst")), 0) for s in sents])
    rows = salient_rows(cache, wi)
    toks = cache.tokens if not hasattr(cache.tokens, "to_pandas") else cache.tokens.to_pandas()
    assert [toks["word"].iloc[r] for r in rows] == [s[j] for s, j in zip(sents, wi)]
    km = KMeans(n_clusters=6, seed=0); km.fit(cache, 1, 1)
    res = evaluate_removal(km, cache, 1, wi, folds=3, seed=0)
    for k in ("acc_original", "acc_removed", "acc_random", "relative_drop", "drop_ratio", "acc_original_ci"):
        assert k in res
    assert res["n_sentences"] == 90 and res["n_dropped"] == 0 and 1 <= res["n_concepts_used"] <= 6
