"""Tests of clvq_nb.baselines: the common interface of every concept method on tiny data, and its bad input."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

import clvq_nb.baselines as bl
from clvq_nb.baselines import (Agglomerative, CLVQVAEMethod, ConceptMethod, CrossLayerSAE, KMeans, SingleLayerVQVAE,
                               gather_rows, get_method, keep_mask, load_method, nearest_centroid)


class ToyCache:
    "Duck-typed stand-in for ActivationCache: sentences of 3-8 tokens whose vectors sit near `n_centres` centres."
    def __init__(self, n_sent=60, dims=(8, 8, 6), n_centres=4, seed=0, arrow=False):
        g = np.random.default_rng(seed)
        lens = g.integers(3, 9, n_sent)
        self.sentence_offsets = np.concatenate([[0], np.cumsum(lens)])
        n = int(lens.sum())
        self.centre = g.integers(0, n_centres, n)
        self._layers = {}
        for l, d in enumerate(dims):
            C = g.normal(0, 5, (n_centres, d))
            self._layers[l] = torch.tensor(C[self.centre] + g.normal(0, 0.3, (n, d)), dtype=torch.float32)
        pos = np.concatenate([np.arange(k) for k in lens])
        keep = (g.random(n) < 0.9) | (pos == 0)
        df = pd.DataFrame(dict(sid=np.repeat(np.arange(n_sent), lens), pos=pos, word=[f"w{c}" for c in self.centre],
                               is_tag=pos == 0, label=0, pred=0, keep=keep))
        self.tokens = pa.Table.from_pandas(df) if arrow else df

    layers = property(lambda self: sorted(self._layers))
    n_tokens = property(lambda self: int(self.sentence_offsets[-1]))
    n_sentences = property(lambda self: len(self.sentence_offsets) - 1)
    def dim(self, l): return self._layers[l].shape[1]
    def layer(self, l): return self._layers[l]
    def sentence_pairs(self, l_in, l_out):
        o, X, Y = self.sentence_offsets, self._layers[l_in], self._layers[l_out]
        return [(X[o[i]:o[i + 1]], Y[o[i]:o[i + 1]]) for i in range(self.n_sentences)]


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)  # tiny tensors: one thread avoids contention on a shared machine
    return ToyCache()


def _kept(cache): return int(keep_mask(cache).sum())


def _n_pairs(a, centre): return len(set(zip(a.tolist(), centre.tolist())))


SMALL = {
    "agglomerative": dict(n_clusters=4),
    "kmeans": dict(n_clusters=4, n_init=5, seed=1),
    "sae": dict(n_latents=16, epochs=8, lr=3e-3, batch_size=64, r=3),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_interface(toy, name, tmp_path):
    l_out = 2 if name == "sae" else None
    m = get_method(name, **SMALL[name]).fit(toy, 0, l_out, progress=False)
    assert isinstance(m, ConceptMethod) and m.name == name and m.fitted
    assert (m.l_in, m.l_out, m.d_in) == (0, 2 if name == "sae" else 0, 8)
    X = toy.layer(0)
    a = m.assign(X)
    assert a.dtype == torch.long and a.shape == (len(X),)
    assert 0 <= int(a.min()) and int(a.max()) < m.n_concepts
    assert m.counts.shape == (m.n_concepts,) and int(m.counts.sum()) == _kept(toy)
    k = int(m.counts.argmax())
    v = m.concept_vector(k)
    assert v.shape == ((3, 8) if name == "sae" else (8,))
    assert torch.isfinite(v).all()
    # assign is chunked: chunk size does not change the answer
    assert torch.equal(m.assign(X, batch_size=7), a)
    # seeded: a second fit gives the same concepts
    m2 = get_method(name, **SMALL[name]).fit(toy, 0, l_out, progress=False)
    assert torch.equal(m2.assign(X), a)
    assert torch.equal(m2.concept_vector(k), v)
    # save / load round trip (safetensors + json only)
    p = m.save(tmp_path / name)
    assert sorted(f.name for f in p.iterdir()) == ["method.json", "tensors.safetensors"]
    m3 = load_method(p)
    assert type(m3) is type(m) and torch.equal(m3.assign(X), a) and torch.equal(m3.concept_vector(k), v)
    assert torch.equal(m3.counts, m.counts)


@pytest.mark.parametrize("name", ["agglomerative", "kmeans"])
def test_clusterings_recover_separated_centres(toy, name):
    m = get_method(name, **SMALL[name]).fit(toy, 0, progress=False)
    a = m.assign(toy.layer(0))
    assert _n_pairs(a, toy.centre) == 4  # a relabelling of the 4 true centres
    # centroid = mean of the members
    k = int(a[0])
    members = toy.layer(0)[torch.from_numpy(keep_mask(toy))][a[torch.from_numpy(keep_mask(toy))] == k]
    torch.testing.assert_close(m.concept_vector(k), members.mean(0), atol=1e-4, rtol=1e-4)


def test_agglomerative_matches_sklearn(toy):
    from sklearn.cluster import AgglomerativeClustering
    m = Agglomerative(n_clusters=6).fit(toy, 1)
    rows = np.flatnonzero(keep_mask(toy))
    ref = AgglomerativeClustering(n_clusters=6, linkage="ward").fit_predict(toy.layer(1).numpy()[rows].astype(np.float64))
    assert np.array_equal(m.labels_.numpy(), ref) and np.array_equal(m.rows_.numpy(), rows)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_backends_and_sample(toy, backend):
    m = KMeans(n_clusters=4, backend=backend, n_init=5, seed=3, max_points_per_centroid=20).fit(toy, 0)
    assert m.info["backend"] == backend and m.info["n_sample"] == 80 and m.info["n_fit"] == _kept(toy)
    assert _n_pairs(m.assign(toy.layer(0)), toy.centre) == 4
    assert int(m.counts.sum()) == _kept(toy)  # counted over all fit tokens, not just the sample


def test_nearest_centroid_matches_cdist():
    g = torch.Generator().manual_seed(0)
    x, C = torch.randn(500, 16, generator=g), torch.randn(30, 16, generator=g)
    assert torch.equal(nearest_centroid(x, C, chunk=64), torch.cdist(x, C).argmin(1))


def test_pyarrow_tokens_and_fancy_gather():
    c = ToyCache(arrow=True)
    assert keep_mask(c).dtype == bool and keep_mask(c).sum() == _kept(ToyCache())
    rows = np.array([0, 1, 2, 5, 9, 10, 11])
    assert torch.equal(gather_rows(c.layer(0), rows, chunk=3), c.layer(0)[torch.from_numpy(rows)])


def test_sae_learns_and_conventions(toy):
    m = CrossLayerSAE(n_latents=16, epochs=20, lr=3e-3, batch_size=64, r=3).fit(toy, 0, 2, progress=False)
    h = m.info["history"]
    assert h[-1]["mse"] < h[0]["mse"] and h[-1]["fvu"] < 0.5
    p = m.params
    assert p["W_enc"].shape == (8, 16) and p["b_enc"].shape == (16,) and p["W_dec"].shape == (16, 6) and p["b_dec"].shape == (6,)
    torch.testing.assert_close(p["W_dec"].norm(dim=1), torch.ones(16))
    x = toy.layer(0)[torch.from_numpy(keep_mask(toy))]  # fit tokens: their argmax latent has members by definition
    f = m.encode(x)
    assert (f >= 0).all()
    # concept = argmax latent wherever a latent fires
    fires = f.max(1).values > 0
    assert fires.any() and torch.equal(m.assign(x)[fires], f.argmax(1)[fires])
    k = int(m.counts.argmax())
    V = m.concept_vector(k)
    assert V.shape == (3, 8)
    torch.testing.assert_close(V.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(V[0], p["W_enc"][:, k] / p["W_enc"][:, k].norm())  # the concept's own latent comes first
    assert m.decode(f).shape == (len(x), 6)


def test_sae_topk(toy):
    m = CrossLayerSAE(n_latents=16, activation="topk", k=2, epochs=3, batch_size=64).fit(toy, 0, 2, progress=False)
    assert int((m.encode(toy.layer(0)) > 0).sum(1).max()) <= 2


def test_sae_r1_single_direction(toy):
    m = CrossLayerSAE(n_latents=8, r=1, epochs=2, batch_size=64).fit(toy, 0, 2, progress=False)
    k = int(m.counts.argmax())
    assert m.concept_vector(k).shape == (1, 8)


# --- bad input ------------------------------------------------------------------------------------------

def test_unknown_method():
    with pytest.raises(ValueError, match=r"unknown method 'pca'; accepted: \['agglomerative', 'clvqvae', 'kmeans', 'sae', 'vqvae'\]"):
        get_method("pca")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['k'\]"):
        get_method("kmeans", k=3)


@pytest.mark.parametrize("name", ["agglomerative", "kmeans"])
def test_k_larger_than_tokens(toy, name):
    n = _kept(toy)
    with pytest.raises(ValueError, match=rf"n_clusters=500 exceeds the number of fit tokens N={n}"):
        get_method(name, n_clusters=500).fit(toy, 0)


def test_vq_codebook_larger_than_tokens(toy):
    with pytest.raises(ValueError, match=rf"codebook_size=5000 exceeds the number of fit tokens N={_kept(toy)}"):
        CLVQVAEMethod(codebook_size=5000).fit(toy, 0, 2)


def test_memory_refusal_before_allocation(toy, monkeypatch):
    monkeypatch.setattr(bl, "available_memory", lambda: 50_000)  # 50 kB free: 60% = 30 kB < 4·N² bytes
    read = []
    monkeypatch.setattr(bl, "gather_rows", lambda *a, **k: read.append(1))
    n = _kept(toy)
    with pytest.raises(MemoryError) as e:
        Agglomerative(n_clusters=4).fit(toy, 0)
    msg = str(e.value)
    assert f"N={n:,}" in msg and f"{4 * n * n / 1e9:.1f} GB" in msg and "get_method('kmeans')" in msg and "60% of available RAM" in msg
    assert not read  # refused before reading any vector
    assert not Agglomerative().fitted


def test_memory_bound_default_is_60_percent(monkeypatch):
    monkeypatch.setattr(bl, "available_memory", lambda: 10_000_000_000)
    assert Agglomerative().memory_bound() == 6_000_000_000
    assert Agglomerative(max_memory_bytes=123).memory_bound() == 123
    assert bl.ward_memory_bytes(20_000) == 1_600_000_000


def test_empty_concept(toy):
    m = KMeans(n_clusters=6, n_init=1, seed=0).fit(toy, 0)
    m.counts = torch.tensor([5, 0, 3, 2, 1, 1])
    with pytest.raises(ValueError, match="concept 1 is empty"):
        m.concept_vector(1)
    assert m.concept_vector(1, allow_empty=True).shape == (8,)
    with pytest.raises(IndexError, match=r"concept id 6 is out of range; this method has 6 concepts"):
        m.concept_vector(6)
    # assign never returns an empty concept: such tokens go to the nearest centroid that has members
    a = m.assign(toy.layer(0))
    live = torch.tensor([0, 2, 3, 4, 5])
    assert 1 not in a.tolist() and torch.equal(a, live[torch.cdist(toy.layer(0), m.centroids[live]).argmin(1)])


def test_sae_never_assigns_empty_latents(toy):
    m = CrossLayerSAE(n_latents=64, epochs=2, batch_size=64).fit(toy, 0, 2, progress=False)
    assert (m.counts == 0).any()  # 64 latents for 4 blobs: many never win
    noise = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0)) * 10
    a = m.assign(noise)
    assert (m.counts[a] > 0).all()
    for k in set(a.tolist()): m.concept_vector(k)  # every assigned concept has a vector


def test_vq_never_assigns_dead_codes(toy):
    model = _tiny_clvqvae(8, 6, 0, 2)
    with torch.no_grad(): model.quantizer.init_codebook(model.encoder(toy.layer(0)))
    m = CLVQVAEMethod.from_model(model, cache=toy)
    full = m.assign(toy.layer(0))
    m.counts = m.counts.clone(); m.counts[int(full[0])] = 0  # pretend the first token's code is dead
    a = m.assign(toy.layer(0))
    assert int(full[0]) not in a.tolist()
    same = full != int(full[0])
    assert torch.equal(a[same], full[same])  # the other tokens keep the model's argmin code


def test_width_mismatch_and_unfitted(toy):
    m = KMeans(n_clusters=4).fit(toy, 0)
    with pytest.raises(ValueError, match=r"shape \[N, d_in=8\].*got \(3, 6\)"):
        m.assign(torch.zeros(3, 6))
    with pytest.raises(ValueError, match="d_in=8"):
        m.assign(torch.zeros(8))
    with pytest.raises(RuntimeError, match="call fit"):
        KMeans().assign(torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"l_in=7 is not a layer of the cache; cached layers: \[0, 1, 2\]"):
        KMeans(n_clusters=2).fit(toy, 7)


def test_vq_layer_pairs(toy):
    with pytest.raises(ValueError, match="fit needs l_out"):
        CLVQVAEMethod().fit(toy, 0)
    with pytest.raises(ValueError, match="use get_method\\('vqvae'\\)"):
        CLVQVAEMethod().fit(toy, 0, 0)
    with pytest.raises(ValueError, match="l_out must equal l_in"):
        SingleLayerVQVAE().fit(toy, 0, 2)


def test_load_errors(tmp_path, toy):
    with pytest.raises(FileNotFoundError, match="no method.json"):
        load_method(tmp_path)
    KMeans(n_clusters=4).fit(toy, 0).save(tmp_path / "km")
    with pytest.raises(ValueError, match="holds a 'kmeans' method"):
        Agglomerative.load(tmp_path / "km")


# --- CLVQ-VAE wrapped --------------------------------------------------------------------------------------

def _tiny_clvqvae(d_in, d_out, l_in, l_out):
    from clvq_nb.clvqvae import CLVQVAE, CLVQVAEConfig
    torch.manual_seed(0)
    return CLVQVAE(CLVQVAEConfig(d_in=d_in, d_out=d_out, codebook_size=4, top_k=2, n_layers=1, n_heads=2, d_ff=16,
                                 layer_in=l_in, layer_out=l_out))


def test_clvqvae_from_model(toy, tmp_path):
    model = _tiny_clvqvae(8, 6, 0, 2)
    with torch.no_grad(): model.quantizer.init_codebook(model.encoder(toy.layer(0)))
    m = CLVQVAEMethod.from_model(model, cache=toy)
    assert (m.l_in, m.l_out, m.n_concepts) == (0, 2, 4) and int(m.counts.sum()) == _kept(toy)
    # the encoder is per token: assigning tokens alone equals encoding whole (padded) sentences
    pairs = toy.sentence_pairs(0, 2)[:5]
    T = max(len(x) for x, _ in pairs)
    xb = torch.zeros(5, T, 8); mask = torch.zeros(5, T, dtype=torch.bool)
    for i, (x, _) in enumerate(pairs): xb[i, :len(x)] = x; mask[i, :len(x)] = True
    want = model.encode(xb, mask)[mask]
    assert torch.equal(m.assign(xb[mask]), want)
    k = int(m.counts.argmax())
    assert torch.equal(m.concept_vector(k), model.concept_vectors()[k])
    m2 = load_method(m.save(tmp_path / "cm"))
    assert type(m2) is CLVQVAEMethod and torch.equal(m2.assign(toy.layer(0)), m.assign(toy.layer(0)))


def test_real_activation_cache(tmp_path):
    "The methods read a real (multi-shard, memory-mapped) ActivationCache written by extract_activations."
    datasets = pytest.importorskip("datasets")
    from clvq_nb.activations import extract_activations
    from clvq_nb.models import tiny_bert
    torch.set_num_threads(1)
    model, tok = tiny_bert()
    texts = ["a good movie", "a dull plot", "the acting is great but the story is not", "bad", "fun fun film"] * 4
    ds = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))], "sid": list(range(len(texts)))})
    keep = [[j % 3 != 1 for j in range(len(t.split()))] for t in texts]
    cache = extract_activations(model, tok, ds, [1, 4], tmp_path / "c", batch_size=4, shard_tokens=16, keep_mask=keep, progress=False)
    assert len(cache.manifest["shards"]) > 1
    n_keep = int(cache.tokens["keep"].sum())
    for m in (KMeans(n_clusters=3, max_points_per_centroid=5), Agglomerative(n_clusters=3),
              CrossLayerSAE(n_latents=8, epochs=2, batch_size=16, chunk=10)):
        m.fit(cache, 1, 4 if m.name == "sae" else None, progress=False)
        a = m.assign(cache.layer(1)[:])
        assert a.shape == (cache.n_tokens,) and int(m.counts.sum()) == n_keep
        assert m.concept_vector(int(m.counts.argmax())).shape[-1] == 32
    rows = np.flatnonzero(cache.tokens["keep"].to_numpy())
    assert torch.equal(gather_rows(cache.layer(1), rows, chunk=7), cache.layer(1)[:][torch.from_numpy(rows)].float())


def test_clvqvae_method_is_train_clvqvae(toy):
    "One training path: the concept method holds out the same sentences and ends with the same weights as train_clvqvae."
    from clvq_nb.trainer import split_sentences, train_clvqvae
    model, train = dict(top_k=2, n_layers=1, n_heads=2, d_ff=16, dropout=0.0), dict(epochs=2, batch_size=16, lr=3e-3)
    m = CLVQVAEMethod(codebook_size=4, model=model, train=train, val_fraction=0.2, seed=3).fit(toy, 0, 2, progress=False)
    res = train_clvqvae(toy, 0, 2, dict(model, codebook_size=4), dict(train, seed=3), val_fraction=0.2, progress=False, save=False)
    tr, va = split_sentences(toy.n_sentences, 0.2, seed=3)
    assert (m.info["n_sentences_train"], m.info["n_sentences_val"]) == (res.n_train, res.n_val) == (len(tr), len(va))
    untimed = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert res.out_dir is None and untimed(m.info["history"]) == untimed(res.history)
    mine = m.model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in res.model.state_dict().items())


@pytest.mark.parametrize("name,l_out", [("vqvae", None), ("clvqvae", 2)])
def test_vq_methods_fit(toy, name, l_out, tmp_path):
    pytest.importorskip("clvq_nb.trainer")
    kw = dict(codebook_size=4, model=dict(top_k=2, n_layers=1, n_heads=2, d_ff=16, dropout=0.0),
              train=dict(epochs=2, batch_size=16, lr=3e-3))
    m = get_method(name, **kw).fit(toy, 0, l_out, progress=False)
    assert (m.l_in, m.l_out) == (0, 0 if l_out is None else 2) and m.model.cfg.d_out == (8 if l_out is None else 6)
    assert int(m.counts.sum()) == _kept(toy) and len(m.info["history"]) == 2
    a = m.assign(toy.layer(0))
    assert a.shape == (toy.n_tokens,) and int(a.max()) < 4
    k = int(m.counts.argmax())
    # the codebook lives in the encoder's scaled space; a concept vector is in layer l_in's own units
    assert torch.equal(m.concept_vector(k), m.model.concept_vectors()[k] / m.model.encoder.scale)
    X = toy.layer(0).float()
    assert abs(float((m.model.encoder.scale * X).pow(2).sum(-1).mean()) - X.shape[1]) < 0.2 * X.shape[1]
    m2 = get_method(name, **kw).fit(toy, 0, l_out, progress=False)
    assert torch.equal(m2.assign(toy.layer(0)), a)  # seeded
    m3 = load_method(m.save(tmp_path / name))
    assert type(m3) is type(m) and torch.equal(m3.assign(toy.layer(0)), a)


@pytest.mark.parametrize("n,d,seed,rounded", [(80, 3, 0, False), (500, 16, 1, False), (400, 4, 2, True)])
def test_ward_linkage_equals_scipy_and_sklearn(n, d, seed, rounded):
    "The in-place Ward (one distance matrix) gives scipy's tree bit for bit and scikit-learn's labels, ties included."
    from scipy.cluster.hierarchy import ward
    from sklearn.cluster import AgglomerativeClustering
    X = np.random.default_rng(seed).normal(size=(n, d))
    if rounded: X = np.round(X, 1)
    assert np.array_equal(bl.ward_linkage(X), ward(X))
    assert np.array_equal(bl.ward_labels(X, 9), AgglomerativeClustering(n_clusters=9, linkage="ward").fit_predict(X))
