#!/usr/bin/env python3
"""Quality of visual KV compression on the second demo model (Qwen2-VL, issue 19): key-token and
whole-answer accuracy versus KV budget, every policy, the four protocols of tools/scenes/testset_qwen,
through the C++ runtime; HF agreement; free greedy generation.

    python tools/eval_qwen.py [--hf HF_DIR] [--gguf DIR] [--protocols single,list,multi-image,multi-turn]
        [--limit N] [--generate N] [--budgets ...] [--valset N] [-t THREADS] [--out FILE] [--json FILE] [--plot PNG]

Protocols (tools/scenes/qwen.py; every item is one conversation about 1-3 images):
  single       image + question compressed, the answer teacher-forced (5 question types);
  list         the same with "List the shapes in the top row." answers (the whole answer scored);
  multi-image  2-3 images, the question names one ("In the second image, ...");
  multi-turn   2-4 turns about one image: the first user turn (30 %: the generic "Look at the
               image.") is the prompt that is compressed, every later turn runs over the compacted
               cache (teacher-forced: the trained answers of the earlier turns are fed).
Scores per (protocol, setting): `key` the key word of every turn is the runtime's argmax (teacher
forcing), `exact` every token of a turn's answer and its <|im_end|> is the argmax (greedy decoding
would write exactly that answer), per question type. One prefill per item serves every setting
(Model.evaluate_policies). HF agreement: the runtime's full-cache argmax at every answer position
against HF transformers' Qwen2VLForConditionalGeneration on the same ids and pixels. Free generation
(--generate N items per protocol): a real Session per setting, the first user turn compressed, each
turn generated greedily and compared with the answer text (later turns follow the model's own replies).

Settings: `full`; every policy at --budgets in `visual` scope. --valset N draws N items per protocol from
the generator's validation seeds (scenes.qwen.QVAL_SEED_BASE) instead of the held-out set: for design.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import aircache_cpp as ac  # noqa: E402

WAVE1 = ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]
POLICIES = WAVE1 + ["mosaic"]
BUDGETS = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
GEN_BUDGETS = [0.2, 0.1, 0.05]
MERGE = 28  # pixels per merged token side (patch 14 x merge 2)


def settings(budgets: Sequence[float], policies: Sequence[str] = POLICIES) -> List[dict]:
    return [dict(kv_policy="full", kv_budget=1.0, kv_scope="visual")] + [
        dict(kv_policy=p, kv_budget=r, kv_scope="visual") for r in budgets for p in policies]


def key(s: dict) -> tuple:
    return (s["kv_policy"], s["kv_budget"], s["kv_scope"])


def load_items(protocols: Sequence[str], testset: str, limit: int, valset: int):
    """{protocol: [(item, [RGB image per image of the item])]} from the held-out set or validation seeds."""
    from scenes.qwen import QVAL_SEED_BASE, heldout_items, load_qwen_set, set_images
    from scenes.sized import render_sized

    out = {}
    for p in protocols:
        if valset:
            out[p] = [(it, [render_sized(s)[0] for s in sc]) for sc, it in heldout_items(p, valset, QVAL_SEED_BASE[p])]
            continue
        items, _ = load_qwen_set(testset, p, limit)
        imgs = set_images(testset, sorted({s for it in items for s in it["images"]}))
        out[p] = [(it, [imgs[s] for s in it["images"]]) for it in items]
    return out


def grids(images) -> List[tuple]:
    """(rows, cols) of merged tokens per image (sides are multiples of 28: smart_resize keeps them)."""
    return [(im.shape[0] // MERGE, im.shape[1] // MERGE) for im in images]


def turn_types(item: dict) -> List[str]:
    return [t["type"] for t in item["turns"]]


def evaluate(model, enc, items_by_proto, cfgs, progress_label=""):
    """Teacher-forced scores. Returns (R, full_argmax): R[(protocol, *key)] = {"key": Counter(type),
    "exact": Counter(type), "n": Counter(type), "vis": [...], "kv": [...]}; full_argmax[(protocol, item id)] =
    (ids, target positions, runtime argmax there) for the HF agreement."""
    R = collections.defaultdict(lambda: dict(key=collections.Counter(), exact=collections.Counter(),
                                             n=collections.Counter(), vis=[], kv=[]))
    full = {}
    eng = [dict(s) for s in cfgs]
    total = sum(len(v) for v in items_by_proto.values())
    done, t0 = 0, time.time()
    for proto, items in items_by_proto.items():
        for it, imgs in items:
            e = enc.encode(grids(imgs), it["turns"], it["generic_first"])
            ids = e["ids"]
            tg = [t for t in e["targets"] if t[3] >= 0]          # answers of the turns (not the generic reply)
            pos = sorted({t[0] for t in tg})
            res = model.evaluate_policies(ids, images=imgs, n_prompt=e["n_prompt"], policies=eng, positions=pos)
            col = {p: i for i, p in enumerate(pos)}
            n_vis = sum(r * c for r, c in grids(imgs))
            for s, (lg, st) in zip(cfgs, res):
                am = np.argmax(lg, axis=1)
                r = R[(proto,) + key(s)]
                ok_turn = collections.defaultdict(lambda: True)
                for (p, tid, kind, ti) in tg:
                    good = int(am[col[p]]) == tid
                    ok_turn[ti] = ok_turn[ti] and good
                    if kind == "key":
                        r["key"][it["turns"][ti]["type"]] += good
                for ti, ty in enumerate(turn_types(it)):
                    r["exact"][ty] += ok_turn[ti]
                    r["n"][ty] += 1
                r["vis"].append(float(np.mean(st.visual_kept)) / max(n_vis, 1))
                r["kv"].append(st.kv_bytes_after)
                if s["kv_policy"] == "full":
                    full[(proto, it["id"])] = (ids, [t[0] for t in tg], [int(am[col[t[0]]]) for t in tg], imgs)
            done += 1
            _progress(done, total, t0, progress_label)
    sys.stderr.write("\n")
    return R, full, time.time() - t0


def hf_agreement(hf_dir: str, full: Dict, image_id: int, threads: int = 0):
    """Positions where HF transformers' argmax equals the runtime's full-cache argmax, per protocol."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from train_qwen_demo import ImageProcessor

    if threads:
        torch.set_num_threads(threads)
    hf = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    proc = ImageProcessor()
    agree = collections.Counter()
    n = collections.Counter()
    t0 = time.time()
    for i, ((proto, _), (ids, pos, ours, imgs)) in enumerate(full.items()):
        pv, grid = proc(imgs)
        with torch.no_grad():
            ids_t = torch.tensor([ids])
            lg = hf(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), mm_token_type_ids=(ids_t == image_id).long(),
                    pixel_values=pv, image_grid_thw=grid).logits[0]
        theirs = lg[pos].argmax(-1).tolist()
        agree[proto] += sum(int(a == b) for a, b in zip(theirs, ours))
        n[proto] += len(pos)
        _progress(i + 1, len(full), t0, "HF agreement")
    sys.stderr.write("\n")
    return agree, n


