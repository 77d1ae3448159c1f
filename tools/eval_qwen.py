#!/usr/bin/env python3
"""Quality of visual KV compression on the second demo model (Qwen2-VL, issue 19): key-token and
whole-answer accuracy versus KV budget, every policy, the four protocols of tools/scenes/testset_qwen,
through the C++ runtime; HF agreement; free greedy generation.

    python tools/eval_qwen.py --hf HF_DIR --gguf DIR [--protocols single,list,multi-image,multi-turn]
        [--limit N] [--generate N] [--budgets ...] [--valset N] [-t THREADS] [--out FILE] [--json FILE]

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
    ap.add_argument("--hf", required=True, help="the model's HF checkpoint (the agreement reference, the tokenizer)")
    ap.add_argument("--gguf", required=True, help="directory with the text GGUF and the mmproj GGUF (llama.cpp's names)")
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
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from scenes.qwen import QwenEncoder

    files = sorted(os.listdir(a.gguf))
    mm = [f for f in files if f.startswith("mmproj") and f.endswith(".gguf")]
    text = [f for f in files if f.endswith(".gguf") and not f.startswith("mmproj")]
    if len(mm) != 1 or len(text) != 1:
        raise SystemExit(f"{a.gguf}: expected one text GGUF and one mmproj-*.gguf, found {files}")
    model = ac.Model(os.path.join(a.gguf, text[0]), mmproj=os.path.join(a.gguf, mm[0]), n_threads=a.threads or None,
                     n_ctx=2048)
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
    text_out = "\n".join(lines)
    print(text_out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text_out + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
