#!/usr/bin/env python3
"""Evaluate the demo model on the held-out scenes test set (tools/scenes/testset).

    python tools/eval_demo.py [--hf models/demo-hf] [--keep 0.05 0.1 0.25] [--runtime 100] [--json out.json]

1. Full cache, HF forward (`LlavaForConditionalGeneration`, float32, teacher forcing): key-token
   accuracy (argmax of the logits that predict the key word's token equals it) per question type
   and protocol.
2. Kept fractions of the visual tokens (PyTorch, packed forward with an attention mask, seeds fixed):
   `random` keeps a random subset of the image positions; `oracle` keeps the patches of the
   objects the answer depends on (then random patches up to the budget). Two masks:
   `after-prompt` hides the dropped image positions from every row after the prompt (what a
   compacted KV cache does: the prompt was prefilled with the full image) and `after-image` from
   every text row after the image (no text row sees them).
3. `--runtime N`: converts the checkpoint with tools/convert_hf_to_gguf.py (f16) and compares the
   runtime's key-token predictions (aircache_cpp.Model.logits, image_mode="crop") with PyTorch's on
   N held-out questions per protocol; also checks the runtime's prompt ids (build_prompt).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import demo_model as dm  # noqa: E402
from scenes import PROTOCOLS, QTYPES, load_set, render, runtime_prompt  # noqa: E402
from scenes.scene import patch_labels  # noqa: E402

TESTSET = os.path.join(HERE, "scenes", "testset")


def load_images(scenes):
    from PIL import Image

    return {name: np.asarray(Image.open(os.path.join(TESTSET, name)).convert("RGB")) for name in scenes}


def summarize(ok: dict) -> dict:
    """{protocol: {type: acc, 'all': acc, 'n': n}} from {(protocol, type): [bool]}."""
    out = {}
    for p in PROTOCOLS:
        rows = {t: ok[(p, t)] for t in QTYPES if (p, t) in ok}
        if not rows:
            continue
        allv = [x for v in rows.values() for x in v]
        out[p] = {**{t: round(float(np.mean(v)), 4) for t, v in rows.items()},
                  "all": round(float(np.mean(allv)), 4), "n": len(allv)}
    return out


@torch.no_grad()
def full_cache_hf(model, enc, qs, images):
    ok = defaultdict(list)
    preds = {}
    for r in qs:
        pv = dm.pixel_values([images[r["image"]]])
        for p in PROTOCOLS:
            e = enc.encode(r["question"], r["answer"], r["key"], r["key_offset"], p)
            logits = model(input_ids=torch.tensor([e["input_ids"]]), pixel_values=pv).logits[0, e["key_pos"] - 1]
            pred = int(logits.argmax())
            preds[(r["id"], p)] = pred
            ok[(p, r["type"])].append(pred == e["key_id"])
    return summarize(ok), preds


def oracle_keep(scene, objects, n_keep, rng):
    """Image positions of the answer's objects (patches with any coverage), then random ones."""
    img, idmap = render(scene)
    n = dm.IMAGE_SIZE // dm.PATCH
    blocks = idmap.reshape(n, dm.PATCH, n, dm.PATCH).transpose(0, 2, 1, 3).reshape(n * n, -1)
    rel = [i for i in range(n * n) if any((blocks[i] == k).any() for k in objects)]
    rng.shuffle(rel)
    rest = [i for i in rng.sample(range(n * n), n * n) if i not in set(rel)]
    return (rel + rest)[:n_keep], len(rel)


