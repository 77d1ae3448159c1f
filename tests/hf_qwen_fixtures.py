"""Tiny random-weight Qwen2-VL / Qwen2.5-VL / Qwen3-VL reference models, made in-process (never
downloaded), and the HF (transformers 5.23, torch CPU, eager attention) references computed with them.

Models (the tiny recipes of the family notes, MODELS.md Part I §5.2; all float32, every parameter random):
- `train_qwen_spm(dir)`: a small SentencePiece BPE (hf_fixtures.train_spm) whose user-defined symbols
  are the Qwen specials (`QWEN_SPECIALS`); `qwen_token_ids(spm)` gives their ids.
- `make_tiny_qwen2vl / make_tiny_qwen25vl / make_tiny_qwen3vl(dir, spm, seed)`: save_pretrained +
  tokenizer.model / tokenizer_config.json (ChatML template with `<|vision_start|><|image_pad|>
  <|vision_end|>`, specials marked special so llama.cpp's converter types them CONTROL, no BOS) +
  preprocessor_config.json (Qwen2VLImageProcessor fields). Returns the model (eval, float32, eager).
- `load_qwen(dir)`: the saved model back (float32, eager).
- `PROCESSOR[family]` (`QWEN2VL_PROC`, `QWEN25VL_PROC`, `QWEN3VL_PROC`): the preprocessing limits the
  tiny checkpoints use (min_pixels, max_pixels, patch, merge, temporal, mean, std), to hand to the
  runtime since the GGUF files carry only mean/std.

References:
- `hf_pixel_values(proc, pil_image)` -> (pixel_values [N, 3*T*P*P] float32, (t, h, w)) with the PIL backend.
- `hf_image_features(model, pixel_values, grid_thw)` -> (main [n_tokens, text_hidden], deepstack list).
- `expand_image_pads(ids, grids, image_token_id)`: each `<|image_pad|>` -> t*h*w/merge^2 copies.
- `hf_logits(model, ids, pixel_values_list, grid_thw_list)` -> (logits [n, vocab], positions [3, n], rope_delta).
- `hf_attentions(...)` -> per-layer attention probabilities [heads, n, n] (+ logits, positions).
- `hf_greedy(...)` -> greedy continuation (full forwards; positions recomputed by HF each step).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hf_fixtures import randomize_, train_spm

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Preprocessing limits of the tiny checkpoints (MODELS.md §5.2): 4..64 merged tokens per image.
QWEN2VL_PROC = {"min_pixels": 4 * 28 * 28, "max_pixels": 64 * 28 * 28, "patch": 14, "merge": 2, "temporal": 2,
                "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD}
QWEN25VL_PROC = dict(QWEN2VL_PROC)
QWEN3VL_PROC = {"min_pixels": 4 * 32 * 32, "max_pixels": 64 * 32 * 32, "patch": 16, "merge": 2, "temporal": 2,
                "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
PROCESSOR = {"qwen2vl": QWEN2VL_PROC, "qwen25vl": QWEN25VL_PROC, "qwen3vl": QWEN3VL_PROC}

# Qwen2-VL-Instruct's chat template (the same text is in the Qwen2.5-VL-Instruct checkpoints).
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Qwen3-VL-Instruct frames turns the same way but has no default system prompt (MODELS.md §2.7;
# tool calls and thinking branches of the real template left out).
QWEN3VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# The tiny shapes (MODELS.md §5.2). Text: 3 layers, 4 query / 2 KV heads, head_dim 16.
QWEN2VL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=2048,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
# depth >= 3: the converter maps merger.mlp.2 through the block map (§5.3); MLP 128 != embed_dim 32
QWEN2VL_VISION = dict(depth=3, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=4, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
QWEN25VL_TEXT = dict(QWEN2VL_TEXT)
# window 112 px = 4 merged tokens; full attention on blocks 1 and 3 (n_wa_pattern 2)
QWEN25VL_VISION = dict(depth=4, hidden_size=32, intermediate_size=80, num_heads=2, out_hidden_size=64,
                       hidden_act="silu", window_size=112, fullatt_block_indexes=[1, 3], patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
QWEN3VL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, max_position_embeddings=2048,
                    attention_bias=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [3, 3, 2],
                                     "mrope_interleaved": True})
# 16 position embeddings = a 4x4 table (interpolated to every image grid); taps after blocks 0 and 1
QWEN3VL_VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                      temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64, num_position_embeddings=16,
                      deepstack_visual_indexes=[0, 1], hidden_act="gelu_pytorch_tanh", in_channels=3)


# --------------------------------------------------------------------------------------------------
# tokenizer


def train_qwen_spm(out_dir: str, vocab_size: int = 512, seed: int = 0) -> str:
    """A SentencePiece BPE (LLaMA-like settings, unk/bos/eos = `<unk>`/`<s>`/`</s>` = 0/1/2) whose
    user-defined symbols are `QWEN_SPECIALS` (ids 3..9 in that order); returns the .model path."""
    return train_spm(out_dir, vocab_size=vocab_size, seed=seed, user_defined_symbols=QWEN_SPECIALS)


def qwen_token_ids(spm_model: str) -> Dict[str, int]:
    """{special text: id} for QWEN_SPECIALS, plus the short names `endoftext`, `im_start`, `im_end`,
    `vision_start`, `vision_end`, `image_pad`, `video_pad` and `n_vocab`."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_model)
    out: Dict[str, int] = {}
    for s in QWEN_SPECIALS:
        i = sp.piece_to_id(s)
        if sp.id_to_piece(i) != s:
            raise ValueError(f"{spm_model} lacks the special {s}")
        out[s] = i
        out[s[2:-2]] = i
    out["n_vocab"] = sp.get_piece_size()
    return out


