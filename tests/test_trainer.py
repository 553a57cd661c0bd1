"""Trainer: exact resume, checkpoint safety, config mismatch, budgets, bad batches, metrics, bf16, groups."""
import json, math, re
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from clvq_nb.clvqvae import CLVQVAE, CLVQVAEConfig
from clvq_nb.trainer import (RUNTIME_FIELDS, SyntheticPairs, TrainConfig, Trainer, load_checkpoint,
                             split_sentences, train_clvqvae)

DATA = SyntheticPairs(160, seed=0)
TRAIN, VAL = Subset(DATA, range(128)), Subset(DATA, range(128, 160))  # 4 steps per epoch at batch 32


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return CLVQVAE(CLVQVAEConfig(**{**dict(d_in=16, d_out=8, codebook_size=12, top_k=3, n_layers=2, n_heads=2, d_ff=32,
                                             init="kmeans++"), **kw}))


def trainer(out_dir=None, seed=0, on_step=None, train=TRAIN, val=VAL, **kw):
    cfg = TrainConfig(**{**dict(batch_size=32, epochs=3, ckpt_every=3, log_every=1, out_dir=out_dir), **kw})
    return Trainer(model(seed), cfg, train, val, progress=False, on_step=on_step)


def crash_at(n):
    def hook(t, out):
        if t.state.global_step == n: raise RuntimeError("simulated crash")
    return hook


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa: assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    t = trainer(d); t.fit()
    return t, d


# 4 steps per epoch, checkpoints at steps 3, 4 (epoch end), 6, 8 (epoch end), 9, 12 (epoch end)
@pytest.mark.parametrize("crash,ckpt", [(5, 4), (7, 6)])  # resume from an epoch end / from the middle of an epoch
def test_resume_after_crash_is_bit_identical(uninterrupted, tmp_path, crash, ckpt):
    full, d_full = uninterrupted
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(tmp_path, on_step=crash_at(crash)).fit()
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["state"]["global_step"] == ckpt
    resumed = trainer(tmp_path, seed=99)  # another init: everything must come from the checkpoint
    resumed.fit()
    assert_same_weights(full.raw, resumed.raw)
    c1, c2 = load_checkpoint(d_full / "checkpoint.pt"), load_checkpoint(tmp_path / "checkpoint.pt")
    for k in c1["model"]: assert torch.equal(c1["model"][k], c2["model"][k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed.history) == strip(full.history)
    # metrics.jsonl: lines logged after the checkpoint by the crashed run are not duplicated
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r["type"] == "step"]
    assert steps == list(range(1, 13))


def test_resume_after_max_steps(uninterrupted, tmp_path):
    full, _ = uninterrupted
    t = trainer(tmp_path, max_steps=6)
    t.fit()
    assert t.stop_reason == "max_steps" and t.state.global_step == 6 and not t.state.finished
    t2 = trainer(tmp_path, seed=5)  # max_steps is a runtime field: may change on resume
    t2.fit()
    assert t2.stop_reason == "epochs"
    assert_same_weights(full.raw, t2.raw)


def test_checkpoint_is_weights_only(uninterrupted):
    _, d = uninterrupted
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "state", "model_config", "train_config", "data"} <= set(ck)
    assert set(ck["rng"][0]) >= {"python", "numpy", "torch"}
    assert not list(d.glob(".*.tmp"))  # atomic writes leave no temporaries
    assert CLVQVAE.from_pretrained(d / "model").cfg == CLVQVAE.from_pretrained(d / "best").cfg


def test_resume_other_config_names_fields(uninterrupted):
    _, d = uninterrupted
    t = Trainer(model(top_k=2), TrainConfig(batch_size=32, epochs=3, lr=1e-3, out_dir=str(d)), TRAIN, VAL, progress=False)
    with pytest.raises(ValueError) as e: t.fit()
    msg = str(e.value)
    assert "lr: 0.005 -> 0.001" in msg and "top_k: 3 -> 2" in msg and "resume=False" in msg
    assert "epochs" not in msg.split("fields")[1]  # runtime fields are not compared
    with pytest.raises(ValueError, match="n_train: 128 -> 96"):
        trainer(d, train=Subset(DATA, range(96))).fit()


