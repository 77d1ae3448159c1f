#!/usr/bin/env python3
"""Write the tokenizer of a Hugging Face model directory as GGUF metadata, the way llama.cpp's
converter does (docs/formats.md, "Tokenizer"), so that aircache.cpp and llama.cpp read the same vocabulary.

As a library (the model converter calls this; put tools/ on sys.path):

    from gguf_vocab import add_vocab
    info = add_vocab(writer, hf_dir, vocab_size=config["vocab_size"])   # a gguf.GGUFWriter

As a tool, a vocab-only GGUF (general.architecture = llama, no tensors):

    python tools/gguf_vocab.py --hf DIR --out vocab.gguf

What is written:
- SentencePiece (`tokenizer.model`): model `llama`, pre `default`; tokens, scores and token types
  from the model proto (normal 1, unknown 2, control 3, user-defined 4, unused 5, byte 6);
  added tokens from added_tokens.json and tokenizer_config.json's added_tokens_decoder (special or
  special-looking -> control, else user-defined; score -1000); ids missing up to vocab_size become
  `[PAD<id>]` (unused); add_space_prefix from the normalizer's add_dummy_prefix.
- Byte-level BPE (`tokenizer.json`, model BPE): model `gpt2`, pre detected from the pre_tokenizer
  (Split with the Llama 3 regex -> `llama-bpe`, with the Qwen2 regex -> `qwen2`, ByteLevel with
  use_regex -> `gpt-2`, Digits(individual_digits) + ByteLevel with use_regex -> `smollm`; anything
  else raises ValueError naming it); tokens (vocab + added tokens,
  `[PAD<id>]` for holes), merges ("left right"), types (added special or special-looking ->
  control, added -> user-defined, else normal).
- Both: bos/eos/unk/pad ids, add_bos/add_eos and the chat template, read by gguf-py's
  SpecialVocab exactly as llama.cpp's converter does; add_bos/add_eos are always written
  (defaults: SentencePiece true/false, BPE false/false).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger("gguf_vocab")

# GGUF token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The pre-tokenizer regexes llama.cpp implements under these names (from the models' tokenizer.json).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PATTERNS = {LLAMA3_PATTERN: "llama-bpe", QWEN2_PATTERN: "qwen2"}
SUPPORTED_PRE = "Split(llama3 regex)+ByteLevel -> llama-bpe, Split(qwen2 regex)+ByteLevel -> qwen2, " \
                "ByteLevel(use_regex=True) -> gpt-2, Digits(individual_digits)+ByteLevel(use_regex=True) -> smollm"


def does_token_look_special(text: str) -> bool:
    """llama.cpp's rule for added tokens that should be control tokens even when not marked special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pad_to(tokens: list, types: list, scores: Optional[list], n: int) -> None:
    for i in range(len(tokens), n):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
        if scores is not None:
            scores.append(-1000.0)


# -------------------------------------------------------------------------------------------------
# SentencePiece
# -------------------------------------------------------------------------------------------------

