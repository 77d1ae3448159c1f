"""The bundled demo model: a small LLaVA (CLIP ViT + mlp projector + LLaMA decoder, F16 GGUF) trained
on the procedural scenes task of tools/scenes (coloured shapes on a 3x3 grid; questions about colour,
shape at a cell, counts, left/right/above/below relations and existence). See docs/quality.md."""

from __future__ import annotations

import os
from typing import Tuple

DEMO_FILES = ("demo.gguf", "demo-mmproj.gguf")


def demo_model_paths() -> Tuple[str, str]:
    """(text model GGUF, mmproj GGUF) of the bundled demo model. ``AIRCACHE_DEMO_DIR`` overrides
    where they are looked for."""
    d = os.environ.get("AIRCACHE_DEMO_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    paths = tuple(os.path.join(d, f) for f in DEMO_FILES)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError("the bundled demo model is missing: " + ", ".join(missing) +
                                " (this installation was built without it; reinstall aircache-cpp)")
    return paths  # type: ignore[return-value]


def demo_model(**kwargs):
    """A ready :class:`Model` of the bundled demo model (128x128 scenes, 256 visual tokens per
    image). Keyword arguments go to :class:`Model` (``n_ctx`` defaults to 1024)::

        m = aircache_cpp.demo_model()
        m.generate("examples/scene0.png", "What colour is the square?", kv_policy="aircache", kv_budget=0.1)
    """
    from .model import Model

    text, mmproj = demo_model_paths()
    kwargs.setdefault("n_ctx", 1024)
    return Model(text, mmproj=mmproj, **kwargs)