def free_generation(model, items_by_proto, gcfgs, limit: int):
    """Exact answer text per turn, greedy, a real Session per (item, setting): F[(protocol, *key)] =
    {"exact": Counter(type), "n": Counter(type)}."""
    from scenes.qwen import FOLLOWUP_FIRST_TURN, FOLLOWUP_FIRST_TURN_MULTI

    F = collections.defaultdict(lambda: dict(exact=collections.Counter(), n=collections.Counter()))
    todo = [(p, x) for p, items in items_by_proto.items() for x in (items[:limit] if limit else items)]
    t0 = time.time()
    for i, (proto, (it, imgs)) in enumerate(todo):
        for s in gcfgs:
            sess = model.session(**s)
            first = [{"type": "image", "image": im} for im in imgs]
            if it["generic_first"]:
                text = FOLLOWUP_FIRST_TURN if len(imgs) == 1 else FOLLOWUP_FIRST_TURN_MULTI
                sess.send(first + [{"type": "text", "text": text}], max_tokens=16)
                first = []
            for t in it["turns"]:
                r = sess.send(first + [{"type": "text", "text": t["question"]}], max_tokens=48)
                first = []
                f = F[(proto,) + key(s)]
                f["exact"][t["type"]] += int(r.text.strip() == t["answer"])
                f["n"][t["type"]] += 1
        _progress(i + 1, len(todo), t0, "free generation")
    sys.stderr.write("\n")
    return F


