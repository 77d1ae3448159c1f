#!/usr/bin/env python3
"""Convert a Hugging Face checkpoint to GGUF files that follow llama.cpp's conventions.

    python tools/convert_hf_to_gguf.py HF_DIR --outfile model.gguf [--outtype f16]
    python tools/convert_hf_to_gguf.py LLAVA_DIR --outfile text.gguf --mmproj mmproj.gguf

Supported: `LlamaForCausalLM` (arch `llama`) and `LlavaForConditionalGeneration` (a LLaMA text
GGUF plus an mmproj GGUF: CLIP vision tower + `mlp` projector, arch `clip`, the layers up to the
feature layer with correct FFN names). Output types: f32, f16, bf16, q8_0, q4_0, q4_1,
q5_0, q5_1 (2-D weights; norms stay F32; a row length that is not a multiple of the block size
falls back to F16 as llama.cpp does).

What llama.cpp does and this converter does too (docs/formats.md): architecture `llama`,
its metadata keys and tensor names, the Q/K row permutation to interleaved RoPE order (Q with
n_head, K with n_head_kv), `general.file_type`, the tokenizer metadata (tools/gguf_vocab.py).
The converter is our own code on the `gguf` package; files it writes and files llama.cpp's
converter writes load the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OUTTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


def _gguf():
    import gguf

    return gguf


def file_type(outtype: str) -> int:
    F = _gguf().LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
            "q4_0": F.MOSTLY_Q4_0, "q4_1": F.MOSTLY_Q4_1, "q5_0": F.MOSTLY_Q5_0, "q5_1": F.MOSTLY_Q5_1}[outtype]


# -------------------------------------------------------------------------------------------------
# Reading a checkpoint
# -------------------------------------------------------------------------------------------------

def load_config(hf_dir: str) -> dict:
    with open(os.path.join(hf_dir, "config.json")) as f:
        return json.load(f)


def iter_tensors(hf_dir: str) -> Iterator[Tuple[str, np.ndarray]]:
    """(name, float32 numpy array) for every tensor of the checkpoint (safetensors, sharded or not;
    or pytorch_model.bin)."""
    import torch

    index = os.path.join(hf_dir, "model.safetensors.index.json")
    files = []
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    if files:
        from safetensors import safe_open

        for fn in files:
            with safe_open(os.path.join(hf_dir, fn), framework="pt") as st:
                for name in st.keys():
                    yield name, st.get_tensor(name).to(torch.float32).numpy()
        return
    binf = os.path.join(hf_dir, "pytorch_model.bin")
    if os.path.exists(binf):
        sd = torch.load(binf, map_location="cpu", weights_only=True)
        for name, t in sd.items():
            yield name, t.to(torch.float32).numpy()
        return
    raise FileNotFoundError(f"no model.safetensors(.index.json) or pytorch_model.bin in {hf_dir}")


# -------------------------------------------------------------------------------------------------
# Tensor conversion
# -------------------------------------------------------------------------------------------------

def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp's interleaved order, per head: GGUF row 2j = HF row j,
    GGUF row 2j+1 = HF row j + hd/2 (works for weights [rows, in] and biases [rows])."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_tensor(writer, name: str, data: np.ndarray, outtype: str) -> None:
    """Adds a float32 tensor in the output type: 1-D tensors (norms, biases) stay F32, 2-D+
    weights take the output type (F16 fallback when a row is not a whole number of blocks)."""
    gguf = _gguf()
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim < 2 or outtype == "f32":
        writer.add_tensor(name, data)
        return
    if outtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
        return
    qt = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
          "q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1,
          "q5_0": gguf.GGMLQuantizationType.Q5_0, "q5_1": gguf.GGMLQuantizationType.Q5_1}[outtype]
    block = gguf.GGML_QUANT_SIZES[qt][0]
    if data.shape[-1] % block != 0:
        writer.add_tensor(name, data.astype(np.float16))
        return
    writer.add_tensor(name, gguf.quants.quantize(data, qt), raw_dtype=qt)


# HF LLaMA tensor names (after the model prefix is stripped) -> GGUF names
_LLAMA_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_hparams(cfg: dict) -> dict:
    """The text config's hyperparameters (LlamaConfig, transformers 4 and 5 spellings)."""
    n_embd = cfg["hidden_size"]
    n_head = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    legacy_scaling = cfg.get("rope_scaling") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type") or legacy_scaling.get("rope_type") or legacy_scaling.get("type") or "default"
    factor = rope.get("factor", legacy_scaling.get("factor"))
    if rope_type not in ("default", "linear"):
        raise ValueError(f"rope scaling type {rope_type!r} is not supported by this converter (default, linear)")
    return {
        "n_embd": n_embd,
        "n_head": n_head,
        "n_head_kv": cfg.get("num_key_value_heads") or n_head,
        "n_layer": cfg["num_hidden_layers"],
        "n_ff": cfg["intermediate_size"],
        "n_ctx": cfg.get("max_position_embeddings", 4096),
        "head_dim": cfg.get("head_dim") or n_embd // n_head,
        "eps": cfg.get("rms_norm_eps", 1e-6),
        "theta": float(theta),
        "rope_linear": float(factor) if rope_type == "linear" and factor else None,
        "n_vocab": cfg["vocab_size"],
        "tied": bool(cfg.get("tie_word_embeddings", False)),
    }


