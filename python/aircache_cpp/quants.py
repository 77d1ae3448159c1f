"""ggml quantization types: geometry and dequantization of raw blocks."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np

from . import _core

TypeLike = Union[str, int]


def _as_bytes(data: Any) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    arr = np.ascontiguousarray(data)
    if arr.dtype != np.uint8:
        arr = arr.view(np.uint8)
    return arr.reshape(-1)


def type_info(type: TypeLike) -> Dict[str, Any]:
    """``{name, id, block_size, type_size, supported}`` for a ggml type name or id."""
    return _core.type_info(type)


def quant_types() -> List[Dict[str, Any]]:
    """Every ggml type known to this runtime (``supported`` says which it computes with)."""
    return _core.types()


def dequantize(data: Any, type: TypeLike, n: Optional[int] = None) -> np.ndarray:
    """Dequantize raw ggml blocks (bytes or a uint8 array) to a flat float32 array on the CPU.
    ``n`` defaults to every element the bytes hold."""
    return _core.dequantize(_as_bytes(data), type, n)


def cuda_dequantize(data: Any, type: TypeLike, n: Optional[int] = None, device: int = 0) -> np.ndarray:
    """As :func:`dequantize`, computed by the CUDA kernel on ``device`` (bit-identical results)."""
    return _core.cuda_dequantize(_as_bytes(data), type, n, device)
