"""clvq_nb.data: registry (offline), local files, split, tokenisation, frequency filter, bad input."""
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, DatasetDict

from clvq_nb.data import (DATASETS, DatasetSpec, StandInWarning, data_fingerprint, data_summary,
                          frequency_filter, is_stand_in, load_data, word_tokenize)

REPO = Path(__file__).resolve().parents[1]

# name -> (train, dev, label names) measured on the offline packages (see data/<name>.md)
EXPECTED = {
    "movie": (11_477, 1_275, ["negative", "positive"]),
    "movie-sst": (9_510, 1_056, ["negative", "positive"]),
    "toxicity": (4_060, 452, ["ham", "spam"]),
    "news": (1_895, 210, ["business", "entertainment", "politics", "sports", "tech"]),
    "imdb": (269_902, 29_968, ["negative", "positive"]),
}


def _load(name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInWarning)
        return load_data(name, **kw)


# ---------------------------------------------------------------- registry, offline
def test_registry_entries():
    assert set(DATASETS) == set(EXPECTED)
    for name, spec in DATASETS.items():
        assert isinstance(spec, DatasetSpec) and spec.name == name
        assert spec.offline and spec.offline_loader is not None
        assert (REPO / spec.card).is_file(), spec.card
        if spec.hub_id: assert spec.hub_loader is not None
    assert DATASETS["movie-sst"].hub_id is None
    assert DATASETS["toxicity"].stand_in and not any(DATASETS[n].stand_in for n in ("movie", "movie-sst", "news"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_offline_dataset(name):
    n_train, n_dev, names = EXPECTED[name]
    dsd = _load(name)
    assert isinstance(dsd, DatasetDict) and set(dsd) == {"train", "dev"}
    assert dsd.source == "offline" and dsd.name == name and dsd.label_names == names
    for split in dsd.values():
        assert list(split.column_names) == ["text", "label", "sid"]
        assert isinstance(split.features["label"], ClassLabel) and split.features["label"].names == names
        assert all(isinstance(t, str) and t.strip() == t and t for t in split["text"])
    assert (len(dsd["train"]), len(dsd["dev"])) == (n_train, n_dev)
    tr, dv = set(dsd["train"]["sid"]), set(dsd["dev"]["sid"])
    assert len(tr) == n_train and len(dv) == n_dev and not tr & dv
    assert not set(dsd["train"]["text"]) & set(dsd["dev"]["text"])
    # stratified: every class in dev, dev share per class close to 10 %
    ctr, cdv = Counter(dsd["train"]["label"]), Counter(dsd["dev"]["label"])
    for c in range(len(names)):
        assert abs(cdv[c] / (ctr[c] + cdv[c]) - 0.1) < 0.01


def test_determinism_and_seed():
    a, b, c = (_load("news", seed=s) for s in (0, 0, 1))
    assert list(a["dev"]["sid"]) == list(b["dev"]["sid"]) and list(a["train"]["text"]) == list(b["train"]["text"])
    assert data_fingerprint(a) == data_fingerprint(b) != data_fingerprint(c)
    assert set(c["dev"]["sid"]) != set(a["dev"]["sid"])


def test_max_sentences_balanced_and_stable_sids():
    full = _load("movie")
    text_of = dict(zip(list(full["train"]["sid"]) + list(full["dev"]["sid"]),
                       list(full["train"]["text"]) + list(full["dev"]["text"])))
    small = _load("movie", max_sentences=600, seed=3)
    labels = list(small["train"]["label"]) + list(small["dev"]["label"])
    assert len(labels) == 600 and Counter(labels) == {0: 300, 1: 300}
    assert len(small["dev"]) == 60
    for split in small.values():   # same sid -> same sentence as in the full load
        assert all(text_of[s] == t for s, t in zip(split["sid"], split["text"]))
    # unbalanced classes: the small class gives everything, the other fills up
    tox = _load("toxicity", max_sentences=2000)
    counts = Counter(list(tox["train"]["label"]) + list(tox["dev"]["label"]))
    assert counts == {0: 2000 - 557, 1: 557}


def test_dev_fraction():
    dsd = _load("news", dev_fraction=0.25)
    assert abs(len(dsd["dev"]) / (len(dsd["train"]) + len(dsd["dev"])) - 0.25) < 0.01


def test_stand_in_flagged_everywhere():
    with pytest.warns(StandInWarning, match="SMS spam"):
        tox = load_data("toxicity", max_sentences=100)
    assert tox.stand_in and is_stand_in(tox)
    assert tox["train"].features["label"].names == ["ham", "spam"]
    for split in tox.values():
        assert split.info.description.startswith("STAND-IN")
        assert is_stand_in(split.map(lambda r: r)) and is_stand_in(split.select(range(3)))
    assert data_summary(tox)["stand_in"]
    movie = _load("movie", max_sentences=100)
    assert not movie.stand_in and not is_stand_in(movie) and not is_stand_in(movie["dev"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", StandInWarning)
        load_data("news", max_sentences=50)        # no warning for real data


def test_hub_not_contacted_when_offline(monkeypatch):
    import datasets
    def boom(*a, **k): raise AssertionError("hub contacted while offline")
    monkeypatch.setattr(datasets, "load_dataset", boom)
    assert _load("movie", max_sentences=50).source == "offline"                 # env HF_DATASETS_OFFLINE=1
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert _load("news", max_sentences=50, offline=True).source == "offline"    # explicit wins


def test_hub_failure_falls_back(monkeypatch, caplog):
    import datasets
    calls = []
    def no_network(hub_id, *a, **k):
        calls.append(hub_id); raise ConnectionError("no network")
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with caplog.at_level("WARNING", logger="clvq_nb.data"):
        dsd = _load("news", max_sentences=50, offline=False)
    assert calls == ["fancyzhx/ag_news"] and dsd.source == "offline"
    assert "fancyzhx/ag_news" in caplog.text and "offline fallback" in caplog.text


def test_hub_adapter_used_when_hub_answers(monkeypatch):
    "The AG News adapter maps the hub columns; hub classes and the default 10k cap apply."
    import datasets
    from datasets import Dataset
    rng = np.random.default_rng(0)
    fake = DatasetDict(train=Dataset.from_dict({"text": [f"item {i}" for i in range(400)],
                                                "label": rng.integers(0, 4, 400).tolist()}))
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, *a, **k: fake)
    dsd = load_data("news", offline=False)
    assert dsd.source == "hub" and dsd["train"].features["label"].names == ["World", "Sports", "Business", "Sci/Tech"]
    assert len(dsd["train"]) + len(dsd["dev"]) == 400 and not is_stand_in(dsd)


# ---------------------------------------------------------------- local files
def _frame(n=40):
    return pd.DataFrame({"text": [f"sentence number {i}" for i in range(n)],
                         "label": ["pos" if i % 2 else "neg" for i in range(n)], "extra": range(n)})


@pytest.mark.parametrize("fname", ["d.csv", "d.tsv", "d.jsonl", "d.json", "d.parquet", "d.csv.gz"])
def test_local_formats(tmp_path, fname):
    df, p = _frame(), tmp_path / fname
    if fname.startswith("d.csv"): df.to_csv(p, index=False)
    elif fname == "d.tsv": df.to_csv(p, sep="\t", index=False)
    elif fname == "d.jsonl": df.to_json(p, orient="records", lines=True)
    elif fname == "d.json": p.write_text(json.dumps(df.to_dict(orient="records")))
    else: df.to_parquet(p)
    dsd = load_data(p)
    assert dsd.source == "file" and dsd.name == "d" and not dsd.stand_in
    assert dsd["train"].features["label"].names == ["neg", "pos"]
    assert (len(dsd["train"]), len(dsd["dev"])) == (36, 4)
    got = {t: l for s in dsd.values() for t, l in zip(s["text"], s["label"])}
    assert got == {t: int(l == "pos") for t, l in zip(df.text, df.label)}
    assert load_data(str(p))["dev"]["text"] == dsd["dev"]["text"]


def test_local_columns_and_label_types(tmp_path):
    p = tmp_path / "s.csv"
    pd.DataFrame({"sentence": [f"s {i}" for i in range(20)], "y": [i % 3 + 1 for i in range(20)]}).to_csv(p, index=False)
    dsd = load_data(p, label_col="y")                    # 'sentence' auto-detected, int labels named by value
    assert dsd["train"].features["label"].names == ["1", "2", "3"]
    p2 = tmp_path / "b.jsonl"
    pd.DataFrame({"body": [f"t {i}" for i in range(10)], "flag": [i < 5 for i in range(10)]}).to_json(p2, orient="records", lines=True)
    assert load_data(p2, text_col="body", label_col="flag")["dev"].features["label"].names == ["False", "True"]


def test_local_cleaning(tmp_path):
    p = tmp_path / "c.csv"
    pd.DataFrame({"text": ["  a  ", "a", None, "", "b", "c", "d"],
                  "label": ["x", "y", "x", "y", "y", "x", None]}).to_csv(p, index=False)
    dsd = load_data(p)
    texts = sorted(list(dsd["train"]["text"]) + list(dsd["dev"]["text"]))
    assert texts == ["a", "b", "c"]                      # stripped, empties and repeats dropped, first kept


# ---------------------------------------------------------------- bad input
def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown data set 'sst2'.*\['imdb', 'movie', 'movie-sst', 'news', 'toxicity'\].*local"):
        load_data("sst2")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_data(tmp_path / "nope.csv")


def test_unsupported_extension(tmp_path):
    p = tmp_path / "d.xlsx"; p.write_text("x")
    with pytest.raises(ValueError, match=r"'d.xlsx'.*\.csv, \.tsv, \.jsonl, \.json, \.parquet"):
        load_data(p)


def test_missing_columns(tmp_path):
    p = tmp_path / "m.csv"
    pd.DataFrame({"body": ["a", "b"], "y": [0, 1]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"no text column.*columns found: \['body', 'y'\].*text_col"):
        load_data(p)
    with pytest.raises(ValueError, match=r"no label column.*columns found: \['body', 'y'\]"):
        load_data(p, text_col="body")
    with pytest.raises(ValueError, match=r"label column 'z' not found.*columns found"):
        load_data(p, text_col="body", label_col="z")


def test_empty_and_single_class(tmp_path):
    p = tmp_path / "e.csv"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="'.*e.csv' is empty"):
        load_data(p)
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["only"] * 3}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"single class \('only'\).*at least 2"):
        load_data(p)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_sentences=0"):
        load_data("movie", max_sentences=0)
    with pytest.raises(ValueError, match="dev_fraction=0"):
        load_data("movie", dev_fraction=0)
    p = tmp_path / "f.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [0.5, 1.0]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="non-integer numbers"):
        load_data(p)
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="too few sentences"):
        load_data(p)