def write_llama_metadata(w, hp: dict, name: str, outtype: str) -> None:
    gguf = _gguf()
    w.add_name(name)
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_freq_base(hp["theta"])
    if hp["head_dim"] != hp["n_embd"] // hp["n_head"]:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    if hp["rope_linear"]:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(hp["rope_linear"])
    w.add_vocab_size(hp["n_vocab"])
    w.add_file_type(file_type(outtype))
    if outtype.startswith("q"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_llama_tensors(w, tensors: Iterator[Tuple[str, np.ndarray]], hp: dict, outtype: str,
                        strip_prefix: Callable[[str], Optional[str]]) -> None:
    """The decoder's tensors. `strip_prefix` maps a checkpoint name to the name relative to the
    decoder (`embed_tokens.weight`, `layers.0....`, `norm.weight`, `lm_head.weight`) or None to skip."""
    seen = set()
    for full, t in tensors:
        name = strip_prefix(full)
        if name is None:
            continue
        if name == "embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            if hp["tied"]:
                continue
            out = "output.weight"
        elif name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            if rest.endswith("rotary_emb.inv_freq"):
                continue
            if rest not in _LLAMA_LAYER:
                raise ValueError(f"unexpected tensor {full!r}")
            if rest.startswith("self_attn.q_proj"):
                t = permute_qk(t, hp["n_head"])
            elif rest.startswith("self_attn.k_proj"):
                t = permute_qk(t, hp["n_head_kv"])
            out = f"blk.{idx}.{_LLAMA_LAYER[rest]}"
        else:
            raise ValueError(f"unexpected tensor {full!r}")
        add_tensor(w, out, t, outtype)
        seen.add(out)
    for req in ("token_embd.weight", "output_norm.weight"):
        if req not in seen:
            raise ValueError(f"the checkpoint has no tensor for {req}")


def has_tokenizer(hf_dir: str) -> bool:
    return any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.model", "tokenizer.json"))


def convert_llama(hf_dir: str, outfile: str, outtype: str = "f16", name: Optional[str] = None) -> str:
    gguf = _gguf()
    cfg = load_config(hf_dir)
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch != "LlamaForCausalLM":
        raise ValueError(f"{hf_dir}: architecture {arch!r} is not supported here (LlamaForCausalLM)")
    hp = llama_hparams(cfg)
    w = gguf.GGUFWriter(outfile, "llama")
    write_llama_metadata(w, hp, name or os.path.basename(os.path.normpath(hf_dir)), outtype)
    if has_tokenizer(hf_dir):
        from gguf_vocab import add_vocab

        add_vocab(w, hf_dir)
    write_llama_tensors(w, iter_tensors(hf_dir), hp, outtype,
                        lambda n: n[len("model."):] if n.startswith("model.") else (n if n == "lm_head.weight" else None))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return outfile


# -------------------------------------------------------------------------------------------------
# LLaVA: text GGUF + mmproj GGUF
# -------------------------------------------------------------------------------------------------

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def llava_part(name: str) -> Tuple[str, str]:
    """('text' | 'vision' | 'projector' | 'other', name inside that part) for the checkpoint name
    spellings of transformers 4 and 5."""
    for prefix in ("model.language_model.model.", "language_model.model.", "model.language_model."):
        if name.startswith(prefix):
            return "text", name[len(prefix):]
    if name in ("lm_head.weight", "language_model.lm_head.weight", "model.lm_head.weight"):
        return "text", "lm_head.weight"
    for prefix in ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.",
                   "vision_tower."):
        if name.startswith(prefix):
            return "vision", name[len(prefix):]
    for prefix in ("model.multi_modal_projector.", "multi_modal_projector."):
        if name.startswith(prefix):
            return "projector", name[len(prefix):]
    return "other", name


