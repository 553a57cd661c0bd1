"""Throughput of the judge's HTTP hot path against a bare peer, in one run.

Both clients talk to the same local chat-completions server (`clvq_nb.testing.FakeChatServer` on 127.0.0.1)
with the same request body:
- ours: `HTTPJudge.complete` (JSON encode, keep-alive connection, retry bookkeeping, reply parsing)
  followed by `parse_rating`, i.e. what `run_judge` does per item minus prompt building;
- peer: a bare `http.client` keep-alive loop that posts the same bytes and json-decodes the reply.
Also the per-item CPU cost of `build_prompt` + `parse_rating` alone (no network).

    python bench/judge.py [--n 400] [--repeats 3]
    python bench/judge.py --local gemma3-270m,qwen2.5-coder-0.5b [--items 3]   # offline judges: fp32 vs bf16
    python bench/judge.py --reuse qwen2.5-coder-0.5b [--items 4]               # offline judge: cross-prompt KV reuse

With `--local`, each offline judge is loaded in fp32 and in bf16 and rates the same `paper`-style prompt
(demo sentence, two methods) `--items` times; prints load time and seconds per prompt for each dtype.

With `--reuse`, each offline judge rates, in the runner's order, the `paper`-style prompts of `--items` demo sentences
(each sentence's real prompt, then its planted-controls prompt, as `run_judge` sends them) twice: as `HFJudge.score`
does (the previous prompt's KV cache cut back to the tokens both share) and, as the peer, the same judge with that
cache dropped before every prompt (the full prompt each time, what `score` did before). Same prompts, same model,
same probabilities (checked); prints seconds per prompt and the ratio peer/ours.

Prints requests/s for each and the ratio ours/peer (1.0 = no overhead over a bare client). Loops are
bounded (n requests, a few repeats); the server stops by itself at the end.
"""
import argparse, http.client, json, os, time

from clvq_nb.judge import demo_inputs
from clvq_nb.judge_backends import HTTPJudge
from clvq_nb.judge_prompts import build_prompt, parse_rating
from clvq_nb.testing import FakeChatServer


def bench_ours(url: str, prompt: str, n: int) -> float:
    j = HTTPJudge(url, "bench-model", api_key_env="CLVQ_BENCH_KEY", timeout=10)
    j.complete(prompt)                                               # connect + warm up
    t = time.perf_counter()
    for _ in range(n): assert parse_rating(j.complete(prompt)) == 2
    return n / (time.perf_counter() - t)


def bench_peer(url: str, prompt: str, n: int) -> float:
    host, port = url.split("//")[1].split("/")[0].split(":")
    body = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0.0, "max_tokens": 32}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["CLVQ_BENCH_KEY"]}
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    def one():
        c.request("POST", "/v1/chat/completions", body=body, headers=headers)
        return json.loads(c.getresponse().read())["choices"][0]["message"]["content"]
    one()
    t = time.perf_counter()
    for _ in range(n): assert one() == "Rating: 2"
    r = n / (time.perf_counter() - t)
    c.close()
    return r


def bench_cpu(n: int) -> float:
    sents, concepts, names = demo_inputs()
    s, view = sents[0], concepts["clvq-vae"][0]
    t = time.perf_counter()
    for _ in range(n): parse_rating("I'd say **Rating: 2** out of 3." if build_prompt(s.text, names[s.pred], view, "task", None, "w") else "")
    return n / (time.perf_counter() - t)


def bench_local(names: str, items: int) -> None:
    from clvq_nb.judge_backends import HFJudge
    from clvq_nb.judge_prompts import PAPER_GUIDANCE, PAPER_MEANINGS, answer_prefixes, build_paper_prompt
    sents, concepts, labels = demo_inputs()
    s = sents[4]
    prompt = build_paper_prompt(s.text, labels[s.pred], PAPER_MEANINGS["movie"][s.pred],
                                {m: concepts[m][k] for m, (_, k) in s.salient.items()}, PAPER_GUIDANCE["movie"])
    for name in names.split(","):
        for dtype in ("float32", "bfloat16"):
            t = time.perf_counter(); j = HFJudge(name, dtype=dtype); load = time.perf_counter() - t
            n_tok = len(j.tokenizer(j._chat(prompt))["input_ids"])
            j.score(prompt, answer_prefixes("paper", list(s.salient)))                       # warm up
            t = time.perf_counter()
            for _ in range(items): p = j.score(prompt, answer_prefixes("paper", list(s.salient)))
            per = (time.perf_counter() - t) / items
            print(f"{name:20s} {dtype:9s} load {load:6.1f} s  prompt {n_tok} tokens  {per:6.2f} s/prompt  p={p}")
            del j


