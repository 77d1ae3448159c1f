"""A tiny random-weight InternVL 2.5 / 3 (transformers' InternVLForConditionalGeneration: InternViT +
pixel shuffle + LayerNorm/MLP projector + a Qwen2 language model), made in-process (never downloaded),
the original-layout checkpoint llama.cpp's converter reads, and the HF (transformers 5.23, torch CPU,
eager attention) references computed with it.

Model (float32, every parameter random):
- `train_internvl_spm(dir)`: a SentencePiece BPE with Qwen's control pieces (`<|endoftext|>` 0 = unk,
  `<|im_start|>` 1 = bos (never added), `<|im_end|>` 2 = eos) and InternVL's specials as user-defined
  symbols (`IVL_SPECIALS`: `<img>`, `</img>`, `<IMG_CONTEXT>`, `<quad>`, `</quad>`, `<ref>`, `</ref>`,
  `<box>`, `</box>`, `<video>`). A trained SPM is what llama.cpp's Qwen2 converter accepts (it tries
  SentencePiece first; MODELS.md §5.1); that converter writes no `tokenizer.ggml.add_space_prefix`, so
  llama.cpp (and this runtime) put a space before the text at the start and after every special
  token, as SentencePiece's dummy prefix does: the SPM is trained with one and the HF tokenizer is
  `legacy` (the same rule), so the ids agree. (The real checkpoints' Qwen2 byte-level BPE adds none.)
- `make_tiny_internvl(dir, spm, seed, vision=...)`: Qwen2 text (hidden 64, 2 layers, 4 heads / 2 KV
  heads, Q/K/V biases, rms eps 1e-6, RoPE base 1e6, untied output), InternViT hidden 32, 4 layers (the
  converter maps the projector's `mlp1.{0,1,3}` through the vision block map: 4 layers are needed
  for `mlp1.3`), 2 heads, MLP 64, 64 px tiles of 8 px patches (8 x 8 + the class token), layer scales,
  LayerNorm (or `norm_type rms_norm` + `use_qk_norm` + no QKV bias: InternViT-6B's kind), pixel shuffle
  0.5 -> 16 tokens per tile. Writes two folders:
    `dir/hf`: save_pretrained + tokenizer files (the InternVL tokenizer attributes the processor reads,
    the InternVL 2.5/3 chat template) + preprocessor_config.json (GotOcr2ImageProcessor: 64 px, 1..6
    tiles, bicubic, ImageNet mean/std, crop_to_patches);
    `dir/orig`: the same weights under OpenGVLab's original InternVLChatModel names and config
    (`vision_model.*` with fused `attn.qkv`, `mlp1.*`, `language_model.model.*`,
    `language_model.lm_head.*`; `llm_config` with `architectures ["Qwen2ForCausalLM"]`, `vision_config`
    with `architectures ["InternVisionModel"]`, `downsample_ratio`, `min/max_dynamic_patch`) and the
    original preprocessor_config.json (image_mean/std): what llama.cpp's convert_hf_to_gguf.py reads
    for the published InternVL GGUF files (its InternVisionModel class maps these names).
- `load_internvl(dir)`: the saved HF model back (float32, eager).

References:
- `hf_pixel_values(pil, proc)` -> float32 [n_tiles (+1 thumbnail), 3, 64, 64] (GotOcr2ImageProcessorPil
  with crop_to_patches, as InternVLProcessor calls it); `hf_grid(w, h, proc)` -> (cols, rows).
- `load_internvl_processor(dir)` / `hf_prompt_ids(processor, text, images)`: the real InternVLProcessor
  (each `<IMG_CONTEXT>` of the text -> `<img>` + `<IMG_CONTEXT>` x 16 per tile + `</img>`).
- `hf_image_features(model, pixel_values)` -> float32 [n * 16, 64].
- `hf_logits(model, ids, pixel_values)` -> float32 [n, vocab]; `hf_attentions(...)`; `hf_greedy(...)`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hf_fixtures import randomize_
from hf_vlm_common import (added_token, eager, fix_layernorm_biases_, n_pieces, piece_ids, to_pixel_tensor,
                           train_spm_specials, write_tokenizer_json)

IVL_CONTROL = {"unk": (0, "<|endoftext|>"), "bos": (1, "<|im_start|>"), "eos": (2, "<|im_end|>")}
IMG_START, IMG_END, IMG_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
IVL_SPECIALS = [IMG_START, IMG_END, IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", VIDEO]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TILE, PATCH, DOWNSAMPLE = 64, 8, 0.5
TILE_TOKENS = int((TILE // PATCH) ** 2 * DOWNSAMPLE ** 2)   # 16
# The tiny checkpoint's preprocessing (HF's GotOcr2ImageProcessor as InternVLProcessor calls it):
# tiles of 64 px, 1..6 of them (the real checkpoints: 448 px, 1..12), a thumbnail when more than one.
INTERNVL_PROC = {"tile": TILE, "min_patches": 1, "max_patches": 6, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

# InternVL 2.5 / 3's chat template (the original checkpoints' tokenizer_config.json, which llama.cpp's
# converter copies into the GGUF: the conversation template "internvl2_5"): ChatML with a default
# system message; the user writes "<image>\n" before the question, which the model's own code (and
# InternVLProcessor, for "<IMG_CONTEXT>") replaces by "<img>" + context tokens + "</img>".
INTERNVL_SYSTEM = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
                   "多模态大语言模型。")
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + INTERNVL_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# The transformers-format checkpoints' template (OpenGVLab/InternVL3-*-hf; transformers'
# convert_internvl_weights_to_hf.py): parts, each image as "<IMG_CONTEXT>\n" where it is, no default
# system message.
INTERNVL_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}")

# The tiny shapes.
INTERNVL_TEXT = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=2048,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6}, use_sliding_window=False,
                     tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"])
# MLP 64 != hidden 32; 4 layers (the converter maps mlp1.3 through the vision block map)
INTERNVL_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                       image_size=TILE, patch_size=PATCH, attention_bias=True, use_qk_norm=False,
                       norm_type="layer_norm", layer_norm_eps=1e-6, hidden_act="gelu", use_mean_pooling=True,
                       layer_scale_init_value=0.1)
# InternViT-6B's kind of tower (InternVL2.5-26B/38B/78B): RMSNorm, q/k RMSNorm, no QKV bias
INTERNVL_VISION_RMS = dict(INTERNVL_VISION, norm_type="rms_norm", use_qk_norm=True, attention_bias=False)


# --------------------------------------------------------------------------------------------------
# tokenizer


def train_internvl_spm(out_dir: str, vocab_size: int = 512, seed: int = 0) -> str:
    """SentencePiece BPE with Qwen's control pieces and InternVL's specials (ids 3..12); the corpus
    has role lines and newline runs. Returns the .model path."""
    return train_spm_specials(out_dir, control=IVL_CONTROL, user_defined=IVL_SPECIALS,
                              roles=["user", "assistant", "system"], vocab_size=vocab_size, seed=seed,
                              add_dummy_prefix=True)


def internvl_token_ids(spm_model: str) -> Dict[str, int]:
    """{text: id} for the control pieces and IVL_SPECIALS, plus `unk`, `bos`, `eos`, `img_start`,
    `img_end`, `context` (`<IMG_CONTEXT>`), `video` and `n_vocab`."""
    texts = [t for _, t in sorted(IVL_CONTROL.values())] + IVL_SPECIALS
    out = piece_ids(spm_model, texts)
    for k, (i, t) in IVL_CONTROL.items():
        if out[t] != i:
            raise ValueError(f"{spm_model}: {t} has id {out[t]}, expected {i}")
        out[k] = i
    out.update(img_start=out[IMG_START], img_end=out[IMG_END], context=out[IMG_CONTEXT], video=out[VIDEO])
    out["n_vocab"] = n_pieces(spm_model)
    return out


def save_internvl_tokenizer(out_dir: str, spm_model: str, chat_template: str = INTERNVL_CHAT_TEMPLATE) -> None:
    """tokenizer.model + tokenizer_config.json (+ special_tokens_map.json and tokenizer.json, which the
    converter needs for the eos/unk ids): Qwen-like (no BOS added, eos `<|im_end|>`, pad/unk
    `<|endoftext|>`, no prefix space), InternVL's token attributes (`start_image_token`,
    `end_image_token`, `context_image_token`, `video_token`, as the -hf checkpoints declare them), every
    control piece and special in `added_tokens_decoder` with special=true (CONTROL in the GGUF)."""
    ids = internvl_token_ids(spm_model)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(spm_model, os.path.join(out_dir, "tokenizer.model"))
    texts = [t for _, t in sorted(IVL_CONTROL.values())] + IVL_SPECIALS
    extra = {"start_image_token": IMG_START, "end_image_token": IMG_END, "context_image_token": IMG_CONTEXT,
             "video_token": VIDEO}
    cfg = {"tokenizer_class": "LlamaTokenizer", "legacy": True,
           "add_bos_token": False, "add_eos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "extra_special_tokens": extra,
           "clean_up_tokenization_spaces": False, "model_max_length": 2048, "processor_class": "InternVLProcessor",
           "added_tokens_decoder": {str(ids[t]): added_token(t) for t in texts}, "chat_template": chat_template}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1, ensure_ascii=False)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f, indent=1)
    write_tokenizer_json(out_dir)


def save_internvl_preprocessor(out_dir: str, proc: Dict = INTERNVL_PROC) -> None:
    """preprocessor_config.json (GotOcr2ImageProcessor as the -hf checkpoints ship it) and
    processor_config.json (image_seq_length)."""
    pre = {"image_processor_type": "GotOcr2ImageProcessor", "processor_class": "InternVLProcessor",
           "do_convert_rgb": True, "do_resize": True, "size": {"height": proc["tile"], "width": proc["tile"]},
           "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": list(proc["mean"]), "image_std": list(proc["std"]), "crop_to_patches": False,
           "min_patches": proc["min_patches"], "max_patches": proc["max_patches"]}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    with open(os.path.join(out_dir, "processor_config.json"), "w") as f:
        json.dump({"processor_class": "InternVLProcessor", "image_seq_length": TILE_TOKENS}, f, indent=1)


# --------------------------------------------------------------------------------------------------
# model


def _randomize(model, seed: int, std: float, logit_scale: float) -> None:
    """hf_fixtures.randomize_ plus: LayerNorm biases around 0, the Conv2d patch embedding with its real
    fan-in (3*P*P), layer scales around 0.6 (the residual branches matter), the class and position
    embeddings of the size of a patch embedding, the output matrix scaled by `logit_scale`."""
    import torch

    randomize_(model, seed, std)
    g = torch.Generator().manual_seed(seed + 7919)
    fix_layernorm_biases_(model, g)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("patch_embeddings.projection.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (std / p[0].numel() ** 0.5) * 2.0)
            elif ".lambda_" in name:
                p.copy_(0.6 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("embeddings.cls_token") or name.endswith("embeddings.position_embeddings"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        model.lm_head.weight.mul_(logit_scale)


def _original_key(k: str) -> Optional[str]:
    """A transformers-5 InternVL key -> OpenGVLab's InternVLChatModel key (None: a q/k/v projection,
    fused into attn.qkv by the caller)."""
    v = "model.vision_tower."
    if k.startswith("model.language_model."):
        return "language_model.model." + k[len("model.language_model."):]
    if k == "lm_head.weight":
        return "language_model.lm_head.weight"
    if k.startswith("model.multi_modal_projector."):
        rest = k[len("model.multi_modal_projector."):]
        for a, b in (("layer_norm.", "mlp1.0."), ("linear_1.", "mlp1.1."), ("linear_2.", "mlp1.3.")):
            if rest.startswith(a):
                return b + rest[len(a):]
    if k.startswith(v + "embeddings."):
        return {v + "embeddings.cls_token": "vision_model.embeddings.class_embedding",
                v + "embeddings.position_embeddings": "vision_model.embeddings.position_embedding",
                v + "embeddings.patch_embeddings.projection.weight": "vision_model.embeddings.patch_embedding.weight",
                v + "embeddings.patch_embeddings.projection.bias": "vision_model.embeddings.patch_embedding.bias"}[k]
    if k.startswith(v + "encoder.layer."):
        i, rest = k[len(v + "encoder.layer."):].split(".", 1)
        p = f"vision_model.encoder.layers.{i}."
        if rest.startswith(("attention.q_proj.", "attention.k_proj.", "attention.v_proj.")):
            return None
        for a, b in (("attention.projection_layer.", "attn.proj."), ("attention.q_norm.", "attn.q_norm."),
                     ("attention.k_norm.", "attn.k_norm."), ("layernorm_before.", "norm1."),
                     ("layernorm_after.", "norm2."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2.")):
            if rest.startswith(a):
                return p + b + rest[len(a):]
        if rest in ("lambda_1", "lambda_2"):
            return p + ("ls1" if rest == "lambda_1" else "ls2")
    raise KeyError(f"no original InternVL name for {k}")


def write_original_checkpoint(model, out_dir: str, tokenizer_dir: str, proc: Dict = INTERNVL_PROC) -> None:
    """The model's weights under OpenGVLab's InternVLChatModel names (q/k/v fused into attn.qkv, as
    the original InternAttention stores them) with its config.json, the tokenizer files of
    `tokenizer_dir` and the original preprocessor_config.json (what llama.cpp's converter reads for
    InternVL; module doc)."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    out: Dict[str, "torch.Tensor"] = {}
    for k, t in sd.items():
        nk = _original_key(k)
        if nk is not None:
            out[nk] = t
    cfg = model.config
    vc, tc = cfg.vision_config, cfg.text_config
    for i in range(vc.num_hidden_layers):
        a = f"model.vision_tower.encoder.layer.{i}.attention."
        p = f"vision_model.encoder.layers.{i}.attn.qkv."
        out[p + "weight"] = torch.cat([sd[a + n + "_proj.weight"] for n in "qkv"], 0)
        if vc.attention_bias:
            out[p + "bias"] = torch.cat([sd[a + n + "_proj.bias"] for n in "qkv"], 0)
    save_file(out, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    text = {k: v for k, v in tc.to_dict().items() if not k.startswith("_")}
    text.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    text["rope_theta"] = tc.rope_parameters["rope_theta"]
    vision = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
              "hidden_size": vc.hidden_size, "intermediate_size": vc.intermediate_size,
              "num_hidden_layers": vc.num_hidden_layers, "num_attention_heads": vc.num_attention_heads,
              "image_size": vc.image_size[0], "patch_size": vc.patch_size[0], "num_channels": 3,
              "qkv_bias": vc.attention_bias, "qk_normalization": vc.use_qk_norm, "norm_type": vc.norm_type,
              "layer_norm_eps": vc.layer_norm_eps, "hidden_act": vc.hidden_act, "drop_path_rate": 0.0,
              "initializer_factor": 1.0, "use_flash_attn": False}
    full = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "llm_config": text,
            "vision_config": vision, "downsample_ratio": cfg.downsample_ratio, "force_image_size": proc["tile"],
            "dynamic_image_size": True, "use_thumbnail": True, "min_dynamic_patch": proc["min_patches"],
            "max_dynamic_patch": proc["max_patches"], "ps_version": "v2", "select_layer": -1,
            "template": "internvl2_5", "torch_dtype": "float32"}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(full, f, indent=1)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump({"crop_size": proc["tile"], "do_center_crop": True, "do_normalize": True, "do_resize": True,
                   "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(proc["mean"]),
                   "image_std": list(proc["std"]), "resample": 3, "size": proc["tile"]}, f, indent=1)