def test_resume_false_starts_over(uninterrupted, tmp_path):
    trainer(tmp_path, max_steps=2).fit()
    t = trainer(tmp_path, resume=False, epochs=1); t.fit()
    assert t.state.global_step == 4 and len(t.history) == 1


def test_finished_run_returns_without_training(uninterrupted):
    full, d = uninterrupted
    calls = []
    t = trainer(d, seed=7, on_step=lambda t, o: calls.append(1))
    h = t.fit()
    assert calls == [] and len(h) == len(full.history)
    assert_same_weights(full.raw, t.raw)


def test_early_stopping_plateau_and_best_restored(tmp_path):
    # scripted validation losses drive the control logic: best at epoch 1, then no improvement
    t = trainer(tmp_path, epochs=30, early_stop=3, patience_lr=1, log_every=0)
    script = iter([3.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    real_eval = t.evaluate
    t.evaluate = lambda ds=None: {**real_eval(ds), "loss": next(script)}
    hist = t.fit()
    assert t.stop_reason == "early_stop" and len(hist) == 5
    assert [h["bad_evals"] for h in hist] == [0, 0, 1, 2, 3]
    # ReduceLROnPlateau(patience=1) halves the lr once two epochs in a row fail to improve
    assert [h["lr"] for h in hist] == [5e-3, 5e-3, 5e-3, 2.5e-3, 2.5e-3]
    best = CLVQVAE.from_pretrained(tmp_path / "best")
    assert_same_weights(best, t.raw.cpu().eval())  # the epoch-1 weights were restored ...
    last = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert not torch.equal(last["proj.weight"], t.raw.state_dict()["proj.weight"])  # ... not the last ones


def test_eval_every_min_delta_stops_inside_an_epoch(tmp_path):
    # validations every 2 steps (4 steps per epoch); a 10% gain on the best is needed to count as better
    t = trainer(tmp_path, epochs=30, eval_every=2, early_stop=3, min_delta=0.1, patience_lr=1, log_every=0)
    script = iter([3.0, 2.0, 2.5, 1.9, 1.85])  # 1.9 and 1.85 improve on 2.0 by less than 10%
    real_eval = t.evaluate
    t.evaluate = lambda ds=None: {**real_eval(ds), "loss": next(script)}
    hist = t.fit()
    assert t.stop_reason == "early_stop" and t.state.finished
    assert [h["step"] for h in hist] == [2, 4, 6, 8, 10] and [h["epoch"] for h in hist] == [0, 0, 1, 1, 2]
    assert t.state.global_step == 10 and t.state.step_in_epoch == 2  # stopped in the middle of epoch 2
    assert [h["bad_evals"] for h in hist] == [0, 0, 1, 2, 3]
    assert [h["lr"] for h in hist] == [5e-3, 5e-3, 5e-3, 2.5e-3, 2.5e-3]  # the plateau schedule uses the same threshold
    # min_delta only paces patience: the restored weights are those of the lowest loss (1.85, the last validation)
    best = CLVQVAE.from_pretrained(tmp_path / "best")
    assert_same_weights(best, t.raw.cpu().eval())
    assert_same_weights(best, CLVQVAE.from_pretrained(tmp_path / "model"))
    assert t.state.best_val == 1.85 and t.state.ref_val == 2.0


def test_eval_every_validates_the_last_steps():
    t = trainer(None, epochs=2, eval_every=3)  # 8 steps: validations at 3, 6 and, after the last epoch, 8
    assert [h["step"] for h in t.fit()] == [3, 6, 8] and t.stop_reason == "epochs"
    t = trainer(None, epochs=2, eval_every=50)  # never reached: the end of training is still validated
    assert [h["step"] for h in t.fit()] == [8]


@pytest.mark.parametrize("crash,ckpt", [(5, 4), (8, 6)])
def test_resume_with_eval_every_is_bit_identical(tmp_path, crash, ckpt):
    full = trainer(tmp_path / "full", eval_every=3); full.fit()
    d = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(d, eval_every=3, on_step=crash_at(crash)).fit()
    assert load_checkpoint(d / "checkpoint.pt")["state"]["global_step"] == ckpt
    resumed = trainer(d, seed=99, eval_every=3); resumed.fit()
    assert_same_weights(full.raw, resumed.raw)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed.history) == strip(full.history) and [r["step"] for r in full.history] == [3, 6, 9, 12]


@pytest.mark.parametrize("init_tokens", [0, 100])
def test_codebook_init_sample(init_tokens):
    # init_tokens > 0: the codes come from a seeded sample of about that many training tokens, before the first step
    t = trainer(None, init_tokens=init_tokens, max_steps=1)
    seen, real = [], t.raw.quantizer.init_codebook
    t.raw.quantizer.init_codebook = lambda x: (seen.append((t.state.global_step, x.shape[0])), real(x))
    t.fit()
    assert len(seen) == 1 and seen[0][0] == 0
    if init_tokens: assert 100 <= seen[0][1] <= 100 + 12  # up to the sentence that crosses 100 (<= 12 tokens)
    else: assert 32 * 3 <= seen[0][1] <= 32 * 12      # the first batch: 32 sentences of 3-12 tokens
    again = trainer(None, init_tokens=init_tokens, max_steps=1); again.fit()
    assert torch.equal(again.raw.quantizer.embed, t.raw.quantizer.embed)  # seeded


def test_max_minutes_budget():
    t = trainer(None, max_minutes=1e-6, epochs=50)
    t.fit()
    assert t.stop_reason == "max_minutes" and t.state.global_step == 1


def test_metrics_jsonl(uninterrupted):
    full, d = uninterrupted
    recs = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["type"] == "epoch"]
    assert len(epochs) == 3 and [r["epoch"] for r in epochs] == [0, 1, 2]
    assert {"train_loss", "val_loss", "val_fvu", "val_perplexity", "train_active_codes", "lr", "dead_fraction"} <= set(epochs[0])
    assert sum(r["type"] == "step" for r in recs) == 12
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]


