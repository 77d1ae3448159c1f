"""The demo LLaVA model for the scenes task: configuration, tokenizer, saving, and a packed forward.

Used by tools/train_demo.py (training) and tools/eval_demo.py (held-out evaluation).

- `build_tokenizer(dir)`: SentencePiece BPE on the task's text with LLaMA-like settings
  (tests/hf_fixtures.train_spm's), `<image>` added after the SentencePiece vocabulary.
- `make_model(spm, **sizes)`: `LlavaForConditionalGeneration` (CLIP ViT with class token,
  linear-GELU-linear projector, LLaMA decoder with GQA), default initialisation.
- `save_hf(model, spm, dir)`: `save_pretrained` + tokenizer + processor files (llava-1.5-hf layout,
  through tests/hf_llava_fixtures' helpers).
- `pixel_values(images)`: the HF processor's normalisation for 128x128 inputs (resize and centre
  crop are the identity at that size).
- `Packer` / `packed_forward`: one image prefix shared by several questions (and protocols) in one
  sequence with a tree-shaped attention mask: each question branch sees the image prefix (and, in
  the follow-up protocol, the shared first turn) but not the other branches, at the positions it
  would have alone. `packed_forward` uses the HF modules' weights and `apply_rotary_pos_emb`, and
  equals the HF forward of each conversation alone (tests/test_scenes.py checks it).
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from scenes import IMAGE_SIZE, Encoder, corpus_lines  # noqa: E402

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PATCH = 8
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
VOCAB = 512

DEFAULT_SIZES = dict(vision_hidden=128, vision_layers=4, vision_heads=4, vision_intermediate=512,
                     text_hidden=128, text_layers=4, heads=4, kv_heads=2, intermediate=512)


def build_tokenizer(out_dir: str, vocab_size: int = VOCAB) -> str:
    """SentencePiece BPE trained on the task's text (LLaMA-like settings); returns the .model path."""
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_prefix=prefix, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2, num_threads=1)
    return prefix + ".model"


