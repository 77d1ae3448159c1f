#!/usr/bin/env python3
"""Train the second demo model, an HF `Qwen2VLForConditionalGeneration`, from scratch on the extended
scenes task (tools/scenes/qwen.py: sized images, 1-3 images per prompt, 1-4 turn conversations, list
answers) on the CPU, resumably.

Stages (the first model's recipe, tools/demo_ckpt/README.md):
  vision  the ViT alone (patch embedding + blocks) with dense per-patch heads (colour, shape, object
          centre, and the 3x3 cell the patch lies in: Qwen2-VL's ViT has only relative 2-D RoPE, so the
          patch's absolute place must be learned from the image's borders) on 14-px patches
  qa      merger + LLM on conversations (several per image group, packed so that the images and the
          system prompt run once per group: a tree-shaped attention mask, each conversation at the
          positions it has alone), the ViT frozen (--vit-lr 0) or fine-tuned with the dense loss kept;
          an auxiliary whole-scene loss (count per colour, existence of every colour x shape, shape and
          colour per cell, the cells of a relation's objects) at every key position on the residual
          stream after --scene-layer layers, for the image the question names

    nice -n 19 python tools/train_qwen_demo.py --stage vision --steps 3000 --minutes 60
    nice -n 19 python tools/train_qwen_demo.py --stage qa --init ckpt/qwen/last.pt --steps 20000 --minutes 120
    nice -n 19 python tools/train_qwen_demo.py --resume ckpt/qwen/last.pt --minutes 120   # next session

Resuming: --resume CKPT restores the weights, the optimizer, the step, the RNG states and the
schedule (the stage and every option that shapes training are taken from the checkpoint; the options
given on the command line only change the session: --minutes, --save-every, --eval-every, --threads,
paths; --steps too, to lengthen a stage, which moves its decay). Every step's data is a function of (--seed, stage, step) alone, so a resumed run continues
bit-exactly the run it was saved from (tests/test_scenes_qwen.py checks it). The learning rate is a
function of the step: linear warmup, constant, cosine decay to 10 % over the last --decay-steps of
--steps. A checkpoint is written atomically (temporary file + rename) every --save-every minutes and
at the end: CKPT_DIR/last.pt (float32 weights and optimizer state), and with --small-out a compact
copy for the repository (float16 weights, bfloat16 optimizer moments; resuming from it is not
bit-exact but continues the same run). Validation on fixed validation seeds (scenes.qwen.QVAL_SEED_BASE,
neither training nor held-out) per protocol every --eval-every minutes; the HF checkpoint (--hf-out)
is rewritten when it improves.
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
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import demo_model as dm  # noqa: E402
from scenes import COLOUR_NAMES, SHAPES  # noqa: E402
from train_demo import N_COUNT, SceneHeads, scene_loss  # noqa: E402   (the first model's heads and loss)
from scenes.qwen import (ALL_QTYPES, QVAL_SEED_BASE, QWEN_PROTOCOLS, QwenEncoder, heldout_items,  # noqa: E402
                         qwen_corpus_lines, training_group)
from scenes.sized import (MERGED_PX, SizedConfig, make_sized_scene, render_sized,  # noqa: E402
                          sized_patch_labels)
from scenes.dataset import TRAIN_SEED_LIMIT  # noqa: E402

CKPT_DIR = os.path.join(ROOT, "ckpt", "qwen")
SMALL_CKPT = os.path.join(ROOT, "tools", "demo_ckpt", "qwen2vl", "qwen2vl-small.pt")
COMMITTED_SPM = os.path.join(ROOT, "tools", "demo_ckpt", "qwen2vl", "spm.model")
VOCAB = 512
# preprocessing of the model (HF Qwen2VLImageProcessor): the trained range is 64..256 merged tokens
PROC = {"min_pixels": 64 * 28 * 28, "max_pixels": 256 * 28 * 28, "patch": 14, "merge": 2, "temporal": 2,
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}

# text: head_dim 32 with M-RoPE sections [4, 6, 6] (Qwen2-VL's 16:24:24 split), rope_theta 1e4. (The
# first runs had 20, so that the h and w sections would turn by 0.06-0.5 rad per row / column; but then
# no pair of dimensions stays still over the ~20-60 positions between a question and the image, and
# attention by content (a shape, a cell the ViT marks) never formed: tools/demo_ckpt/qwen2vl/README.md.)
DEFAULT_SIZES = dict(text_hidden=192, text_layers=4, heads=6, kv_heads=2, intermediate=512, rope_theta=1e4,
                     mrope_section=[4, 6, 6], vision_hidden=128, vision_layers=4, vision_heads=4, vision_mlp_ratio=4)


# -------------------------------------------------------------------------------------------------
# model, tokenizer, files
# -------------------------------------------------------------------------------------------------

def build_tokenizer(out_dir: str, vocab_size: int = VOCAB) -> str:
    """SentencePiece BPE on the task's text (tests/hf_fixtures.train_spm's LLaMA-like settings) with
    the Qwen specials as user-defined symbols (ids 3..9); returns the .model path."""
    import sentencepiece as spm

    from hf_qwen_fixtures import QWEN_SPECIALS

    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(qwen_corpus_lines()), model_prefix=prefix, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2, num_threads=1,
        user_defined_symbols=QWEN_SPECIALS)
    return prefix + ".model"


def save_tokenizer_files(out_dir: str, spm_model: str) -> None:
    """HF tokenizer (LlamaTokenizer over the SentencePiece model, Qwen specials, Qwen2-VL chat
    template) and preprocessor files (tests/hf_qwen_fixtures' helpers: the layout the converter takes)."""
    from hf_qwen_fixtures import QWEN2VL_CHAT_TEMPLATE, save_qwen_preprocessor, save_qwen_tokenizer

    save_qwen_tokenizer(out_dir, spm_model, QWEN2VL_CHAT_TEMPLATE)
    save_qwen_preprocessor(out_dir, PROC)


def make_model(spm_model: str, *, seed: int = 0, text_hidden=192, text_layers=4, heads=6, kv_heads=2,
               intermediate=512, rope_theta=1e4, mrope_section=(4, 6, 6), vision_hidden=128, vision_layers=4,
               vision_heads=4, vision_mlp_ratio=4, max_positions=4096):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from hf_qwen_fixtures import qwen_token_ids

    ids = qwen_token_ids(spm_model)
    if sum(mrope_section) * 2 != text_hidden // heads:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {text_hidden // heads // 2}")
    if vision_hidden * vision_mlp_ratio == vision_hidden or vision_layers < 3:
        raise ValueError("vision MLP must differ from its width, depth >= 3 (llama.cpp's converter/clip)")
    text = dict(vocab_size=ids["n_vocab"], hidden_size=text_hidden, intermediate_size=intermediate,
                num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                rms_norm_eps=1e-6, max_position_embeddings=max_positions, bos_token_id=ids["endoftext"],
                eos_token_id=ids["im_end"], pad_token_id=ids["endoftext"],
                rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta),
                                 "mrope_section": list(mrope_section)})
    vision = dict(depth=vision_layers, embed_dim=vision_hidden, hidden_size=text_hidden, num_heads=vision_heads,
                  mlp_ratio=vision_mlp_ratio, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  in_channels=3)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
                        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"])
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    try:
        model.set_attn_implementation("sdpa")
    except Exception:
        pass
    return model


