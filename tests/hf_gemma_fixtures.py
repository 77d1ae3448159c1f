"""A tiny random-weight Gemma 3 VLM (Gemma3ForConditionalGeneration), made in-process (never
downloaded), and the HF (transformers 5.23, torch CPU, eager attention) references computed with it.

Model (the tiny recipe of MODELS.md Part I §5.2; float32, every parameter random):
- `train_gemma_spm(dir)`: a SentencePiece BPE with Gemma's layout of specials: control pieces
  `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, then the user-defined symbols `GEMMA_SPECIALS`
  (`<mask>` 4, `<start_of_turn>` 5, `<end_of_turn>` 6, `<start_of_image>` 7, `<end_of_image>` 8,
  `<image_soft_token>` 9); no dummy prefix (Gemma's SPM has none; llama.cpp's converter writes
  add_space_prefix false for gemma3). `gemma_token_ids(spm)` gives the ids.
- `make_tiny_gemma3(dir, spm, seed)`: text 6 layers (5 sliding + one global layer at index 5),
  hidden 64, 4 heads / 2 KV heads, head_dim 16 = query_pre_attn_scalar, sliding_window 8, RoPE
  theta 1e6 with linear x8 scaling on the global layer and theta 1e4 on the sliding ones, tied
  embeddings; SigLIP vision hidden 32, 2 layers, image 64, patch 8 (8x8 patches), avg-pooled 2x2 to
  `mm_tokens_per_image` 16. Saved with save_pretrained, the vision keys renamed from `vision_tower.*`
  to `vision_tower.vision_model.*` (the only layout the pinned converter maps, MODELS.md §3.7; HF
  still loads it), plus tokenizer.model / tokenizer_config.json / tokenizer.json (GemmaTokenizer, add
  BOS, Gemma 3's chat template), preprocessor_config.json (Gemma3ImageProcessor: 64x64 bilinear stretch, mean/std
  0.5, `image_seq_length` 16) and processor_config.json. Returns the model (eval, float32, eager).
- `load_gemma3(dir)`, `GEMMA3_PROC` (the preprocessing settings the runtime needs; the mmproj carries
  only image size, patch, mean/std and the pooling factor).

References:
- `hf_pixel_values(pil, proc)` -> float32 [1, 3, 64, 64] (Gemma3ImageProcessorPil).
- `hf_image_features(model, pixel_values)` -> float32 [n_images*16, 64] (projected soft tokens).
- `expand_image_prompt(text)`: the processor's text expansion of each `<start_of_image>`;
  `load_gemma_processor(dir)` / `hf_prompt_ids(processor, text, images)`: the real Gemma3Processor.
- `hf_logits(model, ids, pixel_values)` -> float32 [n, vocab] (token_type_ids = soft-token mask, so the
  soft tokens of one image attend to each other bidirectionally as in the real model; `bidirectional=
  False` gives the plain causal forward).
- `hf_attentions(model, ids, pixel_values)` -> (per layer float32 [heads, n, n], logits).
- `hf_greedy(...)`, `round_projection_to_f16(model)` (the GGUF stores mm.input_projection as F16).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hf_fixtures import randomize_
from hf_vlm_common import (added_token, eager, fix_layernorm_biases_, fix_patch_embedding_, n_pieces, piece_ids,
                           rename_safetensors_keys, to_pixel_tensor, train_spm_specials, write_tokenizer_json)

# Control pieces in Gemma's order (pad 0, eos 1, bos 2, unk 3).
GEMMA_CONTROL = {"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"), "unk": (3, "<unk>")}
# User-defined symbols, ids 4..9 in this order. `<mask>` is in Gemma's vocabulary (id 4) and HF's
# GemmaTokenizer defines it; without it HF would append it as a new token past the model's vocab.
GEMMA_SPECIALS = ["<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                  "<image_soft_token>"]
BOI, EOI, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"

MM_TOKENS_PER_IMAGE = 16
# Preprocessing of the tiny checkpoint (MODELS.md §3.5): stretch to size x size with PIL bilinear
# (aspect not kept), x1/255, (x - 0.5) / 0.5; image_seq_length soft tokens per image.
GEMMA3_PROC = {"size": 64, "patch": 8, "image_seq_length": MM_TOKENS_PER_IMAGE, "pool": 2, "resample": "bilinear",
               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

# Gemma 3's chat template (gemma-3-4b-it tokenizer_config.json): `{bos}`; a system message is
# prefixed to the first user turn with "\n\n"; turns `<start_of_turn>{user|model}\n ... <end_of_turn>\n`;
# image parts -> `<start_of_image>`; text parts trimmed; roles must alternate.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n")

# The tiny shapes (MODELS.md §5.2). Layer i is global iff (i+1) % 6 == 0: only layer 5 here.
GEMMA3_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                   rms_norm_eps=1e-6, max_position_embeddings=2048, hidden_activation="gelu_pytorch_tanh",
                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
# MLP 64 != hidden 32 (clip.cpp's up/down swap heuristic); 64/8 = 8x8 patches pooled 2x2 -> 4x4 = 16 tokens
GEMMA3_VISION = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, image_size=64, patch_size=8, num_channels=3, layer_norm_eps=1e-6,
                     hidden_act="gelu_pytorch_tanh", vision_use_head=False)


# --------------------------------------------------------------------------------------------------
# tokenizer


def train_gemma_spm(out_dir: str, vocab_size: int = 512, seed: int = 0) -> str:
    """SentencePiece BPE with Gemma's specials (see the module doc; ids 0..9); the corpus has
    "user"/"model" role lines and "\\n\\n" / "\\n\\n\\n" runs, which become single pieces as in Gemma's
    vocabulary. Returns the .model path."""
    return train_spm_specials(out_dir, control=GEMMA_CONTROL, user_defined=GEMMA_SPECIALS, roles=["user", "model"],
                              vocab_size=vocab_size, seed=seed, add_dummy_prefix=False)


def gemma_token_ids(spm_model: str) -> Dict[str, int]:
    """{text: id} for the control pieces and GEMMA_SPECIALS, plus the short names `pad`, `eos`, `bos`,
    `unk`, `mask`, `start_of_turn`, `end_of_turn`, `boi`, `eoi`, `image` and `n_vocab`."""
    texts = [t for _, t in sorted(GEMMA_CONTROL.values())] + GEMMA_SPECIALS
    out = piece_ids(spm_model, texts)
    for k, (i, t) in GEMMA_CONTROL.items():
        if out[t] != i:
            raise ValueError(f"{spm_model}: {t} has id {out[t]}, expected {i}")
    short = {"mask": "<mask>", "start_of_turn": "<start_of_turn>", "end_of_turn": "<end_of_turn>", "boi": BOI,
             "eoi": EOI, "image": IMAGE_TOKEN}
    for k, (_, t) in GEMMA_CONTROL.items():
        out[k] = out[t]
    for k, t in short.items():
        out[k] = out[t]
    out["n_vocab"] = n_pieces(spm_model)
    return out


def save_gemma_tokenizer(out_dir: str, spm_model: str, chat_template: str = GEMMA3_CHAT_TEMPLATE) -> None:
    """tokenizer.model + tokenizer_config.json (+ special_tokens_map.json, and tokenizer.json so that
    the converter finds the eos/unk ids: hf_vlm_common.write_tokenizer_json), like gemma-3-4b-it's:
    GemmaTokenizer, BOS added, eos `<eos>`, pad `<pad>`, the boi/eoi/image token attributes the
    processor reads; every control piece and special listed in `added_tokens_decoder` with
    special=true (llama.cpp's converter then types them CONTROL)."""
    ids = gemma_token_ids(spm_model)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(spm_model, os.path.join(out_dir, "tokenizer.model"))
    texts = [t for _, t in sorted(GEMMA_CONTROL.values())] + GEMMA_SPECIALS
    cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
           "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
           "mask_token": "<mask>", "boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN,
           "extra_special_tokens": {"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN},
           "spaces_between_special_tokens": False, "clean_up_tokenization_spaces": False,
           "model_max_length": 2048, "processor_class": "Gemma3Processor",
           "added_tokens_decoder": {str(ids[t]): added_token(t) for t in texts},
           "chat_template": chat_template}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN}, f, indent=1)
    write_tokenizer_json(out_dir)