@pytest.mark.parametrize("where", ["x", "y"])
def test_nan_batch_named(where):
    items = [DATA[i] for i in range(64)]
    x, y = items[10]
    items[10] = (x.clone().fill_(float("inf")), y) if where == "x" else (x, y.clone().fill_(float("nan")))
    name = "x (input layer)" if where == "x" else "y (target layer)"
    t = Trainer(model(), TrainConfig(batch_size=64, epochs=1), items, None, progress=False)
    with pytest.raises(ValueError, match=re.escape(f"training item 10 (read to fix the scales): {name} holds")):
        t.fit()                                  # the scale sample (normalize=True) reads it first
    t = Trainer(model(normalize=False), TrainConfig(batch_size=64, epochs=1), items, None, progress=False)
    with pytest.raises(ValueError, match=re.escape(f"training batch 0 of epoch 0 (global step 0): {name} holds")):
        t.fit()
    t = Trainer(model(), TrainConfig(batch_size=32, epochs=1), TRAIN, items, progress=False)
    with pytest.raises(ValueError, match="validation batch 0"):
        t.fit()


def test_bf16_autocast_on_cpu():
    t = trainer(None, amp="bf16", epochs=2)
    assert t.amp
    hist = t.fit()
    assert all(math.isfinite(h["val_loss"]) for h in hist)
    assert t.raw.quantizer.embed.dtype == torch.float32  # the codebook stays fp32
    assert not trainer(None, amp="auto").amp or torch.cuda.is_available()


def test_weight_decay_groups():
    t = trainer(None)
    decayed = {id(p) for p in t.opt.param_groups[0]["params"]}
    names = {n for n, p in t.raw.named_parameters() if id(p) in decayed}
    assert "encoder.linear.weight" in names and "proj.weight" in names
    assert not any(n.endswith("bias") or "norm" in n or n == "encoder.alpha" for n in names)
    assert t.opt.param_groups[0]["weight_decay"] == 1e-4 and t.opt.param_groups[1]["weight_decay"] == 0.0


