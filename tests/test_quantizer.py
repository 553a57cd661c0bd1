"""clvq_nb.quantizer: invariants, bad input, and a 2-process gloo run (codebooks identical across ranks
and equal to one process on the concatenated batch)."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clvq_nb.config import leave_process_group
from clvq_nb.quantizer import VectorQuantizer, VQOutput, init_centroids

D, K, N_PER_RANK, STEPS, WORLD = 8, 16, 48, 5, 2


def test_eval_output_is_the_code_of_the_index(seed):
    vq = VectorQuantizer(D, codebook_size=K, top_k=4).eval()
    x = torch.randn(3, 40, D)
    out = vq(x)
    assert isinstance(out, VQOutput)
    assert torch.equal(out.quantized, vq.get_output_from_indices(out.indices))
    assert torch.equal(out.indices, vq.encode(x))
    assert torch.equal(out.indices, torch.cdist(x.reshape(-1, D), vq.embed).argmin(1).view(3, 40))


def test_training_samples_within_top_k_and_updates_codebook(seed):
    vq = VectorQuantizer(D, codebook_size=K, top_k=3, temperature=2.0).train()
    x = torch.randn(400, D)
    vq.init_codebook(x)
    e0 = vq.embed.clone()
    out = vq(x)
    top = torch.cdist(x, e0).topk(3, largest=False).indices
    assert (top == out.indices[:, None]).any(1).all()
    assert not torch.equal(vq.embed, e0)
    assert 1.0 <= out.perplexity.item() <= K
    stats = vq.usage_stats()
    assert set(stats) >= {"perplexity", "active_codes", "dead_fraction"}
    assert stats["active_codes"] == int((torch.bincount(out.indices, minlength=K) > 0).sum())
    assert math.isclose(stats["dead_fraction"], 1 - stats["active_codes"] / K)


def test_straight_through_gradient_and_commit_loss(seed):
    vq = VectorQuantizer(D, codebook_size=K, top_k=1).train()
    x = torch.randn(100, D, requires_grad=True)
    vq.init_codebook(x.detach())
    e0 = vq.embed.clone()
    out = vq(x)
    (2 * out.quantized.sum()).backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    torch.testing.assert_close(out.commit_loss, ((x.detach() - e0[out.indices]) ** 2).mean())


def test_inits_and_dead_codes(seed):
    x = torch.randn(300, D) * torch.linspace(0.5, 3, 300)[:, None]
    for init in ("spherical_kmeans++", "kmeans++", "random"):
        c = init_centroids(x, K, init, generator=torch.Generator().manual_seed(0))
        assert c.shape == (K, D) and torch.isfinite(c).all()
    # scaled-spherical: each centre's norm is the mean norm of its members
    c = init_centroids(x, K, "spherical_kmeans++", generator=torch.Generator().manual_seed(0))
    assign = (torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(c, dim=1).t()).argmax(1)
    for k in assign.unique()[:5]:
        torch.testing.assert_close(c[k].norm(), x[assign == k].norm(dim=1).mean(), rtol=1e-4, atol=1e-4)
    vq = VectorQuantizer(D, codebook_size=K, top_k=1, decay=0.5, dead_code_threshold=0.7).train()
    far = torch.full((K, D), 1e3); far[0] = 0
    vq.set_codebook(far)
    out = vq(x)
    assert out.restarts == K - 1 and vq.usage_stats()["restarts"] == K - 1
    assert (vq.embed.abs() < 1e2).all()


@pytest.mark.parametrize("make,msg", [
    (lambda: VectorQuantizer(D)(torch.randn(500, D + 1)), f"expected inputs of width dim={D}"),
    (lambda: VectorQuantizer(D, codebook_size=K)(torch.full((2, 3, D), float("nan")), batch_idx=7),
     f"batch 7 holds {2 * 3 * D} NaN/Inf value(s)"),
    (lambda: VectorQuantizer(D, codebook_size=K)(torch.randn(K - 1, D)), "larger than the number of init vectors"),
    (lambda: VectorQuantizer(D, codebook_size=K, top_k=K + 1), f"top_k={K + 1} must be between 1 and codebook_size={K}"),
    (lambda: VectorQuantizer(D, temperature=-1.0), "temperature must be > 0"),
    (lambda: VectorQuantizer(D, init="kmedoids"), "unknown init 'kmedoids'"),
])
def test_bad_input_clear_errors(make, msg):
    with pytest.raises(ValueError, match=None) as ei:
        make()
    assert msg in str(ei.value)


# ---------------------------------------------------------------- 2-process gloo
def _data():
    "The global batches: STEPS x [WORLD * N_PER_RANK, D] (rank r takes rows r*N:(r+1)*N)."
    g = torch.Generator().manual_seed(123)
    return [torch.randn(WORLD * N_PER_RANK, D, generator=g) * (1 + 0.3 * t) + 0.2 * t for t in range(STEPS)]


def _run(vq, batches):
    idx = []
    for xb in batches:
        idx.append(vq(xb).indices)
    return idx


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    ok = False
    try:
        sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        batches = [b[sl] for b in _data()]
        torch.manual_seed(0)  # same seed on every rank, as a trainer does
        vq = VectorQuantizer(D, codebook_size=K, top_k=1, init="spherical_kmeans++", decay=0.9).train()
        idx = _run(vq, batches)  # first forward initialises lazily from the gathered first batch
        # sampling + dead-code restarts: ranks must still agree
        torch.manual_seed(rank)  # different sampling streams per rank
        vq2 = VectorQuantizer(D, codebook_size=K, top_k=4, init="kmeans++", decay=0.5, dead_code_threshold=0.8).train()
        _run(vq2, batches)
        torch.save({"state": vq.state_dict(), "idx": idx, "state2": vq2.state_dict(),
                    "restarts2": vq2.usage_stats()["restarts"]}, os.path.join(out_dir, f"rank{rank}.pt"))
        ok = True
    finally:
        leave_process_group(ok)   # a barrier first when this rank finished, then close


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(WORLD)]
    # identical codebooks (bitwise) across ranks
    for key in ("embed", "cluster_size", "embed_avg", "usage"):
        assert torch.equal(r[0]["state"][key], r[1]["state"][key]), key
        assert torch.equal(r[0]["state2"][key], r[1]["state2"][key]), f"sampling/restart run: {key}"
    assert r[0]["restarts2"] == r[1]["restarts2"]
    # equal to one process on the concatenated batch
    torch.manual_seed(0)
    single = VectorQuantizer(D, codebook_size=K, top_k=1, init="spherical_kmeans++", decay=0.9).train()
    idx = _run(single, _data())
    for t in range(STEPS):
        assert torch.equal(idx[t], torch.cat([r[0]["idx"][t], r[1]["idx"][t]])), f"step {t}"
    for key in ("embed", "cluster_size", "embed_avg", "usage"):
        torch.testing.assert_close(r[0]["state"][key], getattr(single, key), rtol=1e-5, atol=1e-5)


def test_bench_script_runs_small(run_bench):
    "bench/quantizer.py runs end to end (tiny shapes) and reports the three ratios."
    pytest.importorskip("vector_quantize_pytorch")
    res = run_bench("quantizer", "--batch", "256", "--dim", "16", "--codes", "32", "--reps", "2", "--threads", "1")
    assert len(res["ratios"]) == 3 and all(v[0] > 0 and v[1] > 0 for v in res["ratios"].values())
