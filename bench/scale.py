"""Scale: extraction, CLVQ-VAE training from the memory-mapped cache and k-means as the data grow, in one run.

    python bench/scale.py            # extraction at 1k, 10k, 50k sentences; training and k-means on the 50k cache (>= 1M tokens)
    python bench/scale.py --quick    # a smoke run (~1-2 min): 100, 300, 1,000 sentences, few steps
    python bench/scale.py --sizes 1000 5000 --train-steps 100 --model path/or/hub-name

Phases, each in its own fresh subprocess so that one phase's memory does not show in the next one's peak:
  extract N    `extract_activations` of layers 4 and 6 (the default pair) of the packaged MiniLM on N movie sentences
               (the offline movie snippets, repeated when N exceeds them); tokens = cached rows (words + tags).
  bare         peer of extraction: the bare forward pass (`output_hidden_states=True`) on the pre-tokenised batches of
               the smallest N, as bench/extract.py measures it: no word split, merge or I/O.
  train N      `Trainer` (the cpu profile's model and batch, K = 400, top_k 5, bf16 autocast) for a fixed number of steps
               on the sentence pairs of the size-N cache, read memory-mapped; tokens/s over the steps after the first
               (the codebook init is not timed).
  train-ram    peer of training: the same training on the smallest cache's sentences copied into RAM.
  kmeans N     `clvq_nb.baselines.KMeans` (K = 400, faiss when importable, fitted on a sample of at most 256 tokens per
               cluster, then every token assigned) on layer 4 of the size-N cache, every token kept.
  assign       peer of k-means: one bare nearest-centroid pass (matmul + argmin) over the largest cache's tokens: what
               one Lloyd iteration over all of them costs; k-means time is printed in such passes.

Memory per phase: the child's peak RSS (ru_maxrss; it counts the memory-mapped cache pages read, which are page cache,
not the program's memory) and the peak anonymous resident memory (RssAnon, sampled every 20 ms) above its value when
the phase's work starts: what the phase allocates. "Flat" = that heap peak does not grow with N. The extraction
writer holds up to one shard (64 MB of activations, ~22k tokens of 2 layers x 384) before writing it, so its heap grows
up to ~1k sentences and should stay flat beyond (the --quick sizes are all below one shard); the training heap holds the
codebook init's sample (20k tokens, fewer in a smaller cache).
Prints a table, then ratios against the peers and slopes from the smallest to the largest N.
"""
import argparse, json, os, subprocess, sys, tempfile, threading, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1"); os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LAYERS = (4, 6)


class HeapPeak:
    "Peak of RssAnon (the process's anonymous resident memory) above its value at `start()`, sampled on a thread."
    def __init__(self, every: float = 0.02):
        self.every, self.base, self.peak, self._stop = every, 0, 0, threading.Event()
    @staticmethod
    def now() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"): return int(line.split()[1]) * 1024
        return 0
    def _run(self):
        while not self._stop.is_set(): self.peak = max(self.peak, self.now()); time.sleep(self.every)
    def __enter__(self):
        self.base = self.peak = self.now()
        self._t = threading.Thread(target=self._run, daemon=True); self._t.start()
        return self
    def __exit__(self, *exc):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, self.now())
    @property
    def over_start(self) -> int: return max(0, self.peak - self.base)


def _sentences(n: int):
    "n movie sentences (the offline snippets, repeated as often as needed) as a datasets.Dataset."
    import datasets
    from clvq_nb.data import load_data
    dsd = load_data("movie", max_sentences=None)
    texts = list(dsd["train"]["text"]) + list(dsd["dev"]["text"])
    labels = list(dsd["train"]["label"]) + list(dsd["dev"]["label"])
    idx = [i % len(texts) for i in range(n)]
    return datasets.Dataset.from_dict({"text": [texts[i] for i in idx], "label": [labels[i] for i in idx]}), \
        dsd["train"].features["label"].names


def _model(name: str, label_names):
    from clvq_nb.models import DEFAULT_MODEL, load_classifier
    model, tok = load_classifier(DEFAULT_MODEL if name == "default" else name, label_names=label_names)
    return model.eval(), tok


def phase_extract(a: dict) -> dict:
    from clvq_nb.activations import extract_activations
    ds, names = _sentences(a["n"])
    model, tok = _model(a["model"], names)
    with HeapPeak() as mem:
        t0 = time.perf_counter()
        cache = extract_activations(model, tok, ds, list(LAYERS), a["out"], batch_size=32, progress=False)
        dt = time.perf_counter() - t0
    return dict(seconds=dt, tokens=cache.n_tokens, heap=mem.over_start)


