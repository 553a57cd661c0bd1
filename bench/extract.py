"""Benchmark: activation extraction + caching vs a bare forward pass, on the same batches in the same run.

    python bench/extract.py                       # packaged MiniLM, 300 movie sentences, all 7 hidden states
    python bench/extract.py --n 1000 --batch-size 64 --layers 3,6 --model path/or/hub-name

(a) bare: `model(**enc, output_hidden_states=True)` on pre-tokenised batches (no word splitting, no merging, no I/O);
(b) full: `extract_activations` (word split, sub-word tokenisation, forward, merge, shards, checksums, manifest).
Both are timed `--repeats` times, interleaved, and the best of each is reported (the machine may be shared);
CPU seconds (process time) are printed too, as they are less sensitive to other processes on the machine.
Prints tokens/s for both (tokens = cached rows: words + sentence tags) and the overhead ratio (goal <= 10%).
"""
import argparse, os, shutil, sys, tempfile, time

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from clvq_nb.activations import encode_words, extract_activations, words_of
from clvq_nb.data import load_data
from clvq_nb.models import DEFAULT_MODEL, load_classifier


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="classifier name or path (default: packaged MiniLM)")
    ap.add_argument("--dataset", default="movie")
    ap.add_argument("--n", type=int, default=300, help="number of sentences")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--layers", default="all", help="comma-separated layer indices or 'all'")
    ap.add_argument("--merge", default="mean", choices=["mean", "first"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: leave torch's choice)")
    ap.add_argument("--out", default=None, help="scratch folder for the cache (default: a temporary folder)")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)

    dsd = load_data(a.dataset)
    ds = dsd["train"].select(range(min(a.n, len(dsd["train"]))))
    model, tok = load_classifier(a.model, label_names=dsd["train"].features["label"].names)
    model.eval()
    L = model.config.num_hidden_layers
    layers = list(range(L + 1)) if a.layers == "all" else [int(x) for x in a.layers.split(",")]

    # the batches extraction will see: same slicing, same word split, same sub-word encoding
    batches = []
    for i in range(0, len(ds), a.batch_size):
        words = [words_of(t) for t in ds[i:i + a.batch_size]["text"]]
        enc, *_ = encode_words(tok, words, a.max_length)
        batches.append(enc)
    n_sub = sum(int(e["attention_mask"].sum()) for e in batches)

    def bare():
        with torch.no_grad():
            for enc in batches: model(**enc, output_hidden_states=True)

    root = tempfile.mkdtemp(prefix="clvq_bench_") if a.out is None else a.out
    def full():
        return extract_activations(model, tok, ds, layers, os.path.join(root, "cache"), merge=a.merge, batch_size=a.batch_size,
                                   max_length=a.max_length, dtype=a.dtype, progress=False)

    with torch.no_grad(): model(**batches[0], output_hidden_states=True)          # warm-up
    t_bare, t_full, c_bare, c_full, cache = [], [], [], [], None
    try:
        for _ in range(a.repeats):
            t0, c0 = time.perf_counter(), time.process_time(); bare()
            t_bare.append(time.perf_counter() - t0); c_bare.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time(); cache = full()
            t_full.append(time.perf_counter() - t0); c_full.append(time.process_time() - c0)
        n_tok = cache.n_tokens
        size = sum(os.path.getsize(os.path.join(cache.path, s["file"])) for s in cache.manifest["shards"])
    finally:
        if a.out is None: shutil.rmtree(root, ignore_errors=True)
    tb, tf = min(t_bare), min(t_full)
    print(f"model={a.model} layers={layers} sentences={len(ds)} batch={a.batch_size} threads={torch.get_num_threads()} "
          f"merge={a.merge} dtype={a.dtype}")
    print(f"tokens (words + tags) = {n_tok}, sub-word tokens = {n_sub}, cache = {size / 1e6:.1f} MB in "
          f"{len(cache.manifest['shards'])} shard(s)")
    print(f"(a) bare forward (output_hidden_states=True): {tb:7.3f} s  {n_tok / tb:9.0f} tokens/s   runs: "
          + " ".join(f"{t:.3f}" for t in t_bare))
    print(f"(b) extraction + caching                   : {tf:7.3f} s  {n_tok / tf:9.0f} tokens/s   runs: "
          + " ".join(f"{t:.3f}" for t in t_full))
    print(f"CPU seconds (best): (a) {min(c_bare):.3f}  (b) {min(c_full):.3f}  -> CPU overhead {min(c_full) / min(c_bare) - 1:+.1%}")
    print(f"overhead ratio (b/a - 1) = {tf / tb - 1:+.1%}  (goal <= +10%)")
    return tf / tb - 1


if __name__ == "__main__":
    main()
