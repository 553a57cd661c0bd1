"""What the benchmarks share: the offline environment, interleaved best-of-N timing of ours against the peer on the
same work, and the report lines with the ratio. Imported by bench/causal.py and bench/ig.py (run from any folder)."""
import os, time

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"): os.environ.setdefault(_k, "1")


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