def make_tiny_internvl(out_dir: str, spm_model: str, seed: int = 0, *, std: float = 0.4, logit_scale: float = 3.0,
                       text: Optional[Dict] = None, vision: Optional[Dict] = None, proc: Dict = INTERNVL_PROC):
    """A random-weight InternVLForConditionalGeneration (INTERNVL_TEXT / INTERNVL_VISION updated by
    `text` / `vision`) saved as `out_dir/hf` and `out_dir/orig` (module doc); returns the model."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    ids = internvl_token_ids(spm_model)
    t = dict(INTERNVL_TEXT, vocab_size=ids["n_vocab"], bos_token_id=None, eos_token_id=ids["eos"],
             pad_token_id=ids["unk"])
    t.update(text or {})
    cfg = InternVLConfig(text_config=t, vision_config=dict(INTERNVL_VISION, **(vision or {})),
                         image_token_id=ids["context"], image_seq_length=TILE_TOKENS, downsample_ratio=DOWNSAMPLE,
                         projector_hidden_act="gelu", vision_feature_layer=-1,
                         vision_feature_select_strategy="default", tie_word_embeddings=False)
    cfg.architectures = ["InternVLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = eager(InternVLForConditionalGeneration(cfg).eval())
    _randomize(model, seed, std, logit_scale)
    hf = os.path.join(out_dir, "hf")
    model.save_pretrained(hf)
    save_internvl_tokenizer(hf, spm_model, INTERNVL_CHAT_TEMPLATE)
    save_internvl_preprocessor(hf, proc)
    write_original_checkpoint(model, os.path.join(out_dir, "orig"), hf, proc)
    return model


def load_internvl(hf_dir):
    """The saved tiny InternVL back from `hf_dir` (its `hf` folder or the parent; float32, eval, eager)."""
    import torch
    from transformers import InternVLForConditionalGeneration

    d = str(hf_dir)
    if os.path.isdir(os.path.join(d, "hf")):
        d = os.path.join(d, "hf")
    return InternVLForConditionalGeneration.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


# --------------------------------------------------------------------------------------------------
# references


def image_processor(proc: Dict = INTERNVL_PROC):
    from transformers.image_utils import PILImageResampling
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": proc["tile"], "width": proc["tile"]},
                                    resample=PILImageResampling.BICUBIC, image_mean=list(proc["mean"]),
                                    image_std=list(proc["std"]), crop_to_patches=True,
                                    min_patches=proc["min_patches"], max_patches=proc["max_patches"])


def hf_grid(width: int, height: int, proc: Dict = INTERNVL_PROC) -> Tuple[int, int]:
    """HF's tile grid (columns, rows) for a width x height image (get_optimal_tiled_canvas)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    return get_optimal_tiled_canvas((height, width), (proc["tile"], proc["tile"]), proc["min_patches"],
                                    proc["max_patches"])