def _progress(done, total, t0, extra=""):
    el = time.time() - t0
    eta = el / done * (total - done) if done else 0
    sys.stderr.write(f"\r{done}/{total} {el:5.0f}s elapsed, ~{eta:4.0f}s left {extra}   ")
    sys.stderr.flush()


def pct(c: collections.Counter, n: collections.Counter) -> float:
    return 100.0 * sum(c.values()) / max(sum(n.values()), 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(HERE, "demo_ckpt", "qwen2vl", "hf"),
                    help="the model's HF checkpoint (the agreement reference, the tokenizer; default: the shipped model's)")
    ap.add_argument("--gguf", default=None, help="directory with one text GGUF and one mmproj-*.gguf "
                    "(llama.cpp's names; default: the packaged model, aircache_cpp.demo_model_paths('qwen2vl'))")
    ap.add_argument("--testset", default=os.path.join(HERE, "scenes", "testset_qwen"))
    ap.add_argument("--valset", type=int, default=0, metavar="N", help="N validation items per protocol instead")
    ap.add_argument("--protocols", default="single,list,multi-image,multi-turn")
    ap.add_argument("--limit", type=int, default=0, help="items per protocol (0 = all)")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--generate", type=int, default=-1, help="items per protocol for free generation (0 = all, -1 = none)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF agreement check")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the markdown tables here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--section", default=None, metavar="FILE",
                    help="write the tables as this model's section of FILE (docs/quality.md), keeping what precedes it")
    ap.add_argument("--plot", default=None, help="write a PNG: key accuracy versus budget per policy, one panel per protocol")
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from scenes.qwen import QwenEncoder

    if a.gguf:
        files = sorted(os.listdir(a.gguf))
        mm = [f for f in files if f.startswith("mmproj") and f.endswith(".gguf")]
        text = [f for f in files if f.endswith(".gguf") and not f.startswith("mmproj")]
        if len(mm) != 1 or len(text) != 1:
            raise SystemExit(f"{a.gguf}: expected one text GGUF and one mmproj-*.gguf, found {files}")
        text_path, mm_path = os.path.join(a.gguf, text[0]), os.path.join(a.gguf, mm[0])
    else:
        text_path, mm_path = ac.demo_model_paths("qwen2vl")
    model = ac.Model(text_path, mmproj=mm_path, n_threads=a.threads or None, n_ctx=2048)
    enc = QwenEncoder(AutoTokenizer.from_pretrained(a.hf))
    protocols = a.protocols.split(",")
    items = load_items(protocols, a.testset, a.limit, a.valset)
    budgets = [float(x) for x in a.budgets.split(",") if x]
    cfgs = settings(budgets)
    R, full, ev_s = evaluate(model, enc, items, cfgs, "teacher forcing")
    agree = n_agree = None
    if not a.no_hf:
        agree, n_agree = hf_agreement(a.hf, full, enc.image_id, a.threads)
    F = {}
    if a.generate >= 0:
        F = free_generation(model, items, settings([b for b in GEN_BUDGETS if b in budgets] or budgets[:1]),
                            a.generate)

    results = {}
    for proto in protocols:
        for s in cfgs:
            k = (proto,) + key(s)
            r = R[k]
            f = F.get(k)
            results[json.dumps(k)] = {
                "key": pct(r["key"], r["n"]), "exact_tf": pct(r["exact"], r["n"]),
                "key_types": {t: 100.0 * r["key"][t] / r["n"][t] for t in r["n"]},
                "exact_tf_types": {t: 100.0 * r["exact"][t] / r["n"][t] for t in r["n"]},
                "turns": sum(r["n"].values()), "visual_kept": float(np.mean(r["vis"])), "kv_bytes": float(np.mean(r["kv"])),
                "free_exact": pct(f["exact"], f["n"]) if f else None, "free_n": sum(f["n"].values()) if f else 0}
    if agree is not None:
        results["hf_agreement"] = {p: [agree[p], n_agree[p]] for p in protocols}

    lines = []
    cmd = "python tools/eval_qwen.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += [f"Command: `{cmd}` ({ev_s:.0f} s teacher-forced, {len(cfgs)} settings).", ""]
    if agree is not None:
        lines += ["HF agreement (runtime full-cache argmax = HF transformers' at every answer position): " +
                  "; ".join(f"{p} {agree[p]}/{n_agree[p]} = {100 * agree[p] / max(n_agree[p], 1):.2f} %" for p in protocols), ""]
    for proto in protocols:
        types = sorted({t for s in cfgs for t in R[(proto,) + key(s)]["n"]})
        lines += [f"### {proto}", "", "| policy | budget | key | exact (tf) | free exact | " + " | ".join(f"{t} key" for t in types)
                  + " | visual KV kept |", "|---|---:|---:|---:|---:|" + "---:|" * len(types) + "---:|"]
        for s in cfgs:
            x = results[json.dumps((proto,) + key(s))]
            fe = f"{x['free_exact']:.1f}" if x["free_exact"] is not None else "-"
            lines.append(f"| {s['kv_policy']} | {s['kv_budget']} | {x['key']:.1f} | {x['exact_tf']:.1f} | {fe} | " +
                         " | ".join(f"{x['key_types'].get(t, float('nan')):.1f}" for t in types) +
                         f" | {100 * x['visual_kept']:.1f} % |")
        lines.append("")
    lines += targets_tables(results, protocols, budgets)
    text_out = "\n".join(lines)
    print(text_out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text_out + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if a.plot:
        plot(results, protocols, budgets, a.plot)
    if a.section:
        write_section(a.section, text_out)
    return results


# Issue 18's targets for mosaic, re-measured on this model: the protocols whose compressed prompt holds the
# question (single, list, multi-image) take the question-aware slack (2 points at 0.1), multi-turn (the first
# turn compressed, later questions over the compacted cache) the follow-up one (10 points).
SLACK = {"single": 2.0, "list": 2.0, "multi-image": 2.0, "multi-turn": 10.0}


def targets_tables(results: dict, protocols: Sequence[str], budgets: Sequence[float]) -> List[str]:
    def res(proto, p, r):
        return results.get(json.dumps((proto, p, r, "visual")))

    lines = ["### Against the best wave-1 policy (key word, visual scope)", "",
             "| protocol | budget | full | aircache | vlcache | mosaic | best wave-1 policy | mosaic - best |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for proto in protocols:
        full = res(proto, "full", 1.0)["key"]
        for r in [b for b in budgets if b <= 0.2]:
            acc = {p: res(proto, p, r)["key"] for p in POLICIES}
            best = max(WAVE1, key=lambda p: acc[p])
            lines.append(f"| {proto} | {r} | {full:.1f} | {acc['aircache']:.1f} | {acc['vlcache']:.1f} | "
                         f"{acc['mosaic']:.1f} | {best} {acc[best]:.1f} | {acc['mosaic'] - acc[best]:+.1f} |")
    lines += ["", "### Mosaic against issue 18's targets on this model (visual scope)", "",
              "| target | measured | met |", "|---|---|---|"]
    if 0.1 in budgets:
        for proto in protocols:
            full, m = res(proto, "full", 1.0)["key"], res(proto, "mosaic", 0.1)["key"]
            sl = SLACK.get(proto, 2.0)
            lines.append(f"| {proto}, 0.1: key word >= full - {sl:.0f} | {m:.1f} vs full {full:.1f} | "
                         f"{'yes' if m >= full - sl else 'no'} |")
        for proto in protocols:
            fe, me = res(proto, "full", 1.0)["free_exact"], res(proto, "mosaic", 0.1)["free_exact"]
            if fe is None or me is None:
                continue
            lines.append(f"| {proto}, 0.1: free greedy exact >= 0.9 x full's | {me:.1f} vs 0.9 x {fe:.1f} = "
                         f"{0.9 * fe:.1f} | {'yes' if me >= 0.9 * fe else 'no'} |")
    for proto in protocols:
        for r in [b for b in (0.05, 0.02) if b in budgets]:
            acc = {p: res(proto, p, r)["key"] for p in POLICIES}
            best = max(WAVE1, key=lambda p: acc[p])
            d = acc["mosaic"] - acc[best]
            lines.append(f"| {proto}, {r}: ahead of every wave-1 policy by >= 3 | {acc['mosaic']:.1f} vs {best} "
                         f"{acc[best]:.1f} ({d:+.1f}) | {'yes' if d >= 3 else 'no'} |")
    return lines + [""]


# docs/quality.md holds both models: tools/eval_quality.py writes the first model's part and keeps
# everything from this marker on; --section writes this model's part there.
SECTION_MARKER = "<!-- second demo model: written by tools/eval_qwen.py --section -->"


def write_section(path: str, body: str) -> None:
    head = ""
    if os.path.exists(path):
        with open(path) as f:
            head = f.read()
        if SECTION_MARKER in head:
            head = head[:head.index(SECTION_MARKER)]
        head = head.rstrip("\n") + "\n\n"
    with open(path, "w") as f:
        f.write(head + SECTION_MARKER + "\n\n# Second demo model (Qwen2-VL): key word and whole answers versus KV budget\n\n"
                + SECTION_INTRO + "\n\n" + body.rstrip("\n") + "\n")


SECTION_INTRO = """`aircache_cpp.demo_model("qwen2vl")` (tools/demo_ckpt/qwen2vl/README.md: a 3.1 M-parameter Qwen2-VL trained
here on dynamic-resolution scenes), the held-out set tools/scenes/testset_qwen (1,000 single-image questions,
200 list answers, 200 multi-image prompts, 150 conversations of 2-4 turns), through the C++ runtime. `key`:
the answer's key word is the runtime's argmax (teacher forcing); `exact (tf)`: every token of the answer
is (greedy decoding would write it); `free exact`: a real session decodes greedily and its text equals
the answer (the first user turn compressed; later turns follow the model's own replies). Multi-turn
compresses the first user turn (30 %: the generic "Look at the image."), every later turn runs over the
compacted cache. Plot: docs/quality-qwen2vl.png."""


def plot(results: dict, protocols: Sequence[str], budgets: Sequence[float], path: str) -> None:
    """Key-word accuracy versus budget per policy (full at 1.0), one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(protocols), figsize=(4.2 * len(protocols), 4.2), sharey=True, squeeze=False)
    for ax, proto in zip(axes[0], protocols):
        full = results[json.dumps((proto, "full", 1.0, "visual"))]["key"]
        xs = [1.0] + list(budgets)
        for p in POLICIES:
            ys = [full] + [results[json.dumps((proto, p, r, "visual"))]["key"] for r in budgets]
            ax.plot(xs, ys, marker="o", label=p, linewidth=2.8 if p == "mosaic" else 1.2,
                    color="black" if p == "mosaic" else None)
        ax.set_xscale("log")
        ax.set_xlabel("visual KV budget (fraction kept)")
        ax.set_title(proto)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("key-word accuracy (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Qwen2-VL demo model (tools/eval_qwen.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