def save_gemma_preprocessor(out_dir: str, proc: Dict = GEMMA3_PROC) -> None:
    """preprocessor_config.json (Gemma3ImageProcessor fields; the converter reads image_mean/std and
    image_seq_length: without it the pooling factor it derives would assume 256 tokens) and
    processor_config.json (Gemma3Processor's image_seq_length)."""
    pre = {"image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
           "do_resize": True, "size": {"height": proc["size"], "width": proc["size"]}, "resample": 2,
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
           "image_mean": list(proc["mean"]), "image_std": list(proc["std"]),
           "do_pan_and_scan": False, "image_seq_length": proc["image_seq_length"]}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    with open(os.path.join(out_dir, "processor_config.json"), "w") as f:
        json.dump({"processor_class": "Gemma3Processor", "image_seq_length": proc["image_seq_length"]}, f, indent=1)


# --------------------------------------------------------------------------------------------------
# model


def _randomize(model, seed: int, std: float, logit_scale: float) -> None:
    """hf_fixtures.randomize_ plus corrections: Gemma RMSNorm weights (text norms, q/k norms,
    mm_soft_emb_norm; output x (1 + w)) around 0 so that the gains are around 1; SigLIP LayerNorm
    biases around 0; the Conv2d patch embedding with its real fan-in; the projection matrix
    [vision_hidden, text_hidden] (used as x @ W) with fan-in vision_hidden; the final norm's gain
    (1 + w) scaled by `logit_scale` so that the logits are peaked (3: logit std ~2.5, median top-1
    probability ~0.2; the tied embedding itself is left alone)."""
    import torch

    randomize_(model, seed, std)
    g = torch.Generator().manual_seed(seed + 7919)
    fix_patch_embedding_(model, g, std)
    fix_layernorm_biases_(model, g)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("language_model." in name or "mm_soft_emb_norm" in name) and "norm" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("mm_input_projection_weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (std / p.shape[0] ** 0.5) * 2.0)
        # Tied embeddings: scaling the matrix would also scale the inputs (x sqrt(hidden)) until the
        # residual stream is mostly the input embedding and every position predicts its own token
        # (greedy repeats the last prompt token). The final norm's gain (1 + w) is scaled instead.
        fn = model.model.language_model.norm.weight
        fn.copy_((1.0 + fn) * logit_scale - 1.0)


def _vision_key(k: str) -> str:
    for pre in ("vision_tower.", "model.vision_tower."):
        if k.startswith(pre) and not k.startswith(pre + "vision_model."):
            return pre + "vision_model." + k[len(pre):]
    return k


def make_tiny_gemma3(out_dir: str, spm_model: str, seed: int = 0, *, std: float = 0.4, logit_scale: float = 3.0,
                     text: Optional[Dict] = None, vision: Optional[Dict] = None):
    """Save a random-weight Gemma3ForConditionalGeneration (GEMMA3_TEXT / GEMMA3_VISION updated by
    `text` / `vision`; mm_tokens_per_image 16; tied embeddings) with tokenizer, chat template and
    preprocessor files, vision keys renamed for llama.cpp's converter; returns the model."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    ids = gemma_token_ids(spm_model)
    t = dict(GEMMA3_TEXT, vocab_size=ids["n_vocab"], pad_token_id=ids["pad"], bos_token_id=ids["bos"],
             eos_token_id=[ids["eos"], ids["end_of_turn"]], tie_word_embeddings=True)
    t.update(text or {})
    cfg = Gemma3Config(text_config=t, vision_config=dict(GEMMA3_VISION, **(vision or {})),
                       mm_tokens_per_image=MM_TOKENS_PER_IMAGE, boi_token_index=ids["boi"],
                       eoi_token_index=ids["eoi"], image_token_index=ids["image"], tie_word_embeddings=True)
    cfg.architectures = ["Gemma3ForConditionalGeneration"]
    torch.manual_seed(seed)
    model = eager(Gemma3ForConditionalGeneration(cfg).eval())
    if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
        raise RuntimeError("tie_word_embeddings did not tie lm_head to the embedding")
    _randomize(model, seed, std, logit_scale)
    model.save_pretrained(out_dir)
    files = [f for f in os.listdir(out_dir) if f.endswith(".safetensors")]
    if not sum(rename_safetensors_keys(os.path.join(out_dir, f), _vision_key) for f in files):
        raise RuntimeError(f"no vision_tower.* keys to rename in {out_dir}")
    save_gemma_tokenizer(out_dir, spm_model)
    save_gemma_preprocessor(out_dir)
    return model


def load_gemma3(hf_dir, layer_types: Optional[Sequence[str]] = None):
    """The saved tiny Gemma 3 back from `hf_dir` (float32, eval, eager attention); `layer_types`
    (e.g. ["sliding_attention", "full_attention"] * 3) replaces the config's local/global pattern
    (the same weights under another layer pattern)."""
    import torch
    from transformers import AutoConfig, Gemma3ForConditionalGeneration

    kw = {}
    if layer_types is not None:
        cfg = AutoConfig.from_pretrained(str(hf_dir))
        cfg.text_config.layer_types = list(layer_types)
        kw["config"] = cfg
    model = Gemma3ForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                           attn_implementation="eager", **kw)
    if layer_types is not None and list(model.config.text_config.layer_types) != list(layer_types):
        raise RuntimeError("the layer pattern was not applied")
    return model.eval()


def round_projection_to_f16(model):
    """Round HF's `mm_input_projection_weight` to float16 values in place (kept float32): llama.cpp's
    converter always stores `mm.input_projection.weight` as F16 (even with --outtype f32), so parity
    with an f32 GGUF pair needs the same rounding on the HF side (MODELS.md §3.7, §7). Returns model."""
    import torch

    w = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        w.copy_(w.to(torch.float16).to(torch.float32))
    return model


# --------------------------------------------------------------------------------------------------
# references


def hf_pixel_values(pil_image, proc: Dict = GEMMA3_PROC) -> np.ndarray:
    """HF's preprocessing of one image with the PIL backend (`Gemma3ImageProcessorPil`, no pan and
    scan): RGB, stretch to size x size with PIL BILINEAR, x1/255, (x - mean) / std.
    Returns float32 [1, 3, size, size]."""
    from transformers.image_utils import PILImageResampling
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    ip = Gemma3ImageProcessorPil(size={"height": proc["size"], "width": proc["size"]},
                                 resample=PILImageResampling.BILINEAR, image_mean=list(proc["mean"]),
                                 image_std=list(proc["std"]), do_pan_and_scan=False)
    out = ip(images=[pil_image], return_tensors="np")
    return np.ascontiguousarray(out["pixel_values"], dtype=np.float32)


def hf_image_features(model, pixel_values) -> np.ndarray:
    """The soft tokens the LLM receives (`get_image_features`: SigLIP -> 2x2 average pool ->
    soft-embedding RMSNorm -> projection), not scaled by sqrt(hidden). pixel_values: [k, 3, S, S]
    (or a list, concatenated). Returns float32 [k*16, text_hidden], images in order, row-major."""
    import torch

    with torch.no_grad():
        out = model.model.get_image_features(to_pixel_tensor(pixel_values), return_dict=True)
    feats = out.pooler_output
    return feats.reshape(-1, feats.shape[-1]).float().numpy()


def full_image_sequence(n_tokens: int = MM_TOKENS_PER_IMAGE) -> str:
    """Gemma3Processor.full_image_sequence: "\\n\\n<start_of_image>" + n x "<image_soft_token>" +
    "<end_of_image>\\n\\n"."""
    return f"\n\n{BOI}{IMAGE_TOKEN * n_tokens}{EOI}\n\n"


def expand_image_prompt(text: str, n_tokens: int = MM_TOKENS_PER_IMAGE) -> str:
    """What Gemma3Processor does to the prompt text (no pan and scan): every `<start_of_image>` ->
    full_image_sequence(n_tokens). Tokenize the result with the HF tokenizer (add_special_tokens=False
    when the text came from the chat template, which renders `<bos>` itself)."""
    return text.replace(BOI, full_image_sequence(n_tokens))


def load_gemma_processor(hf_dir):
    """Gemma3Processor from the saved files: the HF tokenizer, Gemma3ImageProcessorPil (PIL backend;
    no torchvision here) and image_seq_length 16 from processor_config.json."""
    from transformers import AutoTokenizer, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    hf_dir = str(hf_dir)
    with open(os.path.join(hf_dir, "processor_config.json")) as f:
        pc = json.load(f)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ip = Gemma3ImageProcessorPil.from_pretrained(hf_dir)
    return Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=tok.chat_template,
                           image_seq_length=pc["image_seq_length"])


def hf_prompt_ids(processor, text: str, images: Sequence = (), *,
                  add_special_tokens: bool = False) -> Tuple[List[int], List[int], Optional[np.ndarray]]:
    """The real Gemma3Processor on one prompt (`text` with one `<start_of_image>` per image, e.g. from
    the chat template, which already starts with `<bos>`: hence add_special_tokens=False by default).
    Returns (input_ids, token_type_ids (1 = `<image_soft_token>`), pixel_values float32 [k, 3, S, S]
    or None)."""
    kw = {"images": list(images)} if images else {}
    out = processor(text=[text], add_special_tokens=add_special_tokens, return_tensors="np", **kw)
    ids = [int(i) for i in out["input_ids"][0]]
    tt = [int(i) for i in out["token_type_ids"][0]] if "token_type_ids" in out else \
        [int(i == processor.tokenizer.image_token_id) for i in ids]
    pv = np.ascontiguousarray(out["pixel_values"], dtype=np.float32) if images else None
    return ids, tt, pv


def _inputs(model, input_ids, pixel_values, bidirectional: bool):
    import torch

    ids = torch.as_tensor([int(i) for i in input_ids], dtype=torch.long).view(1, -1)
    kw = {"input_ids": ids}
    if pixel_values is not None and not (isinstance(pixel_values, (list, tuple)) and not pixel_values):
        kw["pixel_values"] = to_pixel_tensor(pixel_values)
    if bidirectional:
        kw["token_type_ids"] = (ids == model.config.image_token_id).long()
    return kw


def hf_logits(model, input_ids, pixel_values=None, *, bidirectional: bool = True) -> np.ndarray:
    """One full forward over `input_ids` (image soft tokens already expanded, e.g. by hf_prompt_ids or
    expand_image_prompt; pixel_values [k, 3, S, S] for the k images in order, or a list of them).
    token_type_ids = (ids == image_token_id) as Gemma3Processor returns, so each image's soft tokens
    attend to each other in both directions (bidirectional=False: plain causal, for comparison).
    Returns float32 [n, vocab]."""
    import torch

    with torch.no_grad():
        out = model(**_inputs(model, input_ids, pixel_values, bidirectional), use_cache=False)
    return out.logits[0].float().numpy()


def hf_attentions(model, input_ids, pixel_values=None, *,
                  bidirectional: bool = True) -> Tuple[List[np.ndarray], np.ndarray]:
    """The forward of hf_logits with output_attentions=True (eager): (per LLM layer float32
    [n_heads, n, n] softmax probabilities — sliding layers 0..4 zero outside the window of 8 keys,
    q - 8 < k; image soft tokens also see later soft tokens of the same image —, logits [n, vocab])."""
    import torch

    with torch.no_grad():
        out = model(**_inputs(model, input_ids, pixel_values, bidirectional), use_cache=False,
                    output_attentions=True)
    att = [a[0].float().numpy() for a in out.attentions]
    n_layers = model.config.text_config.num_hidden_layers
    if len(att) != n_layers:
        raise RuntimeError(f"got {len(att)} attention maps for {n_layers} LLM layers")
    return att, out.logits[0].float().numpy()


def hf_logits_masked(model, input_ids, pixel_values, n_prompt: int, kept) -> np.ndarray:
    """hf_logits, except that rows >= n_prompt (the continuation) do not see the prompt rows outside
    `kept[l]` in layer l ([layer] rows, or [layer][kv head] rows; None: nothing extra hidden in that
    layer): HF's own eager forward with an extra mask per layer (and per head), the reference for
    decoding over a compacted cache. Sliding-window layers keep HF's window mask on top."""
    import torch
    from transformers.models.gemma3 import modeling_gemma3 as mg

    n = len(input_ids)
    cfg = model.config.text_config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    extra = []
    for rows in kept:
        if rows is None:
            extra.append(None)
            continue
        per_head = [rows[h // (H // Hkv)] for h in range(H)] if np.ndim(rows[0]) == 1 else [rows] * H
        add = torch.zeros(1, H, n, n)
        for h, r in enumerate(per_head):
            hide = np.ones(n_prompt, bool)
            hide[np.asarray(r, dtype=np.int64)] = False
            add[0, h, n_prompt:, :n_prompt][:, torch.from_numpy(hide)] = float("-inf")
        extra.append(add)
    original = mg.eager_attention_forward

    def masked(module, query, key, value, attention_mask, *args, **kwargs):
        e = extra[module.layer_idx]
        if e is not None:
            attention_mask = attention_mask[:, :, :, :key.shape[-2]] + e
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    mg.eager_attention_forward = masked
    try:
        with torch.no_grad():
            out = model(**_inputs(model, input_ids, pixel_values, True), use_cache=False)
    finally:
        mg.eager_attention_forward = original
    return out.logits[0].float().numpy()


def hf_greedy(model, input_ids, pixel_values=None, n_new: int = 8, stop: Sequence[int] = ()) -> List[int]:
    """Greedy continuation (n_new tokens, or up to a `stop` id, included) the way HF's generate runs
    it: one forward over the prompt with the images and token_type_ids (bidirectional image blocks),
    then one token at a time on the KV cache (sliding layers keep their window) without pixel values
    or token_type_ids."""
    import torch

    new: List[int] = []
    with torch.no_grad():
        out = model(**_inputs(model, input_ids, pixel_values, True), use_cache=True)
        for _ in range(n_new):
            nxt = int(torch.argmax(out.logits[0, -1]))
            new.append(nxt)
            if nxt in stop or len(new) == n_new:
                break
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return new