def _spm_vocab(hf_dir: Path, vocab_size: Optional[int]) -> Tuple[List[str], List[float], List[int], bool, Any]:
    import sentencepiece as spm

    model_file = hf_dir / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n_sp = sp.get_piece_size()
    try:  # the proto carries every piece type (the processor API has no user-defined query)
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        with open(model_file, "rb") as f:
            proto.ParseFromString(f.read())
        types = [int(p.type) for p in proto.pieces]
        add_space_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
        if proto.normalizer_spec.precompiled_charsmap or proto.normalizer_spec.remove_extra_whitespaces:
            logger.warning("%s: the SentencePiece normalizer (%s, remove_extra_whitespaces=%s) is not applied by "
                           "llama.cpp-style tokenizers; ids can differ from sentencepiece's on text it would change",
                           model_file, proto.normalizer_spec.name, proto.normalizer_spec.remove_extra_whitespaces)
    except ImportError:  # no protobuf: user-defined pieces become normal ones (llama.cpp's converter)
        types = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i)
                 else BYTE if sp.is_byte(i) else NORMAL for i in range(n_sp)]
        add_space_prefix = True

    tokens = [sp.id_to_piece(i) for i in range(n_sp)]
    scores = [float(sp.get_score(i)) for i in range(n_sp)]

    added: Dict[int, Tuple[str, int]] = {}
    for text, tid in (_read_json(hf_dir / "added_tokens.json") or {}).items():
        added[int(tid)] = (text, USER_DEFINED)
    cfg = _read_json(hf_dir / "tokenizer_config.json") or {}
    for tid, data in (cfg.get("added_tokens_decoder") or {}).items():
        text = data["content"]
        if data.get("special") or does_token_look_special(text):
            added[int(tid)] = (text, CONTROL)
        else:
            added[int(tid)] = (text.replace("\u2581", " "), USER_DEFINED)  # pre-normalized spaces

    n = vocab_size if vocab_size is not None else max([n_sp] + [i + 1 for i in added])
    if n < n_sp:
        raise ValueError(f"vocab_size {n} is smaller than the SentencePiece model's {n_sp} pieces")
    _pad_to(tokens, types, scores, n)
    for tid, (text, ty) in sorted(added.items()):
        if tid >= n:
            logger.warning("added token %r: id %d is out of range (vocab_size %d), ignored", text, tid, n)
            continue
        if tid < n_sp and tokens[tid] != text:
            logger.warning("added token %d replaces %r with %r", tid, tokens[tid], text)
        tokens[tid], types[tid], scores[tid] = text, ty, -1000.0
    return tokens, scores, types, add_space_prefix, sp


# -------------------------------------------------------------------------------------------------
# Byte-level BPE
# -------------------------------------------------------------------------------------------------