def phase_bare(a: dict) -> dict:
    import torch
    from clvq_nb.activations import encode_words, words_of
    ds, names = _sentences(a["n"])
    model, tok = _model(a["model"], names)
    batches = [encode_words(tok, [words_of(t) for t in ds[i:i + 32]["text"]], 128)[0] for i in range(0, len(ds), 32)]
    with HeapPeak() as mem, torch.no_grad():
        t0 = time.perf_counter()
        for enc in batches: model(**enc, output_hidden_states=True)
        dt = time.perf_counter() - t0
    return dict(seconds=dt, heap=mem.over_start)


def phase_train(a: dict) -> dict:
    import torch
    from clvq_nb.activations import ActivationCache
    from clvq_nb.clvqvae import CLVQVAE, CLVQVAEConfig
    from clvq_nb.trainer import TrainConfig, Trainer, profile
    cache = ActivationCache(a["cache"])
    ds = cache.sentence_pairs(*LAYERS)
    if a.get("ram"):   # the peer: the same sentences as tensors in RAM
        items = [tuple(t.clone() for t in ds[i]) for i in range(len(ds))]
        lengths = ds.lengths
        class InRam(torch.utils.data.Dataset):
            def __len__(self): return len(items)
            def __getitem__(self, i): return items[i]
        ds = InRam(); ds.lengths = lengths
    prof = profile("cpu")
    torch.manual_seed(0)
    model = CLVQVAE(CLVQVAEConfig(d_in=cache.dim(LAYERS[0]), d_out=cache.dim(LAYERS[1]), codebook_size=400, top_k=5, **prof["model"]))
    cfg = TrainConfig(**{**prof["train"], "max_steps": a["steps"], "amp": "bf16", "epochs": 1000, "device": "cpu",
                         "early_stop": 10**6})   # a fixed number of steps: no early stop on a small cache
    marks = []   # (time, tokens) after each step
    def on_step(trainer, out): marks.append((time.perf_counter(), int((out.indices >= 0).sum())))
    with HeapPeak() as mem:
        Trainer(model, cfg, ds, None, progress=False, on_step=on_step).fit()
    (t1, _), (t2, _) = marks[0], marks[-1]
    tokens = sum(n for _, n in marks[1:])
    return dict(seconds=t2 - t1, tokens=tokens, steps=len(marks) - 1, cache_tokens=cache.n_tokens, heap=mem.over_start)


def phase_kmeans(a: dict) -> dict:
    from clvq_nb.activations import ActivationCache
    from clvq_nb.baselines import get_method
    cache = ActivationCache(a["cache"])
    m = get_method("kmeans", n_clusters=400)
    with HeapPeak() as mem:
        t0 = time.perf_counter()
        m.fit(cache, LAYERS[0], progress=False)
        dt = time.perf_counter() - t0
    return dict(seconds=dt, tokens=cache.n_tokens, backend=m.info.get("backend"), heap=mem.over_start)


def phase_assign(a: dict) -> dict:
    import torch
    from clvq_nb.activations import ActivationCache
    cache = ActivationCache(a["cache"])
    X = cache.layer(LAYERS[0])
    C = torch.randn(400, cache.dim(LAYERS[0]), generator=torch.Generator().manual_seed(0))
    c2 = (C * C).sum(1)
    with HeapPeak() as mem:
        t0 = time.perf_counter()
        for i in range(0, cache.n_tokens, 65536):
            (c2[None] - 2 * X[i:i + 65536] @ C.T).argmin(1)
        dt = time.perf_counter() - t0
    return dict(seconds=dt, tokens=cache.n_tokens, heap=mem.over_start)


PHASES = dict(extract=phase_extract, bare=phase_bare, train=phase_train, kmeans=phase_kmeans, assign=phase_assign)


