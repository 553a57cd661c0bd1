"""Benchmark of Integrated Gradients at a hidden layer (the `paper` protocol's salient words, issue 10).

Ours: `salient_tokens(site='layer', skip_below=True)`: the layer's output for the inputs and the baselines comes from
one pass each, then every path point runs only the blocks above the layer (`clvq_nb.concepts._ig_from_layer`, plain
`IntegratedGradients` on the blocks above). Peer, same run, same sentences, steps, batches and settings: captum's
`LayerIntegratedGradients` on the layer's module (`skip_below=False`), which runs the whole model per path point with
a hook replacing the layer's output; the way captum documents layer attribution. Both must give the same scores
(the largest difference is printed).

Work: `--n` dev sentences of `--dataset`, `--steps` IG steps, the `paper` preset's IG settings (zero input-id
baseline, predicted class, all-token norm, final separator excluded) at `--layer` (default 2/3 of the depth: MiniLM
4, MPNet 8). Best of `--repeats` interleaved runs, CPU seconds too.

    python bench/ig.py [--model default|mpnet|path] [--n 32] [--steps 20] [--threads 1]
"""
import os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import classifier_parser, interleaved, load_classifier_bench, report   # sets the offline environment first

import numpy as np
import torch


def main(argv=None):
    ap = classifier_parser(__doc__, n=32, layer_help="attribution layer")
    ap.add_argument("--steps", type=int, default=20, help="IG steps")
    a = ap.parse_args(argv)
    from clvq_nb.concepts import salient_tokens
    words, _, model, tok, L, layer = load_classifier_bench(a)
    kw = dict(n_steps=a.steps, site="layer", layer=layer, baseline="zeros", norm="all", exclude="final_sep", progress=False)
    texts = [" ".join(w) for w in words]
    work = lambda skip: salient_tokens(model, tok, texts, words, skip_below=skip, **kw)
    wall, cpu, res = interleaved(lambda: work(True), lambda: work(False), a.repeats)
    diff = max(float(np.nanmax(np.abs(x - y))) if len(x) else 0.0 for x, y in zip(res["ours"].scores, res["peer"].scores))
    print(f"IG benchmark: model={a.model} ({L} layers) layer {layer}, sentences={len(words)}, steps={a.steps}, "
          f"threads={torch.get_num_threads()}, repeats={a.repeats}")
    print(f"same picks: {bool((res['ours'].index == res['peer'].index).all() and (res['ours'].tag == res['peer'].tag).all())}, "
          f"largest score difference {diff:.2e}")
    r = report(wall, cpu, {"ours": "ours: blocks above the layer (skip_below=True)", "peer": "peer: captum LayerIntegratedGradients"})
    return r


if __name__ == "__main__":
    main()
