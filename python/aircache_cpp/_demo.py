"""The bundled demo models, trained here on the procedural scenes task of tools/scenes (coloured shapes
on a 3x3 grid; questions about colour, the shape at a cell, counts, left/right/above/below relations,
existence). See docs/quality.md.

- ``"llava"`` (default): a small LLaVA-1.5 (CLIP ViT + mlp projector + LLaMA decoder), 128x128 scenes,
  256 visual tokens per image, one question about one image.
- ``"qwen2vl"``: a small Qwen2-VL (dynamic-resolution ViT + patch merger + Qwen2 decoder with M-RoPE),
  images of any size (one token per 28x28 pixels), several images per prompt ("In the second image,
  ..."), multi-turn conversations and list answers ("List the shapes in the top row.").
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

DEMO_FILES: Dict[str, Tuple[str, str]] = {
    "llava": ("demo.gguf", "demo-mmproj.gguf"),
    "qwen2vl": ("qwen2vl-demo.gguf", "qwen2vl-demo-mmproj.gguf"),
}
_N_CTX = {"llava": 1024, "qwen2vl": 2048}


def _files(name: str) -> Tuple[str, str]:
    if not isinstance(name, str) or name not in DEMO_FILES:
        raise ValueError(f"unknown demo model {name!r}: the bundled ones are " + ", ".join(map(repr, DEMO_FILES)))
    return DEMO_FILES[name]


def demo_model_paths(name: str = "llava") -> Tuple[str, str]:
    """(text model GGUF, mmproj GGUF) of a bundled demo model (``"llava"`` or ``"qwen2vl"``).
    ``AIRCACHE_DEMO_DIR`` overrides where they are looked for."""
    files = _files(name)
    d = os.environ.get("AIRCACHE_DEMO_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    paths = tuple(os.path.join(d, f) for f in files)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"the bundled demo model is missing ({name!r}: " + ", ".join(missing) + ")" +
                                " (this installation was built without it; reinstall aircache-cpp)")
    return paths  # type: ignore[return-value]


def demo_model(name: str = "llava", **kwargs):
    """A ready :class:`Model` of a bundled demo model: ``"llava"`` (default; 128x128 scenes, 256
    visual tokens per image) or ``"qwen2vl"`` (dynamic resolution, several images, conversations).
    Keyword arguments go to :class:`Model` (``n_ctx`` defaults to 1024 for llava, 2048 for qwen2vl)::

        m = aircache_cpp.demo_model()
        m.generate("examples/scene0.png", "What colour is the square?", kv_policy="mosaic", kv_budget=0.1)
        q = aircache_cpp.demo_model("qwen2vl")
        q.generate(["examples/qwen2vl/a.png", "examples/qwen2vl/b.png"], "In the second image, what colour is the star?")
    """
    from .model import Model

    text, mmproj = demo_model_paths(name)
    kwargs.setdefault("n_ctx", _N_CTX[name])
    return Model(text, mmproj=mmproj, **kwargs)