def feature_layer_index(cfg: dict, n_layers: int) -> int:
    """The HF hidden-state index LLaVA feeds to the projector (0 = embeddings after pre-LN)."""
    fl = cfg.get("vision_feature_layer", -2)
    if isinstance(fl, list):
        raise ValueError("several vision_feature_layer values are not supported by this converter")
    idx = fl if fl >= 0 else n_layers + 1 + fl
    if not 0 < idx <= n_layers:
        raise ValueError(f"vision_feature_layer {fl} is out of range for {n_layers} layers")
    if cfg.get("vision_feature_select_strategy", "default") != "default":
        raise ValueError("only vision_feature_select_strategy 'default' (class token dropped) is supported")
    return idx


def write_mmproj(hf_dir: str, cfg: dict, tensors: Dict[str, np.ndarray], projector: Dict[str, np.ndarray],
                 outfile: str, outtype: str, text_n_embd: int) -> str:
    gguf = _gguf()
    vc = cfg["vision_config"]
    n_layers = vc["num_hidden_layers"]
    keep = feature_layer_index(cfg, n_layers)  # layers 0..keep-1: the last one's output is the feature
    act = vc.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu", "silu"):
        raise ValueError(f"vision hidden_act {act!r} is not supported")
    if cfg.get("projector_hidden_act", "gelu") != "gelu":
        raise ValueError("only projector_hidden_act 'gelu' is supported")
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    for fn in ("preprocessor_config.json", "processor_config.json"):
        p = os.path.join(hf_dir, fn)
        if os.path.exists(p):
            with open(p) as f:
                pc = json.load(f)
            pc = pc.get("image_processor", pc)
            mean, std = pc.get("image_mean", mean), pc.get("image_std", std)
            break
    w = gguf.GGUFWriter(outfile, "clip")
    w.add_name(os.path.basename(os.path.normpath(hf_dir)) + "-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", vc["image_size"])
    w.add_uint32("clip.vision.patch_size", vc["patch_size"])
    w.add_uint32("clip.vision.embedding_length", vc["hidden_size"])
    w.add_uint32("clip.vision.feed_forward_length", vc["intermediate_size"])
    w.add_uint32("clip.vision.projection_dim", text_n_embd)
    w.add_uint32("clip.vision.attention.head_count", vc["num_attention_heads"])
    w.add_float32("clip.vision.attention.layer_norm_epsilon", vc.get("layer_norm_eps", 1e-5))
    w.add_uint32("clip.vision.block_count", keep)
    w.add_array("clip.vision.image_mean", [float(x) for x in mean])
    w.add_array("clip.vision.image_std", [float(x) for x in std])
    w.add_bool("clip.use_gelu", act == "gelu")
    w.add_bool("clip.use_silu", act == "silu")
    w.add_file_type(file_type(outtype))
    if outtype.startswith("q"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    layer = {"layer_norm1.weight": "ln1.weight", "layer_norm1.bias": "ln1.bias",
             "layer_norm2.weight": "ln2.weight", "layer_norm2.bias": "ln2.bias",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
             "self_attn.out_proj.weight": "attn_out.weight", "self_attn.out_proj.bias": "attn_out.bias",
             "mlp.fc1.weight": "ffn_up.weight", "mlp.fc1.bias": "ffn_up.bias",
             "mlp.fc2.weight": "ffn_down.weight", "mlp.fc2.bias": "ffn_down.bias"}
    for name, t in tensors.items():
        if name == "embeddings.patch_embedding.weight":
            # the conv kernel [C, 3, P, P]; quantized types cannot hold its 14-wide rows: F16 at most
            w.add_tensor("v.patch_embd.weight", t.astype(np.float32 if outtype == "f32" else np.float16))
        elif name == "embeddings.patch_embedding.bias":
            w.add_tensor("v.patch_embd.bias", t)
        elif name == "embeddings.class_embedding":
            w.add_tensor("v.class_embd", t)
        elif name == "embeddings.position_embedding.weight":
            w.add_tensor("v.position_embd.weight", t)
        elif name.startswith("pre_layrnorm."):
            w.add_tensor("v.pre_ln." + name.split(".", 1)[1], t)
        elif name.startswith("post_layernorm.") or name.endswith("position_ids"):
            continue  # LLaVA's features come before the post-LN
        elif name.startswith("encoder.layers."):
            _, _, idx, rest = name.split(".", 3)
            if int(idx) >= keep:
                continue
            if rest not in layer:
                raise ValueError(f"unexpected vision tensor {name!r}")
            add_tensor(w, f"v.blk.{idx}.{layer[rest]}", t, outtype)
        else:
            raise ValueError(f"unexpected vision tensor {name!r}")
    for name, t in projector.items():
        out = {"linear_1.weight": "mm.0.weight", "linear_1.bias": "mm.0.bias",
               "linear_2.weight": "mm.2.weight", "linear_2.bias": "mm.2.bias"}.get(name)
        if out is None:
            raise ValueError(f"unexpected projector tensor {name!r}")
        add_tensor(w, out, t, outtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return outfile


def convert_llava(hf_dir: str, outfile: str, mmproj: str, outtype: str = "f16", name: Optional[str] = None) -> Tuple[str, str]:
    gguf = _gguf()
    cfg = load_config(hf_dir)
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch != "LlavaForConditionalGeneration":
        raise ValueError(f"{hf_dir}: architecture {arch!r} is not LlavaForConditionalGeneration")
    tc = cfg["text_config"]
    if tc.get("model_type", "llama") != "llama":
        raise ValueError(f"LLaVA text model type {tc.get('model_type')!r} is not supported (llama)")
    tc.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
    hp = llama_hparams(tc)
    parts: Dict[str, Dict[str, np.ndarray]] = {"text": {}, "vision": {}, "projector": {}}
    for n, t in iter_tensors(hf_dir):
        part, rel = llava_part(n)
        if part == "other":
            raise ValueError(f"unexpected tensor {n!r}")
        parts[part][rel] = t
    # text model
    w = gguf.GGUFWriter(outfile, "llama")
    write_llama_metadata(w, hp, name or os.path.basename(os.path.normpath(hf_dir)), outtype)
    if has_tokenizer(hf_dir):
        from gguf_vocab import add_vocab

        add_vocab(w, hf_dir)
    write_llama_tensors(w, iter(parts["text"].items()), hp, outtype, lambda n: n)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # vision tower + projector
    write_mmproj(hf_dir, cfg, parts["vision"], parts["projector"], mmproj, outtype, hp["n_embd"])
    return outfile, mmproj


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", help="Hugging Face model directory (config.json + safetensors + tokenizer)")
    ap.add_argument("--outfile", required=True, help="output GGUF path")
    ap.add_argument("--outtype", default="f16", choices=OUTTYPES)
    ap.add_argument("--mmproj", default=None, help="LLaVA: output path of the mmproj (vision) GGUF")
    ap.add_argument("--name", default=None, help="general.name (default: the directory name)")
    args = ap.parse_args(argv)
    arch = (load_config(args.hf_dir).get("architectures") or ["?"])[0]
    if arch == "LlavaForConditionalGeneration":
        if not args.mmproj:
            ap.error("a LLaVA checkpoint needs --mmproj PATH for the vision tower")
        convert_llava(args.hf_dir, args.outfile, args.mmproj, args.outtype, args.name)
        print(f"wrote {args.outfile} and {args.mmproj}")
    else:
        convert_llama(args.hf_dir, args.outfile, args.outtype, args.name)
        print(f"wrote {args.outfile}")


if __name__ == "__main__":
    main()
