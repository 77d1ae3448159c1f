"""The Pythonic model API over the C++ engine."""

from __future__ import annotations

import os
import threading
from typing import Optional, Sequence

import numpy as np

from . import _core
from ._core import InputError


def _ids_array(input_ids) -> np.ndarray:
    arr = np.asarray(input_ids)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InputError(f"input_ids must be a 1-D sequence of token ids (got shape {arr.shape})")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"input_ids must be integers (got dtype {arr.dtype})")
    if arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
        raise InputError("input_ids hold values outside int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


class Model:
    """A GGUF model loaded for inference.

    Parameters
    ----------
    model_path: text-model GGUF (llama.cpp conventions; any supported quantization).
    n_ctx: KV-cache positions (prompt + generated tokens), default 4096.
    n_threads: CPU threads (default: physical cores).
    n_batch: prompt tokens per forward pass (default 512).
    kv_type: KV-cache storage, ``"f16"`` (default) or ``"f32"``.
    """

    def __init__(self, model_path: str | os.PathLike, *, n_ctx: int = 4096, n_threads: Optional[int] = None,
                 n_batch: int = 512, kv_type: str = "f16", verbose: bool = False):
        self._engine = _core.Engine(os.fspath(model_path), n_ctx=int(n_ctx), n_threads=int(n_threads or 0),
                                    n_batch=int(n_batch), kv_type=str(kv_type))
        self._lock = threading.Lock()
        self.model_path = os.fspath(model_path)
        self.verbose = verbose

    # --- information -------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._engine.n_vocab

    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def n_embd(self) -> int:
        return self._engine.n_embd

    @property
    def architecture(self) -> str:
        return self._engine.architecture

    def __repr__(self) -> str:
        e = self._engine
        return (f"Model({self.model_path!r}, arch={e.architecture}, layers={e.n_layer}, n_embd={e.n_embd}, "
                f"n_ctx={e.n_ctx}, kv_type={e.kv_type}, threads={e.n_threads})")

    # --- evaluation --------------------------------------------------------------------------
    def logits(self, input_ids: Sequence[int]) -> np.ndarray:
        """Logits of every position of a fresh sequence: float32 array [n_tokens, n_vocab]."""
        ids = _ids_array(input_ids)
        with self._lock:
            return self._engine.logits(ids)

    # --- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model and its KV cache now (the object is unusable afterwards)."""
        with self._lock:
            self._engine = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
