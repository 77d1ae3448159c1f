#!/usr/bin/env python3
"""Quality of visual KV compression on the demo task: key-token accuracy versus KV budget, every
policy, both protocols, through the C++ runtime.

    python tools/eval_quality.py [--hf models/demo-hf] [--gguf DIR] [--limit N] [-t THREADS]
        [--out docs/quality.md] [--plot docs/quality.png]

For every held-out question (tools/scenes/testset) and protocol:
  question-aware  prompt = image + question (compressed), then the answer teacher-forced;
  follow-up       prompt = image + "Look at the image." (compressed), then the fixed reply, the
                  question and the answer teacher-forced over the compacted cache.
The score is the key word (after the answer's lead-in, so it is computed over the compacted
cache): correct when the runtime's argmax at its position is the key token. One prefill per
question serves every policy and budget (Model.evaluate_policies: the union of the statistics,
each setting compresses a copy of the cache), which also reports the cache hit rate.

Settings: `full`; every policy at budgets 0.5, 0.2, 0.1, 0.05, 0.02, 0.01 in `visual` scope; the
modality-blind baselines and VL-Cache in `all` scope at 0.1 and 0.05. Also: the runtime's
full-cache answers against the HF model's (teacher-forced argmax, >= 99% agreement expected), and
exact match of free (greedy) generation on a subset. Writes a markdown table and a PNG plot.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import aircache_cpp as ac  # noqa: E402

POLICIES = ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]
BUDGETS = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
ALL_SCOPE = ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache"]
ALL_SCOPE_BUDGETS = [0.1, 0.05]


def settings():
    out = [dict(kv_policy="full", kv_budget=1.0, kv_scope="visual")]
    for r in BUDGETS:
        for p in POLICIES:
            out.append(dict(kv_policy=p, kv_budget=r, kv_scope="visual"))
    for r in ALL_SCOPE_BUDGETS:
        for p in ALL_SCOPE:
            out.append(dict(kv_policy=p, kv_budget=r, kv_scope="all"))
    return out


def key(s):
    return (s["kv_policy"], s["kv_budget"], s["kv_scope"])


def progress(done, total, t0, extra=""):
    el = time.time() - t0
    eta = el / done * (total - done) if done else 0
    w = 30
    bar = "#" * int(w * done / total) + "." * (w - int(w * done / total))
    sys.stderr.write(f"\r[{bar}] {done}/{total} {el:5.0f}s elapsed, ~{eta:4.0f}s left {extra}   ")
    sys.stderr.flush()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(HERE, "demo_ckpt", "hf"), help="the demo model's HF checkpoint")
    ap.add_argument("--gguf", default=None, help="directory with demo.gguf + demo-mmproj.gguf (default: the packaged model)")
    ap.add_argument("--testset", default=os.path.join(HERE, "scenes", "testset"))
    ap.add_argument("--limit", type=int, default=0, help="questions to use (0 = all)")
    ap.add_argument("--generate", type=int, default=100, help="questions for the free-generation check")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "quality.md"))
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "quality.png"))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    a = ap.parse_args(argv)

    import scenes
    from transformers import AutoTokenizer

    if a.gguf:
        text, mm = os.path.join(a.gguf, "demo.gguf"), os.path.join(a.gguf, "demo-mmproj.gguf")
    else:
        text, mm = ac.demo_model_paths()
    model = ac.Model(text, mmproj=mm, n_threads=a.threads or None, kv_type="f16", n_ctx=1024)
    tok = AutoTokenizer.from_pretrained(a.hf)
    enc = scenes.Encoder(tok, model.n_image_tokens())
    questions, _ = scenes.load_set(a.testset)
    if a.limit:
        questions = questions[: a.limit]
    images = {}

    def image(q):
        p = os.path.join(a.testset, q["image"])
        if p not in images:
            images[p] = ac.image.to_rgb_array(p)
        return images[p]

    cfgs = settings()
    correct = collections.defaultdict(lambda: collections.Counter())  # (protocol, setting) -> type -> correct
    counts = collections.Counter()  # (protocol, type) -> questions
    visual_frac = collections.defaultdict(list)
    kv_after = collections.defaultdict(list)
    hit = collections.defaultdict(list)
    full_pred = {}
    t0 = time.time()
    total = len(questions) * len(scenes.PROTOCOLS)
    done = 0
    for q in questions:
        for proto in scenes.PROTOCOLS:
            e = enc.encode(q["question"], q["answer"], q["key"], q["key_offset"], proto)
            ids = e["input_ids"][: e["key_pos"] + 1]  # nothing after the key token is needed
            res = model.evaluate_policies(ids, images=[image(q)], n_prompt=e["n_prompt"], policies=cfgs,
                                          positions=[e["key_pos"] - 1], hit_rate=True)
            counts[(proto, q["type"])] += 1
            for s, (lg, st) in zip(cfgs, res):
                pred = int(np.argmax(lg[0]))
                k = (proto,) + key(s)
                correct[k][q["type"]] += pred == e["key_id"]
                n_vis = max(st.visual_kept.size, 1)
                visual_frac[k].append(float(np.mean(st.visual_kept)) / max(model.n_image_tokens(), 1))
                kv_after[k].append(st.kv_bytes_after)
                hit[k].append(st.hit_rate)
                if s["kv_policy"] == "full":
                    full_pred[(q["id"], proto)] = (pred, ids, e["key_pos"])
                del n_vis
            done += 1
            progress(done, total, t0)
    sys.stderr.write("\n")
    eval_s = time.time() - t0

    # the runtime's full-cache answers against HF's (teacher forcing, same ids and pixels)
    agree = n_agree = 0
    try:
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        hf = LlavaForConditionalGeneration.from_pretrained(a.hf, torch_dtype=torch.float32).eval()
        proc = AutoProcessor.from_pretrained(a.hf)
        t1 = time.time()
        for i, q in enumerate(questions):
            px = proc(images=image(q), text="<image>", return_tensors="pt").pixel_values
            for proto in scenes.PROTOCOLS:
                pred, ids, kpos = full_pred[(q["id"], proto)]
                with torch.no_grad():
                    lg = hf(input_ids=torch.tensor([ids]), pixel_values=px).logits[0, kpos - 1]
                agree += int(int(lg.argmax()) == pred)
                n_agree += 1
            progress(i + 1, len(questions), t1, "HF agreement")
        sys.stderr.write("\n")
    except Exception as exc:  # report, do not hide
        print(f"HF agreement check failed: {exc}", file=sys.stderr)

    # free (greedy) generation, exact match of the answer, on a subset
    gen = collections.Counter()
    subset = questions[: a.generate]
    for q in subset:
        for s in [dict(kv_policy="full", kv_budget=1.0), dict(kv_policy="aircache", kv_budget=0.1),
                  dict(kv_policy="random", kv_budget=0.1)]:
            r = model.generate(image(q), q["question"], max_tokens=24, stop=["</s>"], **s)
            gen[s["kv_policy"]] += int(r.text.strip() == q["answer"])

    types = scenes.QTYPES
    n_vis = model.n_image_tokens()
    lines = ["# Demo model: key-token accuracy versus KV budget", "",
             "The bundled demo model (a LLaVA trained on tools/scenes, " + f"{n_vis} visual tokens per image; README, "
             "'Demo model and the quality benchmark') on the fixed held-out test set (tools/scenes/testset: "
             f"{len(questions)} questions, {', '.join(f'{t}: {counts[(scenes.PROTOCOLS[0], t)]}' for t in types)}), "
             "through the C++ runtime (F16 weights and KV cache). Score: the key word of the answer (after its "
             "lead-in, so computed over the compacted cache) is the runtime's argmax, by teacher forcing. "
             "*question-aware*: image + question are the prompt that is compressed; *follow-up*: image + "
             "\"Look at the image.\" is compressed, the question comes as a second turn over the compacted cache. "
             "`budget` is the fraction of the candidates kept (scope `visual`: the image positions, text always "
             "kept; scope `all`: every prompt position); `visual KV kept` the fraction of image positions kept "
             "(mean over layers); `KV bytes` the compacted prompt cache; `hit rate` the recall of the kept set: per layer, the "
             "fraction of the top-k candidates by the first continuation token's attention in the full-cache run "
             "that were kept (k = the number kept), averaged.", "",
             f"Command: `python tools/eval_quality.py`; the evaluation took {eval_s:.0f} s for {len(cfgs)} settings "
             f"x {total} prompts (one prefill per prompt serves every setting), {a.threads or 'default'} threads.", ""]
    if n_agree:
        lines.append(f"Runtime full-cache key predictions equal HF transformers' (teacher forcing) on "
                     f"{agree}/{n_agree} = {100 * agree / n_agree:.1f}%.")
    lines.append(f"Free greedy generation, exact answer match on {len(subset)} question-aware questions: " +
                 ", ".join(f"{p} {100 * c / max(len(subset), 1):.0f}%" for p, c in gen.items()) + ".")
    lines.append("")
    results = {}
    for proto in scenes.PROTOCOLS:
        lines += [f"## {proto}", "", "| policy | scope | budget | overall | " + " | ".join(types) +
                  " | visual KV kept | KV bytes | hit rate |", "|---|---|---:|---:|" + "---:|" * len(types) + "---:|---:|---:|"]
        for s in cfgs:
            k = (proto,) + key(s)
            n_all = sum(counts[(proto, t)] for t in types)
            acc_all = 100 * sum(correct[k].values()) / max(n_all, 1)
            per = [100 * correct[k][t] / max(counts[(proto, t)], 1) for t in types]
            results[json.dumps(k)] = {"overall": acc_all, "types": dict(zip(types, per)),
                                      "visual_kept": float(np.mean(visual_frac[k])),
                                      "kv_bytes": float(np.mean(kv_after[k])), "hit_rate": float(np.mean(hit[k]))}
            lines.append(f"| {s['kv_policy']} | {s['kv_scope']} | {s['kv_budget']} | {acc_all:.1f} | " +
                         " | ".join(f"{x:.1f}" for x in per) +
                         f" | {100 * np.mean(visual_frac[k]):.1f}% | {np.mean(kv_after[k]) / 1024:.0f} KiB | "
                         f"{np.mean(hit[k]):.3f} |")
        lines.append("")
    # plainly: do AirCache / VL-Cache beat the best baseline at the low budgets?
    lines += ["## AirCache and VL-Cache against the best baseline (overall key-token accuracy, visual scope)", "",
              "| protocol | budget | full | aircache | vlcache | best baseline | verdict |", "|---|---:|---:|---:|---:|---|---|"]
    baselines = [p for p in POLICIES if p not in ("aircache", "vlcache")]
    for proto in scenes.PROTOCOLS:
        full = results[json.dumps((proto, "full", 1.0, "visual"))]["overall"]
        for r in [b for b in BUDGETS if b <= 0.2]:
            acc = {p: results[json.dumps((proto, p, r, "visual"))]["overall"] for p in POLICIES}
            best = max(baselines, key=lambda p: acc[p])
            verdict = []
            for m in ("aircache", "vlcache"):
                d = acc[m] - acc[best]
                verdict.append(f"{m} {'beats' if d > 0 else 'ties' if d == 0 else 'does not beat'} it ({d:+.1f})")
            lines.append(f"| {proto} | {r} | {full:.1f} | {acc['aircache']:.1f} | {acc['vlcache']:.1f} | "
                         f"{best} {acc[best]:.1f} | {'; '.join(verdict)} |")
    lines.append("")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)

    # the plot: accuracy versus budget per policy, one panel per protocol
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, proto in zip(axes, scenes.PROTOCOLS):
        full = results[json.dumps((proto, "full", 1.0, "visual"))]["overall"]
        for p in POLICIES:
            xs = [1.0] + BUDGETS
            ys = [full] + [results[json.dumps((proto, p, r, "visual"))]["overall"] for r in BUDGETS]
            ax.plot(xs, ys, marker="o", label=p, linewidth=2.5 if p == "aircache" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("visual KV budget (fraction kept)")
        ax.set_title(proto)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("key-token accuracy (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(a.plot, dpi=110)


if __name__ == "__main__":
    main()