def _added(content: str) -> Dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def save_qwen_tokenizer(out_dir: str, spm_model: str, chat_template: str) -> None:
    """tokenizer.model + tokenizer_config.json (+ special_tokens_map.json). Qwen-like: no BOS added,
    eos `<|im_end|>`, pad `<|endoftext|>`; the specials are listed in `added_tokens_decoder` with
    special=true (llama.cpp's converter then types them CONTROL, as in the real GGUF files)."""
    ids = qwen_token_ids(spm_model)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(spm_model, os.path.join(out_dir, "tokenizer.model"))
    cfg = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": False, "add_eos_token": False,
           "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>",
           "model_max_length": 2048, "errors": "replace",
           "added_tokens_decoder": {str(ids[s]): _added(s) for s in QWEN_SPECIALS},
           "chat_template": chat_template}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}, f, indent=1)


def save_qwen_preprocessor(out_dir: str, proc: Dict) -> None:
    """preprocessor_config.json with the Qwen2VLImageProcessor fields (the converter reads
    image_mean/image_std; HF's AutoImageProcessor reads the rest)."""
    pre = {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
           "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
           "do_normalize": True, "do_convert_rgb": True,
           "image_mean": list(proc["mean"]), "image_std": list(proc["std"]),
           "patch_size": proc["patch"], "merge_size": proc["merge"], "temporal_patch_size": proc["temporal"],
           "min_pixels": proc["min_pixels"], "max_pixels": proc["max_pixels"],
           "size": {"shortest_edge": proc["min_pixels"], "longest_edge": proc["max_pixels"]}}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)


# --------------------------------------------------------------------------------------------------
# models


def _randomize(model, seed: int, std: float, logit_scale: float) -> None:
    """hf_fixtures.randomize_ plus corrections: the Conv3d patch embedding gets its real fan-in
    (randomize_ takes the last dim, 14 or 16, which would blow the patch embeddings up); norm weights
    not named "norm" (Qwen2-VL's merger `ln_q`) get gains around 1 like the other norms; the output
    matrix (the embedding when tied) is scaled by `logit_scale` so that the logits are peaked
    (std ~2.5, median top-1 probability ~0.2 with 3; with 1 they are nearly flat, std ~0.8)."""
    import torch

    randomize_(model, seed, std)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)   # the shared matrix when tied
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("patch_embed.proj.weight"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (std / fan_in ** 0.5) * 2.0)
            elif p.ndim == 1 and ".ln_q." in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))


