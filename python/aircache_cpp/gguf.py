"""GGUF files from Python: metadata and tensor table as plain objects, tensors as numpy arrays.

>>> info = gguf_info("model.gguf")
>>> info.architecture, info.metadata["llama.block_count"], info.tensors[0].shape
>>> with GGUFFile("model.gguf") as f:
...     w = f.dequantize("token_embd.weight")      # float32, numpy shape (n_vocab, n_embd)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _core


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table.

    ``ne`` is GGUF's dimension order (``ne[0]`` contiguous, as ggml and gguf-py's
    ``ReaderTensor.shape``); ``shape`` is the numpy/PyTorch order (``ne`` reversed).
    ``offset`` is relative to the data section, ``data_offset`` absolute in the file.
    """

    name: str
    type: str
    type_id: int
    ne: Tuple[int, ...]
    offset: int
    data_offset: int
    n_bytes: int
    n_elements: int

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(reversed(self.ne))


@dataclass(frozen=True)
class GGUFInfo:
    """Everything in a GGUF file except the tensor data."""

    path: str
    version: int
    alignment: int
    data_offset: int
    file_size: int
    metadata: Dict[str, Any] = field(repr=False)
    metadata_types: Dict[str, str] = field(repr=False)
    tensors: List[TensorInfo] = field(repr=False)

    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.get("general.architecture")

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


class GGUFFile:
    """An open, memory-mapped and fully validated GGUF file (a context manager).

    Raises ``FormatError`` (a ``ValueError``) for malformed files, naming the file, the field and
    the bad value; ``OSError`` when the file cannot be opened.
    """

    def __init__(self, path: str | os.PathLike):
        self._f = _core.GGUFFile(os.fspath(path))

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    @property
    def path(self) -> str:
        return self._f.path

    def info(self) -> GGUFInfo:
        f = self._f
        return GGUFInfo(
            path=f.path,
            version=f.version,
            alignment=f.alignment,
            data_offset=f.data_offset,
            file_size=f.file_size,
            metadata=f.metadata(),
            metadata_types=f.metadata_types(),
            tensors=[TensorInfo(**t) for t in f.tensors()],
        )

    def get(self, key: str, kind: str) -> Any:
        """Typed metadata read, as the C++ loaders do it: ``kind`` is one of ``u32``, ``i32``,
        ``u64``, ``i64``, ``f32``, ``bool``, ``str``, ``str_array``, ``f32_array``, ``int_array``.
        Integers are accepted from any integer type whose value fits; a missing key, a value of
        the wrong kind or out of range raises ``FormatError`` naming the key."""
        return self._f.get(key, kind)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes (uint8, a copy)."""
        return np.frombuffer(self._f.raw(name), dtype=np.uint8)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32 in numpy shape order. ``UnsupportedError`` for types this
        runtime does not compute with (IQ*, TQ*, MXFP4, ...)."""
        return self._f.dequantize(name)


def gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Metadata and tensor table of a GGUF file (the file is closed again)."""
    with GGUFFile(path) as f:
        return f.info()