def save_hf(model, spm_model: str, out_dir: str, dtype=torch.float16) -> None:
    """The HF checkpoint: weights (in `dtype`), config, tokenizer and preprocessor files."""
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    model.save_pretrained(out_dir, state_dict=state)
    save_tokenizer_files(out_dir, spm_model)


class ImageProcessor:
    """HF's Qwen2VLImageProcessorPil with the model's limits: (pixel_values [N, 1176], (t, h, w))."""

    def __init__(self):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.ip = Qwen2VLImageProcessorPil(size={"shortest_edge": PROC["min_pixels"], "longest_edge": PROC["max_pixels"]},
                                           patch_size=PROC["patch"], merge_size=PROC["merge"],
                                           temporal_patch_size=PROC["temporal"], image_mean=list(PROC["mean"]),
                                           image_std=list(PROC["std"]))

    def __call__(self, images: Sequence[np.ndarray]):
        out = self.ip(images=list(images), return_tensors="np")
        return torch.from_numpy(np.ascontiguousarray(out["pixel_values"], dtype=np.float32)), \
            torch.as_tensor(out["image_grid_thw"], dtype=torch.long)


# -------------------------------------------------------------------------------------------------
# heads (training only; never in the HF checkpoint)
# -------------------------------------------------------------------------------------------------