def test_config_validation():
    with pytest.raises(ValueError, match="lr_factor=1.5 must be in"): TrainConfig(lr_factor=1.5)
    with pytest.raises(ValueError, match="unknown field"): TrainConfig.from_dict({"learning_rate": 1})
    assert "max_minutes" in RUNTIME_FIELDS and "lr" not in RUNTIME_FIELDS


def test_collate_casts_fp16():  # the trainer batches with the one collate of the package
    from clvq_nb.activations import collate_sentences
    x, y, m = collate_sentences([(torch.ones(2, 3, dtype=torch.float16), torch.ones(2, 1, dtype=torch.float16)),
                                 (torch.ones(1, 3, dtype=torch.float16), torch.ones(1, 1, dtype=torch.float16))])
    assert x.dtype == torch.float32 and m.tolist() == [[True, True], [True, False]]


def test_train_clvqvae_width_mismatch(tmp_path):
    class Cache:
        path = tmp_path
        def dim(self, l): return 16
        def sentence_pairs(self, a, b): return DATA
    with pytest.raises(ValueError, match="have widths 16 -> 16"):
        train_clvqvae(Cache(), 1, 2, CLVQVAEConfig(d_in=16, d_out=8, n_heads=2))
    assert split_sentences(1) == ([0], [])


def test_evaluate_model_agrees_with_pipeline_dev_metrics():
    "One evaluator: the pipeline's dev metrics (`vq_metrics`) are `evaluate_model` on the first sentences."
    from types import SimpleNamespace
    from clvq_nb.pipeline import vq_metrics
    from clvq_nb.trainer import evaluate_model
    m = model(seed=1).eval()
    with torch.no_grad(): m.quantizer.init_codebook(m.encoder(torch.cat([DATA[i][0] for i in range(40)])))
    cache = SimpleNamespace(sentence_pairs=lambda a, b: DATA)
    # 64 sentences = one batch of vq_metrics: over several batches its FVU centres each batch on its own mean
    # (1.9252 vs 1.9176 for 100 sentences here); evaluate_model centres on the mean of all tokens
    theirs = vq_metrics(SimpleNamespace(model=m, n_concepts=m.cfg.codebook_size), cache, 0, 1, max_sentences=64)
    ours = evaluate_model(m, Subset(DATA, range(64)))
    assert theirs["active_codes"] == ours["active_codes"] and theirs["dead_fraction"] == pytest.approx(ours["dead_fraction"])
    assert theirs["fvu"] == pytest.approx(ours["fvu"], rel=1e-5) and theirs["perplexity"] == pytest.approx(ours["perplexity"], rel=1e-5)


# ---------------------------------------------------------------- the authors' membership: last sampled code per token
def _sentence_data():
    import numpy as np
    from clvq_nb.activations import SentencePairs
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, 9, (48,), generator=g).numpy()
    offs = np.concatenate([[0], np.cumsum(lengths)])
    x = torch.randn(int(offs[-1]), 16, generator=g)
    sp = SentencePairs(x, torch.tanh(x[:, :8] * 2), offs)
    return Subset(sp, range(40)), Subset(sp, range(40, 48)), offs     # 5 steps per epoch at batch 8


@pytest.mark.parametrize("crash", [4, 7])       # inside epoch 0 / inside epoch 1: the record must continue exactly
def test_sampled_codes_resume_exactly(tmp_path, crash):
    tr, va, offs = _sentence_data()
    kw = dict(batch_size=8, epochs=3, ckpt_every=1, train=tr, val=va)
    full = trainer(tmp_path / "full", **kw); full.fit()
    codes = full.sampled
    assert codes.shape == (offs[-1],) and (codes[offs[40]:] == -1).all()        # held-out sentences: never drawn
    assert (codes[:offs[40]] >= 0).all() and (codes < 12).all()
    assert (full.out_dir / "sampled_codes.npy").exists()
    import numpy as np
    assert np.array_equal(np.load(full.out_dir / "sampled_codes.npy"), codes)
    with pytest.raises(RuntimeError, match="simulated crash"): trainer(tmp_path / "r", on_step=crash_at(crash), **kw).fit()
    resumed = trainer(tmp_path / "r", seed=99, **kw); resumed.fit()
    assert np.array_equal(resumed.sampled, codes)