def detect_pre(tok_json: Dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name for a tokenizer.json (ValueError when unsupported)."""
    pre = tok_json.get("pre_tokenizer")

    def unsupported(why: str) -> ValueError:
        shown = json.dumps(pre)
        if len(shown) > 400:
            shown = shown[:400] + "..."
        return ValueError(f"unsupported pre_tokenizer ({why}): {shown}; supported: {SUPPORTED_PRE}")

    if not isinstance(pre, dict):
        raise unsupported("none")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not steps:
        raise unsupported("empty")
    last = steps[-1]
    if last.get("type") != "ByteLevel":
        raise unsupported("it does not end with ByteLevel")
    if last.get("add_prefix_space", False):
        raise unsupported("ByteLevel add_prefix_space=true is not implemented")
    if len(steps) == 1:
        if last.get("use_regex", True):
            return "gpt-2"
        raise unsupported("ByteLevel without a regex")
    if len(steps) == 2 and steps[0].get("type") == "Digits":
        # SmolLM / SmolLM2 (llama.cpp's "smollm"): every digit alone, then GPT-2's regex
        if steps[0].get("individual_digits", False) and last.get("use_regex", True):
            return "smollm"
        raise unsupported("Digits without individual_digits, or ByteLevel without its regex")
    if len(steps) == 2:
        split = steps[0]
        pattern = (split.get("pattern") or {}).get("Regex")
        if (split.get("type") == "Split" and pattern in SPLIT_PATTERNS and not split.get("invert", False)
                and split.get("behavior") == "Isolated" and not last.get("use_regex", True)):
            return SPLIT_PATTERNS[pattern]
        raise unsupported(f"Split pattern {pattern!r}" if split.get("type") == "Split" else split.get("type"))
    raise unsupported(f"{len(steps)} steps")


def _bpe_vocab(hf_dir: Path, tok_json: Dict[str, Any], vocab_size: Optional[int]) -> Tuple[List[str], List[int], str]:
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{hf_dir}/tokenizer.json: model type {model.get('type')!r} is not supported "
                         "(byte-level BPE, or a SentencePiece tokenizer.model)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ValueError(f"{hf_dir}/tokenizer.json: BPE with continuing_subword_prefix/end_of_word_suffix "
                         "is not supported")
    norm = tok_json.get("normalizer")
    if norm is not None and norm.get("type") == "NFC":
        logger.warning("%s/tokenizer.json: the NFC normalizer is not applied (as in llama.cpp); text that is "
                       "not in NFC can tokenize differently", hf_dir)
    elif norm is not None and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
        raise ValueError(f"{hf_dir}/tokenizer.json: normalizer {norm.get('type')!r} is not supported")
    pre = detect_pre(tok_json)
    if (pre == "llama-bpe") != bool(model.get("ignore_merges", False)):
        logger.warning("%s/tokenizer.json: ignore_merges=%s, but llama.cpp's %s tokenizer %s it", hf_dir,
                       model.get("ignore_merges", False), pre, "applies" if pre == "llama-bpe" else "does not apply")

    vocab: Dict[str, int] = dict(model.get("vocab") or {})
    added = {a["id"]: a for a in tok_json.get("added_tokens") or []}
    for tid, a in added.items():
        vocab[a["content"]] = tid
    reverse = {tid: text for text, tid in vocab.items()}
    top = max(reverse) + 1 if reverse else 0
    n = vocab_size if vocab_size is not None else top
    if top > n:
        raise ValueError(f"{hf_dir}/tokenizer.json has token id {top - 1}, not below vocab_size {n}")
    tokens: List[str] = []
    types: List[int] = []
    for i in range(n):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        text = reverse[i]
        if i in added and added[i]["content"] == text:
            if added[i].get("special") or does_token_look_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("\u2581", " ")  # pre-normalized user-defined spaces
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(text)
    return tokens, types, pre


# -------------------------------------------------------------------------------------------------
# Entry points
# -------------------------------------------------------------------------------------------------

def add_vocab(writer, hf_dir: str | os.PathLike, vocab_size: Optional[int] = None) -> Dict[str, Any]:
    """Add the tokenizer metadata of `hf_dir` to a gguf.GGUFWriter. `vocab_size` (the embedding
    rows, config.json's vocab_size) pads the token list with unused `[PAD<id>]` tokens; by default
    the list ends at the highest token id. Returns {"model", "pre", "n_vocab"}.
    ValueError for a tokenizer this runtime (and llama.cpp) cannot reproduce."""
    import gguf

    hf_dir = Path(hf_dir)
    if (hf_dir / "tokenizer.model").is_file():
        tokens, scores, types, add_space_prefix, sp = _spm_vocab(hf_dir, vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(add_space_prefix)
        special = gguf.SpecialVocab(hf_dir, n_vocab=len(tokens))
        # Without tokenizer.json / config.json, SpecialVocab finds no ids: take the model's own.
        for typ, tid in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()), ("pad", sp.pad_id())):
            if typ not in special.special_token_ids and 0 <= tid < len(tokens):
                special.special_token_ids[typ] = tid
        special.add_special_token.setdefault("bos", True)
        special.add_special_token.setdefault("eos", False)
        model, pre = "llama", "default"
    elif (hf_dir / "tokenizer.json").is_file():
        tok_json = _read_json(hf_dir / "tokenizer.json")
        tokens, types, pre = _bpe_vocab(hf_dir, tok_json, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=len(tokens))
        if not special.merges:
            raise ValueError(f"{hf_dir}/tokenizer.json has no merges")
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
        model = "gpt2"
    else:
        raise ValueError(f"{hf_dir}: no tokenizer.model (SentencePiece) or tokenizer.json (BPE) found")
    special.add_to_gguf(writer, quiet=True)
    return {"model": model, "pre": pre, "n_vocab": len(tokens)}


def write_vocab_only(hf_dir: str | os.PathLike, out: str | os.PathLike, vocab_size: Optional[int] = None) -> Dict[str, Any]:
    """A GGUF file with general.architecture = llama and only the tokenizer metadata."""
    import gguf

    w = gguf.GGUFWriter(os.fspath(out), "llama")
    info = add_vocab(w, hf_dir, vocab_size)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return info


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Write a vocab-only GGUF from a Hugging Face tokenizer directory.")
    ap.add_argument("--hf", required=True, help="directory with tokenizer.model or tokenizer.json (+ tokenizer_config.json)")
    ap.add_argument("--out", required=True, help="output .gguf")
    ap.add_argument("--vocab-size", type=int, default=None, help="pad the token list to this many tokens")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        info = write_vocab_only(args.hf, args.out, args.vocab_size)
    except ValueError as e:
        print(f"gguf_vocab: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: model {info['model']}, pre {info['pre']}, {info['n_vocab']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
