"""A tiny random-weight SmolVLM2 (SmolVLMForConditionalGeneration, the Idefics3 family), made
in-process (never downloaded), and the HF (transformers 5.23, torch CPU, eager attention) references
computed with it.

Model (the tiny recipe of MODELS.md Part I §5.2; float32, every parameter random):
- `train_smol_spm(dir)`: a SentencePiece BPE with SmolLM2's control pieces (`<|endoftext|>` 0 = unk,
  `<|im_start|>` 1 = bos, `<|im_end|>` 2 = eos) and SmolVLM's specials as user-defined symbols
  (`SMOL_SPECIALS`: `<global-img>` 3, `<row_R_col_C>` for R, C in 1..6 = 4..39 (row-major; the
  Idefics3/SmolVLM vocabulary has these 36), `<fake_token_around_image>` 40, `<image>` 41, `<end_of_utterance>` 42);
  no dummy prefix (SmolLM2's GPT-2 BPE adds no space; tokenizer_config add_prefix_space false, which
  the converter writes as add_space_prefix false). A trained SPM is what the converter accepts
  (MODELS.md §5.1). `smol_token_ids(spm)` gives the ids.
- `make_tiny_smolvlm(dir, spm, seed)`: llama text (hidden 64, 2 layers, 4 heads / 2 KV heads,
  rms eps 1e-5, `text_config.architectures ["VLlama3ForCausalLM"]` — without it the converter
  rejects the text model), SigLIP vision hidden 32, 2 layers, image 64, patch 8 (8x8 patches),
  pixel shuffle `scale_factor` 2 -> 16 tokens per tile, untied output. Saved with save_pretrained +
  tokenizer.model / tokenizer_config.json / tokenizer.json (a LlamaTokenizer-style SPM pipeline, no
  BOS added, SmolVLM2's chat template) + preprocessor_config.json
  (SmolVLMImageProcessor: size {longest_edge 128}, max_image_size {longest_edge 64} (L = 2 tiles > M,
  MODELS.md §4.7), LANCZOS, mean/std 0.5, splitting on) + processor_config.json (image_seq_len 16).
- `load_smolvlm(dir)`, `SMOLVLM_PROC` (the preprocessing settings; the mmproj carries the tile size
  (image_size), preproc_image_size = L, scale_factor and mean/std).

References:
- `hf_pixel_values(pil, proc)` -> (pixel_values float32 [n_tiles (+1 global), 3, 64, 64],
  pixel_attention_mask int64 [n, 64, 64], rows, cols) (SmolVLMImageProcessorPil).
- `image_prompt_string(rows, cols)`: the processor's own text for one image (get_image_prompt_string);
  `load_smol_processor(dir)` / `hf_prompt_ids(processor, text, images)`: the real SmolVLMProcessor.
- `hf_image_features(model, pixel_values)` -> float32 [n*16, 64] (tiles row-major, global last).
- `hf_logits(model, ids, pixel_values)` -> float32 [n, vocab]; `hf_attentions(...)` -> (per layer
  [heads, n, n], logits); `hf_greedy(...)`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hf_fixtures import randomize_
from hf_vlm_common import (added_token, eager, fix_layernorm_biases_, fix_patch_embedding_, n_pieces, piece_ids,
                           to_pixel_tensor, train_spm_specials, write_tokenizer_json)

SMOL_CONTROL = {"unk": (0, "<|endoftext|>"), "bos": (1, "<|im_start|>"), "eos": (2, "<|im_end|>")}
MAX_ROWS_COLS = 6   # the Idefics3/SmolVLM vocabulary has <row_r_col_c> for r, c <= 6
ROW_COL_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, MAX_ROWS_COLS + 1) for c in range(1, MAX_ROWS_COLS + 1)]
FAKE_TOKEN, IMAGE_TOKEN, GLOBAL_IMG, END_OF_UTTERANCE = ("<fake_token_around_image>", "<image>", "<global-img>",
                                                         "<end_of_utterance>")
SMOL_SPECIALS = [GLOBAL_IMG] + ROW_COL_TOKENS + [FAKE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE]

SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (64 // 8) ** 2 // SCALE_FACTOR ** 2   # 16 tokens per tile
# Preprocessing of the tiny checkpoint (MODELS.md §4.3): long side -> longest_edge (short side
# int(L / aspect) rounded up to even; also upscales), then both sides up to multiples of the tile
# (stretch), tiles row-major + the whole image resized to one tile (the global view, last); all
# resizes PIL LANCZOS; x1/255, (x - 0.5) / 0.5. An image whose refined size is one tile is not split
# (rows = cols = 0, one image): impossible here since longest_edge 128 = 2 tiles.
SMOLVLM_PROC = {"longest_edge": 128, "tile": 64, "patch": 8, "scale_factor": SCALE_FACTOR,
                "image_seq_len": IMAGE_SEQ_LEN, "resample": "lanczos", "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5]}

# SmolVLM2's chat template (the checkpoints' tokenizer_config.json; processing_smolvlm.py's
# DEFAULT_CHAT_TEMPLATE is the same plus a video branch): `<|im_start|>` once, then per message
# "{Role}:" (": " when the first part is text), parts (image -> `<image>`), `<end_of_utterance>\n`;
# generation prompt "Assistant:".
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

# The tiny shapes (MODELS.md §5.2).
SMOLVLM_TEXT = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                    max_position_embeddings=2048, rope_parameters={"rope_type": "default", "rope_theta": 1e5},
                    attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
                    architectures=["VLlama3ForCausalLM"])
# MLP 64 != hidden 32 (clip.cpp's up/down swap heuristic)
SMOLVLM_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=64, patch_size=8, num_channels=3, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


# --------------------------------------------------------------------------------------------------
# tokenizer


def train_smol_spm(out_dir: str, vocab_size: int = 640, seed: int = 0) -> str:
    """SentencePiece BPE with SmolVLM's control pieces and specials (module doc; ids 0..42); the
    corpus has "User"/"Assistant" role lines and newline runs. Returns the .model path."""
    return train_spm_specials(out_dir, control=SMOL_CONTROL, user_defined=SMOL_SPECIALS,
                              roles=["User", "Assistant"], vocab_size=vocab_size, seed=seed, add_dummy_prefix=False)


def smol_token_ids(spm_model: str) -> Dict[str, int]:
    """{text: id} for the control pieces and SMOL_SPECIALS, plus the short names `unk`, `bos`
    (`<|im_start|>`), `eos` (`<|im_end|>`), `fake`, `image`, `global_img`, `end_of_utterance`,
    `row_col` (a 6x6 nested list: row_col[r-1][c-1]) and `n_vocab`."""
    texts = [t for _, t in sorted(SMOL_CONTROL.values())] + SMOL_SPECIALS
    out = piece_ids(spm_model, texts)
    for k, (i, t) in SMOL_CONTROL.items():
        if out[t] != i:
            raise ValueError(f"{spm_model}: {t} has id {out[t]}, expected {i}")
        out[k] = i
    out.update(fake=out[FAKE_TOKEN], image=out[IMAGE_TOKEN], global_img=out[GLOBAL_IMG],
               end_of_utterance=out[END_OF_UTTERANCE])
    out["row_col"] = [[out[f"<row_{r}_col_{c}>"] for c in range(1, MAX_ROWS_COLS + 1)]
                      for r in range(1, MAX_ROWS_COLS + 1)]
    out["n_vocab"] = n_pieces(spm_model)
    return out


def save_smol_tokenizer(out_dir: str, spm_model: str, chat_template: str = SMOLVLM_CHAT_TEMPLATE) -> None:
    """tokenizer.model + tokenizer_config.json (+ special_tokens_map.json, and tokenizer.json so that
    the converter finds the unk id: hf_vlm_common.write_tokenizer_json), like SmolVLM2's: no BOS
    added (the chat template writes `<|im_start|>`), bos `<|im_start|>`, eos `<end_of_utterance>`, pad
    `<|im_end|>`, unk `<|endoftext|>`, no prefix space; the image token attributes the processor reads;
    every control piece and special in `added_tokens_decoder` with special=true (CONTROL in the GGUF)."""
    ids = smol_token_ids(spm_model)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(spm_model, os.path.join(out_dir, "tokenizer.model"))
    texts = [t for _, t in sorted(SMOL_CONTROL.values())] + SMOL_SPECIALS
    extra = {"fake_image_token": FAKE_TOKEN, "image_token": IMAGE_TOKEN, "global_image_token": GLOBAL_IMG,
             "end_of_utterance_token": END_OF_UTTERANCE}
    cfg = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_prefix_space": False,
           "add_bos_token": False, "add_eos_token": False, "bos_token": "<|im_start|>",
           "eos_token": END_OF_UTTERANCE, "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>",
           **extra, "extra_special_tokens": extra, "clean_up_tokenization_spaces": False,
           "model_max_length": 2048, "processor_class": "SmolVLMProcessor",
           "added_tokens_decoder": {str(ids[t]): added_token(t) for t in texts},
           "chat_template": chat_template}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<|im_start|>", "eos_token": END_OF_UTTERANCE, "pad_token": "<|im_end|>",
                   "unk_token": "<|endoftext|>", **extra}, f, indent=1)
    write_tokenizer_json(out_dir)


def save_smol_preprocessor(out_dir: str, proc: Dict = SMOLVLM_PROC) -> None:
    """preprocessor_config.json (SmolVLMImageProcessor fields; the converter reads image_mean/std and
    size.longest_edge -> clip.vision.preproc_image_size) and processor_config.json (image_seq_len)."""
    pre = {"image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
           "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": proc["longest_edge"]},
           "resample": 1, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": list(proc["mean"]), "image_std": list(proc["std"]), "do_image_splitting": True,
           "max_image_size": {"longest_edge": proc["tile"]}, "do_pad": True}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    with open(os.path.join(out_dir, "processor_config.json"), "w") as f:
        json.dump({"processor_class": "SmolVLMProcessor", "image_seq_len": proc["image_seq_len"]}, f, indent=1)


# --------------------------------------------------------------------------------------------------
# model


def _randomize(model, seed: int, std: float, logit_scale: float) -> None:
    """hf_fixtures.randomize_ (RMSNorm / LayerNorm gains around 1) plus: LayerNorm biases around 0,
    the Conv2d patch embedding with its real fan-in, the output matrix scaled by `logit_scale` so that
    the logits are peaked."""
    import torch

    randomize_(model, seed, std)
    g = torch.Generator().manual_seed(seed + 7919)
    fix_patch_embedding_(model, g, std)
    fix_layernorm_biases_(model, g)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)


def make_tiny_smolvlm(out_dir: str, spm_model: str, seed: int = 0, *, std: float = 0.4, logit_scale: float = 3.0,
                      text: Optional[Dict] = None, vision: Optional[Dict] = None):
    """Save a random-weight SmolVLMForConditionalGeneration (SMOLVLM_TEXT / SMOLVLM_VISION updated by
    `text` / `vision`; scale_factor 2; untied output) with tokenizer, chat template and processor
    files; returns the model."""
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    ids = smol_token_ids(spm_model)
    t = dict(SMOLVLM_TEXT, vocab_size=ids["n_vocab"], bos_token_id=ids["bos"], eos_token_id=ids["end_of_utterance"],
             pad_token_id=ids["eos"])
    t.update(text or {})
    cfg = SmolVLMConfig(text_config=t, vision_config=dict(SMOLVLM_VISION, **(vision or {})),
                        scale_factor=SCALE_FACTOR, image_token_id=ids["image"], tie_word_embeddings=False)
    cfg.architectures = ["SmolVLMForConditionalGeneration"]
    torch.manual_seed(seed)
    model = eager(SmolVLMForConditionalGeneration(cfg).eval())
    _randomize(model, seed, std, logit_scale)
    model.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        saved = json.load(f)
    if saved["text_config"].get("architectures") != ["VLlama3ForCausalLM"]:
        raise RuntimeError("text_config.architectures was not saved (llama.cpp's converter needs it)")
    save_smol_tokenizer(out_dir, spm_model)
    save_smol_preprocessor(out_dir)
    return model


def load_smolvlm(hf_dir):
    """The saved tiny SmolVLM back from `hf_dir` (float32, eval, eager attention)."""
    import torch
    from transformers import SmolVLMForConditionalGeneration

    model = SmolVLMForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                            attn_implementation="eager")
    return model.eval()


# --------------------------------------------------------------------------------------------------
# references


def image_processor(proc: Dict = SMOLVLM_PROC):
    from transformers.image_utils import PILImageResampling
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    return SmolVLMImageProcessorPil(size={"longest_edge": proc["longest_edge"]},
                                    max_image_size={"longest_edge": proc["tile"]}, resample=PILImageResampling.LANCZOS,
                                    image_mean=list(proc["mean"]), image_std=list(proc["std"]),
                                    do_image_splitting=True, do_pad=True)


def hf_pixel_values(pil_image, proc: Dict = SMOLVLM_PROC) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """HF's preprocessing of one image with the PIL backend (`SmolVLMImageProcessorPil`): returns
    (pixel_values float32 [rows*cols (+1 global) or 1, 3, tile, tile] — tiles row-major, the global
    view last —, pixel_attention_mask int64 [n, tile, tile] (all ones for one image), rows, cols);
    rows = cols = 0 when the image is not split (one image, no global view)."""
    out = image_processor(proc)(images=[[pil_image]], return_row_col_info=True, return_tensors="np")
    pv = np.ascontiguousarray(out["pixel_values"][0], dtype=np.float32)
    mask = np.ascontiguousarray(out["pixel_attention_mask"][0], dtype=np.int64)
    return pv, mask, int(out["rows"][0][0]), int(out["cols"][0][0])


def image_prompt_string(rows: int, cols: int, image_seq_len: int = IMAGE_SEQ_LEN) -> str:
    """The processor's own text for one image (processing_smolvlm.get_image_prompt_string): split:
    per row r, per column c `<fake_token_around_image><row_r_col_c>` + `<image>` x S, then "\\n" after
    each row; then "\\n<fake_token_around_image><global-img>" + `<image>` x S + `<fake_token_around_image>`.
    Unsplit (rows = cols = 0): `<fake_token_around_image><global-img>` + `<image>` x S +
    `<fake_token_around_image>`."""
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    return get_image_prompt_string(rows, cols, image_seq_len, fake_token_around_image=FAKE_TOKEN,
                                   image_token=IMAGE_TOKEN, global_image_token=GLOBAL_IMG)


def load_smol_processor(hf_dir):
    """SmolVLMProcessor from the saved files: the HF tokenizer, SmolVLMImageProcessorPil, image_seq_len
    16. Two stand-ins for what this environment lacks, neither used for images: `num2words` (only
    video prompts need it, but __init__ refuses to run without it) and the video processor
    (SmolVLMVideoProcessor needs torchvision; the processor's class check on it is skipped by a
    subclass that changes nothing else)."""
    from transformers import AutoTokenizer
    from transformers.models.smolvlm import processing_smolvlm
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    if processing_smolvlm.num2words is None:
        processing_smolvlm.num2words = lambda n, **kw: str(n)   # video intros only

    class _SmolVLMProcessor(processing_smolvlm.SmolVLMProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    hf_dir = str(hf_dir)
    with open(os.path.join(hf_dir, "processor_config.json")) as f:
        pc = json.load(f)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ip = SmolVLMImageProcessorPil.from_pretrained(hf_dir)
    return _SmolVLMProcessor(image_processor=ip, tokenizer=tok, video_processor=SmolVLMVideoProcessor(),
                             image_seq_len=pc["image_seq_len"], chat_template=tok.chat_template)


def hf_prompt_ids(processor, text: str, images: Sequence = (), *,
                  add_special_tokens: bool = False) -> Tuple[List[int], Optional[np.ndarray], Optional[np.ndarray]]:
    """The real SmolVLMProcessor on one prompt (`text` with one `<image>` per image, e.g. from the chat
    template): each `<image>` expanded by image_prompt_string(rows, cols), then tokenized.
    Returns (input_ids, pixel_values float32 [n, 3, tile, tile] (all images' tiles concatenated;
    padding images dropped) or None, pixel_attention_mask [n, tile, tile] or None)."""
    kw = {"images": [list(images)]} if images else {}
    out = processor(text=[text], add_special_tokens=add_special_tokens, return_tensors="np", **kw)
    ids = [int(i) for i in out["input_ids"][0]]
    if not images:
        return ids, None, None
    pv = np.ascontiguousarray(out["pixel_values"][0], dtype=np.float32)
    mask = np.ascontiguousarray(out["pixel_attention_mask"][0], dtype=np.int64)
    return ids, pv, mask


def _pv5(pixel_values, pixel_attention_mask=None):
    """[n, 3, H, W] (or a list, concatenated) -> ([1, n, 3, H, W], mask [1, n, H, W])."""
    import torch

    pv = to_pixel_tensor(pixel_values)
    if pixel_attention_mask is None:
        mask = torch.ones((pv.shape[0], pv.shape[2], pv.shape[3]), dtype=torch.long)
    elif isinstance(pixel_attention_mask, (list, tuple)):
        mask = torch.cat([torch.as_tensor(np.asarray(m), dtype=torch.long) for m in pixel_attention_mask], 0)
    else:
        mask = torch.as_tensor(np.asarray(pixel_attention_mask), dtype=torch.long)
    return pv.unsqueeze(0), mask.unsqueeze(0)


def hf_image_features(model, pixel_values, pixel_attention_mask=None) -> np.ndarray:
    """The connector output the LLM receives (`get_image_features`: SigLIP per tile -> post-LN ->
    pixel shuffle 2 -> Linear, no bias). pixel_values [n, 3, tile, tile] (or a list, concatenated).
    Returns float32 [n*16, text_hidden] in tile order (tiles row-major, global last; each tile's 4x4
    tokens row-major)."""
    import torch

    pv, mask = _pv5(pixel_values, pixel_attention_mask)
    with torch.no_grad():
        out = model.model.get_image_features(pv, pixel_attention_mask=mask, return_dict=True)
    return torch.cat(list(out.pooler_output), 0).float().numpy()


def _inputs(input_ids, pixel_values, pixel_attention_mask):
    import torch

    kw = {"input_ids": torch.as_tensor([int(i) for i in input_ids], dtype=torch.long).view(1, -1)}
    if pixel_values is not None and not (isinstance(pixel_values, (list, tuple)) and not pixel_values):
        kw["pixel_values"], kw["pixel_attention_mask"] = _pv5(pixel_values, pixel_attention_mask)
    return kw


def hf_logits(model, input_ids, pixel_values=None, pixel_attention_mask=None) -> np.ndarray:
    """One full forward over `input_ids` (images already expanded, e.g. by hf_prompt_ids; every
    `<image>` id takes the next feature row) with the tiles of all images [n, 3, tile, tile] in order.
    Plain causal attention, positions 0..n-1. Returns float32 [n, vocab]."""
    import torch

    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values, pixel_attention_mask), use_cache=False)
    return out.logits[0].float().numpy()


def hf_attentions(model, input_ids, pixel_values=None,
                  pixel_attention_mask=None) -> Tuple[List[np.ndarray], np.ndarray]:
    """The forward of hf_logits with output_attentions=True (eager): (per LLM layer float32
    [n_heads, n, n] causal softmax probabilities, logits [n, vocab])."""
    import torch

    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values, pixel_attention_mask), use_cache=False,
                    output_attentions=True)
    att = [a[0].float().numpy() for a in out.attentions]
    n_layers = model.config.text_config.num_hidden_layers
    if len(att) != n_layers:
        raise RuntimeError(f"got {len(att)} attention maps for {n_layers} LLM layers")
    return att, out.logits[0].float().numpy()


def hf_greedy(model, input_ids, pixel_values=None, pixel_attention_mask=None, n_new: int = 8,
              stop: Sequence[int] = ()) -> List[int]:
    """Greedy continuation (n_new tokens, or up to a `stop` id, included) the way HF's generate runs
    it: one forward over the prompt with the images, then one token at a time on the KV cache without
    pixel values (so a generated `<image>` id is an ordinary token embedding)."""
    import torch

    new: List[int] = []
    with torch.no_grad():
        out = model(**_inputs(input_ids, pixel_values, pixel_attention_mask), use_cache=True)
        for _ in range(n_new):
            nxt = int(torch.argmax(out.logits[0, -1]))
            new.append(nxt)
            if nxt in stop or len(new) == n_new:
                break
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return new
