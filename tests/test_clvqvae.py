"""CLVQVAE model: shapes, padding, bottleneck, losses, single-layer baseline, save/load, errors."""
import json

import pytest
import torch

from clvq_nb.clvqvae import CLVQVAE, CLVQVAEConfig, fvu, masked_mse, single_layer_vqvae

SMALL = dict(d_in=16, d_out=8, codebook_size=8, top_k=2, n_layers=2, n_heads=2, d_ff=32, init="kmeans++")


@pytest.fixture
def batch(seed):
    x, y = torch.randn(4, 9, 16), torch.randn(4, 9, 8)
    mask = torch.arange(9)[None] < torch.tensor([[9], [3], [5], [1]])
    return x, y, mask


def trained(batch, steps=5, **kw):
    torch.manual_seed(0)
    m = CLVQVAE(CLVQVAEConfig(**{**SMALL, **kw}))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x, y, mask = batch
    for _ in range(steps):
        out = m(x, mask, y); opt.zero_grad(); out.loss.backward(); opt.step()
    return m.eval()


def test_shapes_and_padding(batch):
    x, y, mask = batch
    m = trained(batch)
    out = m(x, mask, y)
    assert out.recon.shape == (4, 9, 8) and out.z.shape == (4, 9, 16) and out.quantized.shape == (4, 9, 16)
    assert torch.equal(out.indices >= 0, mask) and out.indices.max() < 8
    assert out.recon[~mask].abs().sum() == 0 and out.z[~mask].abs().sum() == 0
    # eval-mode quantized vectors are exactly codebook rows
    assert torch.equal(out.quantized[mask], m.concept_vectors()[out.indices[mask]])
    torch.testing.assert_close(out.loss, masked_mse(out.recon, y, mask) + 0.1 * out.commit_loss)


def test_padding_is_invisible(batch):
    x, _, mask = batch
    m = trained(batch)
    with torch.no_grad():
        full = m(x, mask)
        garbage = x.clone(); garbage[~mask] = 1e3  # whatever sits in padded slots must not matter
        g = m(garbage, mask)
        alone = m(x[1:2, :3])
    torch.testing.assert_close(full.recon, g.recon); assert torch.equal(full.indices, g.indices)
    torch.testing.assert_close(full.recon[1:2, :3], alone.recon, atol=1e-5, rtol=1e-5)


def test_padding_never_reaches_codebook(batch):
    x, y, mask = batch
    torch.manual_seed(0)
    m = CLVQVAE(CLVQVAEConfig(**SMALL))
    m(x, mask, y)
    assert m.quantizer.usage.sum() == mask.sum()  # only real tokens are counted by the EMA


def test_quantized_memory_is_a_bottleneck(batch):
    x, _, mask = batch
    mq = trained(batch)
    mc = CLVQVAE(CLVQVAEConfig(**{**SMALL, "memory": "continuous"})).eval(); mc.load_state_dict(mq.state_dict())
    x2 = x + 1e-4 * torch.randn_like(x)
    with torch.no_grad():
        assert torch.equal(mq.encode(x2, mask), mq.encode(x, mask))
        assert torch.equal(mq(x2, mask).recon, mq(x, mask).recon)           # output depends on the codes only
        assert not torch.equal(mc(x2, mask).recon, mc(x, mask).recon)       # continuous memory leaks z


def test_gradients_reach_encoder(batch):
    x, y, mask = batch
    torch.manual_seed(0)
    m = CLVQVAE(CLVQVAEConfig(**SMALL)).train()
    m(x, mask, y).loss.backward()
    assert m.encoder.linear.weight.grad.abs().sum() > 0 and m.encoder.alpha.grad.abs() > 0
    assert all(p.grad is not None for p in m.parameters())


def test_encoder_formula():
    m = CLVQVAE(CLVQVAEConfig(**SMALL))
    e = m.encoder
    torch.testing.assert_close(e.mix, 0.5 * torch.sigmoid(torch.tensor(0.2)))
    torch.testing.assert_close(e.linear.weight, torch.eye(16))  # starts as identity (authors' code)
    with torch.no_grad(): e.linear.weight.normal_(); e.linear.bias.normal_(); e.alpha.fill_(-1.0)
    x = torch.randn(5, 16)
    mix = 0.5 * torch.sigmoid(torch.tensor(-1.0))
    torch.testing.assert_close(e(x), (1 - mix) * x + mix * e.norm(e.linear(x)))


