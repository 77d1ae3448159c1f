"""Tiny random-weight LLaVA-NeXT (1.6) reference models, made in-process (never downloaded).

- `make_tiny_llava_next(dir, spm_model, ...)`: a `LlavaNextForConditionalGeneration` shaped like
  llava-v1.6-mistral-7b-hf scaled down: a CLIP tower with a class token (48 px tiles of 8 px patches:
  6 x 6 = 36 patch tokens per tile, 3 layers, `vision_feature_layer=-2`, select strategy "default"),
  the linear-GELU-linear projector, the learned `image_newline`, a Mistral text model (2 layers, GQA,
  untied output, no sliding window as Mistral-7B-Instruct-v0.2), the checkpoint's grid pinpoints
  scaled from 336 to 48 px ([[48, 96], [96, 48], [96, 96], [144, 48], [48, 144]], HF's (height, width)
  pairs), saved with `save_pretrained` together with the tokenizer (the SentencePiece model plus an
  added `<image>`, llava-1.6-mistral-hf's chat template) and the processor files
  (LlavaNextImageProcessor and LlavaNextProcessor settings).
- `load_processor(dir)`: the real LlavaNextProcessor over LlavaNextImageProcessorPil (HF's PIL backend).
- References: `hf_pixel_values`, `hf_prompt_ids`, `hf_image_features` (packed: base, unpadded rows
  each followed by the newline), `hf_logits`, `hf_attentions`, `hf_greedy`.

The conversion is llama.cpp's own legacy route (tools/llamacpp_fixtures.py `convert_llava_next`).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hf_fixtures import randomize_
from hf_llava_fixtures import IMAGE_TOKEN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, save_llava_tokenizer
from hf_vlm_common import eager, fix_layernorm_biases_, fix_patch_embedding_

TILE = 48
PATCH = 8
SIDE = TILE // PATCH  # 6 x 6 patch tokens per tile
PINPOINTS = [[48, 96], [96, 48], [96, 96], [144, 48], [48, 144]]  # llava-1.6's, 336 -> 48 px

# llava-v1.6-mistral-7b-hf's chat_template.json (the revision with "</s> " after an answer)
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + "
    "message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + "
    "message['content'][0]['text'] + '</s> '}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}")

# llava-v1.6-vicuna-7b-hf's chat_template.json (llava-1.5-hf's): "USER: " + images + texts + " " per user
# message, a system message's text as is, the generation prompt "ASSISTANT:"
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=TILE,
              patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=64)
TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=2048, sliding_window=None,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None)


def save_llava_next_processor(out_dir: str, pinpoints=PINPOINTS) -> None:
    """preprocessor_config.json (LlavaNextImageProcessor, llava-v1.6-hf's values scaled to TILE) and
    processor_config.json (LlavaNextProcessor)."""
    pre = {"image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
           "aspect_ratio_setting": "anyres", "do_resize": True, "size": {"shortest_edge": TILE}, "resample": 3,
           "do_center_crop": True, "crop_size": {"height": TILE, "width": TILE}, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": OPENAI_CLIP_MEAN,
           "image_std": OPENAI_CLIP_STD, "do_convert_rgb": True, "do_pad": True,
           "image_grid_pinpoints": pinpoints}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    proc = {"processor_class": "LlavaNextProcessor", "patch_size": PATCH, "image_token": IMAGE_TOKEN,
            "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    with open(os.path.join(out_dir, "processor_config.json"), "w") as f:
        json.dump(proc, f, indent=1)


def _set_chat_template(out_dir: str, template: str) -> None:
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["chat_template"] = template
    cfg["processor_class"] = "LlavaNextProcessor"
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "chat_template.json"), "w") as f:
        json.dump({"chat_template": template}, f, indent=1)


def make_tiny_llava_next(out_dir: str, spm_model: str, *, seed: int = 0, std: float = 0.5,
                         logit_scale: float = 3.0, text: Optional[Dict] = None, vision: Optional[Dict] = None,
                         pinpoints=PINPOINTS, chat_template: str = MISTRAL_CHAT_TEMPLATE):
    """Save a random-weight LlavaNextForConditionalGeneration (Mistral text model) with tokenizer and
    processor files in `out_dir`; returns the model (eval, float32, eager attention)."""
    import sentencepiece as spm
    import torch
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig

    n_sp = spm.SentencePieceProcessor(model_file=spm_model).get_piece_size()
    image_token_id = n_sp
    t = MistralConfig(vocab_size=n_sp + 1, **dict(TEXT, **(text or {})))
    t.rope_parameters = {"rope_type": "default", "rope_theta": 1e6}
    v = CLIPVisionConfig(**dict(VISION, **(vision or {})))
    cfg = LlavaNextConfig(vision_config=v, text_config=t, image_grid_pinpoints=[list(p) for p in pinpoints],
                          image_token_index=image_token_id, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", projector_hidden_act="gelu",
                          multimodal_projector_bias=True, tie_word_embeddings=False)
    cfg.image_token_id = image_token_id
    torch.manual_seed(seed)
    model = eager(LlavaNextForConditionalGeneration(cfg).eval())
    randomize_(model, seed, std)
    g = torch.Generator().manual_seed(seed + 7919)
    fix_patch_embedding_(model, g, std)
    fix_layernorm_biases_(model, g)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
        model.model.image_newline.copy_(torch.randn(model.model.image_newline.shape, generator=g) * 0.5)
    model.save_pretrained(out_dir)
    save_llava_tokenizer(out_dir, spm_model, image_token_id)
    _set_chat_template(out_dir, chat_template)
    save_llava_next_processor(out_dir, pinpoints)
    return model


def load_llava_next(hf_dir):
    """The saved tiny LLaVA-NeXT back from `hf_dir` (float32, eval, eager attention)."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                              attn_implementation="eager")
    return model.eval()


def image_processor(hf_dir):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil.from_pretrained(str(hf_dir))


def load_processor(hf_dir):
    """LlavaNextProcessor from the saved files over the PIL image processor (not the torchvision one)."""
    from transformers import AutoTokenizer, LlavaNextProcessor

    hf_dir = str(hf_dir)
    with open(os.path.join(hf_dir, "processor_config.json")) as f:
        pc = json.load(f)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    return LlavaNextProcessor(image_processor=image_processor(hf_dir), tokenizer=tok, patch_size=pc["patch_size"],
                              vision_feature_select_strategy=pc["vision_feature_select_strategy"],
                              num_additional_image_tokens=pc["num_additional_image_tokens"],
                              image_token=IMAGE_TOKEN, chat_template=tok.chat_template)


def hf_pixel_values(hf_dir_or_proc, pil_image) -> Tuple[np.ndarray, Tuple[int, int]]:
    """HF's preprocessing of one image: (pixel_values float32 [1 + rows*cols, 3, TILE, TILE] — the
    base image first, then the tiles row-major —, image_size (height, width))."""
    ip = hf_dir_or_proc if hasattr(hf_dir_or_proc, "preprocess") else image_processor(hf_dir_or_proc)
    out = ip(images=[pil_image], return_tensors="np")
    return np.ascontiguousarray(out["pixel_values"][0], dtype=np.float32), tuple(int(x) for x in out["image_sizes"][0])


def hf_prompt_ids(processor, text: str, images: Sequence = ()) -> Tuple[List[int], Optional[np.ndarray],
                                                                         Optional[np.ndarray]]:
    """The real LlavaNextProcessor on one prompt (`text` with one `<image>` per image): each `<image>`
    expanded to the image's count, then tokenized (BOS added). Returns (ids, pixel_values [n_images,
    max_crops, 3, TILE, TILE] or None, image_sizes [n_images, 2] or None)."""
    kw = {"images": list(images)} if images else {}
    out = processor(text=[text], return_tensors="np", **kw)
    ids = [int(i) for i in out["input_ids"][0]]
    if not images:
        return ids, None, None
    return ids, np.asarray(out["pixel_values"], dtype=np.float32), np.asarray(out["image_sizes"], dtype=np.int64)


def hf_image_features(model, pixel_values, image_sizes) -> List[np.ndarray]:
    """The packed features the LLM receives per image (`get_image_features`: CLIP per crop,
    hidden_states[-2] without CLS, projector, then pack_image_features: base, the unpadded feature
    rows each followed by image_newline). pixel_values [n_images, crops, 3, T, T]."""
    import torch

    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=torch.as_tensor(pixel_values),
                                             image_sizes=torch.as_tensor(image_sizes), return_dict=True)
    return [f.float().numpy() for f in out.pooler_output]


