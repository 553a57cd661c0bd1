"""Benchmark of the evaluation hot path: the cross-validated MLP probe of the concept-removal test.

Ours: `clvq_nb.metrics.train_fold_probes` trains the k fold probes at once (stacked weights, batched matmuls).
Peer, same run, same folds and data: scikit-learn's `MLPClassifier` (64 ReLU units, Adam lr 1e-3, batch 64,
early stopping on 10% of the training fold, patience 10), one fit per fold.
Data: S sentence vectors of width d (paper-like: 856 dev sentences, MiniLM width 384), 2 classes.
Prints wall time, accuracy for both and the speed ratio.

    python bench/evaluation.py [--S 856] [--d 384] [--folds 5 20] [--threads 1]
"""
import argparse, time

import numpy as np
import torch


def data(S, d, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, S)
    w = g.normal(0, 1, d); w /= np.linalg.norm(w)
    X = g.normal(0, 1, (S, d)) + np.outer(2 * y - 1, w) * 1.5 + g.normal(0, 0.5, d)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--S", type=int, default=856); ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--folds", type=int, nargs="+", default=[5, 20]); ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from sklearn.neural_network import MLPClassifier
    from clvq_nb.metrics import stratified_folds, train_fold_probes
    X, y = data(a.S, a.d)
    print(f"probe CV benchmark: S={a.S} d={a.d} threads={a.threads}")
    for F in a.folds:
        sp = stratified_folds(y.numpy(), F, seed=0)
        t = time.perf_counter()
        net, info = train_fold_probes(X, y, sp, seed=0, threads=a.threads)
        pred = net.logits_all(X).argmax(-1)
        ours_acc = np.mean([(pred[f, te] == y[te]).float().mean().item() for f, (_, te) in enumerate(sp)])
        ours = time.perf_counter() - t
        t = time.perf_counter(); accs, iters = [], []
        for tr, te in sp:
            m = MLPClassifier((64,), learning_rate_init=1e-3, batch_size=64, early_stopping=True, validation_fraction=0.1,
                              n_iter_no_change=10, alpha=0.0, max_iter=200, random_state=0).fit(X[tr].numpy(), y[tr].numpy())
            accs.append(m.score(X[te].numpy(), y[te].numpy())); iters.append(m.n_iter_)
        peer = time.perf_counter() - t
        print(f"folds={F:3d}  clvq_nb fold-vectorised probe: {ours:6.2f} s (acc {ours_acc:.3f}, epochs {info['epochs_run']})"
              f"  | sklearn MLPClassifier x{F}: {peer:6.2f} s (acc {np.mean(accs):.3f}, mean epochs {np.mean(iters):.0f})"
              f"  | speed ratio {peer / ours:.1f}x")


if __name__ == "__main__":
    main()
