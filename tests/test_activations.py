"Tests of clvq_nb.activations with a tiny random BERT; one slow test with the real default model."
import json, os, subprocess, sys, textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import clvq_nb.activations as act
from clvq_nb.activations import (ActivationCache, IncompleteCacheError, ShardedTensor, check_layers, collate_sentences,
                                 encode_words, extract_activations, get_activations, merge_subwords, mmap_tensor,
                                 words_of, write_safetensors)
from clvq_nb.models import ClassifierRun, predict, tiny_bert

TEXTS = ["A good movie.", "Unbelievably dull plot!", "The acting is great, the story is not.", "Bad.",
         "fun fun fun film", "It's a boring, boring film -- and the plot? Worse."]
FEATS = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"]),
                           "sid": datasets.Value("int64")})


def toy(texts=TEXTS, sid0=0):
    return datasets.Dataset.from_dict({"text": list(texts), "label": [i % 2 for i in range(len(texts))],
                                       "sid": list(range(sid0, sid0 + len(texts)))}, features=FEATS)


@pytest.fixture(scope="module")
def tiny():
    return tiny_bert(hidden=32, layers=4, heads=2)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLVQ_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _reference_rows(model, tok, text, layer, merge):
    "Word rows of one sentence computed naively: forward one sentence, loop over words."
    words = words_of(text)
    enc = tok(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad(): h = model(**enc, output_hidden_states=True).hidden_states[layer][0]
    wid = enc.word_ids(0)
    rows = [h[0]]
    for j in range(len(words)):
        pos = [p for p, w in enumerate(wid) if w == j]
        rows.append(h[pos].mean(0) if merge == "mean" else h[pos[0]])
    return torch.stack(rows)


# ---- merging -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("merge", ["mean", "first"])
def test_merge_matches_loop(merge):
    g = torch.Generator().manual_seed(1)
    B, S, D = 5, 12, 7
    h = torch.randn(B, S, D, generator=g)
    wid = torch.full((B, S), -1)
    for b in range(B):                                   # random sub-word counts per word, random lengths
        n_words = int(torch.randint(0, 5, (1,), generator=g))
        seq = [w for w in range(n_words) for _ in range(int(torch.randint(1, 3, (1,), generator=g)))][:S - 2]
        wid[b, 1:1 + len(seq)] = torch.tensor(seq, dtype=torch.long)
    tag = torch.zeros(B, dtype=torch.long)
    rows, sent, word = merge_subwords(h, wid, tag, merge)
    i = 0
    for b in range(B):
        torch.testing.assert_close(rows[i], h[b, 0]); assert sent[i] == b and word[i] == -1; i += 1
        for w in sorted(set(wid[b].tolist()) - {-1}):
            pos = (wid[b] == w).nonzero().flatten()
            want = h[b, pos].mean(0) if merge == "mean" else h[b, pos[0]]
            torch.testing.assert_close(rows[i], want); assert sent[i] == b and word[i] == w; i += 1
    assert i == len(rows)


def test_merge_unknown():
    with pytest.raises(ValueError, match=r"accepted: \['mean', 'first', 'last'\]"):
        merge_subwords(torch.zeros(1, 2, 3), torch.tensor([[-1, 0]]), torch.tensor([0]), "max")


def test_encode_words_drops_whole_truncated_words(tiny):
    _, t = tiny
    words = [["good", "unbelievable", "film"], ["bad", "film"]]
    enc, wid, tag, nd, kept = encode_words(t, words, max_length=8)     # 'unbelievable' is 11 sub-words
    assert kept == [["good"], ["bad", "film"]] and nd == 2 and enc["input_ids"].shape[1] <= 8
    assert tag.tolist() == [0, 0] and wid[1, :4].tolist() == [-1, 0, 1, -1]
    enc, wid, tag, nd, kept = encode_words(t, words, max_length=64)
    assert nd == 0 and kept == words
    with pytest.raises(ValueError, match="no room"): encode_words(t, words, max_length=2)


# ---- extraction ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("merge", ["mean", "first"])
def test_extract_values_metadata_and_pairs(tiny, tmp_path, merge):
    m, t = tiny
    ds = toy()
    c = extract_activations(m, t, ds, [0, 2, 4], tmp_path / "c", merge=merge, batch_size=4, shard_tokens=10, progress=False)
    nw = [len(words_of(s)) for s in TEXTS]
    assert c.n_sentences == len(TEXTS) and c.n_tokens == sum(nw) + len(TEXTS) and c.layers == [0, 2, 4]
    assert c.layer(2).n_shards >= 2 and c.layer(2).shape == (c.n_tokens, 32)
    off = c.sentence_offsets
    assert off.tolist() == np.concatenate([[0], np.cumsum(np.array(nw) + 1)]).tolist()
    tok = c.tokens
    assert list(tok.columns) == ["sid", "pos", "word", "is_tag", "label", "pred", "keep"]
    for i, s in enumerate(TEXTS):
        rows = slice(off[i], off[i + 1])
        assert tok.word[rows].tolist() == ["[CLS]"] + words_of(s)
        assert tok.pos[rows].tolist() == list(range(nw[i] + 1))
        assert tok.is_tag[rows].tolist() == [True] + [False] * nw[i]
        assert (tok.sid[rows] == i).all() and (tok.label[rows] == i % 2).all()
        for layer in (0, 4):
            torch.testing.assert_close(c.layer(layer)[off[i]:off[i + 1]], _reference_rows(m, t, s, layer, merge), atol=1e-5, rtol=1e-4)
    assert tok[tok.is_tag].pred.tolist() == predict(m, t, TEXTS).tolist()
    # aligned pairs
    tp = c.token_pairs(2, 4)
    for r in (0, 5, c.n_tokens - 1):
        x, y = tp[r]; assert torch.equal(x, c.layer(2)[r]) and torch.equal(y, c.layer(4)[r])
    xb, yb = next(iter(torch.utils.data.DataLoader(tp, batch_size=c.n_tokens)))
    assert torch.equal(xb, c.layer(2)[:]) and torch.equal(yb, c.layer(4)[:])
    sp = c.sentence_pairs(0, 4)
    x, y, mask = collate_sentences([sp[i] for i in range(len(sp))])
    assert x.shape == (len(TEXTS), max(nw) + 1, 32) and mask.sum().item() == c.n_tokens
    for i in range(len(TEXTS)):
        L = nw[i] + 1
        assert torch.equal(y[i, :L], c.layer(4)[off[i]:off[i + 1]]) and not mask[i, L:].any() and (x[i, L:] == 0).all()
    dl = torch.utils.data.DataLoader(sp, batch_size=4, collate_fn=collate_sentences)
    assert sum(b[2].sum().item() for b in dl) == c.n_tokens


def test_manifest_and_safetensors_compat(tiny, tmp_path):
    from safetensors.torch import load_file
    m, t = tiny
    c = extract_activations(m, t, toy(), [1, 3], tmp_path / "c", shard_tokens=12, batch_size=2, progress=False,
                            dataset_name="toy", split="train", dtype="float16")
    man = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert man["complete"] is True and man["layers"] == [1, 3] and man["dims"] == {"1": 32, "3": 32}
    assert man["dataset"] == "toy" and man["split"] == "train" and man["n_tokens"] == c.n_tokens
    assert man["versions"]["torch"] and len(man["dataset_fingerprint"]) == 16 and man["merge"] == "mean"
    assert sum(s["n_tokens"] for s in man["shards"]) == c.n_tokens
    got = torch.cat([load_file(tmp_path / "c" / s["file"])["layer_3"] for s in man["shards"]])
    assert got.dtype == torch.float16 and torch.equal(got, c.layer(3)[:])
    ActivationCache(tmp_path / "c", verify=True)


def test_memory_mapped_and_sharded_indexing(tiny, tmp_path):
    m, t = tiny
    c = extract_activations(m, t, toy(TEXTS * 3), [2], tmp_path / "c", shard_tokens=15, batch_size=3, progress=False)
    x = c.layer(2)
    assert isinstance(x, ShardedTensor) and x.n_shards >= 3
    part = x._part(0)
    if Path("/proc/self/maps").exists():                  # the shard file is mapped, and the tensor lives inside the mapping
        ptr, f = part.data_ptr(), str((c.path / c.manifest["shards"][0]["file"]).resolve())
        spans = [tuple(int(v, 16) for v in l.split()[0].split("-")) for l in Path("/proc/self/maps").read_text().splitlines() if l.endswith(f)]
        assert any(a <= ptr < b for a, b in spans), spans
    full = torch.cat([mmap_tensor(c.path / s["file"], "layer_2") for s in c.manifest["shards"]])
    idx = np.array([0, 17, -1, 5, 40, 3])
    assert torch.equal(x[idx], full[idx]) and torch.equal(x[torch.tensor(idx)], full[idx])
    assert torch.equal(x[10:50], full[10:50]) and torch.equal(x[::7], full[::7]) and torch.equal(x[3], full[3])
    mask = c.tokens.keep.to_numpy() & ~c.tokens.is_tag.to_numpy()
    assert torch.equal(x[mask], full[torch.from_numpy(mask)]) and torch.equal(x[:, 4], full[:, 4])
    torch.testing.assert_close(x.load(), full)
    assert torch.equal(torch.cat([r for _, r in x.chunks(11)]), full) and [a for a, _ in x.chunks(11)][:3] == [0, 11, 22]
    for implicit in (lambda: x.mean(0), lambda: torch.cdist(x, full[:2]), lambda: torch.cat([x, x]), lambda: np.asarray(x)):
        with pytest.raises((TypeError, AttributeError), match=r"never materialised implicitly: call \.load\(\).*\.chunks\(n\)"):
            implicit()
    assert not hasattr(x, "nonexistent_attribute") and len(x._cache) <= x.max_open   # shards mapped at once stay bounded
    with pytest.raises(IndexError): x[len(x)]
    with pytest.raises(IndexError): x[np.array([len(x)])]


def test_keep_mask_and_only_kept(tiny, tmp_path):
    m, t = tiny
    nw = [len(words_of(s)) for s in TEXTS]
    keep = [[(i + j) % 3 == 0 for j in range(n)] for i, n in enumerate(nw)]
    c = extract_activations(m, t, toy(), [1], tmp_path / "c", keep_mask=keep, progress=False)
    tok = c.tokens
    assert tok.keep[~tok.is_tag].tolist() == [k for ks in keep for k in ks] and tok.keep[tok.is_tag].all()
    tp = c.token_pairs(1, 1, only_kept=True)
    assert len(tp) == sum(map(sum, keep)) + len(TEXTS)
    with pytest.raises(ValueError, match="keep_mask has 1 sentences"):
        extract_activations(m, t, toy(), [1], tmp_path / "x", keep_mask=[[True]], progress=False)
    with pytest.raises(ValueError, match=r"keep_mask\[0\]"):
        extract_activations(m, t, toy(), [1], tmp_path / "x", keep_mask=[[]] * len(TEXTS), progress=False)


def test_truncated_words_are_dropped_and_counted(tiny, tmp_path):
    m, t = tiny
    long = " ".join(["film"] * 30)
    c = extract_activations(m, t, toy([long, "good"]), [1], tmp_path / "c", max_length=12, progress=False)
    assert c.manifest["n_words_dropped"] == 20 and c.n_tokens == (1 + 10) + (1 + 1)


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input(tiny, tmp_path):
    m, t = tiny
    with pytest.raises(ValueError, match=r"valid range is 0\.\.4"): extract_activations(m, t, toy(), [5], tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match=r"valid range is 0\.\.4"): check_layers(m, [-1])
    with pytest.raises(ValueError, match="no layers"): check_layers(m, [])
    with pytest.raises(ValueError, match="dataset is empty"): extract_activations(m, t, toy([]), [1], tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="unknown merge 'max'"): extract_activations(m, t, toy(), [1], tmp_path / "x", merge="max", progress=False)
    with pytest.raises(ValueError, match="unknown dtype"): extract_activations(m, t, toy(), [1], tmp_path / "x", dtype="int8", progress=False)
    with pytest.raises(ValueError, match="'text' column"):
        extract_activations(m, t, toy().rename_column("text", "sentence"), [1], tmp_path / "x", progress=False)
    c = extract_activations(m, t, toy(), [1], tmp_path / "ok", progress=False)
    with pytest.raises(ValueError, match=r"holds layers \[1\]"): c.layer(2)
    with pytest.raises(ValueError, match="collate_sentences got an empty batch"): collate_sentences([])


# ---- atomicity and caching -----------------------------------------------------------------------------------------
def test_crash_mid_write_is_detected(tiny, tmp_path, monkeypatch):
    m, t = tiny
    real_flush = act._ShardWriter.flush
    def crash(self):
        if len(self.shards) == 1: raise RuntimeError("simulated crash")
        real_flush(self)
    monkeypatch.setattr(act._ShardWriter, "flush", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_activations(m, t, toy(), [1], tmp_path / "c", batch_size=2, shard_tokens=5, progress=False)
    assert (tmp_path / "c" / "shard_00000.safetensors").exists() and not (tmp_path / "c" / "manifest.json").exists()
    with pytest.raises(IncompleteCacheError, match="half-written"): ActivationCache(tmp_path / "c")
    monkeypatch.setattr(act._ShardWriter, "flush", real_flush)
    c = extract_activations(m, t, toy(), [1], tmp_path / "c", batch_size=2, shard_tokens=5, progress=False)
    ActivationCache(c.path, verify=True)


def test_incomplete_manifest_truncated_and_corrupt_shards(tiny, tmp_path):
    m, t = tiny
    c = extract_activations(m, t, toy(), [1, 2], tmp_path / "c", batch_size=2, shard_tokens=5, progress=False)
    man = c.manifest
    f = tmp_path / "c" / man["shards"][1]["file"]
    raw = f.read_bytes()
    f.write_bytes(raw[:-3])
    with pytest.raises(IncompleteCacheError, match="size does not match"): ActivationCache(tmp_path / "c")
    bad = bytearray(raw); bad[-1] ^= 0x5A; f.write_bytes(bytes(bad))
    ActivationCache(tmp_path / "c")                               # cheap checks pass ...
    with pytest.raises(IncompleteCacheError, match="checksum mismatch"): ActivationCache(tmp_path / "c", verify=True)
    (tmp_path / "c" / man["shards"][0]["tokens_file"]).unlink()
    with pytest.raises(IncompleteCacheError, match="missing"): ActivationCache(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({**man, "complete": False}))
    with pytest.raises(IncompleteCacheError, match="not marked complete"): ActivationCache(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{\"complete\": tr")
    with pytest.raises(IncompleteCacheError, match="not valid JSON"): ActivationCache(tmp_path / "c")


def test_get_activations_reuses_and_rebuilds(tiny, home, monkeypatch):
    m, t = tiny
    run = ClassifierRun(m, t, home / "models" / "tiny0", 0.5, ["neg", "pos"], False, {"model": "tiny"})
    dsd = datasets.DatasetDict(train=toy(TEXTS * 2), dev=toy(TEXTS[:3], sid0=100))
    c = get_activations(run, dsd, [1, 3], progress=False, shard_tokens=20, batch_size=4)
    assert c.path.parent == home / "activations" and c.manifest["has_keep_mask"] and c.manifest["split"] == "train"
    ref = c.layer(3)[:].clone()
    calls = []
    real = act.extract_activations
    monkeypatch.setattr(act, "extract_activations", lambda *a, **k: calls.append(1) or real(*a, **k))
    c2 = get_activations(run, dsd, [3, 1], progress=False, shard_tokens=20, batch_size=4)
    assert c2.path == c.path and calls == []                       # reused (layer order does not matter)
    d = get_activations(run, dsd, [1, 3], split="dev", progress=False)
    assert d.path != c.path and d.n_sentences == 3 and not d.manifest["has_keep_mask"] and calls == [1]
    assert get_activations(run, dsd, [1, 3], merge="first", progress=False).path != c.path
    # half-written: shards present but the manifest never written -> rebuilt, not read
    (c.path / "manifest.json").unlink()
    c3 = get_activations(run, dsd, [1, 3], progress=False, shard_tokens=20, batch_size=4)
    assert len(calls) == 3 and torch.equal(c3.layer(3)[:], ref)
    # corrupt shard -> checksum mismatch -> rebuilt
    f = c.path / c3.manifest["shards"][0]["file"]; b = bytearray(f.read_bytes()); b[-1] ^= 1; f.write_bytes(bytes(b))
    c4 = get_activations(run, dsd, [1, 3], progress=False, shard_tokens=20, batch_size=4)
    assert len(calls) == 4 and torch.equal(c4.layer(3)[:], ref)
    with pytest.raises(ValueError, match="has \\['train', 'dev'\\]"): get_activations(run, dsd, [1], split="test")
    with pytest.raises(ValueError, match="unknown merge"): get_activations(run, dsd, [1], merge="max")


# ---- memory --------------------------------------------------------------------------------------------------------
_RSS_SCRIPT = textwrap.dedent("""
    import json, random, resource, sys
    import datasets, torch
    torch.set_num_threads(1)
    from clvq_nb.models import tiny_bert
    from clvq_nb.activations import extract_activations
    n, out = int(sys.argv[1]), sys.argv[2]
    m, t = tiny_bert(hidden=64, layers=4, heads=2)
    vocab = "the a good bad movie film plot acting story fun dull great not very".split()
    rng = random.Random(0)
    ds = datasets.Dataset.from_dict({"text": [" ".join(rng.choice(vocab) for _ in range(24)) for _ in range(n)],
                                     "label": [i % 2 for i in range(n)]})
    extract_activations(m, t, ds.select(range(64)), [0, 1, 2, 3, 4], out + "_warm", shard_tokens=4096, progress=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = extract_activations(m, t, ds, [0, 1, 2, 3, 4], out, shard_tokens=4096, batch_size=64, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(base_kb=base, peak_kb=peak, n_tokens=c.n_tokens, shards=len(c.manifest["shards"]),
                          bytes=c.n_tokens * 5 * 64 * 4)))
""")


def _rss_run(n, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(n), str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_peak_rss_does_not_grow_with_sentences(tmp_path):
    "Streaming extraction: 7.5x more sentences (~100 MB of activations) must not raise peak RSS by more than a shard's worth."
    small, large = _rss_run(400, tmp_path / "s"), _rss_run(3000, tmp_path / "l")
    assert large["bytes"] > 80e6 and large["shards"] > 10
    growth_small = (small["peak_kb"] - small["base_kb"]) * 1024
    growth_large = (large["peak_kb"] - large["base_kb"]) * 1024
    print(f"peak RSS growth: {growth_small / 1e6:.1f} MB for {small['n_tokens']} tokens ({small['bytes'] / 1e6:.0f} MB), "
          f"{growth_large / 1e6:.1f} MB for {large['n_tokens']} tokens ({large['bytes'] / 1e6:.0f} MB)")
    # a whole-dataset buffer would add ~large["bytes"] (>80 MB); allow a few shards (4096 tokens x 1.3 kB = 5 MB each)
    assert growth_large - growth_small < 40e6, (small, large)
    assert growth_large < 0.3 * large["bytes"], (small, large)


# ---- real model ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_default_model(tmp_path):
    from clvq_nb.data import load_data
    from clvq_nb.models import load_classifier
    m, t = load_classifier("default", label_names=["neg", "pos"])
    dev = load_data("movie")["dev"].select(range(40))
    c = extract_activations(m, t, dev, [3, 6], tmp_path / "c", batch_size=16, progress=False)
    assert c.dim(3) == 384 and c.n_sentences == 40 and c.manifest["n_words_dropped"] == 0
    off = c.sentence_offsets
    for i in (0, 17, 39):
        text = dev[i]["text"]
        torch.testing.assert_close(c.layer(6)[off[i]:off[i + 1]], _reference_rows(m, t, text, 6, "mean"), atol=1e-4, rtol=1e-3)
        assert c.tokens.word[off[i]:off[i + 1]].tolist() == ["[CLS]"] + words_of(text)
    assert c.tokens[c.tokens.is_tag].pred.tolist() == predict(m, t, dev["text"], max_length=128).tolist()