def make_model(spm_model: str, *, seed: int = 0, vision_hidden: int = 128, vision_layers: int = 4,
               vision_heads: int = 4, vision_intermediate: int = 512, text_hidden: int = 128,
               text_layers: int = 4, heads: int = 4, kv_heads: int = 2, intermediate: int = 512,
               rope_theta: float = 10000.0, max_positions: int = 1024, pos_init: str = "sincos",
               pos_scale: float = 0.5):
    from transformers import LlavaForConditionalGeneration

    from hf_llava_fixtures import llava_config

    cfg = llava_config(spm_model, image_size=IMAGE_SIZE, patch=PATCH, vision_hidden=vision_hidden,
                       vision_layers=vision_layers, vision_heads=vision_heads,
                       vision_intermediate=vision_intermediate, text_hidden=text_hidden, text_layers=text_layers,
                       heads=heads, kv_heads=kv_heads, intermediate=intermediate, rope_theta=rope_theta,
                       max_positions=max_positions, vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    if pos_init == "sincos":
        with torch.no_grad():
            emb = model.model.vision_tower.embeddings.position_embedding.weight
            emb.copy_(sincos_2d(IMAGE_SIZE // PATCH, vision_hidden, scale=pos_scale))
    return model


def sincos_2d(n: int, d: int, scale: float = 1.0) -> torch.Tensor:
    """[1 + n*n, d] 2-D sine-cosine position embeddings (MAE-style; row 0, the class token, zero):
    an initialisation that gives the ViT locality from the start (the weights stay learnable)."""
    q = d // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float32) / q))
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    parts = []
    for c in (ys.flatten(), xs.flatten()):
        a = c[:, None] * omega[None, :]
        parts += [a.sin(), a.cos()]
    pe = torch.cat(parts, 1)
    out = torch.zeros(1 + n * n, d)
    out[1:, :pe.shape[1]] = pe * scale
    return out


def load_tokenizer(hf_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)


def save_hf(model, spm_model: str, out_dir: str, dtype=torch.float16) -> None:
    """The HF checkpoint: weights (in `dtype`), config, tokenizer and processor files."""
    from hf_llava_fixtures import save_llava_processor, save_llava_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    model.save_pretrained(out_dir, state_dict=state)
    save_llava_tokenizer(out_dir, spm_model, model.config.image_token_id)
    save_llava_processor(out_dir, IMAGE_SIZE, PATCH)


def load_hf(hf_dir: str):
    """(model float32 eval, tokenizer) of a saved checkpoint."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    return model, load_tokenizer(hf_dir)


def pixel_values(images: Sequence[np.ndarray]) -> torch.Tensor:
    """[B, 3, H, W] float32, CLIP-normalised (CLIPImageProcessor on IMAGE_SIZE-square inputs)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def vision_features(model, pv: torch.Tensor) -> torch.Tensor:
    """The ViT hidden states LLaVA feeds to the projector (class token dropped): [B, N, Dv]."""
    cfg = model.config
    out = model.model.vision_tower(pv, output_hidden_states=True, return_dict=True)
    return out.hidden_states[cfg.vision_feature_layer][:, 1:]


# -------------------------------------------------------------------------------------------------
# Packed sequences: one image, several question branches
# -------------------------------------------------------------------------------------------------

class Packer:
    """Builds packed batches. Each item is (question record: type, question, answer, key,
    key_offset; protocol). All branches of an image share the trunk (BOS ... image)."""

    def __init__(self, tokenizer, key_weight: float = 1.0):
        self.enc = Encoder(tokenizer, N_IMAGE_TOKENS)
        self.image_id = self.enc.image_id
        self.key_weight = key_weight

    def pack(self, per_image: List[List[tuple]], drop: Optional[np.ndarray] = None, drop_from: str = "prompt"):
        """per_image[b] = [(q, protocol), ...]. Returns a dict of tensors:
        ids [B, L], pos [B, L], is_image [B, L], mask [B, 1, L, L] (True: may attend),
        tgt_b, tgt_i, tgt_id, tgt_w (loss targets: logits at [tgt_b, tgt_i] predict tgt_id),
        key_b, key_i, key_id (the key tokens), key_type (question type per key), key_q (index of the
        question in per_image order).
        drop: optional bool [B, N_IMAGE_TOKENS]: image tokens hidden from rows at or after the
        prompt's end (drop_from="prompt": what a compacted cache does) or after the image
        (drop_from="image")."""
        seqs = []
        for b, items in enumerate(per_image):
            encs = [(self.enc.encode(q["question"], q["answer"], q["key"], q["key_offset"], p), p, q)
                    for q, p in items]
            trunk = None
            toks, pos, seg, rowdrop = [], [], [], []
            parents = [-1]
            targets, keys = [], []
            fu_seg = None
            for e, p, q in encs:
                ids = e["input_ids"]
                ie = e["image_end"]
                if trunk is None:
                    trunk = ids[:ie]
                    toks += trunk
                    pos += list(range(ie))
                    seg += [0] * ie
                    rowdrop += [False] * ie
                elif ids[:ie] != trunk:
                    raise ValueError("conversations of one image do not share the trunk")
                thr = e["n_prompt"] if drop_from == "prompt" else ie
                if p == "follow-up":
                    t1 = e["turn1_end"]
                    if fu_seg is None:
                        fu_seg = len(parents)
                        parents.append(0)
                        fu_start = len(toks)
                        toks += ids[ie:t1]
                        pos += list(range(ie, t1))
                        seg += [fu_seg] * (t1 - ie)
                        rowdrop += [j >= thr for j in range(ie, t1)]
                    start, par = t1, fu_seg
                else:
                    start, par = ie, 0
                sid = len(parents)
                parents.append(par)
                base = len(toks) - start       # packed index = base + original index
                toks += ids[start:]
                pos += list(range(start, len(ids)))
                seg += [sid] * (len(ids) - start)
                rowdrop += [j >= thr for j in range(start, len(ids))]
                for j in range(e["answer_start"], len(ids)):
                    w = self.key_weight if j == e["key_pos"] else 1.0
                    targets.append((base + j - 1, ids[j], w))
                keys.append((base + e["key_pos"] - 1, e["key_id"], q["type"]))
            seqs.append((toks, pos, seg, rowdrop, parents, targets, keys))
        B = len(seqs)
        L = max(len(s[0]) for s in seqs)
        ids = torch.zeros(B, L, dtype=torch.long)
        posT = torch.zeros(B, L, dtype=torch.long)
        mask = torch.zeros(B, 1, L, L, dtype=torch.bool)
        is_image = torch.zeros(B, L, dtype=torch.bool)
        tb, ti, tid, tw, kb, ki, kid, kt = [], [], [], [], [], [], [], []
        for b, (toks, pos, seg, rowdrop, parents, targets, keys) in enumerate(seqs):
            n = len(toks)
            ids[b, :n] = torch.tensor(toks)
            posT[b, :n] = torch.tensor(pos)
            is_image[b, :n] = ids[b, :n] == self.image_id
            S = len(parents)
            anc = np.zeros((S, S), bool)           # anc[s, t]: t is s or an ancestor of s
            for s in range(S):
                t = s
                while t >= 0:
                    anc[s, t] = True
                    t = parents[t]
            sg = np.asarray(seg)
            m = anc[sg[:, None], sg[None, :]] & np.tri(n, dtype=bool)
            if drop is not None:
                img_cols = np.nonzero(is_image[b, :n].numpy())[0]
                dcols = img_cols[drop[b]]
                rows = np.nonzero(np.asarray(rowdrop))[0]
                m[np.ix_(rows, dcols)] = False
            mask[b, 0, :n, :n] = torch.from_numpy(m)
            if n < L:
                idx = torch.arange(n, L)
                mask[b, 0, idx, idx] = True
            for i, t, w in targets:
                tb.append(b); ti.append(i); tid.append(t); tw.append(w)
            for i, t, ty in keys:
                kb.append(b); ki.append(i); kid.append(t); kt.append(ty)
        T = torch.tensor
        return {"ids": ids, "pos": posT, "mask": mask, "is_image": is_image,
                "tgt_b": T(tb), "tgt_i": T(ti), "tgt_id": T(tid), "tgt_w": T(tw, dtype=torch.float32),
                "key_b": T(kb), "key_i": T(ki), "key_id": T(kid), "key_type": kt}


def packed_forward(model, image_embeds: torch.Tensor, batch: Dict, rows_b: torch.Tensor,
                   rows_i: torch.Tensor, hidden: bool = False, tap_layer: Optional[int] = None, rope=None,
                   attn_probe: Optional[Dict] = None):
    """Logits [len(rows_b), vocab] at packed positions (rows_b, rows_i). image_embeds: [B, N, D]
    (the projector's output), placed at the image positions of batch["ids"]. hidden=True: the
    final-norm hidden states [len(rows_b), D] there instead (lm_head of them = the logits).
    tap_layer=k: also return the residual stream after the first k layers at those rows (a pair).
    rope: the model family's apply_rotary_pos_emb (default Llama's; the Qwen2-VL trainer passes its
    own, with M-RoPE positions in batch["pos"]).
    attn_probe: {"heads": [(layer, head), ...], "b": rows, "i": rows}: the attention probabilities of
    those heads at those packed rows are stored in it, attn_probe[(layer, head)] = [n, L] (with grad)."""
    if rope is None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as rope

    lm = model.model.language_model
    ids = batch["ids"]
    h = lm.embed_tokens(ids)
    img = batch["is_image"]
    h = h.masked_scatter(img.unsqueeze(-1), image_embeds.to(h.dtype).reshape(-1, h.shape[-1])) \
        if img.any() else h
    cos, sin = lm.rotary_emb(h, batch["pos"])
    mask = batch["mask"]
    B, L, _ = h.shape
    tap = None
    for li, layer in enumerate(lm.layers):
        if li == tap_layer:
            tap = h[rows_b, rows_i]
        a = layer.self_attn
        x = layer.input_layernorm(h)
        q = a.q_proj(x).view(B, L, -1, a.head_dim).transpose(1, 2)
        k = a.k_proj(x).view(B, L, -1, a.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(B, L, -1, a.head_dim).transpose(1, 2)
        q, k = rope(q, k, cos, sin)
        if attn_probe is not None:
            for (pl, ph) in attn_probe["heads"]:
                if pl != li:
                    continue
                pb, pi = attn_probe["b"], attn_probe["i"]
                kh = ph // (q.shape[1] // k.shape[1])
                sc = torch.einsum("nd,nld->nl", q[pb, ph, pi], k[pb, kh]) * a.scaling
                sc = sc.masked_fill(~mask[pb, 0, pi], float("-inf"))
                attn_probe[(pl, ph)] = torch.softmax(sc.float(), -1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=a.scaling, enable_gqa=True)
        h = h + a.o_proj(o.transpose(1, 2).reshape(B, L, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    if tap_layer is not None and tap is None:
        tap = h[rows_b, rows_i]
    h = lm.norm(h[rows_b, rows_i])
    out = h if hidden else model.lm_head(h)
    return out if tap_layer is None else (out, tap)
