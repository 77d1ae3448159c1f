#!/usr/bin/env python3
"""Load test of aircache-server with the official OpenAI client: requests/s, generated tokens/s,
time to first token and time per output token (p50/p99) at several concurrencies, `full` against
compressed policies; or a soak run (many requests, mixed policies: errors and the server's RSS).

    python tools/bench_server.py                                   # demo model, in-process server
    python tools/bench_server.py -m model.gguf --mmproj mm.gguf --concurrency 1,4,8,16 --requests 32
    python tools/bench_server.py --url http://127.0.0.1:8080       # a server already running
    python tools/bench_server.py --soak 2000 --concurrency 8       # errors and RSS over a long run
    python tools/bench_server.py --plot docs/server_bench.png

Each request: one image (examples/scene*.png as a data: URL) and its question, streamed, greedy,
`--max-tokens` tokens at most. TTFT = submission to the first content chunk; TPOT = the request's
(last chunk - first chunk) / (chunks - 1). The table is markdown (docs/performance.md)."""

import argparse
import base64
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scenes():
    with open(os.path.join(ROOT, "examples", "scenes.json")) as f:
        out = []
        for s in json.load(f):
            with open(os.path.join(ROOT, "examples", s["image"]), "rb") as g:
                out.append(("data:image/png;base64," + base64.b64encode(g.read()).decode(), s["question"]))
        return out


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def one(client, url, q, max_tokens, policy):
    kv = {} if policy[0] == "full" else {"kv_policy": policy[0], "kv_budget": policy[1]}
    t0 = time.perf_counter()
    times, text = [], []
    stream = client.chat.completions.create(
        model="bench", max_tokens=max_tokens, temperature=0, stream=True, extra_body=kv,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": q}]}])
    for ch in stream:
        if ch.choices and ch.choices[0].delta.content:
            times.append(time.perf_counter())
            text.append(ch.choices[0].delta.content)
    t1 = time.perf_counter()
    ttft = (times[0] - t0) if times else float("nan")
    tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
    return dict(ttft=ttft, tpot=tpot, chunks=len(times), dur=t1 - t0, text="".join(text))


def rss_mb(pid=None):
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def start_server(args):
    import uvicorn

    from aircache_cpp.server import ServerConfig, _State, create_app

    cfg = ServerConfig(args.model, args.mmproj, args.ctx_size, args.parallel, args.queue_size, args.threads,
                       args.batch_size)
    st = _State(cfg)
    st.load()
    if st.error:
        raise SystemExit(f"bench_server: {st.error}")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(cfg, st, load=False), host="127.0.0.1", port=port,
                                        log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", (srv, st, th)


def stop_server(handle):
    srv, st, th = handle
    srv.should_exit = True
    th.join(30)
    st.sched.close()
    st.model.close()


def run_level(client, items, n, conc, max_tokens, policy):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as ex:
        res = list(ex.map(lambda i: one(client, items[i % len(items)][0], items[i % len(items)][1], max_tokens, policy),
                          range(n)))
    wall = time.perf_counter() - t0
    tpots = [r["tpot"] for r in res if r["tpot"] is not None]
    ttfts = [r["ttft"] for r in res]
    return dict(rps=n / wall, tps=sum(r["chunks"] for r in res) / wall, ttft50=pct(ttfts, 50), ttft99=pct(ttfts, 99),
                tpot50=pct(tpots, 50), tpot99=pct(tpots, 99), texts=[r["text"] for r in res])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model")
    ap.add_argument("--mmproj")
    ap.add_argument("--url", help="a running server (default: start one in this process)")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("-c", "--ctx-size", type=int, default=1024)
    ap.add_argument("--queue-size", type=int, default=256)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-b", "--batch-size", type=int, default=512)
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=32, help="requests per (policy, concurrency)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--policies", default="full,aircache:0.2,snapkv:0.2")
    ap.add_argument("--soak", type=int, default=0, help="a soak run of this many requests instead")
    ap.add_argument("--plot", help="write a PNG of tokens/s and TPOT p50 against concurrency")
    args = ap.parse_args()

    import openai

    handle = None
    url = args.url
    if url is None:
        url, handle = start_server(args)
    client = openai.OpenAI(base_url=url + "/v1", api_key=os.environ.get("AIRCACHE_API_KEY", "none"), max_retries=0,
                           timeout=600)
    items = scenes()
    policies = [(p.split(":")[0], float(p.split(":")[1]) if ":" in p else 1.0) for p in args.policies.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]

    if args.soak:
        conc = levels[0] if len(levels) == 1 else 8
        errors, done, lock = [], [0], threading.Lock()
        warm = max(50, args.soak // 10)
        rss = {}

        def job(i):
            img, q = items[i % len(items)]
            try:
                one(client, img, q, args.max_tokens, policies[i % len(policies)])
            except Exception as e:  # noqa: BLE001 - counted
                errors.append(repr(e))
            with lock:
                done[0] += 1
                if done[0] == warm:
                    rss["warm"] = rss_mb()
        t0 = time.perf_counter()
        rss["start"] = rss_mb()
        with ThreadPoolExecutor(conc) as ex:
            list(ex.map(job, range(args.soak)))
        rss["end"] = rss_mb()
        wall = time.perf_counter() - t0
        print(f"soak: {args.soak} requests at concurrency {conc}, policies {args.policies}: {len(errors)} errors, "
              f"{wall:.1f} s ({args.soak / wall:.1f} req/s); server RSS {rss['start']:.1f} MB at start, "
              f"{rss.get('warm', float('nan')):.1f} MB after {warm} requests, {rss['end']:.1f} MB at the end"
              + ("" if handle else " (RSS of this client process: --url given)"))
        for e in errors[:5]:
            print("  ", e)
        if handle:
            stop_server(handle)
        return 1 if errors else 0

    print(f"| policy | concurrency | requests/s | tokens/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for pol in policies:
        for conc in levels:
            r = run_level(client, items, args.requests, conc, args.max_tokens, pol)
            name = pol[0] if pol[0] == "full" else f"{pol[0]} {pol[1]:g}"
            rows.append((name, conc, r))
            print(f"| {name} | {conc} | {r['rps']:.1f} | {r['tps']:.1f} | {1e3 * r['ttft50']:.1f} | "
                  f"{1e3 * r['ttft99']:.1f} | {1e3 * r['tpot50']:.2f} | {1e3 * r['tpot99']:.2f} |", flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for name in dict.fromkeys(r[0] for r in rows):
            xs = [c for n, c, _ in rows if n == name]
            ax[0].plot(xs, [r["tps"] for n, _, r in rows if n == name], marker="o", label=name)
            ax[1].plot(xs, [1e3 * r["tpot50"] for n, _, r in rows if n == name], marker="o", label=name)
        ax[0].set(xlabel="concurrent clients", ylabel="generated tokens/s", title="throughput")
        ax[1].set(xlabel="concurrent clients", ylabel="ms", title="time per output token (p50)")
        for a in ax:
            a.legend()
            a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")
    if handle:
        stop_server(handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
