"""The tokenizer stored in a GGUF file (llama.cpp's ``tokenizer.ggml.*`` metadata).

>>> tok = Tokenizer("model.gguf")               # or a vocab-only GGUF (tools/gguf_vocab.py)
>>> ids = tok.encode("USER: hi\\nASSISTANT:", parse_special=True)
>>> tok.decode(ids)
'USER: hi\\nASSISTANT:'
>>> dec = tok.stream()                          # while generating
>>> text = "".join(dec.push(i) for i in ids) + dec.flush()

Supported: ``llama`` vocabularies (SentencePiece BPE with byte fallback; ids equal
``sentencepiece``'s) and ``gpt2`` vocabularies (byte-level BPE) with the pre-tokenizers
``llama-bpe`` (Llama 3), ``qwen2`` and ``gpt-2`` (ids equal HF ``tokenizers``'). Anything else
raises ``UnsupportedError``; malformed metadata raises ``FormatError`` naming the key.
"""

from __future__ import annotations

import os
from typing import Iterable, List

from . import _core


class StreamDecoder:
    """Incremental detokenizer: :meth:`push` returns only whole UTF-8 characters (the bytes of a
    character split across byte tokens are held back), :meth:`flush` the rest. The pieces of a
    stream concatenate to ``Tokenizer.decode(all ids)``."""

    def __init__(self, tokenizer: "Tokenizer", skip_special: bool = True):
        self._d = _core.StreamDecoder(tokenizer._t, skip_special)

    def push(self, id: int) -> str:
        return self._d.push(id)

    def push_bytes(self, id: int) -> bytes:
        return self._d.push_bytes(id)

    def flush(self) -> str:
        return self._d.flush()

    def flush_bytes(self) -> bytes:
        return self._d.flush_bytes()

    @property
    def pending_bytes(self) -> int:
        """Bytes held back (the start of a character not yet complete)."""
        return self._d.pending_bytes

    def reset(self) -> None:
        """Start a new stream (its first piece drops the space prefix again)."""
        self._d.reset()


class Tokenizer:
    """Text <-> token ids with the vocabulary of a GGUF file (the file is read once and closed)."""

    def __init__(self, path: str | os.PathLike):
        self._t = _core.Tokenizer(os.fspath(path))

    def encode(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> List[int]:
        """Token ids of ``text`` (``bytes`` are taken as UTF-8; bytes that are not valid UTF-8
        become byte tokens and decode back unchanged with :meth:`decode_bytes`). ``add_special`` adds BOS/EOS as the file says (``add_bos``,
        ``add_eos``); ``parse_special`` turns control-token text (``<s>``, ``<|im_start|>``) into
        those tokens. User-defined tokens are always matched."""
        return self._t.encode(text, add_special, parse_special)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids``; the exact inverse of :meth:`encode` for text without special tokens.
        Control tokens are dropped when ``skip_special``."""
        return self._t.decode(list(ids), skip_special)

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = True) -> bytes:
        return self._t.decode_bytes(list(ids), skip_special)

    def token_to_piece(self, id: int, special: bool = False) -> bytes:
        """The raw bytes token ``id`` contributes to decoded text (control tokens: ``b""``
        unless ``special``)."""
        return self._t.token_to_piece(id, special)

    def stream(self, skip_special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special)

    def token_text(self, id: int) -> str:
        return self._t.token_text(id)

    def token_type(self, id: int) -> int:
        """0 undefined, 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte."""
        return self._t.token_type(id)

    def token_score(self, id: int) -> float:
        return self._t.token_score(id)

    def find_token(self, text: str) -> int:
        """Id of the token whose text is exactly ``text``, or -1."""
        return self._t.find_token(text)

    def is_eog(self, id: int) -> bool:
        """End of generation: eos, eot, eom and tokens such as ``<|im_end|>``, ``<|eot_id|>``."""
        return self._t.is_eog(id)

    def is_control(self, id: int) -> bool:
        return self._t.is_control(id)

    @property
    def path(self) -> str:
        return self._t.path

    @property
    def n_vocab(self) -> int:
        return self._t.n_vocab

    @property
    def bos(self) -> int:
        """BOS id, -1 when the vocabulary has none (likewise ``eos``, ``eot``, ``eom``, ``unk``, ``pad``)."""
        return self._t.bos

    @property
    def eos(self) -> int:
        return self._t.eos

    @property
    def eot(self) -> int:
        return self._t.eot

    @property
    def eom(self) -> int:
        return self._t.eom

    @property
    def unk(self) -> int:
        return self._t.unk

    @property
    def pad(self) -> int:
        return self._t.pad

    @property
    def eog_ids(self) -> List[int]:
        return self._t.eog_ids

    @property
    def add_bos(self) -> bool:
        return self._t.add_bos

    @property
    def add_eos(self) -> bool:
        return self._t.add_eos

    @property
    def add_space_prefix(self) -> bool:
        return self._t.add_space_prefix

    @property
    def model(self) -> str:
        """``"llama"`` (SentencePiece) or ``"gpt2"`` (byte-level BPE)."""
        return self._t.model

    @property
    def pre(self) -> str:
        """``tokenizer.ggml.pre`` (``""`` when absent)."""
        return self._t.pre

    @property
    def chat_template(self) -> str:
        """``tokenizer.chat_template`` (``""`` when absent)."""
        return self._t.chat_template

    def __repr__(self) -> str:
        return f"Tokenizer(model={self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab}, path={self.path!r})"