def hf_pixel_values(pil_image, proc: Dict = INTERNVL_PROC) -> np.ndarray:
    """HF's preprocessing of one image with the PIL backend as InternVLProcessor runs it
    (crop_to_patches): float32 [tiles (+1 thumbnail when more than one tile), 3, tile, tile], tiles
    row-major, the thumbnail last."""
    out = image_processor(proc)(images=[pil_image], return_tensors="np")
    return np.ascontiguousarray(out["pixel_values"], dtype=np.float32)


def load_internvl_processor(hf_dir):
    """InternVLProcessor from the saved files: the HF tokenizer (its InternVL token attributes),
    GotOcr2ImageProcessorPil, image_seq_length 16. The video processor (InternVLVideoProcessor needs
    torchvision, which this environment lacks) is a stand-in never called, its class check skipped by
    a subclass that changes nothing else."""
    from transformers import AutoTokenizer
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.processing_internvl import InternVLProcessor

    d = str(hf_dir)
    if os.path.isdir(os.path.join(d, "hf")):
        d = os.path.join(d, "hf")
    with open(os.path.join(d, "processor_config.json")) as f:
        pc = json.load(f)
    class _NoVideos:  # stands in for the video processor (never called: no videos are passed)
        model_input_names: List[str] = []

    class _InternVLProcessor(InternVLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    tok = AutoTokenizer.from_pretrained(d)
    ip = GotOcr2ImageProcessorPil.from_pretrained(d)
    return _InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=_NoVideos(),
                              image_seq_length=pc["image_seq_length"], chat_template=tok.chat_template)