class DenseHeads(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.colour = nn.Linear(d, 1 + len(COLOUR_NAMES))
        self.shape = nn.Linear(d, 1 + len(SHAPES))
        self.centre = nn.Linear(d, 2)
        self.cell = nn.Linear(d, 9)     # which 3x3 cell the patch lies in (absolute place in the image)


def dense_loss(heads: DenseHeads, feats, labels, obj_weight: float = 0.0):
    """Per-patch losses; obj_weight > 0 adds the shape loss over object patches alone (their mean), so
    the few patches objects cover (a few % of an image) are not outweighed by the background."""
    c, s, z, g = heads.colour(feats), heads.shape(feats), heads.centre(feats), heads.cell(feats)
    loss = (F.cross_entropy(c, labels["colour"]) + F.cross_entropy(s, labels["shape"]) +
            F.cross_entropy(z, labels["centre"], weight=torch.tensor([1.0, 4.0])) +
            F.cross_entropy(g, labels["cell"]))
    obj = labels["shape"] > 0
    if obj_weight > 0 and bool(obj.any()):
        loss = loss + obj_weight * F.cross_entropy(s[obj], labels["shape"][obj])
    with torch.no_grad():
        acc = {"pc_colour": (c.argmax(-1) == labels["colour"])[obj].float().mean().item(),
               "pc_shape": (s.argmax(-1) == labels["shape"])[obj].float().mean().item(),
               "pc_bg": (s.argmax(-1) == 0)[~obj].float().mean().item(),
               "pc_centre": (z.argmax(-1) == 1)[labels["centre"] > 0].float().mean().item(),
               "pc_cell": (g.argmax(-1) == labels["cell"]).float().mean().item()}
    return loss, acc


class MergedHeads(nn.Module):
    """qa stage, --merge-weight: shape and colour of the object under each merged image token, read from
    the merger's output (the LLM's image embedding), so the merger keeps what the ViT knows."""

    def __init__(self, d: int):
        super().__init__()
        self.colour = nn.Linear(d, 1 + len(COLOUR_NAMES))
        self.shape = nn.Linear(d, 1 + len(SHAPES))


def merged_loss(heads: MergedHeads, emb, labels):
    """Per merged token (4 consecutive patches in pixel_values order): the object of its patch with the
    largest shape label (0: background), its colour; cross-entropy over object tokens, background
    tokens at a tenth of the weight."""
    sh = labels["shape"].view(-1, 4)
    j = sh.argmax(1, keepdim=True)
    ts, tc = sh.gather(1, j)[:, 0], labels["colour"].view(-1, 4).gather(1, j)[:, 0]
    s, c = heads.shape(emb), heads.colour(emb)
    w = torch.where(ts > 0, 1.0, 0.1)
    loss = ((F.cross_entropy(s, ts, reduction="none") + F.cross_entropy(c, tc, reduction="none")) * w).sum() / w.sum()
    obj = ts > 0
    with torch.no_grad():
        acc = {"mg_shape": (s.argmax(-1) == ts)[obj].float().mean().item(),
               "mg_colour": (c.argmax(-1) == tc)[obj].float().mean().item()}
    return loss, acc


def object_tokens(scene, objects: Sequence[int]) -> List[int]:
    """Merged-token indices (row-major in the image) that the objects' bounding boxes touch."""
    rows, cols = scene.height // MERGED_PX, scene.width // MERGED_PX
    out = set()
    for k in objects:
        o = scene.objects[k]
        h = o.size / 2
        c0, c1 = int((o.cx - h) // MERGED_PX), int((o.cx + h - 1e-3) // MERGED_PX)
        r0, r1 = int((o.cy - h) // MERGED_PX), int((o.cy + h - 1e-3) // MERGED_PX)
        for r in range(max(r0, 0), min(r1, rows - 1) + 1):
            for c in range(max(c0, 0), min(c1, cols - 1) + 1):
                out.add(r * cols + c)
    return sorted(out)


def attention_targets(batch: Dict, n_heads: int, with_lists: bool = False) -> tuple:
    """For --attn-weight: the key rows whose answer rests on named objects (every type but a "no"
    exist answer and a zero count), and per probed head and such row the packed positions of the
    target objects' tokens in the named image: a relation's two objects go one to each head (head j:
    object j mod 2; the answer compares them, a head on both would mix their places), every other
    type's objects to every head. with_lists: also the rows predicting a list answer's colour and
    shape words, on the object they name (indices past the key rows: the probe's rows are the key rows
    then batch["list_b"/"list_i"]). (row indices, [head][row] position lists)."""
    sel, pos = [], [[] for _ in range(n_heads)]
    for n, (turn, scene, img0) in enumerate(zip(batch["key_turn"], batch["key_scene"], batch["key_img0"])):
        if not turn["objects"] or (turn["type"] == "exist" and turn["key"] == "no"):
            continue
        sel.append(n)
        for j in range(n_heads):
            objs = [turn["objects"][j % 2]] if turn["type"] == "relation" else turn["objects"]
            pos[j].append([img0 + t for t in object_tokens(scene, objs)])
    if with_lists:   # rows after the key rows: each listed object's colour and shape words
        nk = len(batch["key_turn"])
        for n, (scene, obj, img0) in enumerate(zip(batch["list_scene"], batch["list_obj"], batch["list_img0"])):
            sel.append(nk + n)
            for j in range(n_heads):
                pos[j].append([img0 + t for t in object_tokens(scene, [obj])])
    return sel, pos


def attention_loss(probe: Dict, sel, pos) -> tuple:
    """Mean over the probed heads and rows of -log(attention mass on the head's target tokens)."""
    losses, mass = [], []
    for j, key in enumerate(probe["heads"]):
        p = probe[key][sel]
        m = torch.stack([p[r, q].sum() for r, q in enumerate(pos[j])])
        losses.append(-torch.log(m + 1e-6).mean())
        mass.append(m.mean().item())
    return torch.stack(losses).mean(), float(np.mean(mass))


def scene_targets(scene) -> dict:
    cs, cc = [0] * 9, [0] * 9
    for o in scene.objects:
        cs[o.cell] = 1 + SHAPES.index(o.shape)
        cc[o.cell] = 1 + COLOUR_NAMES.index(o.colour)
    return {"count": [min(scene.count(c), N_COUNT - 1) for c in COLOUR_NAMES],
            "exist": [float(scene.has(c, s)) for c in COLOUR_NAMES for s in SHAPES],
            "cell_shape": cs, "cell_colour": cc}


# -------------------------------------------------------------------------------------------------
# packing: one image group, several conversations
# -------------------------------------------------------------------------------------------------

class QwenPacker:
    """Packed batches of groups: each group (scenes, [(turns, generic_first)]) is one row holding the
    shared trunk (system prompt, first user header, the images) once and every conversation after it,
    each seeing the trunk and itself only (tree mask), at the M-RoPE positions it has alone."""

    def __init__(self, tokenizer, key_weight: float = 3.0):
        self.enc = QwenEncoder(tokenizer)
        self.image_id = self.enc.image_id
        self.key_weight = key_weight
        self.colour_ids = {self.enc.key_id(c) for c in COLOUR_NAMES}
        self.shape_ids = {self.enc.key_id(x) for x in SHAPES}

    def list_rows(self, e: Dict, turns) -> List[tuple]:
        """(index predicting, turn, object) for the colour and shape words of list answers: the k-th
        colour word and the shape word after it name the k-th listed object (left to right, top to
        bottom: turn["objects"] in order)."""
        out, k = [], defaultdict(int)
        for i, t, kind, ti in e["targets"]:
            if ti < 0 or turns[ti]["type"] != "list" or not turns[ti]["objects"]:
                continue
            objs = turns[ti]["objects"]
            if t in self.colour_ids and k[ti] < len(objs):
                out.append((i, ti, objs[k[ti]]))
                k[ti] += 1
            elif t in self.shape_ids and 0 < k[ti] <= len(objs):
                out.append((i, ti, objs[k[ti] - 1]))
        return out

    def pack(self, groups: List[tuple]) -> Dict:
        rows = []
        n_ans = 0   # answers numbered across the batch
        for scenes, convs in groups:
            grids = [(s.height // MERGED_PX, s.width // MERGED_PX) for s in scenes]
            trunk = None
            toks, pos, seg = [], [], []
            targets, keys, lrows = [], [], []
            for ci, (turns, generic) in enumerate(convs):
                e = self.enc.encode(grids, turns, generic)
                T = e["trunk"]
                if trunk is None:
                    trunk = e["ids"][:T]
                    toks += trunk
                    pos.append(e["pos"][:, :T])
                    seg += [0] * T
                elif e["ids"][:T] != trunk:
                    raise ValueError("conversations of one group do not share the trunk")
                base = len(toks) - T
                toks += e["ids"][T:]
                pos.append(e["pos"][:, T:])
                seg += [ci + 1] * (len(e["ids"]) - T)
                for i, t, kind, ti in e["targets"]:
                    assert i >= T - 1
                    targets.append((base + i if i >= T else i, t, self.key_weight if kind == "key" else 1.0,
                                    n_ans + ti if ti >= 0 else -1))
                for i, t, ti in e["keys"]:
                    turn = turns[ti]
                    keys.append((base + i, t, turn["type"], turn["image"], turn, n_ans + ti,
                                 e["images"][turn["image"]][0]))
                for i, ti, obj in self.list_rows(e, turns):
                    turn = turns[ti]
                    lrows.append((base + i if i >= T else i, turn["image"], obj, e["images"][turn["image"]][0]))
                n_ans += len(turns)
            rows.append((toks, np.concatenate(pos, 1), seg, targets, keys, scenes, lrows))
        B = len(rows)
        L = max(len(r[0]) for r in rows)
        ids = torch.zeros(B, L, dtype=torch.long)
        posT = torch.zeros(3, B, L, dtype=torch.long)
        mask = torch.zeros(B, 1, L, L, dtype=torch.bool)
        out = defaultdict(list)
        for b, (toks, pos, seg, targets, keys, scenes, lrows) in enumerate(rows):
            n = len(toks)
            ids[b, :n] = torch.tensor(toks)
            posT[:, b, :n] = torch.from_numpy(pos)
            sg = np.asarray(seg)
            m = ((sg[:, None] == sg[None, :]) | (sg[None, :] == 0)) & np.tri(n, dtype=bool)
            mask[b, 0, :n, :n] = torch.from_numpy(m)
            if n < L:
                idx = torch.arange(n, L)
                mask[b, 0, idx, idx] = True
            for i, t, w, ans in targets:
                out["tgt_b"].append(b); out["tgt_i"].append(i); out["tgt_id"].append(t); out["tgt_w"].append(w)
                out["tgt_ans"].append(ans)
            for i, img, obj, img0 in lrows:
                out["list_b"].append(b); out["list_i"].append(i); out["list_scene"].append(scenes[img])
                out["list_obj"].append(obj); out["list_img0"].append(img0)
            for i, t, ty, img, turn, ans, img0 in keys:
                out["key_img0"].append(img0)
                out["key_b"].append(b); out["key_i"].append(i); out["key_id"].append(t)
                out["key_type"].append(ty); out["key_scene"].append(scenes[img]); out["key_turn"].append(turn)
                out["key_ans"].append(ans)
        T = torch.tensor
        batch = {"ids": ids, "pos": posT, "mask": mask, "is_image": ids == self.image_id,
                 "tgt_b": T(out["tgt_b"]), "tgt_i": T(out["tgt_i"]), "tgt_id": T(out["tgt_id"]),
                 "tgt_w": T(out["tgt_w"], dtype=torch.float32), "key_b": T(out["key_b"]), "key_i": T(out["key_i"]),
                 "key_id": T(out["key_id"]), "key_type": out["key_type"], "key_scene": out["key_scene"],
                 "key_turn": out["key_turn"], "tgt_ans": out["tgt_ans"], "key_ans": out["key_ans"],
                 "key_img0": out["key_img0"], "list_b": T(out["list_b"], dtype=torch.long),
                 "list_i": T(out["list_i"], dtype=torch.long), "list_scene": out["list_scene"],
                 "list_obj": out["list_obj"], "list_img0": out["list_img0"]}
        return batch


def packed_forward(model, image_embeds: torch.Tensor, batch: Dict, rows_b, rows_i, tap_layer: Optional[int] = None,
                   attn_probe: Optional[Dict] = None):
    """Final-norm hidden states [len(rows_b), D] at packed positions (rows_b, rows_i) (lm_head of them =
    the logits), and with tap_layer=k the residual stream after k layers there (else None): the first
    model's packed forward (demo_model.packed_forward) with Qwen2-VL's M-RoPE (the text rotary
    embedding on [3, B, L] positions); equals the HF forward of each conversation alone
    (tests/test_scenes_qwen.py)."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb

    out = dm.packed_forward(model, image_embeds, batch, rows_b, rows_i, hidden=True, tap_layer=tap_layer,
                            rope=apply_rotary_pos_emb, attn_probe=attn_probe)
    return out if tap_layer is not None else (out, None)


def vision_forward(model, pv, grid):
    """(per-patch ViT output [N, Dv] in pixel_values order, merged image embeddings [N/4, D])."""
    out = model.model.visual(pv, grid_thw=grid)
    return out.last_hidden_state, out.pooler_output


# -------------------------------------------------------------------------------------------------
# data
# -------------------------------------------------------------------------------------------------

def step_rng(seed: int, stage: str, step: int) -> random.Random:
    """The random stream of one training step: a function of (seed, stage, step) only."""
    return random.Random(f"{seed}/{stage}/{step}")


def images_and_labels(scenes, proc: ImageProcessor, dense: bool):
    imgs, labs = [], defaultdict(list)
    for s in scenes:
        img, idmap = render_sized(s)
        imgs.append(img)
        if dense:
            for k, v in sized_patch_labels(s, idmap).items():
                labs[k].append(v)
    pv, grid = proc(imgs)
    labels = {k: torch.from_numpy(np.concatenate(v)) for k, v in labs.items()} if dense else None
    return pv, grid, labels


class Validation:
    """Fixed validation items per protocol (scenes.qwen.QVAL_SEED_BASE), grouped by images; key-token
    accuracy per protocol and type, and the whole answer (every token the argmax) per protocol."""

    def __init__(self, n_items: Dict[str, int]):
        self.groups = []   # (protocol, scenes, [(turns, generic_first)])
        for p in QWEN_PROTOCOLS:
            if not n_items.get(p):
                continue
            by_images = {}
            for scenes, item in heldout_items(p, n_items[p], QVAL_SEED_BASE[p]):
                key = tuple(item["images"])
                if key not in by_images:
                    by_images[key] = (p, scenes, [])
                    self.groups.append(by_images[key])
                by_images[key][2].append((item["turns"], item["generic_first"]))

    def __len__(self):
        return sum(len(g[2]) for g in self.groups)

    @torch.no_grad()
    def run(self, model, packer: QwenPacker, proc: ImageProcessor, bs: int = 8) -> dict:
        model.eval()
        res = defaultdict(list)
        for i in range(0, len(self.groups), bs):
            chunk = self.groups[i:i + bs]
            scenes = [s for _, sc, _ in chunk for s in sc]
            pv, grid, _ = images_and_labels(scenes, proc, False)
            _, emb = vision_forward(model, pv, grid)
            batch = packer.pack([(sc, convs) for _, sc, convs in chunk])
            hid, _ = packed_forward(model, emb, batch, batch["tgt_b"], batch["tgt_i"])
            ok_tok = (model.lm_head(hid).argmax(-1) == batch["tgt_id"]).tolist()
            whole = defaultdict(lambda: True)
            for ans, ok in zip(batch["tgt_ans"], ok_tok):
                if ans >= 0:
                    whole[ans] = whole[ans] and bool(ok)
            tpos = {(b, i): n for n, (b, i) in enumerate(zip(batch["tgt_b"].tolist(), batch["tgt_i"].tolist()))}
            for n, (b, i) in enumerate(zip(batch["key_b"].tolist(), batch["key_i"].tolist())):
                p, t = chunk[b][0], batch["key_type"][n]
                ok = bool(ok_tok[tpos[(b, i)]])
                res[f"{p}/{t}"].append(ok)
                res[p].append(ok)
                res[f"{p}/exact"].append(whole[batch["key_ans"][n]])
        model.train()
        return {k: float(np.mean(v)) for k, v in res.items()}


# -------------------------------------------------------------------------------------------------
# checkpoints
# -------------------------------------------------------------------------------------------------

def atomic_save(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def small_state(state: dict) -> dict:
    """The committed form: float16 weights, bfloat16 optimizer moments, everything else as is."""
    def half(d, dt):
        return {k: (v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in d.items()}

    out = {k: v for k, v in state.items() if k not in ("model", "heads", "scene_heads", "merged_heads", "opt")}
    for k in ("model", "heads", "scene_heads", "merged_heads"):
        out[k] = half(state[k], torch.float16)
    opt = state["opt"]
    out["opt"] = {"param_groups": opt["param_groups"],
                  "state": {i: {n: (t.to(torch.bfloat16) if n in ("exp_avg", "exp_avg_sq") else t)
                                for n, t in s.items()} for i, s in opt["state"].items()}}
    out["small"] = True
    return out


def float_state(d: dict) -> dict:
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in d.items()}


# -------------------------------------------------------------------------------------------------
# main
# -------------------------------------------------------------------------------------------------

SESSION_ARGS = {"minutes", "save_every", "eval_every", "threads", "ckpt_dir", "resume", "hf_out", "small_out",
                "log_every", "init", "stop_at"}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["vision", "qa"], default=None, help="required unless --resume")
    ap.add_argument("--phase", default="", help="a name for this run, kept in the checkpoint (the launch script's "
                                                "curriculum reads it)")
    ap.add_argument("--steps", type=int, default=10000, help="schedule length of the stage (steps)")
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of this session")
    ap.add_argument("--stop-at", type=int, default=0, help="end this session at this step (0: --steps)")
    ap.add_argument("--ckpt-dir", default=CKPT_DIR)
    ap.add_argument("--resume", default=None, help="continue this checkpoint exactly (stage, options, optimizer, step)")
    ap.add_argument("--init", default=None, help="start a stage from this checkpoint's weights (fresh optimizer)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8, help="image groups per step (vision: images per step)")
    ap.add_argument("--questions", type=int, default=10, help="qa: questions per group, over 1-4 turn conversations")
    ap.add_argument("--image-probs", default="0.6,0.25,0.15", help="qa: probabilities of 1, 2, 3 images per group")
    ap.add_argument("--turn-probs", default="0.4,0.2,0.2,0.2", help="qa: probabilities of 1-4 turn conversations")
    ap.add_argument("--follow-up", type=float, default=0.3, help="qa: conversations opening with the generic turn")
    ap.add_argument("--type-weights", default=None, help="e.g. colour=1,shape=1,count=2,relation=2,exist=1,list=2")
    ap.add_argument("--lr", type=float, default=1e-3, help="merger + LLM (qa) or ViT (vision) learning rate")
    ap.add_argument("--vit-lr", type=float, default=0.0, help="qa: ViT learning rate (0: frozen)")
    ap.add_argument("--aux-weight", type=float, default=0.5, help="qa: dense loss weight when the ViT trains")
    ap.add_argument("--key-weight", type=float, default=3.0)
    ap.add_argument("--scene-weight", type=float, default=0.3)
    ap.add_argument("--obj-weight", type=float, default=0.0,
                    help="vision stage: extra weight of the shape loss over object patches alone")
    ap.add_argument("--merge-weight", type=float, default=0.0,
                    help="qa stage: weight of a per-merged-token shape/colour loss on the merger's output")
    ap.add_argument("--attn-weight", type=float, default=0.0,
                    help="qa stage: weight of an attention loss: the --attn-heads' attention at each key row "
                         "on the tokens of the objects the answer rests on")
    ap.add_argument("--attn-heads", default="1:0,2:0", help="layer:head pairs the attention loss trains")
    ap.add_argument("--attn-list", action="store_true",
                    help="the attention loss also at the rows predicting a list answer's colour and shape words "
                         "(on the object each names)")
    ap.add_argument("--scene-layer", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--decay-steps", type=int, default=0, help="cosine decay to 10%% over the last this many steps")
    ap.add_argument("--min-side", type=int, default=224)
    ap.add_argument("--max-side", type=int, default=448)
    ap.add_argument("--min-objects", type=int, default=3)
    ap.add_argument("--max-objects", type=int, default=6)
    ap.add_argument("--val", default="single=40,list=60,multi-image=60,multi-turn=40",
                    help="validation items per protocol (single: scenes x 5 questions); '' for none")
    ap.add_argument("--eval-every", type=float, default=10.0, help="minutes")
    ap.add_argument("--save-every", type=float, default=10.0, help="minutes")
    ap.add_argument("--log-every", type=int, default=20, help="steps")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (AMX)")
    ap.add_argument("--sizes", default=None,
                    help="JSON of make_model sizes (a new model; with --init only rope_theta may change)")
    ap.add_argument("--hf-out", default=os.path.join(ROOT, "models", "qwen2vl-demo-hf"))
    ap.add_argument("--small-out", default="", help="also write the compact checkpoint here (e.g. " + SMALL_CKPT + ")")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    state = None
    if a.resume:
        state = torch.load(a.resume, map_location="cpu", weights_only=False)
        saved = state["args"]
        given = {x.split("=")[0] for x in (argv if argv is not None else sys.argv[1:]) if x.startswith("--")}
        for k, v in saved.items():   # the run's options; the session's from the command line
            if k not in SESSION_ARGS and not (k == "steps" and "--steps" in given):
                setattr(a, k, v)
        if a.steps != saved["steps"]:   # lengthening (or shortening) the stage: the decay moves
            print(f"schedule length changed: {saved['steps']} -> {a.steps} steps", flush=True)
        print(f"resuming {a.resume}: stage {state['stage']} step {state['step']}", flush=True)
    elif a.stage is None:
        raise SystemExit("--stage is required (or --resume)")
    init = None if a.resume else a.init
    istate = torch.load(init, map_location="cpu", weights_only=False) if init else None
    src = state or istate

    os.makedirs(a.ckpt_dir, exist_ok=True)
    tok_dir = os.path.join(a.ckpt_dir, "tokenizer")
    spm_path = os.path.join(tok_dir, "spm.model")
    if not os.path.exists(spm_path):
        os.makedirs(tok_dir, exist_ok=True)
        if os.path.exists(COMMITTED_SPM):
            shutil.copy(COMMITTED_SPM, spm_path)
        else:
            build_tokenizer(tok_dir)
    hf_tok = os.path.join(tok_dir, "hf")
    if not os.path.exists(os.path.join(hf_tok, "tokenizer_config.json")):
        save_tokenizer_files(hf_tok, spm_path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_tok)

    sizes = src["sizes"] if src else dict(DEFAULT_SIZES, **json.loads(a.sizes or "{}"))
    if istate is not None and a.sizes:
        new = json.loads(a.sizes)
        if set(new) - {"rope_theta"}:
            raise SystemExit("--sizes with --init may only change rope_theta (the weights keep their shapes)")
        sizes = dict(sizes, **new)
    model = make_model(spm_path, seed=a.seed, **sizes)
    vd = model.config.vision_config.embed_dim
    heads = DenseHeads(vd)
    scene_heads = SceneHeads(model.config.text_config.hidden_size, norm=True)
    merged_heads = MergedHeads(model.config.text_config.hidden_size)
    if src:
        model.load_state_dict(float_state(src["model"]))
        heads.load_state_dict(float_state(src["heads"]))
        scene_heads.load_state_dict(float_state(src["scene_heads"]))
        if "merged_heads" in src:
            merged_heads.load_state_dict(float_state(src["merged_heads"]))
    model.train()

    visual = model.model.visual
    vit = [p for n, p in visual.named_parameters() if not n.startswith("merger.")]
    merger = list(visual.merger.parameters())
    rest = merger + list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    if a.stage == "vision":
        groups = [{"params": vit + list(heads.parameters()), "lr": a.lr}]
        for p in rest + list(scene_heads.parameters()):
            p.requires_grad_(False)
    else:
        extra = list(merged_heads.parameters()) if a.merge_weight > 0 else []
        groups = [{"params": rest + list(scene_heads.parameters()) + extra, "lr": a.lr}]
        if a.vit_lr > 0:
            groups.append({"params": vit + list(heads.parameters()), "lr": a.vit_lr})
        else:
            for p in vit + list(heads.parameters()):
                p.requires_grad_(False)
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.98))
    step, history, best, total_t0 = 0, [], -1.0, 0.0
    if state:
        o = state["opt"]
        if state.get("small"):
            o = {"param_groups": o["param_groups"],
                 "state": {i: {n: (t.float() if n in ("exp_avg", "exp_avg_sq") else t) for n, t in s.items()}
                           for i, s in o["state"].items()}}
        opt.load_state_dict(o)
        step = state["step"]
        history, best = state.get("history", []), state.get("best", -1.0)
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
    if src:
        total_t0 = src.get("total_time", 0.0)
        if not state:
            history = list(src.get("history", []))

    proc = ImageProcessor()
    packer = QwenPacker(tok, key_weight=a.key_weight)
    cfg = SizedConfig(min_side=a.min_side, max_side=a.max_side, min_objects=a.min_objects, max_objects=a.max_objects)
    weights = None
    if a.type_weights:
        w = dict(kv.split("=") for kv in a.type_weights.split(","))
        weights = [float(w.get(t, 1.0)) for t in ALL_QTYPES]
    image_probs = [float(x) for x in a.image_probs.split(",")]
    turn_probs = [float(x) for x in a.turn_probs.split(",")]
    val_n = {k: int(v) for k, v in (kv.split("=") for kv in a.val.split(","))} if a.val else {}
    val = Validation(val_n) if val_n else None
    t_start = time.time()
    last_save = last_eval = t_start
    run = defaultdict(list)

    def lr_factor(s):
        f = min(1.0, (s + 1) / a.warmup) if a.warmup else 1.0
        if a.decay_steps > 0 and s > a.steps - a.decay_steps:
            x = (s - (a.steps - a.decay_steps)) / a.decay_steps
            f *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, x)))
        return f

    def full_state():
        return {"model": model.state_dict(), "heads": heads.state_dict(), "scene_heads": scene_heads.state_dict(),
                "merged_heads": merged_heads.state_dict(),
                "opt": opt.state_dict(), "stage": a.stage, "step": step, "sizes": sizes, "history": history,
                "best": best, "total_time": total_t0 + time.time() - t_start, "args": vars(a),
                "torch_rng": torch.get_rng_state(), "py_rng": random.getstate()}

    def save(tag=""):
        st = full_state()
        path = os.path.join(a.ckpt_dir, "last.pt")
        atomic_save(st, path)
        if a.small_out:
            atomic_save(small_state(st), a.small_out)
        print(f"saved {path} step {step} {tag}", flush=True)

    def evaluate():
        nonlocal best
        if val is None:
            return {}
        if a.stage == "vision":
            r = vision_val()
        else:
            r = val.run(model, packer, proc)
        el = time.time() - t_start
        entry = {"stage": a.stage, "step": step, "total_min": round((total_t0 + el) / 60, 2),
                 **{k: round(v, 4) for k, v in r.items()}}
        history.append(entry)
        print("VAL " + json.dumps(entry), flush=True)
        score = float(np.mean([r.get(p, 0.0) for p in QWEN_PROTOCOLS])) if a.stage == "qa" else r.get("pc_shape", 0)
        if score > best:
            best = score
            if a.stage == "qa" and a.hf_out:
                save_hf(model, spm_path, a.hf_out)
                print(f"wrote {a.hf_out} (val {score:.4f})", flush=True)
        return r

    @torch.no_grad()
    def vision_val():
        model.eval()
        scenes = [make_sized_scene(QVAL_SEED_BASE["single"] + 4 * i + 3, cfg) for i in range(16)]
        res = defaultdict(list)
        for i in range(0, len(scenes), 8):
            pv, grid, labels = images_and_labels(scenes[i:i + 8], proc, True)
            feats, _ = vision_forward(model, pv, grid)
            _, acc = dense_loss(heads, feats.float(), labels)
            for k, v in acc.items():
                res[k].append(v)
        model.train()
        return {k: float(np.mean(v)) for k, v in res.items()}

    budget = a.minutes * 60
    print(f"stage {a.stage} from step {step} to {a.steps}; {sum(p.numel() for p in model.parameters())} parameters; "
          f"validation {len(val) if val else 0} conversations", flush=True)
    n_img = 0
    end = min(a.steps, a.stop_at) if a.stop_at else a.steps
    while step < end and time.time() - t_start < budget:
        f = lr_factor(step)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        rng = step_rng(a.seed, a.stage, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            if a.stage == "vision":
                scenes = [make_sized_scene(rng.randrange(TRAIN_SEED_LIMIT), cfg) for _ in range(a.batch)]
                pv, grid, labels = images_and_labels(scenes, proc, True)
                feats, _ = vision_forward(model, pv, grid)
                loss, acc = dense_loss(heads, feats.float(), labels, getattr(a, "obj_weight", 0.0))
                for k, v in acc.items():
                    run[k].append(v)
            else:
                groups_ = [training_group(rng, cfg, a.questions, weights, image_probs, a.follow_up, turn_probs)
                           for _ in range(a.batch)]
                groups_ = [g for g in groups_ if g[1]]   # (narrow --type-weights can leave a group without a question)
                scenes = [s for sc, _ in groups_ for s in sc]
                train_vit = a.vit_lr > 0
                mw = a.merge_weight
                pv, grid, labels = images_and_labels(scenes, proc, train_vit or mw > 0)
                if train_vit:
                    feats, emb = vision_forward(model, pv, grid)
                    aux, acc = dense_loss(heads, feats.float(), labels, getattr(a, "obj_weight", 0.0))
                    for k, v in acc.items():
                        run[k].append(v)
                else:
                    # the ViT frozen: its blocks without gradient, the merger with
                    with torch.no_grad():
                        out = visual(pv, grid_thw=grid)
                    emb = visual.merger(out.last_hidden_state)
                    aux = 0.0
                mloss = 0.0
                if mw > 0:
                    ml, macc = merged_loss(merged_heads, emb.float(), labels)
                    mloss = mw * ml
                    for k, v in macc.items():
                        run[k].append(v)
                batch = packer.pack(groups_)
                probe = None
                aw = a.attn_weight
                if aw > 0:
                    al_on = a.attn_list
                    probe = {"heads": [tuple(int(x) for x in hp.split(":")) for hp in a.attn_heads.split(",")],
                             "b": torch.cat([batch["key_b"], batch["list_b"]]) if al_on else batch["key_b"],
                             "i": torch.cat([batch["key_i"], batch["list_i"]]) if al_on else batch["key_i"]}
                    asel, apos = attention_targets(batch, len(probe["heads"]), al_on)
                hid, tap = packed_forward(model, emb, batch, batch["tgt_b"], batch["tgt_i"],
                                          tap_layer=a.scene_layer if a.scene_weight > 0 else None, attn_probe=probe)
                lg = model.lm_head(hid).float()
                ce = F.cross_entropy(lg, batch["tgt_id"], reduction="none")
                loss = (ce * batch["tgt_w"]).sum() / batch["tgt_w"].sum() + a.aux_weight * aux + mloss
                if probe is not None and asel:
                    al, am = attention_loss(probe, asel, apos)
                    loss = loss + aw * al
                    run["attn_mass"].append(am)
                tpos = {(b, i): n for n, (b, i) in enumerate(zip(batch["tgt_b"].tolist(), batch["tgt_i"].tolist()))}
                kidx = [tpos[(b, i)] for b, i in zip(batch["key_b"].tolist(), batch["key_i"].tolist())]
                if a.scene_weight > 0:
                    tg = defaultdict(list)
                    for s in batch["key_scene"]:
                        for k, v in scene_targets(s).items():
                            tg[k].append(v)
                    tg = {k: torch.tensor(v, dtype=torch.float32 if k == "exist" else torch.long) for k, v in tg.items()}
                    turns = batch["key_turn"]
                    rel = [n for n, t in enumerate(turns) if t["type"] == "relation"]
                    cells = torch.tensor([[batch["key_scene"][n].objects[k].cell for k in turns[n]["objects"][:2]]
                                          for n in rel], dtype=torch.long).view(-1, 2)
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
        n_img += len(scenes)
        run["loss"].append(loss.item())
        if step % a.log_every == 0:
            el = time.time() - t_start
            stats = {k: float(np.mean(v)) for k, v in run.items()}
            print(f"step {step} {el / 60:.1f}min {n_img / el:.2f}img/s {60 * (step - (state['step'] if state else 0)) / el:.1f}"
                  f"steps/min lr={opt.param_groups[0]['lr']:.2e} "
                  + " ".join(f"{k}={v:.3f}" for k, v in stats.items()), flush=True)
            run.clear()
        if val is not None and time.time() - last_eval > a.eval_every * 60:
            evaluate()
            last_eval = time.time()
        if time.time() - last_save > a.save_every * 60:
            save()
            last_save = time.time()
    if val is not None:
        evaluate()
    save("(end)")
    return {"step": step, "loss": run["loss"][-1] if run["loss"] else None}


if __name__ == "__main__":
    main()