def _eager(model):
    try:
        model.set_attn_implementation("eager")
    except Exception:  # older API
        model.config._attn_implementation = "eager"
    return model


def _ids_for_config(spm_model: str) -> Tuple[Dict[str, int], Dict]:
    ids = qwen_token_ids(spm_model)
    top = {"image_token_id": ids["image_pad"], "video_token_id": ids["video_pad"],
           "vision_start_token_id": ids["vision_start"], "vision_end_token_id": ids["vision_end"]}
    return ids, top


def _text_cfg(base: Dict, ids: Dict[str, int], overrides: Optional[Dict]) -> Dict:
    t = dict(base, vocab_size=ids["n_vocab"], bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"],
             pad_token_id=ids["endoftext"])
    t.update(overrides or {})
    return t


def _finish(model, out_dir: str, spm_model: str, proc: Dict, chat_template: str):
    model.save_pretrained(out_dir)
    save_qwen_tokenizer(out_dir, spm_model, chat_template)
    save_qwen_preprocessor(out_dir, proc)
    return model


def make_tiny_qwen2vl(out_dir: str, spm_model: str, seed: int = 0, *, std: float = 0.4, logit_scale: float = 3.0,
                      text: Optional[Dict] = None, vision: Optional[Dict] = None):
    """Save a random-weight Qwen2VLForConditionalGeneration (QWEN2VL_TEXT / QWEN2VL_VISION, updated by
    `text` / `vision`; untied output) with tokenizer and preprocessor files; returns the model."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids, top = _ids_for_config(spm_model)
    cfg = Qwen2VLConfig(text_config=_text_cfg(QWEN2VL_TEXT, ids, text),
                        vision_config=dict(QWEN2VL_VISION, **(vision or {})), tie_word_embeddings=False, **top)
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = _eager(Qwen2VLForConditionalGeneration(cfg).eval())
    _randomize(model, seed, std, logit_scale)
    return _finish(model, out_dir, spm_model, QWEN2VL_PROC, QWEN2VL_CHAT_TEMPLATE)


def make_tiny_qwen25vl(out_dir: str, spm_model: str, seed: int = 0, *, std: float = 0.4, logit_scale: float = 3.0,
                       text: Optional[Dict] = None, vision: Optional[Dict] = None):
    """Save a random-weight Qwen2_5_VLForConditionalGeneration (QWEN25VL_TEXT / QWEN25VL_VISION: RMSNorm,
    SwiGLU, window attention with full attention on blocks 1 and 3; untied output); returns the model."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids, top = _ids_for_config(spm_model)
    cfg = Qwen2_5_VLConfig(text_config=_text_cfg(QWEN25VL_TEXT, ids, text),
                           vision_config=dict(QWEN25VL_VISION, **(vision or {})), tie_word_embeddings=False, **top)
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = _eager(Qwen2_5_VLForConditionalGeneration(cfg).eval())
    _randomize(model, seed, std, logit_scale)
    return _finish(model, out_dir, spm_model, QWEN25VL_PROC, QWEN2VL_CHAT_TEMPLATE)


def make_tiny_qwen3vl(out_dir: str, spm_model: str, seed: int = 0, *, std: float = 0.4, logit_scale: float = 3.0,
                      tie: bool = True, text: Optional[Dict] = None, vision: Optional[Dict] = None):
    """Save a random-weight Qwen3VLForConditionalGeneration (QWEN3VL_TEXT / QWEN3VL_VISION: q/k norms,
    head_dim 16, interleaved M-RoPE [3, 3, 2], learned 4x4 vision position table, DeepStack taps after
    vision blocks 0 and 1). Tied embeddings by default like Qwen3-VL-2B/4B (no `output` tensor in the
    GGUF); returns the model."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids, top = _ids_for_config(spm_model)
    t = _text_cfg(QWEN3VL_TEXT, ids, text)
    t["tie_word_embeddings"] = tie
    cfg = Qwen3VLConfig(text_config=t, vision_config=dict(QWEN3VL_VISION, **(vision or {})),
                        tie_word_embeddings=tie, **top)
    cfg.architectures = ["Qwen3VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = _eager(Qwen3VLForConditionalGeneration(cfg).eval())
    if tie and model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
        raise RuntimeError("tie_word_embeddings did not tie lm_head to the embedding")
    _randomize(model, seed, std, logit_scale)
    return _finish(model, out_dir, spm_model, QWEN3VL_PROC, QWEN3VL_CHAT_TEMPLATE)


def load_qwen(hf_dir):
    """A saved tiny Qwen VLM back from `hf_dir` (float32, eval, eager attention)."""
    import torch
    import transformers

    with open(os.path.join(str(hf_dir), "config.json")) as f:
        arch = json.load(f)["architectures"][0]
    cls = getattr(transformers, arch)
    model = cls.from_pretrained(str(hf_dir), dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def family_of(model_or_config) -> str:
    """"qwen2vl", "qwen25vl" or "qwen3vl"."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return {"qwen2_vl": "qwen2vl", "qwen2_5_vl": "qwen25vl", "qwen3_vl": "qwen3vl"}[cfg.model_type]


