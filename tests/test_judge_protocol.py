"""LLM judge as the authors ran it (issue 13): the `paper` prompt, its reply reader, the authors' sampler and
aggregation, rating by next-token probabilities, and the validity check with planted controls."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from clvq_nb.config import ClvqError
from clvq_nb.judge import ConceptView, JudgeError, JudgeSentence, demo_inputs, paper_sample, strata
from clvq_nb.judge_backends import HFJudge, expected_rating
from clvq_nb.judge_prompts import PAPER_GUIDANCE, answer_prefixes, build_paper_prompt, parse_paper_reply
from clvq_nb.judge_runner import plant_controls, run_judge
from clvq_nb.judge_stats import paper_aggregate, validity_check
from clvq_nb.testing import OverlapJudge, RandomJudge, tiny_causal_lm


def test_judge_error_is_a_user_error():
    assert issubclass(JudgeError, ClvqError) and issubclass(JudgeError, ValueError)


def test_paper_prompt_golden_fixed_concepts():
    cs = {"clvqvae": ConceptView(0, [("superb", 9), ("great", 7), ("[CLS]", 3)], 0.1),
          "kmeans": ConceptView(1, [("[CLS]", 50)], 0.9, ["too short", "a film that rewards patience with a quiet final act"]),
          "sae": None}
    got = build_paper_prompt("superb acting", "pos", "Positive Sentiment Review", cs)
    assert got == (
        "You are an expert in AI and linguistics. Rate how well each concept below explains a model's prediction.\n\n"
        'Sentence: "superb acting"\n'
        "Model prediction: pos (meaning: Positive Sentiment Review)\n\n"
        "A concept is a group of words or sentences that the model represents alike. For each concept, ask: if the model "
        "looked only at this concept, how well would it support predicting 'Positive Sentiment Review'?\n"
        "- Concepts that overlap a lot (many shared words, similar meaning) get the same rating.\n"
        "- Words are not worse than sentences: judge the meaning a concept conveys, not its detail.\n"
        "- Be flexible: a recognisable general theme that plausibly supports the prediction is a good concept.\n\n"
        "Rubric:\n"
        "3 (good): a general connection to 'Positive Sentiment Review', even if not precise; the theme is recognisable.\n"
        "2 (fair): some connection, but broad, mixed or only partly relevant.\n"
        "1 (poor): little or no connection, mostly irrelevant, or contradicts the prediction.\n\n"
        "Concepts:\n"
        'Configuration "clvqvae":\n'
        "  words: superb, great\n"
        'Configuration "kmeans":\n'
        "  sentences:\n"
        '  - "a film that rewards patience with a quiet final act"\n\n'
        'Reply with one JSON object only, with the keys "clvqvae", "kmeans"; each value is '
        '{"rating": 1, 2 or 3, "reason": "a short reason"}. Rate every configuration.')
    assert PAPER_GUIDANCE["movie"] in build_paper_prompt("x", "pos", "P", cs, PAPER_GUIDANCE["movie"])


@pytest.mark.parametrize("reply,want", [
    ('{"a": {"rating": 3, "reason": "x"}, "b": {"rating": 1, "reason": "y"}}', {"a": 3, "b": 1}),
    ('```json\n{"a": {"rating": 2}, "b": {"rating": "3"}}\n```', {"a": 2, "b": 3}),               # code fence, string rating
    ('Here you go: {"a": {"rating": 2}, "b": {"rating": 2}} -- done.', {"a": 2, "b": 2}),          # text around it
    ('{"a": {"rating": 2}}', {"a": 2, "b": None}),                                                  # missing method
    ('{"a": {"rating": 4}, "b": {"rating": 0}}', {"a": None, "b": None}),                           # out of range
    ('{"a": {"rating": 2.5}, "b": {"rating": true}}', {"a": None, "b": None}),
    ("{'A': {'rating': 3,}, 'b': {'score': 1}}", {"a": 3, "b": 1}),                                # quotes, trailing comma, case
    ('{"a": 1, "b": "two"}', {"a": 1, "b": 2}),                                                     # flat values
    ('{"note": "none"} {"b": {"rating": 3, "reason": "nested {braces}"}}', {"a": None, "b": 3}),
    ('{"a": {"rating": 3', {"a": None, "b": None}), ("ratings: a=3, b=1", {"a": None, "b": None}), ("", {"a": None, "b": None})])
def test_parse_paper_reply_messy(reply, want):
    assert parse_paper_reply(reply, ["a", "b"]) == want


def test_paper_sampler_hand_worked():
    # 4 TP, 30 FP, 2 TN, 30 FN; n = 14 -> 4, 4, 3, 3 wanted (14 = 4*3 + 2), TN gives 2, one refilled from the rest
    y = np.r_[np.ones(4), np.zeros(30), np.zeros(2), np.ones(30)].astype(int)
    p = np.r_[np.ones(4), np.ones(30), np.zeros(2), np.zeros(30)].astype(int)
    s = paper_sample(y, p, n=14)
    c = pd.Series(strata(y[s], p[s])).value_counts()
    assert len(set(s)) == 14 and c["TP"] == 4 and c["TN"] == 2 and c["FP"] + c["FN"] == 8 and c["FP"] >= 4 and c["FN"] >= 3
    assert np.array_equal(s, paper_sample(y, p, n=14)) and not np.array_equal(s, paper_sample(y, p, n=14, seed=0))


def test_paper_aggregate_hand_worked():
    # method m: A = (1,2,3,3), B = (1,2,3,1); method k: both (2,3). Pooled means 2.0 and 2.5; interval alpha of m = 5/12;
    # Pearson over the six units A = (1,2,3,3,2,3), B = (1,2,3,1,2,3): r = 2 / sqrt(10/3 * 4)
    rows = [("A", u, "m", r) for u, r in enumerate([1, 2, 3, 3])] + [("B", u, "m", r) for u, r in enumerate([1, 2, 3, 1])]
    rows += [(j, 10 + u, "k", r) for j in "AB" for u, r in enumerate([2, 3])]
    df = pd.DataFrame(rows, columns=["judge", "sid", "method", "rating"])
    a = paper_aggregate(df)
    assert a["pooled_mean"] == {"k": 2.5, "m": 2.0} and a["n"] == {"k": 4, "m": 8}
    assert a["alpha_interval"]["m"] == pytest.approx(5 / 12)
    assert a["pearson"] == pytest.approx(2 / np.sqrt(10 / 3 * 4))
    c = df[df.judge == "A"].assign(judge="C", rating=lambda x: 4 - x.rating)
    d = paper_aggregate(pd.concat([df, c]), drop_worst=True)
    assert d["dropped"] == "C" and d["judges"] == ["A", "B"]


def test_probability_rating_tiny_lm_matches_full_forward():
    m, tok = tiny_causal_lm(extra_words=["{", "}", "rating", "kmeans", "sae", "film"])
    j = HFJudge(m, tok, name="tiny")
    pre = answer_prefixes("paper", ["kmeans", "sae"])
    ps = j.score("the film is a concept", pre)
    for p, a in zip(ps, pre):
        ids = tok("the film is a concept\n" + a)["input_ids"]
        with torch.no_grad(): lg = m(input_ids=torch.tensor([ids])).logits[0, -1, [tok.convert_tokens_to_ids(c) for c in "123"]]
        assert p == pytest.approx(torch.softmax(lg, -1).tolist(), abs=1e-5)
    assert expected_rating([0, 0, 1]) == 3.0 and expected_rating([0.5, 0.5, 0]) == 1.5
    assert j.score("the film is a concept", pre) == ps                     # deterministic


def _rich_demo():
    sents, concepts, names = demo_inputs()
    extra = {10 + i: ConceptView(10 + i, [(f"neg{i}w{j}", 5) for j in range(4)], 0.0, [], {"negative": 9}) for i in range(4)}
    extra |= {20 + i: ConceptView(20 + i, [(f"pos{i}w{j}", 5) for j in range(4)], 0.0, [], {"positive": 9}) for i in range(4)}
    return sents, {m: dict(c) | extra for m, c in concepts.items()}, names


def test_planted_controls():
    sents, concepts, names = _rich_demo()
    c = plant_controls(sents[1], concepts["clvq-vae"], "clvq-vae", names, seed=0)     # predicted positive
    assert set(c) == {"control:real", "control:random", "control:other"}
    assert c["control:other"].labels.get("negative", 0) > c["control:other"].labels.get("positive", 0)
    assert len(c["control:random"].top_words) == 10
    none = JudgeSentence(1, "x", 0, 0, {"clvq-vae": ("x", None)})
    assert plant_controls(none, concepts["clvq-vae"], "clvq-vae", names) is None


@pytest.mark.parametrize("style", ["paper", "single"])
def test_validity_random_flagged_truth_not(tmp_path, style):
    sents, concepts, names = _rich_demo()
    kw = dict(n=12, task="movie", style=style, reference="clvq-vae", progress=False)
    ok = run_judge(sents, concepts, OverlapJudge(), tmp_path / "o.jsonl", names, **kw)
    bad = run_judge(sents, concepts, RandomJudge(seed=1), tmp_path / "r.jsonl", names, **kw)
    v = validity_check(pd.concat([ok, bad])).set_index("judge")
    assert v.cannot_discriminate.to_dict() == {"fake:overlap": False, "fake:random": True}
    assert v.auc_random["fake:overlap"] > 0.8 and v.p_random["fake:overlap"] < 0.05
    assert (ok.method.str.startswith("control:")).sum() == 3 * 12


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3-270m", "qwen2.5-coder-0.5b"])
def test_offline_judges_score_a_paper_prompt(name):
    "Each offline judge loads from its registry packages and gives rating probabilities for every method of one prompt."
    from clvq_nb.judge_backends import make_backend
    from clvq_nb.judge_prompts import PAPER_MEANINGS
    sents, concepts, names = demo_inputs()
    s = sents[1]
    prompt = build_paper_prompt(s.text, names[s.pred], PAPER_MEANINGS["movie"][s.pred],
                                {m: concepts[m][k] for m, (_, k) in s.salient.items()}, PAPER_GUIDANCE["movie"])
    ps = make_backend(name).score(prompt, answer_prefixes("paper", list(s.salient)))
    assert len(ps) == 2 and all(abs(sum(p) - 1) < 1e-4 for p in ps)
