#!/usr/bin/env python3
"""Why AirCache/VL-Cache answers often do not stop on the demo model: which visual tokens the
policies keep, and whether the background tokens they drop matter (an intervention through HF).

    python tools/eval_background.py [--limit 40] [--budget 0.1]

1. Kept sets (C++ runtime, question-aware prompts of the held-out set): per policy and layer, the
   fraction of the kept visual tokens that are background patches (no object covers >= 25 % of the
   patch), against the image's own fraction.
2. Intervention (HF transformers, the demo checkpoint, eager attention with a 4-D mask): the prompt
   is read with the whole image (as before compression); the answer tokens see only a chosen set
   of image positions, the same in every layer. Sets: AirCache's kept visual positions of the last
   layer (k of them); that set plus k background positions; that set plus k other object
   positions; k random positions; the whole image. Score: every answer token (lead-in, key word,
   full stop and </s>) is the argmax, i.e. greedy generation reproduces the answer exactly.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import aircache_cpp as ac  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(HERE, "demo_ckpt", "hf"))
    ap.add_argument("--testset", default=os.path.join(HERE, "scenes", "testset"))
    ap.add_argument("--limit", type=int, default=40, help="questions (the first of the held-out set)")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    import scenes
    from scenes.scene import patch_labels, render

    text, mm = ac.demo_model_paths()
    model = ac.Model(text, mmproj=mm, kv_type="f16", n_ctx=1024)
    hf = LlavaForConditionalGeneration.from_pretrained(a.hf, torch_dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(a.hf)
    enc = scenes.Encoder(AutoTokenizer.from_pretrained(a.hf), model.n_image_tokens())
    questions, scene_of = scenes.load_set(a.testset)
    questions = questions[: a.limit]
    n_img = model.n_image_tokens()
    policies = [dict(kv_policy=p, kv_budget=a.budget) for p in ["random", "snapkv", "pyramidkv", "aircache", "vlcache"]]
    rng = np.random.default_rng(a.seed)
    bg_frac = collections.defaultdict(list)
    exact = collections.Counter()
    for i, q in enumerate(questions):
        img = ac.image.to_rgb_array(os.path.join(a.testset, q["image"]))
        scene = scene_of[q["image"]]
        is_bg = patch_labels(scene, render(scene)[1])["colour"] == 0
        e = enc.encode(q["question"], q["answer"], q["key"], q["key_offset"], "question-aware")
        ids, s0, npr = e["input_ids"], e["image_start"], e["n_prompt"]
        res = model.evaluate_policies(ids[: npr + 1], images=[img], n_prompt=npr, policies=policies, positions=[npr])
        bg_frac[("image", "-")].append(is_bg.mean())
        air_last = None
        for p, (_, st) in zip(policies, res):
            for layer, kept in enumerate(st.kept):
                v = np.asarray(kept)
                v = v[(v >= s0) & (v < s0 + n_img)] - s0
                bg_frac[(p["kv_policy"], layer)].append(is_bg[v].mean() if len(v) else np.nan)
                if p["kv_policy"] == "aircache":
                    air_last = v
        k = len(air_last)
        bg_pool = np.setdiff1d(np.where(is_bg)[0], air_last)
        obj_pool = np.setdiff1d(np.where(~is_bg)[0], air_last)
        sets = {
            "aircache's last-layer set (k)": air_last,
            "+ k background positions": np.union1d(air_last, rng.choice(bg_pool, min(k, len(bg_pool)), replace=False)),
            "+ k other object positions": np.union1d(air_last, rng.choice(obj_pool, min(k, len(obj_pool)), replace=False)),
            "k random positions": rng.choice(n_img, k, replace=False),
            "whole image": np.arange(n_img),
        }
        px = proc(images=img, text="<image>", return_tensors="pt").pixel_values
        T = len(ids)
        for name, keep in sets.items():
            mask = torch.triu(torch.full((T, T), float("-inf")), 1)
            drop = torch.as_tensor(np.setdiff1d(np.arange(n_img), keep) + s0, dtype=torch.long)
            mask[npr:, drop] = float("-inf")
            with torch.no_grad():
                lg = hf(input_ids=torch.tensor([ids]), pixel_values=px, attention_mask=mask[None, None]).logits[0]
            exact[name] += int((lg[npr - 1: T - 1].argmax(-1).numpy() == np.asarray(ids[npr:])).all())
        sys.stderr.write(f"\r{i + 1}/{len(questions)}")
    sys.stderr.write("\n")

    print(f"Background share of the kept visual tokens (budget {a.budget}, {len(questions)} question-aware prompts):")
    print("| policy | " + " | ".join(f"layer {l}" for l in range(len(st.kept))) + " |")
    print("|---|" + "---:|" * len(st.kept))
    print(f"| (the image) | {np.mean(bg_frac[('image', '-')]):.2f} |" + " |" * (len(st.kept) - 1))
    for p in policies:
        name = p["kv_policy"]
        print(f"| {name} | " + " | ".join(f"{np.nanmean(bg_frac[(name, l)]):.2f}" for l in range(len(st.kept))) + " |")
    print()
    print("Answer tokens restricted to a set of image positions (HF, teacher forcing); every answer token right:")
    print("| image positions the answer sees | exact answers |")
    print("|---|---:|")
    for name, c in exact.items():
        print(f"| {name} | {c}/{len(questions)} |")


if __name__ == "__main__":
    main()