def hf_prompt_ids(processor, text: str, images: Sequence = ()) -> Tuple[List[int], Optional[np.ndarray]]:
    """The real InternVLProcessor on one prompt (`text` with one `<IMG_CONTEXT>` per image): each
    expanded to `<img>` + `<IMG_CONTEXT>` x 16 x tiles + `</img>`, then tokenized. Returns (input_ids,
    pixel_values float32 [all images' tiles, 3, tile, tile] or None)."""
    kw = {"images": list(images)} if images else {}
    out = processor(text=[text], return_tensors="np", **kw)
    ids = [int(i) for i in out["input_ids"][0]]
    if not images:
        return ids, None
    return ids, np.ascontiguousarray(out["pixel_values"], dtype=np.float32)


def hf_image_features(model, pixel_values) -> np.ndarray:
    """The projector output the LLM receives (`get_image_features`: InternViT per tile, the class token
    dropped, pixel shuffle 0.5, LayerNorm + Linear + GELU + Linear). pixel_values [n, 3, tile, tile] (or
    a list, concatenated). Returns float32 [n * 16, text_hidden], tile by tile."""
    import torch

    pv = to_pixel_tensor(pixel_values)
    with torch.no_grad():
        out = model.model.get_image_features(pv, return_dict=True)
    return out.pooler_output.reshape(-1, out.pooler_output.shape[-1]).float().numpy()