def test_single_layer_baseline(batch):
    x, _, mask = batch
    m = single_layer_vqvae(16, layer=3, **{k: v for k, v in SMALL.items() if k not in ("d_in", "d_out")})
    assert isinstance(m, CLVQVAE) and m.cfg.single_layer and m.cfg.d_in == m.cfg.d_out == 16
    out = m(x, mask, x)
    assert out.recon.shape == x.shape and torch.isfinite(out.loss)
    assert not CLVQVAE(CLVQVAEConfig(**SMALL, layer_in=3, layer_out=6)).cfg.single_layer


def test_save_load_identical(batch, tmp_path):
    x, _, mask = batch
    m = trained(batch, memory="continuous")
    m.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["model_type"] == "clvqvae" and meta["config"]["memory"] == "continuous"
    back = CLVQVAE.from_pretrained(tmp_path / "m")
    assert not back.training and back.cfg == m.cfg
    with torch.no_grad():
        a, b = m(x, mask), back(x, mask)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.indices, b.indices)
    assert torch.equal(back.concept_vectors(), m.concept_vectors()) and bool(back.quantizer.initted)
    m.save_pretrained(tmp_path / "m")  # overwrite in place, atomically
    assert not list((tmp_path / "m").glob(".*tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder written by CLVQVAE.save_pretrained"):
        CLVQVAE.from_pretrained(tmp_path)
    torch.save({"x": 1}, tmp_path / "model.bin")  # pickles are never read
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sae", "config": {}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="expected 'clvqvae'"):
        CLVQVAE.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clvqvae", "config": {**SMALL, "bogus": 1}}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['bogus'\]"):
        CLVQVAE.from_pretrained(tmp_path)


def test_config_errors():
    with pytest.raises(ValueError, match=r"n_heads=8 does not divide d_in=20.*use n_heads in \[10, 5, 4\]"):
        CLVQVAEConfig(d_in=20, d_out=4)
    assert CLVQVAEConfig(d_in=384, d_out=384).n_heads == 8  # the default model's width works with the paper's 8 heads
    with pytest.raises(ValueError, match="top_k <= codebook_size"): CLVQVAEConfig(d_in=16, d_out=8, n_heads=2, codebook_size=3, top_k=5)
    with pytest.raises(ValueError, match="temperature"): CLVQVAEConfig(d_in=16, d_out=8, n_heads=2, temperature=-1)
    with pytest.raises(ValueError, match="memory"): CLVQVAEConfig(d_in=16, d_out=8, n_heads=2, memory="both")
    with pytest.raises(ValueError, match="d_in=0 must be a positive integer"): CLVQVAEConfig(d_in=0, d_out=8)
    with pytest.raises(ValueError, match="unknown init"): CLVQVAE(CLVQVAEConfig(**{**SMALL, "init": "kmeans"}))


def test_input_errors(batch):
    x, y, mask = batch
    m = CLVQVAE(CLVQVAEConfig(**SMALL, layer_in=3, layer_out=6))
    with pytest.raises(ValueError, match=r"width 12 but this model reads d_in=16 \(layer 3\)"): m(torch.randn(2, 4, 12))
    with pytest.raises(ValueError, match=r"\[batch, tokens, d_in\]"): m(torch.randn(4, 16))
    with pytest.raises(ValueError, match="mask shape"): m(x, mask[:, :4])
    with pytest.raises(ValueError, match="d_out=8, layer 6"): m(x, mask, torch.randn(4, 9, 5))
    x = x.clone(); x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"): m(x, mask)


def test_bf16_autocast_keeps_codebook_fp32(batch):
    x, y, mask = batch
    torch.manual_seed(0)
    m = CLVQVAE(CLVQVAEConfig(**SMALL))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, mask)
    loss = m.loss_fn(out, y, mask)
    loss.backward()
    assert m.quantizer.embed.dtype == torch.float32 and torch.isfinite(loss)


def test_fvu():
    y = torch.randn(3, 6, 4); mask = torch.rand(3, 6) > 0.3; mask[0, 0] = mask[1, 0] = True
    assert fvu(y, y, mask) == 0.0
    assert abs(fvu(y[mask].mean(0).expand_as(y), y, mask) - 1.0) < 1e-12
    r = y + 0.1 * torch.randn_like(y)
    yy, rr = y[mask].double(), r[mask].double()
    want = ((yy - rr) ** 2).sum() / ((yy - yy.mean(0)) ** 2).sum()
    assert abs(fvu(r, y, mask) - want.item()) < 1e-9
    assert abs(fvu(r[mask], y[mask]) - want.item()) < 1e-9  # [N, d] without a mask
