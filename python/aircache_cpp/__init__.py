"""aircache.cpp: a C++/CUDA inference runtime for vision-language models with visual KV-cache
compression (AirCache, VL-Cache and baselines).

This release reads GGUF files (text models and mmproj files, as used with llama.cpp) and
dequantizes every common ggml quantization type; the model runtime arrives in later releases.
"""

from . import _core
from ._core import (
    Error,
    FormatError,
    InputError,
    UnsupportedError,
    build_info_text,
    cuda_available,
    cuda_device_count,
)
from .gguf import GGUFFile, GGUFInfo, TensorInfo, gguf_info
from .model import GenerationResult, GenerationStats, GenerationStream, Model, list_policies
from .quants import cuda_dequantize, dequantize, quant_types, type_info
from .tokenizer import StreamDecoder, Tokenizer

__version__ = _core.__version__

for _exc in (Error, FormatError, InputError, UnsupportedError):
    _exc.__module__ = __name__
del _exc


def build_info() -> dict:
    """What this build contains: ``version``, ``compiler``, ``build_type``, ``cuda`` (bool: CUDA
    kernels compiled in), ``cuda_compiler``, ``cuda_architectures``, ``simd_compiled``,
    ``simd_cpu``, ``system`` and ``image_formats`` (the image files it decodes: ``"png"``,
    ``"jpeg"``). ``aircache-cli --version`` prints the same."""
    return _core.build_info()


__all__ = [
    "Error",
    "FormatError",
    "InputError",
    "UnsupportedError",
    "GGUFFile",
    "GGUFInfo",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "Model",
    "StreamDecoder",
    "TensorInfo",
    "Tokenizer",
    "build_info",
    "build_info_text",
    "cuda_available",
    "cuda_device_count",
    "cuda_dequantize",
    "dequantize",
    "gguf_info",
    "list_policies",
    "quant_types",
    "type_info",
    "__version__",
]
