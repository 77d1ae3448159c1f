#!/usr/bin/env python3
"""Train the demo LLaVA model (tools/demo_model.py) on the scenes task (tools/scenes/) on the CPU.

Stages (each a separate invocation; every run resumes the weights of the last checkpoint):
  vision  the ViT alone with dense per-patch heads (colour, shape, object centre)
  qa      projector + decoder on questions (several per image, both protocols, packed so the image
          prefix is computed once per image); the ViT frozen (--vit-lr 0) or fine-tuned with the
          dense loss kept as an auxiliary loss (--aux-weight)

    nice -n 15 python tools/train_demo.py --stage vision --minutes 15
    nice -n 15 python tools/train_demo.py --stage qa --minutes 60 --vit-lr 0
    nice -n 15 python tools/train_demo.py --stage qa --minutes 60 --vit-lr 2e-4 --resume

A checkpoint (model, heads, optimizer, step, history) is written to --ckpt every --save-every
minutes and at the end; --resume continues the same stage from it (a new stage keeps the weights
and starts a fresh optimizer). Validation (fixed seeds outside the training range) is logged
every --eval-every minutes; the HF checkpoint (--hf-out) is rewritten when validation improves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import demo_model as dm  # noqa: E402
from scenes import (COLOUR_NAMES, PROTOCOLS, QTYPES, SHAPES, VAL_SEED_BASE, SceneConfig,  # noqa: E402
                    patch_labels, render, heldout_scenes, training_sample, training_seeds)


class DenseHeads(nn.Module):
    """Per-patch linear heads on the ViT features LLaVA uses (training only, never saved in HF)."""

    def __init__(self, d: int):
        super().__init__()
        self.colour = nn.Linear(d, 1 + len(COLOUR_NAMES))
        self.shape = nn.Linear(d, 1 + len(SHAPES))
        self.centre = nn.Linear(d, 2)

    def forward(self, f):
        return self.colour(f), self.shape(f), self.centre(f)


N_COUNT = 4   # counts 0..3 (more is clipped to 3)


class SceneHeads(nn.Module):
    """Training-only linear heads on the decoder's final hidden state at every key position: the
    whole scene (count per colour, existence of every colour x shape, shape and colour per grid
    cell). A dense auxiliary target that makes the decoder gather the image at answer positions
    (questions alone give one key token each); never saved in the HF checkpoint."""

    def __init__(self, d: int, norm: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(d) if norm else nn.Identity()   # for a residual-stream tap
        self.count = nn.Linear(d, len(COLOUR_NAMES) * N_COUNT)
        self.exist = nn.Linear(d, len(COLOUR_NAMES) * len(SHAPES))
        self.cell_shape = nn.Linear(d, 9 * (1 + len(SHAPES)))
        self.cell_colour = nn.Linear(d, 9 * (1 + len(COLOUR_NAMES)))
        self.pointer = nn.Linear(d, 2 * 9)   # relation questions: the cells of the two objects named


def scene_targets(scene) -> dict:
    count = [min(scene.count(c), N_COUNT - 1) for c in COLOUR_NAMES]
    exist = [float(scene.has(c, s)) for c in COLOUR_NAMES for s in SHAPES]
    cs, cc = [0] * 9, [0] * 9
    for o in scene.objects:
        cs[o.cell] = 1 + SHAPES.index(o.shape)
        cc[o.cell] = 1 + COLOUR_NAMES.index(o.colour)
    return {"count": count, "exist": exist, "cell_shape": cs, "cell_colour": cc}


def scene_loss(sh, h, tg, rel_rows=None, rel_cells=None):
    n = h.shape[0]
    h = sh.norm(h)
    lc = sh.count(h).view(n, -1, N_COUNT)
    le = sh.exist(h)
    ls = sh.cell_shape(h).view(n, 9, -1)
    lo = sh.cell_colour(h).view(n, 9, -1)
    loss = (F.cross_entropy(lc.flatten(0, 1), tg["count"].flatten()) +
            F.binary_cross_entropy_with_logits(le, tg["exist"]) * 4 +
            F.cross_entropy(ls.flatten(0, 1), tg["cell_shape"].flatten()) +
            F.cross_entropy(lo.flatten(0, 1), tg["cell_colour"].flatten()))
    with torch.no_grad():
        acc = {"sc_count": (lc.argmax(-1) == tg["count"]).float().mean().item(),
               "sc_exist": ((le > 0).float() == tg["exist"]).float().mean().item(),
               "sc_cell": (ls.argmax(-1) == tg["cell_shape"]).float().mean().item()}
    if rel_rows is not None and len(rel_rows):
        lp = sh.pointer(h[rel_rows]).view(len(rel_rows), 2, 9)
        loss = loss + F.cross_entropy(lp.flatten(0, 1), rel_cells.flatten())
        acc["sc_pointer"] = (lp.argmax(-1) == rel_cells).float().mean().item()
    return loss, acc


def dense_loss(heads, feats, labels):
    c, s, z = heads(feats)
    lc = F.cross_entropy(c.flatten(0, 1), labels["colour"].flatten())
    ls = F.cross_entropy(s.flatten(0, 1), labels["shape"].flatten())
    lz = F.cross_entropy(z.flatten(0, 1), labels["centre"].flatten(), weight=torch.tensor([1.0, 4.0]))
    obj = labels["shape"] > 0
    with torch.no_grad():
        acc = {"pc_colour": (c.argmax(-1) == labels["colour"])[obj].float().mean().item(),
               "pc_shape": (s.argmax(-1) == labels["shape"])[obj].float().mean().item(),
               "pc_bg": (s.argmax(-1) == 0)[~obj].float().mean().item()}
        zc = labels["centre"] > 0
        acc["pc_centre"] = (z.argmax(-1) == 1)[zc].float().mean().item()
    return lc + ls + lz, acc


def scene_config(a) -> SceneConfig:
    return SceneConfig(min_objects=a.min_objects, max_objects=a.max_objects, min_size=a.min_size,
                       max_size=a.max_size, texture_prob=a.texture_prob)


def make_batch(seeds, cfg, nq, proto_fu: float, rng: random.Random, weights=None):
    imgs, labs, per = [], defaultdict(list), []
    stg = defaultdict(list)
    for s in seeds:
        scene, img, lab, qs = training_sample(s, cfg, nq, QTYPES, weights)
        for k, v in scene_targets(scene).items():
            stg[k].append(v)
        imgs.append(img)
        for k, v in lab.items():
            labs[k].append(v)
        per.append([({**q.to_dict(), "cells": [scene.objects[k].cell for k in q.objects]},
                     "follow-up" if rng.random() < proto_fu else "question-aware") for q in qs])
    labels = {k: torch.from_numpy(np.stack(v)) for k, v in labs.items()}
    labels["scene"] = {k: torch.tensor(v, dtype=torch.float32 if k == "exist" else torch.long) for k, v in stg.items()}
    return dm.pixel_values(imgs), labels, per


class Validation:
    """Fixed validation scenes (one question per type each), both protocols."""

    def __init__(self, n_scenes: int):
        self.items = []
        for scene, qs in heldout_scenes(n_scenes, VAL_SEED_BASE):
            img, idmap = render(scene)
            self.items.append((img, patch_labels(scene, idmap), [q.to_dict() for q in qs]))

    @torch.no_grad()
    def run(self, model, heads, packer, bs: int = 16, protocols=PROTOCOLS, qa: bool = True) -> dict:
        model.eval()
        res = defaultdict(list)
        for i in range(0, len(self.items), bs):
            chunk = self.items[i:i + bs]
            pv = dm.pixel_values([c[0] for c in chunk])
            feats = dm.vision_features(model, pv)
            labels = {k: torch.from_numpy(np.stack([c[1][k] for c in chunk])) for k in ("colour", "shape", "centre")}
            _, acc = dense_loss(heads, feats, labels)
            for k, v in acc.items():
                res[k].append(v)
            if not qa:
                continue
            emb = model.model.multi_modal_projector(feats)
            for p in protocols:
                batch = packer.pack([[(q, p) for q in c[2]] for c in chunk])
                lg = dm.packed_forward(model, emb, batch, batch["key_b"], batch["key_i"])
                ok = (lg.argmax(-1) == batch["key_id"]).tolist()
                for t, o in zip(batch["key_type"], ok):
                    res[f"{p}/{t}"].append(o)
                    res[p].append(o)
        model.train()
        return {k: float(np.mean(v)) for k, v in res.items()}


def fmt(d: dict) -> str:
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


# The small checkpoint kept in the repository: weights (model + dense heads) in float16, the stage,
# step, sizes and evaluation history; no optimizer state (a few MB). Continue training from it with
# `--init tools/demo_ckpt/demo-small.pt` (the optimizer restarts).
SMALL_CKPT = os.path.join(ROOT, "tools", "demo_ckpt", "demo-small.pt")


def write_small(ckpt: str, out: str) -> None:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    half = {k: ({n: t.half() if t.is_floating_point() else t for n, t in v.items()}
                if k in ("model", "heads", "scene_heads") else v)
            for k, v in state.items() if k != "opt"}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.save(half, out + ".tmp")
    os.replace(out + ".tmp", out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["vision", "qa"], required=True)
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of this run")
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "ckpt", "demo.pt"))
    ap.add_argument("--hf-out", default=os.path.join(ROOT, "models", "demo-hf"))
    ap.add_argument("--resume", action="store_true", help="continue the checkpoint's stage (optimizer too)")
    ap.add_argument("--init", default=None, help="start from this checkpoint's weights (default: --ckpt if it exists)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16, help="images per step")
    ap.add_argument("--questions", type=int, default=8, help="questions per image (qa)")
    ap.add_argument("--follow-up", type=float, default=0.5, help="fraction of follow-up protocol questions")
    ap.add_argument("--lr", type=float, default=1e-3, help="decoder + projector (qa) or ViT (vision) learning rate")
    ap.add_argument("--vit-lr", type=float, default=0.0, help="qa: ViT learning rate (0: frozen)")
    ap.add_argument("--aux-weight", type=float, default=0.5, help="qa: dense loss weight when the ViT trains")
    ap.add_argument("--key-weight", type=float, default=3.0, help="loss weight of the key token")
    ap.add_argument("--scene-weight", type=float, default=0.0,
                    help="qa: weight of the auxiliary whole-scene loss at the key positions (SceneHeads)")
    ap.add_argument("--scene-layer", type=int, default=-1,
                    help="qa: apply the scene heads to the residual stream after this many decoder layers "
                         "(-1: the final hidden state), leaving the later layers to pick what the question asks")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--decay-minutes", type=float, default=0.0,
                    help="cosine-decay the learning rates to 10%% over the last this many minutes")
    ap.add_argument("--type-weights", default=None,
                    help="sampling weights of the question types, e.g. colour=1,shape=2,count=2,relation=2,exist=2")
    ap.add_argument("--min-objects", type=int, default=3)
    ap.add_argument("--max-objects", type=int, default=6)
    ap.add_argument("--min-size", type=int, default=22)
    ap.add_argument("--max-size", type=int, default=36)
    ap.add_argument("--texture-prob", type=float, default=0.6)
    ap.add_argument("--val-scenes", type=int, default=80)
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes")
    ap.add_argument("--save-every", type=float, default=5.0, help="minutes")
    ap.add_argument("--log-every", type=int, default=20, help="steps")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (AMX)")
    ap.add_argument("--sizes", default=None, help="JSON of demo_model.make_model sizes (new model only)")
    ap.add_argument("--small-out", default=SMALL_CKPT,
                    help="also write the weights-only float16 checkpoint here (committed, so that a new "
                         "session can continue with --init; '' to skip)")
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    os.makedirs(os.path.dirname(a.ckpt), exist_ok=True)
    tok_dir = os.path.join(os.path.dirname(a.ckpt), "tokenizer")
    spm_path = os.path.join(tok_dir, "spm.model")
    if not os.path.exists(spm_path):
        committed = os.path.join(os.path.dirname(SMALL_CKPT), "spm.model")
        if os.path.exists(committed):  # the tokenizer the committed checkpoint was trained with
            os.makedirs(tok_dir, exist_ok=True)
            shutil.copy(committed, spm_path)
        else:
            dm.build_tokenizer(tok_dir)
    init = a.init or (a.ckpt if os.path.exists(a.ckpt) else None)
    state = torch.load(init, map_location="cpu", weights_only=False) if init else None
    sizes = state["sizes"] if state else dict(dm.DEFAULT_SIZES, **json.loads(a.sizes or "{}"))
    model = dm.make_model(spm_path, seed=a.seed, **sizes)
    heads = DenseHeads(sizes["vision_hidden"])
    scene_heads = SceneHeads(sizes["text_hidden"], norm=a.scene_layer >= 0)
    history = []
    step = 0
    if state:
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        if "scene_heads" in state and (a.scene_layer >= 0) == ("norm.weight" in state["scene_heads"]):
            scene_heads.load_state_dict({k: v.float() for k, v in state["scene_heads"].items()}, strict=False)
        history = state.get("history", [])
        print(f"loaded {init} (stage {state['stage']}, step {state['step']})", flush=True)
    # the HF tokenizer (the one saved with the model) for packing
    tmp_hf = os.path.join(os.path.dirname(a.ckpt), "hf-tokenizer")
    if not os.path.exists(os.path.join(tmp_hf, "tokenizer.json")):
        from hf_llava_fixtures import save_llava_tokenizer

        save_llava_tokenizer(tmp_hf, spm_path, model.config.image_token_id)
    tok = dm.load_tokenizer(tmp_hf)
    packer = dm.Packer(tok, key_weight=a.key_weight)
    model.train()

    vit = list(model.model.vision_tower.parameters())
    rest = list(model.model.multi_modal_projector.parameters()) + list(model.model.language_model.parameters()) + \
        list(model.lm_head.parameters())
    if a.stage == "vision":
        groups = [{"params": vit + list(heads.parameters()), "lr": a.lr}]
        for p in rest:
            p.requires_grad_(False)
    else:
        groups = [{"params": rest + list(scene_heads.parameters()), "lr": a.lr}]
        if a.vit_lr > 0:
            groups.append({"params": vit + list(heads.parameters()), "lr": a.vit_lr})
        else:
            for p in vit:
                p.requires_grad_(False)
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.98))
    if state and a.resume and state["stage"] == a.stage and "opt" in state:
        try:
            opt.load_state_dict(state["opt"])
            step = state["step"]
            print("resumed optimizer at step", step, flush=True)
        except ValueError as e:
            print("optimizer state not resumed:", e, flush=True)
    stage_t0 = state.get("stage_time", 0.0) if (state and a.resume and state["stage"] == a.stage) else 0.0
    total_t0 = state.get("total_time", 0.0) if state else 0.0
    best = state.get("best", -1.0) if (state and state["stage"] == a.stage) else -1.0

    cfg = scene_config(a)
    weights = None
    if a.type_weights:
        w = dict(kv.split("=") for kv in a.type_weights.split(","))
        weights = [float(w.get(t, 1.0)) for t in QTYPES]
    val = Validation(a.val_scenes)
    seeds = training_seeds(a.seed * 1000003 + step)
    rng = random.Random(a.seed + step)
    t_start = time.time()
    last_save = last_eval = t_start
    run = defaultdict(list)
    n_img = 0

    def save(tag=""):
        torch.save({"model": model.state_dict(), "heads": heads.state_dict(), "scene_heads": scene_heads.state_dict(),
                    "opt": opt.state_dict(),
                    "stage": a.stage, "step": step, "sizes": sizes, "history": history, "best": best,
                    "stage_time": stage_t0 + time.time() - t_start,
                    "total_time": total_t0 + time.time() - t_start, "args": vars(a)}, a.ckpt + ".tmp")
        os.replace(a.ckpt + ".tmp", a.ckpt)
        if a.small_out:
            write_small(a.ckpt, a.small_out)
        print(f"saved {a.ckpt} {tag}", flush=True)

    def evaluate():
        nonlocal best
        r = val.run(model, heads, packer, qa=(a.stage == "qa"))
        el = time.time() - t_start
        entry = {"stage": a.stage, "step": step, "stage_min": round((stage_t0 + el) / 60, 2),
                 "total_min": round((total_t0 + el) / 60, 2), **{k: round(v, 4) for k, v in r.items()}}
        history.append(entry)
        print("VAL " + json.dumps(entry), flush=True)
        score = r.get("question-aware", 0) + r.get("follow-up", 0) if a.stage == "qa" else r["pc_shape"]
        if a.stage == "qa" and score > best:
            best = score
            dm.save_hf(model, spm_path, a.hf_out)
            print(f"wrote {a.hf_out} (val {score / 2:.4f})", flush=True)
        elif a.stage == "vision" and score > best:
            best = score
        return r

    budget = a.minutes * 60
    while True:
        now = time.time()
        el = now - t_start
        if el >= budget:
            break
        # learning rate: warmup, then constant, then optional cosine decay at the end
        f = min(1.0, (step + 1) / a.warmup) if step < a.warmup else 1.0
        if a.decay_minutes > 0 and el > budget - a.decay_minutes * 60:
            x = (el - (budget - a.decay_minutes * 60)) / (a.decay_minutes * 60)
            f *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, x)))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        batch_seeds = [next(seeds) for _ in range(a.batch)]
        pv, labels, per = make_batch(batch_seeds, cfg, a.questions if a.stage == "qa" else 0, a.follow_up, rng,
                                      weights)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            if a.stage == "vision":
                feats = dm.vision_features(model, pv)
                loss, acc = dense_loss(heads, feats.float(), labels)
                for k, v in acc.items():
                    run[k].append(v)
            else:
                if a.vit_lr > 0:
                    feats = dm.vision_features(model, pv)
                    aux, acc = dense_loss(heads, feats.float(), labels)
                    for k, v in acc.items():
                        run[k].append(v)
                else:
                    with torch.no_grad():
                        feats = dm.vision_features(model, pv)
                    aux = 0.0
                emb = model.model.multi_modal_projector(feats)
                batch = packer.pack(per)
                if a.scene_layer >= 0:
                    hid, tap = dm.packed_forward(model, emb, batch, batch["tgt_b"], batch["tgt_i"], hidden=True,
                                                 tap_layer=a.scene_layer)
                else:
                    hid = tap = dm.packed_forward(model, emb, batch, batch["tgt_b"], batch["tgt_i"], hidden=True)
                lg = model.lm_head(hid).float()
                ce = F.cross_entropy(lg, batch["tgt_id"], reduction="none")
                loss = (ce * batch["tgt_w"]).sum() / batch["tgt_w"].sum() + a.aux_weight * aux
                # key-token accuracy on the training batch
                tpos = {(b, i): n for n, (b, i) in enumerate(zip(batch["tgt_b"].tolist(), batch["tgt_i"].tolist()))}
                kidx = [tpos[(b, i)] for b, i in zip(batch["key_b"].tolist(), batch["key_i"].tolist())]
                if a.scene_weight > 0:
                    kb = batch["key_b"]
                    tg = {k: v[kb] for k, v in labels["scene"].items()}
                    flat = [q for items in per for q, _ in items]   # key rows are in this order
                    rel = [n for n, q in enumerate(flat) if q["type"] == "relation"]
                    cells = torch.tensor([flat[n]["cells"][:2] for n in rel], dtype=torch.long).view(-1, 2)
                    sl, sacc = scene_loss(scene_heads, tap[kidx].float(), tg, torch.tensor(rel, dtype=torch.long), cells)
                    loss = loss + a.scene_weight * sl
                    for k, v in sacc.items():
                        run[k].append(v)
                ok = (lg[kidx].argmax(-1) == batch["key_id"]).tolist()
                for t, o in zip(batch["key_type"], ok):
                    run["tr_" + t].append(o)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        n_img += a.batch
        run["loss"].append(loss.item())
        if step % a.log_every == 0:
            el = time.time() - t_start
            stats = {k: float(np.mean(v)) for k, v in run.items()}
            print(f"step {step} {el / 60:.1f}min {n_img / el:.1f}img/s lr={opt.param_groups[0]['lr']:.2e} "
                  + fmt(stats), flush=True)
            run.clear()
        if time.time() - last_eval > a.eval_every * 60:
            evaluate()
            last_eval = time.time()
        if time.time() - last_save > a.save_every * 60:
            save()
            last_save = time.time()
    evaluate()
    save("(end)")


if __name__ == "__main__":
    main()