# ---------------------------------------------------------------- words and the filter
def test_word_tokenize():
    assert word_tokenize("It's a $5 film & good!") == ["It", "'s", "a", "$", "5", "film", "&", "good", "!"]
    assert len(word_tokenize(" ".join(["w"] * 1000))) == 300
    assert len(word_tokenize("a b c", max_words=2)) == 2
    with pytest.raises(TypeError):
        word_tokenize(3)


def test_frequency_filter_counts(seed):
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(60)]
    sents = [list(rng.choice(vocab, size=rng.integers(0, 25), p=np.r_[[0.5], np.full(59, 0.5 / 59)]))
             for _ in range(200)]
    mask = frequency_filter(sents, min_count=5, max_per_type=20, seed=0)
    assert [len(m) for m in mask] == [len(s) for s in sents]
    total = Counter(w for s in sents for w in s)
    kept = Counter(w for s, m in zip(sents, mask) for w, k in zip(s, m) if k)
    for w, n in total.items():
        assert kept[w] == (0 if n < 5 else min(n, 20)), w
    assert total["w0"] > 20 and kept["w0"] == 20
    assert frequency_filter(sents, seed=0) == mask and frequency_filter(sents, seed=1) != mask
    # which occurrences survive is spread over the data, not the first 20
    pos = [i for i, (s, m) in enumerate(zip(sents, mask)) for w, k in zip(s, m) if w == "w0" and k]
    assert max(pos) > 100
    assert sum(map(sum, frequency_filter(sents, min_count=1, max_per_type=None))) == sum(total.values())
    assert frequency_filter([[], []]) == [[], []]


