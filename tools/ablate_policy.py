#!/usr/bin/env python3
"""Ablation of the `mosaic` policy's ingredients (and the wave-1 policies beside them) on validation
scenes: every choice of the policy's defaults was made with this tool, never on the held-out set.

    python tools/ablate_policy.py [--valset 60] [--budgets 0.1,0.05,0.02] [--variant LABEL:opt=v,opt=v ...]
        [--testset] [--free N] [--kv-type q8_0] [--out FILE.md]

Per variant and budget, both protocols (tools/eval_quality.py's evaluate(): one prefill per prompt
serves every setting): key-token accuracy, teacher-forced exact answers ("exact (tf)": every answer
token and its </s> the argmax, in follow-up after the fed first reply) and the hit rate. `--free N`
adds free greedy generation (Model.generate; a real Session for follow-up) on the first N questions.
A variant is `label:opt=value,...` where opt is a mosaic option (mo_*), `kv_selection` or `policy`
(another policy to run under that label). `--testset` runs the held-out set instead (the final table
only).

`--model qwen2vl`: the second demo model on `--valset N` validation items of each of its four
protocols (tools/eval_qwen.py's generator and teacher-forced scores; one prefill per item and
variant): key-word accuracy / whole answer exact per protocol, variant and budget.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import eval_quality as eq  # noqa: E402

# The ablation: the defaults, then one ingredient changed at a time (docs/compression.md's table).
DEFAULT_VARIANTS = [
    "mosaic:",
    "no coverage (scores only):mo_cover=0",
    "coverage 0.25:mo_cover=0.25",
    "coverage 0.75:mo_cover=0.75",
    "coverage only:mo_cover=1",
    "coverage by centre:mo_pick=center",
    "elite score (AirCache):mo_score=elite",
    "density budgets (VL-Cache):mo_budget=density",
    "elite + density:mo_score=elite,mo_budget=density",
    "per KV head:kv_selection=kv_head",
    "merge nearest (score weights):mo_merge=nearest",
    "merge nearest, count weights:mo_merge=nearest,mo_merge_weight=count",
    "merge nearest, values only:mo_merge=nearest,mo_merge_keys=false",
    "merge nearest, cos >= 0.5:mo_merge=nearest,mo_merge_min_cos=0.5",
    "merge nearest, values only, cos >= 0.5:mo_merge=nearest,mo_merge_keys=false,mo_merge_min_cos=0.5",
    "merge into 1 summary row:mo_merge=summary",
    "merge into 4 summary rows:mo_merge=summary,mo_merge_rows=4",
    "random:policy=random",
    "snapkv:policy=snapkv",
    "pyramidkv:policy=pyramidkv",
    "vlcache:policy=vlcache",
    "aircache:policy=aircache",
]


def parse_variant(v: str):
    label, _, rest = v.partition(":")
    s = dict(label=label, kv_policy="mosaic", kv_scope="visual")
    opts = {}
    for item in filter(None, rest.split(",")):
        k, _, val = item.partition("=")
        if k == "policy":
            s["kv_policy"] = val
        elif k in ("kv_selection", "kv_scope"):
            s[k] = val
        else:
            opts[k] = val
    if opts:
        s["kv_options"] = opts
    return s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(HERE, "demo_ckpt", "hf"))
    ap.add_argument("--valset", type=int, default=60, help="validation scenes (5 questions each)")
    ap.add_argument("--testset", action="store_true", help="the held-out set instead (final table only)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--budgets", default="0.2,0.1,0.05,0.02")
    ap.add_argument("--variant", action="append", default=None, help="label:opt=value,... (repeatable)")
    ap.add_argument("--free", type=int, default=0, help="questions for free greedy generation (0: none)")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--kv-type", default="f16", help="KV cache type (f16, f32, q8_0, q4_0; 'K,V' for a type each)")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--model", default="llava", choices=["llava", "qwen2vl"],
                    help="the demo model (qwen2vl: its validation items, --valset per protocol)")
    a = ap.parse_args(argv)
    if a.model == "qwen2vl":
        return qwen_ablation(a)

    import scenes
    from transformers import AutoTokenizer

    import aircache_cpp as ac

    text, mm = ac.demo_model_paths()
    tk, tv = (a.kv_type.split(",") * 2)[:2]
    model = ac.Model(text, mmproj=mm, n_threads=a.threads or None, kv_type_k=tk, kv_type_v=tv, n_ctx=1024)
    enc = scenes.Encoder(AutoTokenizer.from_pretrained(a.hf), model.n_image_tokens())
    qset = os.path.join(HERE, "scenes", "testset") if a.testset else eq.valset(a.valset)
    questions, image = eq.load_questions(qset, a.limit)

    budgets = [float(b) for b in a.budgets.split(",")]
    variants = [parse_variant(v) for v in (a.variant or DEFAULT_VARIANTS)]
    cfgs = [dict(label="full", kv_policy="full", kv_budget=1.0, kv_scope="visual")]
    for b in budgets:
        for v in variants:
            cfgs.append(dict(v, kv_budget=b))
    R, counts, _, secs = eq.evaluate(model, enc, questions, image, cfgs, label="ablation")
    free = first = None
    if a.free:
        free, first, _ = eq.free_generation(model, questions[: a.free], image, cfgs)
    n = len(questions)
    where = "held-out test set" if a.testset else f"validation set ({a.valset} scenes, seeds from VAL_SEED_BASE)"
    lines = [f"{n} questions of the {where}; KV cache {model.kv_type}; {secs:.0f} s. key: key-token accuracy; exact (tf): teacher-forced "
             "exact answer; hit: hit rate." + (f" free: free greedy exact match on the first {a.free} questions "
                                              "(follow-up: a real Session)." if a.free else ""), "",
             "| variant | budget | QA key | QA exact (tf) | FU key | FU exact (tf) | QA hit | FU hit |" +
             (" QA free | FU free |" if a.free else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if a.free else "")]
    for s in cfgs:
        row = []
        for proto in scenes.PROTOCOLS:
            r = R[(proto,) + eq.key(s)]
            row.append(r)
        qa, fu = row
        pct = lambda c: 100 * sum(c.values()) / n
        hit = lambda r: sum(r["hit"]) / len(r["hit"])
        line = (f"| {s['label']} | {s['kv_budget']} | {pct(qa['correct']):.1f} | {pct(qa['exact']):.1f} | "
                f"{pct(fu['correct']):.1f} | {pct(fu['exact']):.1f} | {hit(qa):.3f} | {hit(fu):.3f} |")
        if a.free:
            nf = min(a.free, n)
            line += (f" {100 * free[('question-aware',) + eq.key(s)] / nf:.1f} |"
                     f" {100 * free[('follow-up',) + eq.key(s)] / nf:.1f} |")
        lines.append(line)
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")


def qwen_ablation(a) -> None:
    """The variants on the Qwen2-VL demo model's validation items (every protocol)."""
    import eval_qwen as E
    from scenes.qwen import QWEN_PROTOCOLS, QwenEncoder
    from transformers import AutoTokenizer

    import aircache_cpp as ac

    if a.testset:
        raise SystemExit("--model qwen2vl runs validation items only (the held-out table: tools/eval_qwen.py)")
    text, mm = ac.demo_model_paths("qwen2vl")
    tk, tv = (a.kv_type.split(",") * 2)[:2]
    model = ac.Model(text, mmproj=mm, n_threads=a.threads or None, kv_type_k=tk, kv_type_v=tv, n_ctx=2048)
    enc = QwenEncoder(AutoTokenizer.from_pretrained(os.path.join(HERE, "demo_ckpt", "qwen2vl", "hf")))
    items = E.load_items(QWEN_PROTOCOLS, None, 0, a.valset)
    budgets = [float(b) for b in a.budgets.split(",")]
    variants = [parse_variant(v) for v in (a.variant or ["mosaic:", "vlcache:policy=vlcache"])]
    lines = [f"{a.valset} validation items per protocol (QVAL_SEED_BASE); KV cache {model.kv_type}; key word / whole "
             "answer exact (teacher-forced), %.", "",
             "| protocol | variant | " + " | ".join(str(b) for b in budgets) + " |",
             "|---|---|" + "---:|" * len(budgets)]
    rows = {}
    for v in variants:
        cfgs = [{k: x for k, x in dict(v, kv_budget=b).items() if k != "label"} for b in budgets]
        R, _, _ = E.evaluate(model, enc, items, cfgs, progress_label=v["label"])
        for p in QWEN_PROTOCOLS:
            rows[(p, v["label"])] = [R[(p,) + E.key(s)] for s in cfgs]
    sys.stderr.write("\n")
    for p in QWEN_PROTOCOLS:
        for v in variants:
            cells = [f"{E.pct(r['key'], r['n']):.1f} / {E.pct(r['exact'], r['n']):.1f}" for r in rows[(p, v["label"])]]
            lines.append(f"| {p} | {v['label']} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
