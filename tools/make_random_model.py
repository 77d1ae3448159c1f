#!/usr/bin/env python3
"""Random-weight LLaVA-style GGUF pairs (text model + mmproj) of named shapes, for speed work.

    python tools/make_random_model.py --shape llava-79m --outdir /tmp/m [--outtype f16]

Writes OUTDIR/<shape>-<outtype>.gguf (arch llama) and OUTDIR/<shape>-mmproj-f16.gguf (arch clip,
projector mlp), following llama.cpp's conventions. Weights are N(0, 0.02) (norm gains around 1), so
activations stay finite; the answers are meaningless, the timings are real. The vocabulary is a
SentencePiece-style byte-fallback vocabulary (every text encodes) padded with unused tokens.

Shapes (text; vision):
  tiny          64 wide, 2 layers, 4/2 heads, ff 128, vocab 512;        32 px / 8  -> 16 tokens, ViT 32 x 2
  small         256 wide, 2 layers, 4/2 heads, ff 512, vocab 512 (rows K-quantizable); 32 px / 8, ViT 64 x 2
  llava-79m     768 wide, 12 layers, 12/4 heads, ff 1024, vocab 32000 (tied);
                336 px / 14 -> 576 tokens, ViT 384 x 6
  mistral-7b-8l 4096 wide, 8 layers, 32/8 heads, ff 14336, vocab 32000; 336 px / 14 -> 576 tokens, ViT 384 x 6
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

SHAPES = {
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128, n_vocab=512, tied=False,
                 v_image=32, v_patch=8, v_embd=32, v_layer=2, v_head=4, v_ff=64),
    "small": dict(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, n_vocab=512, tied=False,
                  v_image=32, v_patch=8, v_embd=64, v_layer=2, v_head=4, v_ff=128),
    "llava-79m": dict(n_embd=768, n_layer=12, n_head=12, n_head_kv=4, n_ff=1024, n_vocab=32000, tied=True,
                      v_image=336, v_patch=14, v_embd=384, v_layer=6, v_head=6, v_ff=1536),
    "mistral-7b-8l": dict(n_embd=4096, n_layer=8, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32000, tied=False,
                          v_image=336, v_patch=14, v_embd=384, v_layer=6, v_head=6, v_ff=1536),
}
OUTTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"]


def _quant_k(rows: int, cols: int, name: str, rng: np.random.Generator, std: float) -> np.ndarray:
    """Random K-quant blocks (gguf-py has no K-quant quantizer): random quants, f16 scales chosen so
    the dequantized values have about `std`."""
    import gguf

    qt = gguf.GGMLQuantizationType[name]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    nb = rows * cols // block
    raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    offs = {"Q4_K": [0, 2], "Q6_K": [208]}[name]
    for off in offs:
        raw[:, off:off + 2] = np.full(nb, 1.0, np.float16).view(np.uint8).reshape(nb, 2)
    sample = np.asarray(gguf.quants.dequantize(raw[:64].reshape(-1), qt), dtype=np.float32)
    scale = std / max(float(sample.std()), 1e-12)
    for off in offs:
        raw[:, off:off + 2] = np.full(nb, scale, np.float16).view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, -1)


def add_weight(w, name: str, rows: int, cols: int, outtype: str, rng: np.random.Generator, std: float = 0.02) -> None:
    import gguf

    if outtype in ("q4_k", "q6_k") and cols % 256 == 0:
        kname = outtype.upper()
        w.add_tensor(name, _quant_k(rows, cols, kname, rng, std), raw_dtype=gguf.GGMLQuantizationType[kname])
        return
    x = (rng.standard_normal((rows, cols), dtype=np.float32) * std)
    if outtype == "f32":
        w.add_tensor(name, x)
    elif outtype in ("f16", "q4_k", "q6_k"):  # K-quant fallback for rows not a multiple of 256
        w.add_tensor(name, x.astype(np.float16))
    else:
        qt = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
              "q4_0": gguf.GGMLQuantizationType.Q4_0}[outtype]
        w.add_tensor(name, gguf.quants.quantize(x, qt), raw_dtype=qt)


def norm(rng, n):
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def byte_vocab(n_vocab: int):
    """<unk> <s> </s>, the 256 byte tokens, a few pieces, then unused padding: SentencePiece-style."""
    import gguf

    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256
    pieces = ["\u2581", "\u2581the", "\u2581a", "e", "t", "a", "o", "n", "s", "r", "\u2581what", "\u2581is"]
    tokens += pieces
    types += [T.NORMAL] * len(pieces)
    while len(tokens) < n_vocab:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(T.UNUSED)
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(pieces))] + [-1e9] * (n_vocab - 259 - len(pieces))
    return tokens[:n_vocab], scores[:n_vocab], [int(t) for t in types[:n_vocab]]


def write_text(path: str, s: dict, outtype: str, seed: int) -> None:
    import gguf

    rng = np.random.default_rng(seed)
    E, L, H, Hkv, F, V = s["n_embd"], s["n_layer"], s["n_head"], s["n_head_kv"], s["n_ff"], s["n_vocab"]
    D = E // H
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"random-{os.path.basename(path)}")
    w.add_context_length(4096)
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_rope_dimension_count(D)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    tokens, scores, types = byte_vocab(V)
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    add_weight(w, "token_embd.weight", V, E, outtype, rng)
    w.add_tensor("output_norm.weight", norm(rng, E))
    if not s["tied"]:
        add_weight(w, "output.weight", V, E, outtype, rng)
    for l in range(L):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", norm(rng, E))
        add_weight(w, p + "attn_q.weight", H * D, E, outtype, rng)
        add_weight(w, p + "attn_k.weight", Hkv * D, E, outtype, rng)
        add_weight(w, p + "attn_v.weight", Hkv * D, E, outtype, rng)
        add_weight(w, p + "attn_output.weight", E, H * D, outtype, rng)
        w.add_tensor(p + "ffn_norm.weight", norm(rng, E))
        add_weight(w, p + "ffn_gate.weight", F, E, outtype, rng)
        add_weight(w, p + "ffn_up.weight", F, E, outtype, rng)
        add_weight(w, p + "ffn_down.weight", E, F, outtype, rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_mmproj(path: str, s: dict, seed: int) -> None:
    import gguf

    rng = np.random.default_rng(seed + 1)
    C, P, S, Lv, Hv, Fv, E = s["v_embd"], s["v_patch"], s["v_image"], s["v_layer"], s["v_head"], s["v_ff"], s["n_embd"]
    n_pos = (S // P) ** 2 + 1
    w = gguf.GGUFWriter(path, "clip")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", S)
    w.add_uint32("clip.vision.patch_size", P)
    w.add_uint32("clip.vision.embedding_length", C)
    w.add_uint32("clip.vision.feed_forward_length", Fv)
    w.add_uint32("clip.vision.projection_dim", E)
    w.add_uint32("clip.vision.attention.head_count", Hv)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.vision.block_count", Lv)
    w.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    w.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    w.add_bool("clip.use_gelu", False)
    f16 = lambda a: a.astype(np.float16)  # noqa: E731
    r = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02)  # noqa: E731
    w.add_tensor("v.patch_embd.weight", f16(r(C, 3, P, P)))
    w.add_tensor("v.class_embd", r(C))
    w.add_tensor("v.position_embd.weight", r(n_pos, C))
    w.add_tensor("v.pre_ln.weight", norm(rng, C))
    w.add_tensor("v.pre_ln.bias", r(C))
    for l in range(Lv):
        p = f"v.blk.{l}."
        for n in ("ln1", "ln2"):
            w.add_tensor(p + n + ".weight", norm(rng, C))
            w.add_tensor(p + n + ".bias", r(C))
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(p + n + ".weight", f16(r(C, C)))
            w.add_tensor(p + n + ".bias", r(C))
        w.add_tensor(p + "ffn_up.weight", f16(r(Fv, C)))
        w.add_tensor(p + "ffn_up.bias", r(Fv))
        w.add_tensor(p + "ffn_down.weight", f16(r(C, Fv)))
        w.add_tensor(p + "ffn_down.bias", r(C))
    w.add_tensor("mm.0.weight", f16(r(E, C)))
    w.add_tensor("mm.0.bias", r(E))
    w.add_tensor("mm.2.weight", f16(r(E, E)))
    w.add_tensor("mm.2.bias", r(E))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make(shape: str, outdir: str, outtype: str = "f16", seed: int = 0):
    """Writes the pair (if not there yet) and returns (text_path, mmproj_path)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (valid: {', '.join(SHAPES)})")
    os.makedirs(outdir, exist_ok=True)
    text = os.path.join(outdir, f"{shape}-{outtype}.gguf")
    mm = os.path.join(outdir, f"{shape}-mmproj-f16.gguf")
    if not os.path.exists(text):
        write_text(text + ".tmp", SHAPES[shape], outtype, seed)
        os.replace(text + ".tmp", text)
    if not os.path.exists(mm):
        write_mmproj(mm + ".tmp", SHAPES[shape], seed)
        os.replace(mm + ".tmp", mm)
    return text, mm


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=list(SHAPES))
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--outtype", default="f16", choices=OUTTYPES)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for p in make(a.shape, a.outdir, a.outtype, a.seed):
        print(p)


if __name__ == "__main__":
    sys.exit(main())