# --------------------------------------------------------------------------------------------------
# references


def hf_pixel_values(proc: Dict, pil_image) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """HF's preprocessing of one image with the PIL backend (`Qwen2VLImageProcessorPil`, the limits of
    `proc`, e.g. PROCESSOR["qwen3vl"]): smart_resize, bicubic stretch, rescale, normalise, patchify.
    Returns (pixel_values float32 [t*h*w, 3*temporal*patch*patch], (t, h, w)) in patch units."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": proc["min_pixels"], "longest_edge": proc["max_pixels"]},
                                  patch_size=proc["patch"], merge_size=proc["merge"],
                                  temporal_patch_size=proc["temporal"], image_mean=list(proc["mean"]),
                                  image_std=list(proc["std"]))
    out = ip(images=[pil_image], return_tensors="np")
    pv = np.ascontiguousarray(out["pixel_values"], dtype=np.float32)
    t, h, w = (int(x) for x in out["image_grid_thw"][0])
    return pv, (t, h, w)


def _grid_tensor(grid_thw):
    import torch

    g = torch.as_tensor(grid_thw, dtype=torch.long)
    return g.view(1, 3) if g.ndim == 1 else g


def _pixels_tensor(pixel_values):
    import torch

    if isinstance(pixel_values, (list, tuple)):
        return torch.cat([torch.as_tensor(p, dtype=torch.float32) for p in pixel_values], 0)
    return torch.as_tensor(pixel_values, dtype=torch.float32)


def n_image_tokens(grid_thw, merge: int = 2) -> int:
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // (merge * merge)


def hf_image_features(model, pixel_values, grid_thw) -> Tuple[np.ndarray, List[np.ndarray]]:
    """The vision tower + merger output as the LLM receives it, via `model.model.get_image_features`
    (5.23: a BaseModelOutputWithPooling whose `pooler_output` is a tuple split per image; Qwen3-VL's
    output adds `deepstack_features`, a list over taps of per-image tuples).
    pixel_values: one image's rows (or a list, concatenated); grid_thw: (t, h, w) or a list of them.
    Returns (main float32 [n_tokens, text_hidden] in merged raster order, images concatenated,
    deepstack: [float32 [n_tokens, text_hidden] per tap, in tap order]; [] for Qwen2/2.5-VL)."""
    import torch

    grid = _grid_tensor(grid_thw)
    with torch.no_grad():
        out = model.model.get_image_features(_pixels_tensor(pixel_values), grid, return_dict=True)
    main = torch.cat(list(out.pooler_output), 0).float().numpy()
    ds = getattr(out, "deepstack_features", None) or []
    deep = [torch.cat(list(per_image), 0).float().numpy() for per_image in ds]
    return main, deep


def expand_image_pads(ids: Sequence[int], grids: Sequence[Sequence[int]], image_token_id: int,
                      merge: int = 2) -> List[int]:
    """Replace the k-th `<|image_pad|>` of `ids` by t*h*w/merge^2 copies for grids[k] (what
    Qwen2VLProcessor does to the rendered prompt)."""
    out: List[int] = []
    k = 0
    for i in ids:
        if i == image_token_id:
            out.extend([image_token_id] * n_image_tokens(grids[k], merge))
            k += 1
        else:
            out.append(int(i))
    if k != len(grids):
        raise ValueError(f"{k} image pads for {len(grids)} images")
    return out


def _mm_inputs(model, input_ids, pixel_values_list, grid_thw_list):
    import torch

    ids = torch.as_tensor(list(input_ids), dtype=torch.long).view(1, -1)
    mm = (ids == model.config.image_token_id).int()
    kw = {"input_ids": ids, "mm_token_type_ids": mm}
    if pixel_values_list:
        kw["pixel_values"] = _pixels_tensor(list(pixel_values_list))
        kw["image_grid_thw"] = _grid_tensor([list(g) for g in grid_thw_list])
    return kw


def hf_positions(model, input_ids, grid_thw_list) -> Tuple[np.ndarray, int]:
    """M-RoPE positions HF uses for the sequence (`model.model.get_rope_index`, keyed on
    mm_token_type_ids = ids == image_token_id): (int64 [3, n] rows t/h/w, rope_delta) where
    decode positions = cache index + rope_delta on all three axes."""
    import torch

    ids = torch.as_tensor(list(input_ids), dtype=torch.long).view(1, -1)
    if not grid_thw_list:
        n = ids.shape[1]
        return np.tile(np.arange(n, dtype=np.int64), (3, 1)), 0
    mm = (ids == model.config.image_token_id).int()
    pos, delta = model.model.get_rope_index(ids, mm_token_type_ids=mm,
                                            image_grid_thw=_grid_tensor([list(g) for g in grid_thw_list]))
    return pos[:, 0, :].numpy().astype(np.int64), int(delta.reshape(-1)[0])


def hf_logits(model, input_ids, pixel_values_list=(), grid_thw_list=()) -> Tuple[np.ndarray, np.ndarray, int]:
    """One full forward over `input_ids` (image pads already expanded, e.g. by expand_image_pads;
    several images of different sizes: their rows concatenated in order, as HF's processor does).
    Returns (logits float32 [n, vocab], positions int64 [3, n], rope_delta) — the positions are the
    ones the forward used (HF recomputes them from the same mm_token_type_ids)."""
    import torch

    kw = _mm_inputs(model, input_ids, pixel_values_list, grid_thw_list)
    model.model.rope_deltas = None
    with torch.no_grad():
        out = model(**kw, use_cache=False)
    pos, delta = hf_positions(model, input_ids, grid_thw_list)
    return out.logits[0].float().numpy(), pos, delta


def hf_attentions(model, input_ids, pixel_values_list=(),
                  grid_thw_list=()) -> Tuple[List[np.ndarray], np.ndarray, np.ndarray]:
    """The forward of hf_logits with output_attentions=True (eager attention): returns
    (attentions: per LLM layer float32 [n_heads, n, n] softmax probabilities (causal, rows sum to 1),
    logits [n, vocab], positions [3, n])."""
    import torch

    kw = _mm_inputs(model, input_ids, pixel_values_list, grid_thw_list)
    model.model.rope_deltas = None
    with torch.no_grad():
        out = model(**kw, use_cache=False, output_attentions=True)
    att = [a[0].float().numpy() for a in out.attentions]
    n_layers = model.config.text_config.num_hidden_layers
    if len(att) != n_layers:
        raise RuntimeError(f"got {len(att)} attention maps for {n_layers} LLM layers")
    pos, _ = hf_positions(model, input_ids, grid_thw_list)
    return att, out.logits[0].float().numpy(), pos


def hf_greedy(model, input_ids, pixel_values_list=(), grid_thw_list=(), n_new: int = 8,
              stop: Sequence[int] = ()) -> List[int]:
    """Greedy continuation of `input_ids` (n_new tokens, or up to a `stop` id, included): full
    forwards each step (tiny models), so HF's own positions are used throughout."""
    ids = [int(i) for i in input_ids]
    new: List[int] = []
    for _ in range(n_new):
        logits, _, _ = hf_logits(model, ids, pixel_values_list, grid_thw_list)
        nxt = int(np.argmax(logits[-1]))
        new.append(nxt)
        ids.append(nxt)
        if nxt in stop:
            break
    return new
