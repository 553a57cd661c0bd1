"""k-means vs agglomerative (Ward) clustering: time and peak memory, in one run.

    python bench/clustering.py            # agglomerative + k-means at 5k and 20k tokens, k-means at 200k
    python bench/clustering.py --quick    # skip the 20k agglomerative run (~100 s, ~3.3 GB)
    python bench/clustering.py --cache PATH --layer 3   # vectors from an ActivationCache instead of synthetic ones

Vectors: width 384 (all-MiniLM-L6-v2), either synthetic (a mixture of 1,000 Gaussian blobs with random
scales, float32) or the kept tokens of a cached layer, written to a .npy file that every run reads
memory-mapped, as the activation cache is read. Both methods are clvq_nb.baselines' own (K = 400, the
paper's default): `Agglomerative` (scikit-learn Ward) and `KMeans` (faiss when importable, 20 iterations,
fitted on at most 256 tokens per cluster, then every token assigned to count the members).

Each (method, N) runs in its own fresh subprocess; it reports the fit time, the process's peak RSS
(ru_maxrss, which also counts the pages of the memory-mapped vectors that were read: they are page cache,
not the method's memory) and the peak of the anonymous resident memory (RssAnon, sampled every 10 ms)
above its value just before `fit`: the memory the method itself allocates, imports and file pages excluded. The table ends with the ratios agglomerative / k-means of time and memory at the same N.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, os, resource, sys, time
import numpy as np, pandas as pd, psutil, torch
torch.set_num_threads(int(sys.argv[4]))
try:
    import faiss; faiss.omp_set_num_threads(int(sys.argv[4]))
except ImportError: pass
from clvq_nb.baselines import get_method

class NpyCache:
    "Duck-typed ActivationCache over a memory-mapped [N, d] .npy file (every token kept)."
    def __init__(self, path, n):
        self.X = torch.from_numpy(np.load(path, mmap_mode="c")[:n])
        self.tokens = pd.DataFrame({"keep": np.ones(n, dtype=bool)})
    layers = [0]
    n_tokens = property(lambda self: len(self.X))
    def dim(self, l): return self.X.shape[1]
    def layer(self, l): return self.X

import threading
def anon():
    "Anonymous (heap) resident memory in bytes: RSS minus the file-backed pages of the memory-mapped vectors."
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"): return int(line.split()[1]) * 1024
    return psutil.Process().memory_info().rss
peak_anon, done = [0], threading.Event()
def sampler():
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], anon()); time.sleep(0.01)

method, n = sys.argv[2], int(sys.argv[3])
cache = NpyCache(sys.argv[1], n)
m = get_method(method, n_clusters=400)
before = anon()
th = threading.Thread(target=sampler, daemon=True); th.start()
t0 = time.perf_counter()
m.fit(cache, 0, progress=False)
dt = time.perf_counter() - t0
done.set(); th.join(); peak_anon[0] = max(peak_anon[0], anon())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
nonempty = int((m.counts > 0).sum())
print(json.dumps(dict(method=method, n=n, seconds=dt, peak_rss=peak, peak_over_start=max(0, peak_anon[0] - before),
                      nonempty=nonempty, info={k: v for k, v in m.info.items() if k in ("backend", "n_sample")})))
"""


def make_vectors(path: Path, n: int, d: int = 384, blobs: int = 1000, seed: int = 0, chunk: int = 50_000):
    "Synthetic activations: `n` vectors of width `d` from `blobs` Gaussian blobs, written chunk by chunk."
    g = np.random.default_rng(seed)
    C = g.normal(0, 1, (blobs, d)).astype(np.float32) * 2
    scale = g.uniform(0.3, 1.5, blobs).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for i in range(0, n, chunk):
        b = g.integers(0, blobs, min(chunk, n - i))
        out[i:i + len(b)] = C[b] + g.normal(0, 1, (len(b), d)).astype(np.float32) * scale[b, None]
    out.flush(); del out


