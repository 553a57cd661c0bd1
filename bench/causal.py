"""Benchmark of the causal-faithfulness hot path: interventions inside the classifier (issue 10, part 5).

Ours: `causal_removal` + `splice_accuracy` with `replay=True` (`clvq_nb.metrics.BlockReplay`): each batch runs the
model once, then every condition (concept removed, random concept, splice, zero- and mean-ablation) runs only the
blocks above the edited layer. Peer, same run, same batches, edits and results: `replay=False`, i.e. one full forward
pass per condition with a PyTorch forward hook editing the hidden state, which is what hook-based tools (nnsight,
TransformerLens' `run_with_hooks`, baukit) run. Both must give the same results (checked and printed).

Work: `--n` dev sentences of `--dataset`; a k-means-like method of `--k` centroids taken from the layer's word
vectors; one random salient word per sentence; removal at `--layer` (default 2/3 of the depth: MiniLM 4, MPNet 8)
and splices at `--layer` and at the last layer. Best of `--repeats` interleaved runs, CPU seconds too.

    python bench/causal.py [--model default|mpnet|path] [--n 400] [--threads 1]
"""
import os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import classifier_parser, interleaved, load_classifier_bench, report   # sets the offline environment first

import numpy as np
import torch


def main(argv=None):
    ap = classifier_parser(__doc__, n=400, layer_help="edited layer")
    ap.add_argument("--k", type=int, default=50, help="centroids of the stand-in method")
    a = ap.parse_args(argv)
    from clvq_nb.baselines import KMeans
    from clvq_nb.concepts import SalientTokens
    from clvq_nb.metrics import EvalProtocol, causal_removal, splice_accuracy
    words, labels, model, tok, L, layer = load_classifier_bench(a)
    g = np.random.default_rng(0)
    salient = SalientTokens(index=np.array([int(g.integers(len(w))) for w in words]), scores=[np.zeros(len(w)) for w in words],
                            target=np.zeros(len(words), dtype=np.int64), words=words)
    with torch.no_grad():                                           # the stand-in method: k word vectors of the layer
        enc = tok(words[:64], is_split_into_words=True, truncation=True, max_length=128, padding=True, return_tensors="pt")
        H = model(**enc, output_hidden_states=True).hidden_states[layer][enc["attention_mask"].bool()]
    m = KMeans(n_clusters=a.k); m.l_in = m.l_out = layer; m.d_in = H.shape[1]
    m.centroids = H[torch.as_tensor(g.choice(len(H), a.k, replace=False))].float().clone()
    mu = H.mean(0)
    P = EvalProtocol.preset("sound")
    reps = {"zero": lambda hs, enc: torch.zeros_like(hs[layer]), "mean": lambda hs, enc: mu.expand_as(hs[layer]),
            "half": lambda hs, enc: hs[layer] * 0.5}
    last = {"zero": lambda hs, enc: torch.zeros_like(hs[L])}

    def work(replay):
        c = causal_removal(model, tok, words, salient, m, layer, labels, P, mean=mu, replay=replay)
        s = splice_accuracy(model, tok, words, labels, layer, reps, replay=replay)
        t = splice_accuracy(model, tok, words, labels, L, last, replay=replay)
        return c, s, t

    wall, cpu, res = interleaved(lambda: work(True), lambda: work(False), a.repeats)
    print(f"causal benchmark: model={a.model} ({L} layers) edited layer {layer}, last layer {L}, sentences={len(words)}, "
          f"threads={torch.get_num_threads()}, repeats={a.repeats}")
    print(f"conditions: removal (concept, random concept) at {layer}; splice (zero, mean, half) at {layer}; zero-ablation at {L}")
    print(f"same results: {res['ours'] == res['peer']}  (acc_clean {res['ours'][0]['acc_clean']:.3f}, acc_removed {res['ours'][0]['acc_removed']:.3f})")
    r = report(wall, cpu, {"ours": "ours: BlockReplay (replay=True)", "peer": "peer: full pass + forward hook (replay=False)"})
    return r


if __name__ == "__main__":
    main()