def bench_reuse(names: str, items: int, repeats: int) -> None:
    from clvq_nb.judge_backends import HFJudge
    from clvq_nb.judge_prompts import PAPER_GUIDANCE, PAPER_MEANINGS, answer_prefixes
    from clvq_nb.judge_runner import _prompts, plant_controls
    sents, concepts, labels = demo_inputs()
    prompts = []
    for s in sents[:items]:
        real = {m: concepts[m].get(k) for m, (_, k) in s.salient.items()}
        ctl = plant_controls(s, concepts["clvq-vae"], "clvq-vae", labels)
        for g in (real, ctl):
            prompts += [(p, list(shown)) for p, shown in _prompts("paper", s, g, list(g), labels, PAPER_MEANINGS["movie"],
                                                                  PAPER_GUIDANCE["movie"], 0)]
    for name in names.split(","):
        j = HFJudge(name)
        def run(drop: bool):
            j._kv = None
            t, out, reused = time.perf_counter(), [], 0
            for p, shown in prompts:
                if drop: j._kv = None
                out.append(j.score(p, answer_prefixes("paper", shown))); reused += j.reused_tokens
            return (time.perf_counter() - t) / len(prompts), out, reused
        run(False)                                                   # warm up
        ours = peer = float("inf")
        for _ in range(repeats):                                     # interleaved, best of each
            t, a, reused = run(False); ours = min(ours, t)
            t, b, _ = run(True); peer = min(peer, t)
        diff = max(abs(x - y) for pa, pb in zip(a, b) for ra, rb in zip(pa, pb) for x, y in zip(ra, rb))
        n_tok = sum(len(j.tokenizer(j._chat(p))["input_ids"]) for p, _ in prompts)
        print(f"{name}: {len(prompts)} prompts, {n_tok} tokens, {reused} of them reused from the previous prompt's cache")
        print(f"  peer  full prompt every time     : {peer:6.2f} s/prompt")
        print(f"  ours  previous cache cut + reused : {ours:6.2f} s/prompt")
        print(f"  ratio peer/ours                  : {peer / ours:6.2f}   (max |p difference| {diff:.1e})")
        del j


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="requests per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many measurements")
    ap.add_argument("--local", help="comma-separated offline judges to time in fp32 and bf16 (instead of the HTTP bench)")
    ap.add_argument("--reuse", help="comma-separated offline judges to time with and without cross-prompt KV reuse")
    ap.add_argument("--items", type=int, default=3, help="prompts per local judge and dtype (--local), sentences (--reuse)")
    a = ap.parse_args()
    if a.reuse: return bench_reuse(a.reuse, a.items, a.repeats)
    if a.local: return bench_local(a.local, a.items)
    os.environ["CLVQ_BENCH_KEY"] = "bench-not-a-real-key"
    sents, concepts, names = demo_inputs()
    prompt = build_prompt(sents[0].text, names[sents[0].pred], concepts["clvq-vae"][0], "Movie sentiment.", None, "wonderful")
    with FakeChatServer(reply_fn=lambda p: "Rating: 2") as srv:
        ours = peer = 0.0
        for _ in range(a.repeats):                                   # interleaved, best of each
            peer = max(peer, bench_peer(srv.url, prompt, a.n))
            ours = max(ours, bench_ours(srv.url, prompt, a.n))
    cpu = bench_cpu(20 * a.n)
    print(f"prompt: {len(prompt)} chars; {a.n} requests x best of {a.repeats}, local server 127.0.0.1")
    print(f"peer  http.client keep-alive loop : {peer:8.0f} req/s")
    print(f"ours  HTTPJudge.complete+parse    : {ours:8.0f} req/s")
    print(f"ratio ours/peer                   : {ours / peer:8.2f}")
    print(f"build_prompt + parse_rating (CPU) : {cpu:8.0f} items/s")


if __name__ == "__main__":
    main()
