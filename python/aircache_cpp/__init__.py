"""aircache.cpp: a C++/CUDA inference runtime for vision-language models with visual KV-cache
compression (AirCache, VL-Cache and baselines).

Load the GGUF files you use with llama.cpp (text model + mmproj) with :class:`Model`, generate
with ``kv_policy="aircache", kv_budget=0.1``; see the README.
"""

import glob as _glob
import os as _os
import sys as _sys

from . import _core
from ._core import (
    Error,
    FormatError,
    InputError,
    QueueFull,
    UnsupportedError,
    build_info_text,
    cuda_available,
    cuda_device_count,
)
from ._demo import demo_model, demo_model_paths
from .gguf import GGUFFile, GGUFInfo, TensorInfo, gguf_info
from .model import (GenerationResult, GenerationStats, GenerationStream, Model, ScheduledRequest, Scheduler,
                    Session, list_policies)
from .quants import cuda_dequantize, dequantize, quant_types, type_info
from .tokenizer import StreamDecoder, Tokenizer

__version__ = _core.__version__


def _find_cublas() -> None:
    """A CUDA build loads cuBLAS at run time: point it at an installed nvidia-cublas wheel (unless
    AIRCACHE_CUBLAS_DIR says where)."""
    if _os.environ.get("AIRCACHE_CUBLAS_DIR") or not _core.build_info()["cuda"]:
        return
    for base in _sys.path:
        for lib in _glob.glob(_os.path.join(base or ".", "nvidia", "cu1*", "lib")) + \
                [_os.path.join(base or ".", "nvidia", "cublas", "lib")]:
            if _glob.glob(_os.path.join(lib, "libcublas.so.*")):
                _os.environ["AIRCACHE_CUBLAS_DIR"] = lib
                return


_find_cublas()

for _exc in (Error, FormatError, InputError, QueueFull, UnsupportedError):
    _exc.__module__ = __name__
del _exc


def build_info() -> dict:
    """What this build contains: ``version``, ``compiler``, ``build_type``, ``cuda`` (bool: CUDA
    kernels compiled in), ``cuda_compiler``, ``cuda_architectures``, ``cuda_gemm`` (how prefill
    GEMMs run on a GPU: cuBLAS loaded at run time, or the built-in kernels), ``simd_compiled``,
    ``simd_cpu``, ``system`` and ``image_formats`` (the image files it decodes: ``"png"``,
    ``"jpeg"``). ``aircache-cli --version`` prints the same."""
    return _core.build_info()


__all__ = [
    "Error",
    "FormatError",
    "InputError",
    "QueueFull",
    "UnsupportedError",
    "GGUFFile",
    "GGUFInfo",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "Model",
    "ScheduledRequest",
    "Scheduler",
    "Session",
    "StreamDecoder",
    "TensorInfo",
    "Tokenizer",
    "build_info",
    "build_info_text",
    "cuda_available",
    "cuda_device_count",
    "cuda_dequantize",
    "demo_model",
    "demo_model_paths",
    "dequantize",
    "gguf_info",
    "list_policies",
    "quant_types",
    "type_info",
    "__version__",
]