def test_frequency_filter_bad_args():
    with pytest.raises(ValueError, match="min_count"):
        frequency_filter([["a"]], min_count=0)
    with pytest.raises(ValueError, match="max_per_type"):
        frequency_filter([["a"]], max_per_type=0)


# ---------------------------------------------------------------- hygiene: dropped rows counted, encodings, column names
def test_hygiene_counts_empty_missing_duplicates(tmp_path):
    p = tmp_path / "dirty.csv"
    texts = [f"sentence {i}" for i in range(100)] + [""] * 10 + [None] * 10 + [f"no label {i}" for i in range(10)]
    texts += [f"sentence {i}" for i in range(7)]                                  # 7 exact repeats
    labels = ["a", "b"] * 50 + ["a"] * 20 + [None] * 10 + ["b"] * 7
    pd.DataFrame({"text": texts, "label": labels}).to_csv(p, index=False)
    dsd = load_data(p)
    assert dsd.hygiene == dict(rows_read=137, empty_text=20, missing_label=10, duplicate_text=7, leakage_dev=0, rows_kept=100)
    assert len(dsd["train"]) + len(dsd["dev"]) == 100
    assert data_summary(dsd)["hygiene"] == dsd.hygiene
    assert _load("news", max_sentences=200).hygiene["leakage_dev"] == 0      # registry sets are counted too


