"Decoder LMs as the model under study (issue 14): prompt classification, text-span activations, sentence vectors, IG."
import datasets
import numpy as np
import pytest
import torch

from clvq_nb.activations import ActivationCache, extract_activations, get_activations, words_of
from clvq_nb.concepts import _planted_task, _train_planted_prompt, salient_tokens
from clvq_nb.metrics import evaluate_removal, sentence_vectors
from clvq_nb.models import (ClassifierRun, PromptClassifier, get_classifier, is_causal_lm, paper_layers, predict,
                            tiny_llama)

TEMPLATE = "Review: {text}\nSentiment:"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLVQ_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _dsd(n=24, n_dev=12):
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"]),
                               "sid": datasets.Value("int64")})
    pos, neg = ["a great zebra movie", "great fun , love it"], ["the worst plot", "boring and dull , worst film"]
    mk = lambda k, off: datasets.Dataset.from_dict(
        {"text": [(pos if i % 2 else neg)[i % 4 // 2] for i in range(k)], "label": [i % 2 for i in range(k)],
         "sid": list(range(off, off + k))}, features=feats)
    return datasets.DatasetDict(train=mk(n, 0), dev=mk(n_dev, n))


def test_prompt_classifier_scores_are_the_lms_next_token_logits():
    lm, tok = tiny_llama()
    pc = PromptClassifier(lm, tok, ["negative", "positive"], template=TEMPLATE, examples=[("a good film", 1)])
    enc, wid, tag, nd, words = pc.encode_words([["a", "zebra", "movie"], ["good"]])
    assert nd == 0 and tag.tolist() == [enc["input_ids"].shape[1]] * 2
    for b in range(2):
        n = int(enc["attention_mask"][b].sum())
        full = lm(input_ids=enc["input_ids"][b:b + 1, :n]).logits[0, -1, pc.verbaliser_ids]
        torch.testing.assert_close(pc(**enc).logits[b], full, atol=1e-4, rtol=1e-4)
    # the few-shot example and the template are in the prefix, the text's words after it
    assert len(pc.prefix_ids) > len(tok("review : sentiment :", add_special_tokens=False)["input_ids"])
    assert (wid[0, :len(pc.prefix_ids)] == -1).all() and sorted(set(wid[0].tolist()) - {-1}) == [0, 1, 2]


@pytest.mark.filterwarnings("ignore:.*near chance")
def test_get_classifier_prompts_a_causal_lm_folder(home, tmp_path):
    lm, tok = tiny_llama()
    lm.save_pretrained(tmp_path / "lm"); tok.save_pretrained(tmp_path / "lm")
    assert is_causal_lm(tmp_path / "lm") and not is_causal_lm("default")
    with pytest.warns(UserWarning, match="near chance"):   # a random LM cannot do the task, and says so
        run = get_classifier(_dsd(), model=str(tmp_path / "lm"), progress=False, prompt=dict(template=TEMPLATE))
    assert isinstance(run, ClassifierRun) and isinstance(run.model, PromptClassifier)
    assert run.metrics["near_chance"] and run.metrics["chance_accuracy"] == 0.5 and run.label_names == ["negative", "positive"]
    assert run.dev_accuracy == float((predict(run.model, run.tokenizer, _dsd()["dev"]["text"]) == _dsd()["dev"]["label"]).mean())
    run2 = get_classifier(_dsd(), model=str(tmp_path / "lm"), progress=False, prompt=dict(template=TEMPLATE))
    assert run2.reused and run2.path == run.path
    run3 = get_classifier(_dsd(), model=str(tmp_path / "lm"), progress=False, prompt=dict(template="Text: {text}\nLabel:"))
    assert run3.path != run.path


def test_text_span_activations_and_sentence_vector(home, tmp_path):
    lm, tok = tiny_llama(layers=4)
    dsd = _dsd()
    caches = {}
    for kind in ("last", "mean"):
        pc = PromptClassifier(lm, tok, ["negative", "positive"], template=TEMPLATE, examples=[("a dull film", 0)],
                              sentence_vector=kind)
        run = ClassifierRun(pc, tok, tmp_path / f"run-{kind}", float("nan"), ["negative", "positive"], False, {})
        caches[kind] = c = get_activations(run, dsd, [1, 4], split="dev", progress=False)
        off = c.sentence_offsets
        for i, t in enumerate(dsd["dev"]["text"]):      # [SENT] + the text's words only: no prompt or few-shot words
            assert c.tokens.word[off[i]:off[i + 1]].tolist() == ["[SENT]"] + words_of(t)
        enc, wid, *_ = pc.encode_words([words_of(dsd["dev"]["text"][0])])
        with torch.no_grad(): hs = lm.base_model(input_ids=enc["input_ids"], output_hidden_states=True).hidden_states
        want = hs[4][0, -1] if kind == "last" else hs[4][0][enc["text_mask"][0]].mean(0)
        torch.testing.assert_close(sentence_vectors(c, 4, "tag")[0], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c.layer(1)[1], hs[1][0][wid[0, :-1] == 0].mean(0), atol=1e-5, rtol=1e-5)  # word 0: mean of its pieces
    tag = caches["last"].tokens.is_tag.to_numpy()
    torch.testing.assert_close(caches["last"].layer(4)[~tag], caches["mean"].layer(4)[~tag])   # word rows do not depend on it
    assert not torch.allclose(caches["last"].layer(4)[tag], caches["mean"].layer(4)[tag])


def test_decoder_truncation_drops_last_words():
    lm, tok = tiny_llama()
    pc = PromptClassifier(lm, tok, ["negative", "positive"], template=TEMPLATE)
    room = len(pc.prefix_ids) + len(pc.suffix_ids)
    enc, wid, _, nd, words = pc.encode_words([["good"] * 30, ["zebra"] * 3], max_length=room + 7)
    assert words[0] == ["good"] * 7 and 0 < len(words[1]) < 3 and nd == 23 + 3 - len(words[1])   # "zebra": several pieces
    with pytest.raises(ValueError, match="no room"): pc.encode_words([["good"]], max_length=room)


def test_ig_on_the_predicted_verbaliser_finds_the_planted_word(tmp_path):
    torch.manual_seed(0)
    pc = _train_planted_prompt()
    sents, labels = _planted_task(40, seed=2)
    sents, labels = [s for s, y in zip(sents, labels) if y < 2], [y for y in labels if y < 2]
    st = salient_tokens(pc, pc.tokenizer, [" ".join(s) for s in sents], sents, n_steps=16, progress=False)
    assert st.target.tolist() == labels
    assert np.mean([st.word(i) in ("great", "worst") for i in range(len(sents))]) >= 0.9
    assert [len(s) for s in st.scores] == [len(s) for s in sents]


def test_concept_removal_reads_the_decoder_sentence_vector(tmp_path):
    "evaluate_removal on a decoder cache: the sentence vector (tag row) is what the probe sees and what loses the direction."
    from clvq_nb.baselines import get_method
    torch.manual_seed(0)
    pc = _train_planted_prompt(steps=40)
    sents, labels = _planted_task(72, seed=3)
    sents, labels = [s for s, y in zip(sents, labels) if y < 2], [y for y in labels if y < 2]
    ds = datasets.Dataset.from_dict({"text": [" ".join(s) for s in sents], "label": labels, "sid": list(range(len(sents)))})
    c = extract_activations(pc, pc.tokenizer, ds, [0, 1], tmp_path / "c", progress=False)
    km = get_method("kmeans", n_clusters=4, seed=0)
    km.fit(c, 1, None, progress=False)
    st = salient_tokens(pc, pc.tokenizer, ds["text"], [words_of(t) for t in ds["text"]], n_steps=4, progress=False)
    res = evaluate_removal(km, c, 1, st.index, folds=2, seed=0)
    assert res["n_dropped"] == 0 and 0 <= res["acc_removed"] <= 1 and res["acc_original"] > 0.5


def test_paper_layers():
    assert paper_layers(32, decoder=True) == (28, 32) and paper_layers(18, decoder=True) == (16, 18)
    assert paper_layers(12) == (8, 12) and paper_layers(6) == (4, 6)


@pytest.mark.slow
def test_gemma_classifies_movie_sentences(home):
    from clvq_nb.data import load_data
    dsd = load_data("movie", max_sentences=400, seed=0)
    dsd = datasets.DatasetDict(train=dsd["train"], dev=dsd["dev"].select(range(16)))
    run = get_classifier(dsd, model="gemma3-270m", progress=False)
    assert isinstance(run.model, PromptClassifier) and run.model.config.num_hidden_layers == 18
    assert 0.0 <= run.dev_accuracy <= 1.0 and run.metrics["n_dev"] == 16
    c = get_activations(run, dsd, list(paper_layers(18, decoder=True)), split="dev", progress=False)
    assert c.dim(18) == 640 and c.n_sentences == 16 and c.manifest["tag_word"] == "[SENT]"