def _inputs(input_ids, pixel_values):
    import torch

    kw = {"input_ids": torch.as_tensor([int(i) for i in input_ids], dtype=torch.long).view(1, -1)}
    if pixel_values is not None and not (isinstance(pixel_values, (list, tuple)) and not pixel_values):
        kw["pixel_values"] = to_pixel_tensor(pixel_values)
    return kw


def hf_logits(model, input_ids, pixel_values=None) -> np.ndarray:
    """One full forward over `input_ids` (images already expanded; every `<IMG_CONTEXT>` id takes the
    next feature row) with the tiles of all images [n, 3, tile, tile] in order; plain causal attention,
    positions 0..n-1. Returns float32 [n, vocab]."""
    import torch

    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values), use_cache=False)
    return out.logits[0].float().numpy()


def hf_attentions(model, input_ids, pixel_values=None) -> Tuple[List[np.ndarray], np.ndarray]:
    """hf_logits' forward with output_attentions=True (eager): (per LLM layer float32 [n_heads, n, n],
    logits [n, vocab])."""
    import torch

    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values), use_cache=False, output_attentions=True)
    att = [a[0].float().numpy() for a in out.attentions]
    if len(att) != model.config.text_config.num_hidden_layers:
        raise RuntimeError(f"got {len(att)} attention maps")
    return att, out.logits[0].float().numpy()


def hf_past(model, input_ids, pixel_values=None):
    """[(keys, values) per layer] of HF's cache after the prompt (keys after RoPE)."""
    import torch

    with torch.no_grad():
        past = model(**_inputs(input_ids, pixel_values), use_cache=True).past_key_values
    return [(layer.keys, layer.values) for layer in past.layers]


def hf_greedy(model, input_ids, pixel_values=None, n_new: int = 8, stop: Sequence[int] = ()) -> List[int]:
    """Greedy continuation as HF's generate runs it: the prompt with the images, then one token at a
    time on the KV cache."""
    import torch

    new: List[int] = []
    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values), use_cache=True)
        for _ in range(n_new):
            nxt = int(torch.argmax(out.logits[0, -1]))
            new.append(nxt)
            if nxt in stop or len(new) == n_new:
                break
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return new