def test_hygiene_leakage_dropped_from_dev(tmp_path):
    p = tmp_path / "leak.csv"
    texts = [f"review {i} was fine" for i in range(80)] + [f"Review {i}  WAS fine" for i in range(20)]
    pd.DataFrame({"text": texts, "label": ["neg", "pos"] * 50}).to_csv(p, index=False)
    dsd = load_data(p, dev_fraction=0.2)
    h = dsd.hygiene
    assert h["duplicate_text"] == 0 and h["leakage_dev"] > 0
    assert len(dsd["train"]) == 80 and len(dsd["dev"]) == 20 - h["leakage_dev"] == h["rows_kept"] - 80
    norm = {" ".join(t.casefold().split()) for t in dsd["train"]["text"]}
    assert not any(" ".join(t.casefold().split()) in norm for t in dsd["dev"]["text"])


def test_encoding_error_names_file_and_option(tmp_path):
    from clvq_nb.data import DataEncodingError
    p = tmp_path / "latin.csv"
    rows = [(f"café numéro {i} très bon", "oui" if i % 2 else "non") for i in range(30)]
    p.write_bytes(("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows)).encode("latin-1"))
    with pytest.raises(DataEncodingError, match=r"latin.csv' is not valid utf-8 text.*--encoding") as e:
        load_data(p)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    dsd = load_data(p, encoding="latin-1")
    assert sorted(list(dsd["train"]["text"]) + list(dsd["dev"]["text"])) == sorted(t for t, _ in rows)
    with pytest.raises(ValueError, match="encoding='nope'"):
        load_data(p, encoding="nope")


def test_other_column_names(tmp_path):
    p = tmp_path / "cols.jsonl"
    pd.DataFrame({"body": [f"t {i}" for i in range(20)], "stars": ["1", "5"] * 10}).to_json(p, orient="records", lines=True)
    with pytest.raises(ValueError, match=r"columns found: \['body', 'stars'\].*--text-col"):
        load_data(p)
    with pytest.raises(ValueError, match=r"'txt' not found.*columns found: \['body', 'stars'\].*--text-col/--label-col"):
        load_data(p, text_col="txt", label_col="stars")
    dsd = load_data(p, text_col="body", label_col="stars")
    assert dsd.label_names == ["1", "5"] and len(dsd["train"]) + len(dsd["dev"]) == 20
    with pytest.raises(ValueError, match="apply to local files"):
        load_data("movie", label_col="stars")


def test_fingerprint_is_the_cache_key():
    "One fingerprint: a split's value is the one the classifier and activation caches key on."
    import clvq_nb.models as models
    dsd = _load("news", max_sentences=100)
    assert not hasattr(models, "dataset_fingerprint") and models.data_fingerprint is data_fingerprint
    assert len(data_fingerprint(dsd)) == 16 and data_fingerprint(dsd) != data_fingerprint(dsd["train"])
