#!/usr/bin/env python3
"""Convert a Hugging Face checkpoint to GGUF files that follow llama.cpp's conventions.

    python tools/convert_hf_to_gguf.py HF_DIR --outfile model.gguf [--outtype f16]

Supported: `LlamaForCausalLM` (arch `llama`). Output types: f32, f16, bf16, q8_0, q4_0, q4_1,
q5_0, q5_1 (2-D weights; norms stay F32; a row length that is not a multiple of the block size
falls back to F16 as llama.cpp does).

What llama.cpp does and this converter does too (../shared/FORMATS.md §3): architecture `llama`,
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", help="Hugging Face model directory (config.json + safetensors + tokenizer)")
    ap.add_argument("--outfile", required=True, help="output GGUF path")
    ap.add_argument("--outtype", default="f16", choices=OUTTYPES)
    ap.add_argument("--name", default=None, help="general.name (default: the directory name)")
    args = ap.parse_args(argv)
    convert_llama(args.hf_dir, args.outfile, args.outtype, args.name)
    print(f"wrote {args.outfile}")


if __name__ == "__main__":
    main()
