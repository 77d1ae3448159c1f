#!/usr/bin/env python3
"""Compression overhead (importance pass + compaction) against prefill time, per policy.

    python tools/bench_compression_overhead.py [--shape llava-79m] [--n-text 20] [--reps 3] [-t THREADS]

Builds (or reuses) a random-weight model of the shape with tools/make_random_model.py, then for
each policy prefills one image (576 visual tokens for llava-79m) followed by --n-text text tokens,
compresses at the budget, and decodes a few tokens. Prints a table of the medians: image encode,
prefill, importance pass, compaction, overhead in % of prefill, visual KV kept, KV bytes, decode
tokens/s. Everything comes from the runtime's own stats (GenerationStats).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_random_model  # noqa: E402

import aircache_cpp as ac  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llava-79m", choices=list(make_random_model.SHAPES))
    ap.add_argument("--outtype", default="f16")
    ap.add_argument("--n-text", type=int, default=20, help="text tokens after the image")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--policies", default="full,aircache,vlcache,snapkv,h2o")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode", type=int, default=16, help="tokens decoded after the prefill")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "aircache-random-models"))
    a = ap.parse_args(argv)

    text, mm = make_random_model.make(a.shape, a.cache, a.outtype)
    m = ac.Model(text, mmproj=mm, n_ctx=2048, n_threads=a.threads or None, chat_template="none")
    side = make_random_model.SHAPES[a.shape]["v_image"]
    img = (np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)
    # exactly --n-text byte tokens after the image: the piece "\n" + text gets the "▁" prefix token
    prompt = "<image>\n" + "abcdefghijklmnopqrstuvwxyz0123456789" * 8
    ids = m.build_prompt(prompt, 1)
    last_visual = max(i for i, x in enumerate(ids) if x == m.image_token_id)
    trim = len(ids) - (last_visual + 1) - a.n_text
    prompt = prompt[: len(prompt) - trim]
    ids = m.build_prompt(prompt, 1)
    n_after = len(ids) - (max(i for i, x in enumerate(ids) if x == m.image_token_id) + 1)
    print(f"# {a.shape} ({a.outtype}), {m.n_image_tokens()} visual tokens, {n_after} text tokens after the image, "
          f"{len(ids)} prompt positions, {m._engine.n_threads} threads, budget {a.budget}, "
          f"median of {a.reps}")
    print("| policy | encode ms | prefill ms | importance ms | compact ms | overhead % of prefill | visual kept | "
          "KV bytes after / before | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pol in a.policies.split(","):
        runs = []
        for _ in range(a.reps):
            r = m.generate(img, prompt, max_tokens=a.decode, kv_policy=pol,
                           kv_budget=1.0 if pol == "full" else a.budget)
            runs.append(r.stats)
        med = lambda f: statistics.median(f(s) for s in runs)  # noqa: E731
        pre, imp, cmp = med(lambda s: s.prefill_ms), med(lambda s: s.importance_ms), med(lambda s: s.compact_ms)
        s = runs[-1]
        print(f"| {pol} | {med(lambda s: s.image_encode_ms):.0f} | {pre:.0f} | {imp:.2f} | {cmp:.2f} | "
              f"{100 * (imp + cmp) / pre:.2f} | {s.visual_kept.mean():.1f} / {m.n_image_tokens()} | "
              f"{s.kv_bytes_after / 2**20:.2f} / {s.kv_bytes_before / 2**20:.2f} MiB | "
              f"{med(lambda s: s.decode_tokens_per_s):.1f} |")


if __name__ == "__main__":
    main()