@torch.no_grad()
def kept_fraction(model, packer, qs, images, scenes, keep: float, mode: str, drop_from: str, seed: int = 0):
    """Key-token accuracy with only `keep` of the image positions visible (see the module doc)."""
    by_image = defaultdict(list)
    for r in qs:
        by_image[r["image"]].append(r)
    rng = random.Random(seed)
    N = dm.N_IMAGE_TOKENS
    n_keep = max(1, int(round(keep * N)))
    ok = defaultdict(list)
    names = sorted(by_image)
    bs = 8
    for i in range(0, len(names), bs):
        chunk = names[i:i + bs]
        pv = dm.pixel_values([images[n] for n in chunk])
        emb = model.model.multi_modal_projector(dm.vision_features(model, pv))
        for p in PROTOCOLS:
            # one packed row per question (each needs its own kept set for the oracle)
            per, drops, embs = [], [], []
            for b, name in enumerate(chunk):
                for r in by_image[name]:
                    drop = np.ones(N, bool)
                    if mode == "random":
                        drop[rng.sample(range(N), n_keep)] = False
                    else:
                        kept, _ = oracle_keep(scenes[name], r["objects"], n_keep, rng)
                        drop[kept] = False
                    per.append([(r, p)])
                    drops.append(drop)
                    embs.append(emb[b])
            batch = packer.pack(per, drop=np.stack(drops), drop_from=drop_from)
            lg = dm.packed_forward(model, torch.stack(embs), batch, batch["key_b"], batch["key_i"])
            for t, o in zip(batch["key_type"], (lg.argmax(-1) == batch["key_id"]).tolist()):
                ok[(p, t)].append(o)
    return summarize(ok)


def runtime_check(hf_dir, model, enc, qs, images, n, preds):
    import aircache_cpp

    sys.path.insert(0, HERE)
    from convert_hf_to_gguf import convert_llava

    tmp = tempfile.mkdtemp()
    text, mm = os.path.join(tmp, "demo.gguf"), os.path.join(tmp, "demo-mmproj.gguf")
    convert_llava(hf_dir, text, mm, "f16")
    sizes = {"text_gguf_bytes": os.path.getsize(text), "mmproj_gguf_bytes": os.path.getsize(mm)}
    rt = aircache_cpp.Model(text, mmproj=mm, image_mode="crop", kv_type="f32", n_threads=2)
    agree, correct_rt, correct_pt, prompt_ok, maxdiff = 0, 0, 0, 0, 0.0
    total = 0
    sel = qs[:: max(1, len(qs) // n)][:n]
    for r in sel:
        img = images[r["image"]]
        for p in PROTOCOLS:
            e = enc.encode(r["question"], r["answer"], r["key"], r["key_offset"], p)
            ids = e["input_ids"]
            bp = rt.build_prompt(runtime_prompt(r["question"], p), 1)
            prompt_ok += bp == ids[:e["n_prompt"]]
            lg = rt.logits(ids, images=[img])
            pred = int(lg[e["key_pos"] - 1].argmax())
            agree += pred == preds[(r["id"], p)]
            correct_rt += pred == e["key_id"]
            correct_pt += preds[(r["id"], p)] == e["key_id"]
            total += 1
    return {"n": total, "agree": agree / total, "runtime_acc": correct_rt / total,
            "pytorch_acc": correct_pt / total, "prompt_ids_equal": prompt_ok / total, **sizes}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(ROOT, "models", "demo-hf"))
    ap.add_argument("--keep", type=float, nargs="*", default=[0.05])
    ap.add_argument("--masks", nargs="*", default=["after-prompt", "after-image"])
    ap.add_argument("--oracle", action="store_true", help="also the oracle kept sets")
    ap.add_argument("--runtime", type=int, default=0, help="questions per protocol to compare with the runtime")
    ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N questions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, tok = dm.load_hf(a.hf)
    qs, scenes = load_set(TESTSET)
    if a.limit:
        qs = qs[:a.limit]
    images = load_images(scenes)
    packer = dm.Packer(tok)
    enc = packer.enc
    out = {"hf": a.hf, "questions": len(qs)}
    full, preds = full_cache_hf(model, enc, qs, images)
    out["full_cache"] = full
    print("full cache (HF forward):", json.dumps(full), flush=True)
    for keep in a.keep:
        for m in a.masks:
            drop_from = "prompt" if m == "after-prompt" else "image"
            for mode in (["random", "oracle"] if a.oracle else ["random"]):
                r = kept_fraction(model, packer, qs, images, scenes, keep, mode, drop_from)
                out[f"{mode}_{keep:g}_{m}"] = r
                print(f"{mode} keep={keep:g} mask={m}:", json.dumps(r), flush=True)
    if a.runtime:
        rc = runtime_check(a.hf, model, enc, qs, images, a.runtime, preds)
        out["runtime"] = rc
        print("runtime:", json.dumps(rc), flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