def child(name: str, args: str, threads: int) -> None:
    import resource, torch
    torch.set_num_threads(threads)
    r = PHASES[name](json.loads(args))
    r["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(r))


def run(name: str, threads: int, **args) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", name, json.dumps(args), "--threads", str(threads)],
                       capture_output=True, text=True)
    if p.returncode != 0: sys.exit(f"phase {name} {args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: sizes 100 300 1000, 20 training steps")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="sentences per extraction (default 1000 10000 50000)")
    ap.add_argument("--train-steps", type=int, default=None, help="training steps per run (default 300; --quick 20)")
    ap.add_argument("--model", default="default", help="classifier name or path (default: the packaged MiniLM)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="scratch folder for the caches (default: a temporary folder, deleted)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a, rest = ap.parse_known_args(argv)
    if a.child: return child(a.child, rest[0], a.threads)
    sizes = sorted(a.sizes or ([100, 300, 1000] if a.quick else [1000, 10_000, 50_000]))
    steps = a.train_steps or (20 if a.quick else 300)
    tmp = tempfile.TemporaryDirectory(prefix="clvq_scale_") if a.out is None else None
    root = Path(a.out or tmp.name)
    cache = {n: str(root / f"cache{n}") for n in sizes}
    lo, hi = sizes[0], sizes[-1]
    print(f"model={a.model} layers={list(LAYERS)} threads={a.threads} sizes={sizes} train_steps={steps}; one subprocess per phase", flush=True)
    res = {}
    def note(key, r):
        res[key] = r
        extra = f"  {r['tokens'] / r['seconds']:10,.0f} tokens/s" if "tokens" in r else ""
        print(f"  {key:<16} {r['seconds']:8.2f} s{extra}  peak RSS {r['peak_rss'] / 2**20:6.0f} MiB  heap +{r['heap'] / 2**20:5.0f} MiB", flush=True)
    try:
        for n in sizes: note(f"extract {n}", run("extract", a.threads, n=n, model=a.model, out=cache[n]))
        note(f"bare {lo}", run("bare", a.threads, n=lo, model=a.model))
        for n in (lo, hi): note(f"train {n}", run("train", a.threads, cache=cache[n], steps=steps))
        note(f"train-ram {lo}", run("train", a.threads, cache=cache[lo], steps=steps, ram=True))
        for n in (lo, hi): note(f"kmeans {n}", run("kmeans", a.threads, cache=cache[n]))
        note(f"assign {hi}", run("assign", a.threads, cache=cache[hi]))
    finally:
        if tmp is not None: tmp.cleanup()

    mib = lambda r: r["heap"] / 2**20
    rate = lambda r: r["tokens"] / r["seconds"]
    print("\n| phase | N sentences | tokens | time (s) | tokens/s | peak RSS (MiB) | heap over start (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, r in res.items():
        kind, n = k.split(" ")
        toks = r.get("tokens", res[f"extract {n}"]["tokens"])
        print(f"| {kind} | {int(n):,} | {toks:,} | {r['seconds']:.2f} | {rate(r) if 'tokens' in r else toks / r['seconds']:,.0f} | "
              f"{r['peak_rss'] / 2**20:.0f} | {mib(r):.0f} |")
    ex_lo, ex_hi = res[f"extract {lo}"], res[f"extract {hi}"]
    tr_lo, tr_hi, tr_ram = res[f"train {lo}"], res[f"train {hi}"], res[f"train-ram {lo}"]
    km_lo, km_hi = res[f"kmeans {lo}"], res[f"kmeans {hi}"]
    print(f"\nratios against the peers (same run):")
    print(f"  extraction / bare forward at {lo:,} sentences: tokens/s {res[f'bare {lo}']['seconds'] / ex_lo['seconds']:.2f}x "
          f"(1.0 = caching costs nothing; bench/extract.py's goal: >= 0.9)")
    print(f"  training from the memory-mapped cache ({tr_hi['cache_tokens']:,} tokens) / from RAM ({tr_ram['cache_tokens']:,} tokens): "
          f"tokens/s {rate(tr_hi) / rate(tr_ram):.2f}x")
    print(f"  k-means at {km_hi['tokens']:,} tokens ({km_hi.get('backend')}) = {km_hi['seconds'] / res[f'assign {hi}']['seconds']:.1f} "
          f"bare nearest-centroid passes over the same tokens")
    print(f"slopes from {lo:,} to {hi:,} sentences ({hi / lo:.0f}x the data):")
    print(f"  extraction: tokens/s {rate(ex_hi) / rate(ex_lo):.2f}x, heap {mib(ex_lo):.0f} -> {mib(ex_hi):.0f} MiB "
          f"({(mib(ex_hi) - mib(ex_lo)) / ((hi - lo) / 1000):+.2f} MiB per 1k sentences)")
    print(f"  training ({tr_lo['cache_tokens']:,} -> {tr_hi['cache_tokens']:,} cached tokens, {steps} steps each): tokens/s "
          f"{rate(tr_hi) / rate(tr_lo):.2f}x, heap {mib(tr_lo):.0f} -> {mib(tr_hi):.0f} MiB")
    print(f"  k-means ({km_lo['tokens']:,} -> {km_hi['tokens']:,} tokens): time {km_hi['seconds'] / km_lo['seconds']:.1f}x, "
          f"heap {mib(km_lo):.0f} -> {mib(km_hi):.0f} MiB")
    if tr_hi["cache_tokens"] < 1_000_000 and not a.quick:
        print(f"  note: the largest cache holds {tr_hi['cache_tokens']:,} tokens (< 1M): pass a larger --sizes")
    if a.json: Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
