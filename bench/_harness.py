"""What the benchmarks share: the offline environment, the classifier benchmarks' arguments and setup (a registry
model on some dev sentences, an analysis layer), interleaved best-of-N timing of ours against the peer on the same
work, and the report lines with the ratio. Imported by bench/causal.py and bench/ig.py (run from any folder)."""
import argparse, os, time

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"): os.environ.setdefault(_k, "1")


def classifier_parser(doc: str, n: int, layer_help: str) -> argparse.ArgumentParser:
    "The arguments of a benchmark on a fine-tuned classifier: --model --dataset --n (default `n`) --layer --repeats --threads."
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="registry name (default, mpnet) or path")
    ap.add_argument("--dataset", default="movie")
    ap.add_argument("--n", type=int, default=n, help="dev sentences")
    ap.add_argument("--layer", type=int, default=None, help=f"{layer_help} (default: round(2/3 of the depth))")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def load_classifier_bench(a):
    """Set the torch threads and load what `classifier_parser`'s arguments `a` name: `(words, labels, model, tokenizer,
    depth, layer)`, the words and labels of the first `a.n` dev sentences, the model in eval mode, `a.layer` or 2/3 of
    the depth (MiniLM 4, MPNet 8)."""
    import torch
    from clvq_nb.data import load_data, word_tokenize
    from clvq_nb.models import load_classifier, resolve_model_path
    torch.set_num_threads(a.threads)
    dsd = load_data(a.dataset)
    dev = dsd["dev"].select(range(min(a.n, len(dsd["dev"]))))
    words = [word_tokenize(t) for t in dev["text"]]
    model, tok = load_classifier(resolve_model_path(a.model), label_names=dsd["train"].features["label"].names)
    model.eval()
    L = model.config.num_hidden_layers
    return words, list(dev["label"]), model, tok, L, (a.layer if a.layer is not None else round(2 * L / 3))


def interleaved(ours, peer, repeats: int):
    """Run each side once to warm up, then `repeats` rounds of both, alternating which goes first. Returns
    ({'ours'|'peer': [wall s]}, {...: [CPU s]}, {...: last result})."""
    ours(); peer()
    wall, cpu, res = {"ours": [], "peer": []}, {"ours": [], "peer": []}, {}
    for i in range(repeats):
        for k, f in ((("ours", ours), ("peer", peer)) if i % 2 == 0 else (("peer", peer), ("ours", ours))):
            t0, c0 = time.perf_counter(), time.process_time(); res[k] = f()
            wall[k].append(time.perf_counter() - t0); cpu[k].append(time.process_time() - c0)
    return wall, cpu, res


def report(wall: dict, cpu: dict, labels: dict) -> float:
    "Print each side's best wall and CPU seconds and every run, then the speed-up (peer / ours, best wall); return it."
    w = max(len(s) for s in labels.values())
    for k in ("ours", "peer"):
        print(f"{labels[k]:<{w}}: best {min(wall[k]):7.2f} s wall, {min(cpu[k]):7.2f} s CPU   runs: "
              + " ".join(f"{t:.2f}" for t in wall[k]))
    r = min(wall["peer"]) / min(wall["ours"])
    print(f"speed-up (peer / ours, best wall) = {r:.2f}x;  CPU: {min(cpu['peer']) / min(cpu['ours']):.2f}x")
    return r
