"""Helpers shared by the tiny Gemma 3 and SmolVLM fixtures (tests/hf_gemma_fixtures.py,
tests/hf_smolvlm_fixtures.py): a SentencePiece trainer with a family's own control pieces and
special symbols, the `added_tokens_decoder` entries, eager attention, and randomisation fixes.

- `chat_corpus(n, seed, roles)`: hf_fixtures.corpus plus chat-like lines (role prefixes, "\\n\\n"
  and "\\n\\n\\n" between parts) so that BPE learns the role words and the multi-newline pieces the
  processors' image wrappers use (Gemma: "\\n\\n" around each image; SmolVLM: "\\n" per tile row).
- `train_spm_specials(dir, control, user_defined, ...)`: a SentencePiece BPE (byte fallback,
  identity normalisation, split digits) whose control pieces (pad/bos/eos/unk, given as
  {"pad": (id, text), ...}) and user-defined symbols come in the family's order.
- `added_token`, `write_tokenizer_json` (the tokenizer.json llama.cpp's converter needs for the
  eos/unk ids), `rename_safetensors_keys`, `eager`, `fix_patch_embedding_`, `fix_layernorm_biases_`,
  `to_pixel_tensor`.
"""

from __future__ import annotations

import os
import random
from typing import Dict, List, Sequence, Tuple

from hf_fixtures import WORDS, corpus


def chat_corpus(n: int, seed: int, roles: Sequence[str]) -> List[str]:
    """n lines: hf_fixtures.corpus(n, seed), about a third prefixed by a role word and ':' / ': ' /
    '\\n', about a third followed by one to three newlines and a few more words."""
    rng = random.Random(seed + 101)
    out = []
    for line in corpus(n, seed):
        if rng.random() < 0.3:
            line = rng.choice(list(roles)) + rng.choice(["\n", ": ", ":"]) + line
        if rng.random() < 0.3:
            line = line + rng.choice(["\n\n", "\n", "\n\n\n"]) + " ".join(
                rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
        out.append(line)
    return out


def train_spm_specials(out_dir: str, *, control: Dict[str, Tuple[int, str]], user_defined: Sequence[str],
                       roles: Sequence[str], vocab_size: int = 512, seed: int = 0, n_lines: int = 4000,
                       add_dummy_prefix: bool = False) -> str:
    """Train a SentencePiece BPE on chat_corpus with the given control pieces, e.g.
    {"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"), "unk": (3, "<unk>")} (a missing
    pad/bos/eos gets id -1, i.e. none; unk is required) and `user_defined` symbols right after them,
    in order. Returns the .model path."""
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "spm")
    kw = {}
    for k in ("pad", "bos", "eos", "unk"):
        if k in control:
            kw[f"{k}_id"], kw[f"{k}_piece"] = control[k]
        else:
            kw[f"{k}_id"] = -1
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(chat_corpus(n_lines, seed, roles)), model_prefix=prefix, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix, split_digits=True, character_coverage=1.0, minloglevel=2,
        num_threads=1, user_defined_symbols=list(user_defined), **kw)
    return prefix + ".model"


def piece_ids(spm_model: str, pieces: Sequence[str]) -> Dict[str, int]:
    """{piece: id} for pieces that must each be one vocabulary entry (ValueError otherwise)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_model)
    out: Dict[str, int] = {}
    for s in pieces:
        i = sp.piece_to_id(s)
        if sp.id_to_piece(i) != s:
            raise ValueError(f"{spm_model} lacks the piece {s!r}")
        out[s] = i
    return out


def n_pieces(spm_model: str) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=spm_model).get_piece_size()


def added_token(content: str, special: bool = True) -> Dict:
    """An `added_tokens_decoder` entry; special=True makes llama.cpp's converter type it CONTROL."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def write_tokenizer_json(out_dir: str) -> str:
    """tokenizer.json serialised from the HF tokenizer that transformers builds out of tokenizer.model
    + tokenizer_config.json (the same pipeline; real checkpoints ship one). llama.cpp's converter still
    reads the vocabulary from tokenizer.model, but its SpecialVocab takes the ids of the named
    bos/eos/unk/pad tokens from tokenizer.json's added_tokens only: without the file it falls back to
    config.json's *_token_id (no unk there, and a list eos such as Gemma's [1, 106] is skipped), and
    llama.cpp then uses its SPM defaults (unk 0, eos 2). Returns the path."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.backend_tokenizer.save(path)
    return path


def eager(model):
    try:
        model.set_attn_implementation("eager")
    except Exception:  # older API
        model.config._attn_implementation = "eager"
    return model


def fix_patch_embedding_(model, g, std: float) -> None:
    """Conv2d patch embeddings get their real fan-in (3*P*P): hf_fixtures.randomize_ takes the last
    dim (P), which would blow the patch embeddings up."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("patch_embedding.weight"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (std / fan_in ** 0.5) * 2.0)


def fix_layernorm_biases_(model, g) -> None:
    """LayerNorm biases (1-D "...norm...bias") around 0, not around 1 as randomize_ makes every 1-D
    parameter whose name contains "norm"."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def to_pixel_tensor(pixel_values, dtype=None):
    """np/tensor or a list of them (concatenated along dim 0) as one float32 tensor."""
    import numpy as np
    import torch

    if isinstance(pixel_values, (list, tuple)):
        return torch.cat([torch.as_tensor(np.asarray(p), dtype=torch.float32) for p in pixel_values], 0)
    return torch.as_tensor(np.asarray(pixel_values), dtype=dtype or torch.float32)


def rename_safetensors_keys(path: str, rename) -> int:
    """Rewrite one .safetensors file with every key k replaced by rename(k) (metadata kept); returns
    how many keys changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out, changed = {}, 0
    for k, v in tensors.items():
        nk = rename(k)
        changed += nk != k
        if nk in out:
            raise ValueError(f"duplicate tensor {nk} after renaming")
        out[nk] = v.contiguous()
    if changed:
        tmp = path + ".tmp"
        save_file(out, tmp, metadata=meta or {"format": "pt"})
        os.replace(tmp, path)
    return changed