def _inputs(input_ids, pixel_values, image_sizes):
    import torch

    kw = {"input_ids": torch.as_tensor([int(i) for i in input_ids], dtype=torch.long).view(1, -1)}
    if pixel_values is not None:
        kw["pixel_values"] = torch.as_tensor(pixel_values)
        kw["image_sizes"] = torch.as_tensor(image_sizes)
    return kw


def hf_logits(model, input_ids, pixel_values=None, image_sizes=None) -> np.ndarray:
    """One full forward (images expanded in `input_ids` by the processor). Returns float32 [n, vocab]."""
    import torch

    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values, image_sizes), use_cache=False)
    return out.logits[0].float().numpy()


def hf_attentions(model, input_ids, pixel_values=None, image_sizes=None) -> Tuple[List[np.ndarray], np.ndarray]:
    """hf_logits' forward with output_attentions=True (eager): (per LLM layer float32 [n_heads, n, n],
    logits)."""
    import torch

    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values, image_sizes), use_cache=False, output_attentions=True)
    att = [a[0].float().numpy() for a in out.attentions]
    if len(att) != model.config.text_config.num_hidden_layers:
        raise RuntimeError(f"got {len(att)} attention maps")
    return att, out.logits[0].float().numpy()


def hf_past(model, input_ids, pixel_values=None, image_sizes=None):
    """The prompt's KV cache from HF: per layer (keys, values) tensors [1, n_kv, n, head_dim]."""
    import torch

    with torch.no_grad():
        past = model(**_inputs(input_ids, pixel_values, image_sizes), use_cache=True).past_key_values
    return [(layer.keys, layer.values) for layer in past.layers]


def hf_greedy(model, input_ids, pixel_values=None, image_sizes=None, n_new: int = 8,
              stop: Sequence[int] = ()) -> List[int]:
    """Greedy continuation the way HF's generate runs it: the prompt with the images, then one token at
    a time on the KV cache."""
    import torch

    new: List[int] = []
    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values, image_sizes), use_cache=True)
        for _ in range(n_new):
            nxt = int(torch.argmax(out.logits[0, -1]))
            new.append(nxt)
            if nxt in stop or len(new) == n_new:
                break
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return new