def cached_vectors(path: Path, cache_dir: str, layer: int, n: int):
    "The first `n` kept tokens of `layer` of an ActivationCache, in cache order, written to `path`."
    from clvq_nb.activations import ActivationCache
    from clvq_nb.baselines import fit_rows, gather_rows
    cache = ActivationCache(cache_dir)
    rows = fit_rows(cache)
    if len(rows) < n:
        sys.exit(f"the cache has {len(rows):,} kept tokens at layer {layer}; the benchmark needs {n:,}. "
                 f"Use a larger cache, or omit --cache for synthetic vectors")
    np.save(path, gather_rows(cache.layer(layer), rows[:n]).numpy())


def run(npy: Path, method: str, n: int, threads: int) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(npy), method, str(n), str(threads)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return dict(method=method, n=n, error=(p.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip agglomerative at 20k tokens (~100 s, ~3.3 GB)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[5_000, 20_000], help="N for both methods")
    ap.add_argument("--kmeans-only", type=int, nargs="+", default=[200_000], help="N for k-means alone")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None, help="ActivationCache folder to take vectors from (default: synthetic)")
    ap.add_argument("--layer", type=int, default=None, help="layer of --cache (default: its first)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    a = ap.parse_args(argv)
    sizes = [n for n in a.sizes if not (a.quick and n > 5_000)]
    n_max = max(sizes + a.kmeans_only)
    jobs = [(m, n) for n in sizes for m in ("kmeans", "agglomerative")] + [("kmeans", n) for n in a.kmeans_only]
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "x.npy"
        t0 = time.perf_counter()
        if a.cache:
            from clvq_nb.activations import ActivationCache
            layer = a.layer if a.layer is not None else ActivationCache(a.cache).layers[0]
            cached_vectors(npy, a.cache, layer, n_max); source = f"cache {a.cache} layer {layer}"
        else:
            make_vectors(npy, n_max); source = "synthetic (1,000 Gaussian blobs)"
        d = np.load(npy, mmap_mode="r").shape[1]
        print(f"vectors: {n_max:,} x {d} float32, {source}; prepared in {time.perf_counter() - t0:.1f} s; "
              f"K = 400; {a.threads} threads; one subprocess per run", flush=True)
        res = []
        for m, n in jobs:
            r = run(npy, m, n, a.threads); res.append(r)
            if "error" in r: print(f"  {m:>13} N={n:>7,}: FAILED {r['error']}", flush=True)
            else: print(f"  {m:>13} N={n:>7,}: {r['seconds']:8.2f} s  peak RSS {r['peak_rss'] / 2**20:7.0f} MiB "
                        f"(heap +{r['peak_over_start'] / 2**20:.0f} MiB)", flush=True)
    print()
    print(f"| method | N | time (s) | peak RSS (MiB) | peak heap over start (MiB) | non-empty clusters |")
    print(f"|---|---:|---:|---:|---:|---:|")
    for r in res:
        if "error" in r: print(f"| {r['method']} | {r['n']:,} | failed: {r['error']} | | | |"); continue
        print(f"| {r['method']}{' (' + r['info']['backend'] + ')' if r['info'].get('backend') else ''} | {r['n']:,} | "
              f"{r['seconds']:.2f} | {r['peak_rss'] / 2**20:.0f} | {r['peak_over_start'] / 2**20:.0f} | {r['nonempty']} |")
    print()
    by = {(r["method"], r["n"]): r for r in res if "error" not in r}
    for n in sizes:
        ag, km = by.get(("agglomerative", n)), by.get(("kmeans", n))
        if ag and km:
            print(f"N={n:,}: agglomerative / k-means time = {ag['seconds'] / km['seconds']:.1f}x, "
                  f"heap memory = {ag['peak_over_start'] / max(km['peak_over_start'], 1):.1f}x "
                  f"({ag['peak_over_start'] / 2**20:.0f} vs {km['peak_over_start'] / 2**20:.0f} MiB)")
    ks = sorted(n for (m, n) in by if m == "kmeans")
    if len(ks) > 1:
        lo, hi = by[("kmeans", ks[0])], by[("kmeans", ks[-1])]
        print(f"k-means {ks[0]:,} -> {ks[-1]:,} tokens ({ks[-1] / ks[0]:.0f}x): time {hi['seconds'] / lo['seconds']:.1f}x, "
              f"heap memory {hi['peak_over_start'] / max(lo['peak_over_start'], 1):.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
