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
import argparse, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import interleaved, report     # sets the offline environment first

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="registry name (default, mpnet) or path")
    ap.add_argument("--dataset", default="movie")
    ap.add_argument("--n", type=int, default=32, help="dev sentences")
    ap.add_argument("--steps", type=int, default=20, help="IG steps")
    ap.add_argument("--layer", type=int, default=None, help="attribution layer (default: round(2/3 of the depth))")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from clvq_nb.concepts import salient_tokens
    from clvq_nb.data import load_data, word_tokenize
    from clvq_nb.models import load_classifier, resolve_model_path

    dsd = load_data(a.dataset)
    dev = dsd["dev"].select(range(min(a.n, len(dsd["dev"]))))
    words = [word_tokenize(t) for t in dev["text"]]
    model, tok = load_classifier(resolve_model_path(a.model), label_names=dsd["train"].features["label"].names)
    model.eval()
    L = model.config.num_hidden_layers
    layer = a.layer if a.layer is not None else round(2 * L / 3)
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
