"""Tiny random-weight LLaVA-1.5-style reference models, made in-process (never downloaded).

- `make_tiny_llava(dir, spm_model, ...)`: a `LlavaForConditionalGeneration` shaped like
  llava-1.5-hf (CLIP vision tower with a class token, `vision_feature_layer=-2`,
  `vision_feature_select_strategy="default"`, linear-GELU-linear projector, LLaMA text model with
  GQA), saved with `save_pretrained` together with the tokenizer (the SentencePiece model plus an
  added `<image>` token, as in llava-1.5-hf: tokenizer.model, tokenizer.json, tokenizer_config.json,
  added_tokens.json, chat_template.json) and the processor files (a CLIPImageProcessor config with
  the OpenAI CLIP mean/std, and a LlavaProcessor config).

Shared helpers (corpus, SentencePiece training, randomisation) live in `hf_fixtures.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, Optional

from hf_fixtures import randomize_

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_TOKEN = "<image>"
# llava-1.5-hf's chat template, shortened: "USER: <image>\n{q} ASSISTANT:" turns.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% elif item['type'] == 'image' %}<image>\n"
    "{% endif %}{% endfor %}{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def _special(content: str, special: bool = True) -> Dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def save_llava_tokenizer(out_dir: str, spm_model: str, image_token_id: int) -> None:
    """Tokenizer files like llava-1.5-hf's: the SentencePiece model (legacy LlamaTokenizer) plus
    `<image>` as an added special token right after the SentencePiece vocabulary."""
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(spm_model, os.path.join(out_dir, "tokenizer.model"))
    decoder = {"0": _special("<unk>"), "1": _special("<s>"), "2": _special("</s>"),
               str(image_token_id): _special(IMAGE_TOKEN)}
    cfg: Dict = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True,
                 "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                 "pad_token": None, "model_max_length": 4096, "added_tokens_decoder": decoder,
                 "image_token": IMAGE_TOKEN, "extra_special_tokens": {"image_token": IMAGE_TOKEN},
                 "processor_class": "LlavaProcessor", "chat_template": LLAVA_CHAT_TEMPLATE}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "image_token": IMAGE_TOKEN}, f, indent=1)
    with open(os.path.join(out_dir, "added_tokens.json"), "w") as f:
        json.dump({IMAGE_TOKEN: image_token_id}, f, indent=1)
    with open(os.path.join(out_dir, "chat_template.json"), "w") as f:
        json.dump({"chat_template": LLAVA_CHAT_TEMPLATE}, f, indent=1)
    # tokenizer.json as LlamaTokenizer (legacy SentencePiece semantics) builds it: transformers 5
    # maps model_type "llava" to its generic tokenizers backend, which without a tokenizer.json
    # would rebuild the tokenizer from tokenizer.model and lose the dummy "▁" prefix.
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        LlamaTokenizer.from_pretrained(out_dir).save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "tokenizer.json"), os.path.join(out_dir, "tokenizer.json"))


def save_llava_processor(out_dir: str, image_size: int, patch: int) -> None:
    """preprocessor_config.json (CLIPImageProcessor-equivalent, llava-1.5-hf values scaled to
    `image_size`) and processor_config.json (LlavaProcessor)."""
    pre = {"image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
           "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
           "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD, "do_convert_rgb": True}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    proc = {"processor_class": "LlavaProcessor", "patch_size": patch, "image_token": IMAGE_TOKEN,
            "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    with open(os.path.join(out_dir, "processor_config.json"), "w") as f:
        json.dump(proc, f, indent=1)


def llava_config(spm_model: str, *, image_size: int, patch: int, vision_hidden: int, vision_layers: int,
                 vision_heads: int, vision_intermediate: int, text_hidden: int, text_layers: int, heads: int,
                 kv_heads: int, intermediate: int, rope_theta: float = 10000.0, rms_eps: float = 1e-5,
                 max_positions: int = 512, vision_eps: float = 1e-5, vision_feature_layer: int = -2,
                 vocab_size: Optional[int] = None):
    """The LlavaConfig of a small llava-1.5-style model (CLIP ViT with class token, quick_gelu;
    `mlp` projector; LLaMA decoder with GQA, untied output). The text vocabulary is the
    SentencePiece vocabulary plus `<image>` (id = SentencePiece size); `vocab_size` may pad the
    embedding further (llava-1.5-hf pads 32002 tokens to 32064)."""
    import sentencepiece as spm
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    n_sp = spm.SentencePieceProcessor(model_file=spm_model).get_piece_size()
    image_token_id = n_sp
    n_vocab = vocab_size if vocab_size is not None else n_sp + 1
    if n_vocab < n_sp + 1:
        raise ValueError(f"vocab_size {n_vocab} < SentencePiece size + 1 ({n_sp + 1})")
    if image_size % patch:
        raise ValueError("image_size must be a multiple of patch")
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=vision_intermediate,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                              image_size=image_size, patch_size=patch, num_channels=3,
                              hidden_act="quick_gelu", layer_norm_eps=vision_eps,
                              projection_dim=text_hidden)
    text = LlamaConfig(vocab_size=n_vocab, hidden_size=text_hidden, intermediate_size=intermediate,
                       num_hidden_layers=text_layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                       rms_norm_eps=rms_eps, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       pad_token_id=None, head_dim=text_hidden // heads, attention_bias=False,
                       mlp_bias=False)
    text.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    n_patches = (image_size // patch) ** 2
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                      projector_hidden_act="gelu", vision_feature_layer=vision_feature_layer,
                      vision_feature_select_strategy="default", multimodal_projector_bias=True,
                      image_seq_length=n_patches, tie_word_embeddings=False)
    # transformers 4.x reads the image token id from `image_token_index`.
    cfg.image_token_index = image_token_id
    return cfg


def make_tiny_llava(out_dir: str, spm_model: str, *, image_size: int = 32, patch: int = 8,
                    vision_hidden: int = 32, vision_layers: int = 3, vision_heads: int = 4,
                    vision_intermediate: int = 64, text_hidden: int = 64, text_layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, intermediate: int = 96,
                    rope_theta: float = 10000.0, rms_eps: float = 1e-5, max_positions: int = 512,
                    vision_eps: float = 1e-5, seed: int = 0,
                    vocab_size: Optional[int] = None):
    """Save a random-weight LlavaForConditionalGeneration (llava-1.5-hf layout, `llava_config`) with
    its tokenizer and processor files in `out_dir`; returns the model (eval mode, float32)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    cfg = llava_config(spm_model, image_size=image_size, patch=patch, vision_hidden=vision_hidden,
                       vision_layers=vision_layers, vision_heads=vision_heads,
                       vision_intermediate=vision_intermediate, text_hidden=text_hidden,
                       text_layers=text_layers, heads=heads, kv_heads=kv_heads, intermediate=intermediate,
                       rope_theta=rope_theta, rms_eps=rms_eps, max_positions=max_positions,
                       vision_eps=vision_eps, vocab_size=vocab_size)
    image_token_id = cfg.image_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    randomize_(model, seed)
    model.save_pretrained(out_dir)
    save_llava_tokenizer(out_dir, spm_model, image_token_id)
    save_llava_processor(out_dir, image_size, patch)
    return model


# The tiny LLaVA most runtime tests use: 64 px images (64 visual tokens), 4 text layers, 4 query / 2
# KV heads (tests/fixture_configs.py LLAVA otherwise).
SMALL = {"image_size": 64, "text_layers": 4}


def small_llava_gguf(tmp_path_factory, spm_model, name: str, seed: int):
    """A tiny LLaVA made with HF (saved to <dir>/hf) and converted to an F32 GGUF pair by
    tools/convert_hf_to_gguf.py: returns (hf_dir, text.gguf, mmproj.gguf)."""
    import sys

    from fixture_configs import LLAVA

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    import convert_hf_to_gguf as conv

    d = tmp_path_factory.mktemp(name)
    make_tiny_llava(str(d / "hf"), spm_model, seed=seed, **dict(LLAVA, **SMALL))
    text, mm = conv.convert_llava(str(d / "hf"), str(d / "text.gguf"), str(d / "mmproj.gguf"), "f32")
    return str(d / "hf"), text, mm

