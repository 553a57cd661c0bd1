"""Differential test: clvq_nb.quantizer.VectorQuantizer vs vector_quantize_pytorch.VectorQuantize (test-only dependency).

How VectorQuantize (1.32) updates its EMA codebook (vector_quantize_pytorch.py, `Codebook`):
  cluster_size.lerp_(counts, 1 - decay)            # N <- decay*N + (1-decay)*counts
  embed_avg.lerp_(embed_sum, 1 - decay)            # m <- decay*m + (1-decay)*sum z
  smoothed = (N + eps) / (sum N + K*eps) * sum N   # Laplace smoothing ...
  embed = embed_avg / smoothed                     # ... used only for e = m/N; N itself stays unsmoothed
Its codebook starts at N = 1, m = e (no kmeans init), the quantized output is the code from *before*
the step's update, and the commitment loss is MSE(x, sg(e)).

The one real difference in formula: DESIGN.md (and the Sonnet / zalando VQ-VAE lineage of the authors'
code) writes the smoothed N back (N <- smoothed). Our default `persist_smoothing=True` does that;
`persist_smoothing=False` reproduces VectorQuantize, which is what this test compares.
Options that make VectorQuantize a plain EMA VQ: rotation_trick=False (its default is True for dim > 1),
kmeans_init=False, threshold_ema_dead_code=0, learnable_codebook=False, ema_update=True,
stochastic_sample_codes=False.
"""
import pytest
import torch

vqp = pytest.importorskip("vector_quantize_pytorch")
from clvq_nb.quantizer import VectorQuantizer


def _pair(dim, K, decay, eps, init, persist=False):
    ref = vqp.VectorQuantize(dim=dim, codebook_size=K, decay=decay, eps=eps, rotation_trick=False,
                             kmeans_init=False, threshold_ema_dead_code=0, learnable_codebook=False,
                             ema_update=True, commitment_weight=1.0, stochastic_sample_codes=False)
    ref._codebook.embed.data.copy_(init[None]); ref._codebook.embed_avg.data.copy_(init[None])
    ref._codebook.cluster_size.data.fill_(1.0)
    ours = VectorQuantizer(dim, codebook_size=K, top_k=1, decay=decay, eps=eps, persist_smoothing=persist)
    ours.set_codebook(init)
    return ref.train(), ours.train()


@pytest.mark.parametrize("decay,eps", [(0.99, 1e-5), (0.8, 1e-3)])
def test_matches_vector_quantize_pytorch(decay, eps):
    g = torch.Generator().manual_seed(0)
    dim, K, B, T = 32, 64, 4, 128
    init = torch.randn(K, dim, generator=g)
    ref, ours = _pair(dim, K, decay, eps, init)
    for step in range(6):
        x = (torch.randn(B, T, dim, generator=g) * (1 + 0.2 * step) + 0.1 * step).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        q_ref, i_ref, loss_ref = ref(x)
        out = ours(x2)
        torch.testing.assert_close(out.indices, i_ref)
        torch.testing.assert_close(out.quantized, q_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.commit_loss, loss_ref.reshape(()), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.embed, ref._codebook.embed[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.cluster_size, ref._codebook.cluster_size[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.embed_avg, ref._codebook.embed_avg[0], atol=1e-5, rtol=1e-5)
        # gradients: both straight-through (identity to the input)
        (q_ref.sum() + loss_ref.sum()).backward(); (out.quantized.sum() + out.commit_loss).backward()
        torch.testing.assert_close(x2.grad, x.grad, atol=1e-6, rtol=1e-5)
    # eval: nearest code on both sides
    ref.eval(); ours.eval()
    x = torch.randn(B, T, dim, generator=g)
    q_ref, i_ref, _ = ref(x)
    out = ours(x)
    torch.testing.assert_close(out.indices, i_ref)
    torch.testing.assert_close(out.quantized, q_ref)


def test_persisted_smoothing_is_the_documented_difference():
    "With persist_smoothing=True (DESIGN.md) N differs from VectorQuantize's unsmoothed N, by about eps per step."
    g = torch.Generator().manual_seed(1)
    dim, K, eps = 16, 32, 1e-3
    init = torch.randn(K, dim, generator=g)
    ref, ours = _pair(dim, K, 0.9, eps, init, persist=True)
    x = torch.randn(2, 64, dim, generator=g)
    _, i_ref, _ = ref(x); out = ours(x)
    torch.testing.assert_close(out.indices, i_ref)
    diff = (ours.cluster_size - ref._codebook.cluster_size[0]).abs().max().item()
    assert 0 < diff < 2 * eps
    N = ref._codebook.cluster_size[0]
    torch.testing.assert_close(ours.cluster_size, (N + eps) / (N.sum() + K * eps) * N.sum())
