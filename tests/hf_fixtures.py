"""Tiny Hugging Face reference models and tokenizers, made in-process (never downloaded).

- `corpus(n, seed)`: generated text with words, digits, punctuation, unicode, emoji, CJK, repeated
  spaces and newlines (tokenizer training and parity strings).
- `train_spm(dir, vocab_size)`: a SentencePiece BPE model trained with LLaMA-like settings
  (byte fallback, identity normalisation, dummy prefix, split digits; unk/bos/eos = 0/1/2).
- `save_llama_tokenizer(dir, spm_model)`: the HF tokenizer files for a LLaMA-style model.
- `make_tiny_llama(dir, **config)`: a random-weight `LlamaForCausalLM` with non-trivial weights
  (random norm gains and embeddings), saved with `save_pretrained` plus the tokenizer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from typing import Dict, List, Optional

WORDS = ["the", "cat", "sat", "on", "mat", "red", "blue", "green", "yellow", "star", "circle", "square",
         "triangle", "cross", "left", "right", "above", "below", "what", "colour", "is", "are", "how", "many",
         "hello", "world", "über", "naïve", "café", "日本語", "中文", "한국어", "😀", "🚀", "👍🏽", "привет",
         "mañana", "ß", "Ωmega", "x", "y", "z", "I", "you", "it's", "don't", "we'll", "they've"]
PUNCT = [".", ",", "!", "?", ":", ";", "-", "(", ")", "\"", "'", "/", "#", "$", "%", "&", "*", "+", "=", "<", ">"]


def corpus(n: int, seed: int = 0) -> List[str]:
    """n lines of generated text."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.65:
                w = rng.choice(WORDS)
                if rng.random() < 0.15:
                    w = w.capitalize()
                parts.append(w)
            elif r < 0.8:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 7))))
            else:
                parts.append(rng.choice(PUNCT))
        sep = rng.choice([" ", " ", " ", "  ", "\n", " \n", "\t", "   "])
        s = sep.join(parts) if rng.random() < 0.3 else " ".join(parts)
        if rng.random() < 0.1:
            s = " " * rng.randint(1, 3) + s
        if rng.random() < 0.1:
            s = s + rng.choice(["\n", "\n\n", " ", "  "])
        lines.append(s)
    return lines


def train_spm(out_dir: str, vocab_size: int = 512, seed: int = 0, n_lines: int = 4000,
              user_defined_symbols: Optional[List[str]] = None) -> str:
    """Train a SentencePiece BPE model like LLaMA's (BPE, byte fallback, identity normalisation, no whitespace collapsing, a dummy prefix, split digits); returns the .model path."""
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "spm")
    kwargs = {}
    if user_defined_symbols:
        kwargs["user_defined_symbols"] = user_defined_symbols
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(n_lines, seed)), model_prefix=prefix, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2, num_threads=1,
        **kwargs)
    return prefix + ".model"


def save_llama_tokenizer(out_dir: str, spm_model: str, chat_template: Optional[str] = None) -> None:
    """HF tokenizer files for a LLaMA-style SentencePiece model (legacy=True, like llava-1.5)."""
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(spm_model, os.path.join(out_dir, "tokenizer.model"))
    cfg: Dict = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True,
                 "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                 "model_max_length": 4096}
    if chat_template:
        cfg["chat_template"] = chat_template
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f, indent=1)


def randomize_(model, seed: int = 0, std: float = 0.5) -> None:
    """Non-trivial random weights: norms around 1 (not ones), biases and embeddings random, so that
    layout bugs (swapped tensors, missing norm or bias) change the output."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * (std / fan_in ** 0.5) * 2.0)


def make_tiny_llama(out_dir: str, spm_model: Optional[str] = None, *, hidden: int = 64, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, intermediate: int = 96, rope_theta: float = 50000.0,
                    tie: bool = False, rope_scaling: Optional[dict] = None, max_positions: int = 512,
                    rms_eps: float = 1e-5, seed: int = 0, vocab_size: int = 512,
                    head_dim: Optional[int] = None):
    """Save a random-weight LlamaForCausalLM (+ tokenizer when `spm_model` is given); returns the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if spm_model is not None:
        import sentencepiece as spm

        vocab_size = spm.SentencePieceProcessor(model_file=spm_model).get_piece_size()
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, rms_norm_eps=rms_eps, tie_word_embeddings=tie,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None, head_dim=head_dim or hidden // heads,
                      attention_bias=False, mlp_bias=False)
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling:
        rope = dict(rope_scaling, rope_theta=rope_theta)
    cfg.rope_parameters = rope
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    randomize_(model, seed)
    if tie:
        model.tie_weights()
    model.save_pretrained(out_dir)
    if spm_model is not None:
        save_llama_tokenizer(out_dir, spm_model)
    return model
