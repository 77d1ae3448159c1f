"""Images: decoding (PNG/JPEG, in C++) and the CLIP/LLaVA preprocessing, equal to Hugging Face's
LLaVA/CLIP image processors (PIL backend).

Every function accepts an image as

* a path (``str`` or ``os.PathLike``): decoded by the C++ decoder, so the CLI and Python see the
  same pixels; a ``str`` starting with ``data:`` is a base64 data URI
  (``data:image/png;base64,...``) instead, and ``http(s)://`` URLs are refused (nothing is fetched);
* ``bytes``: the content of a PNG or JPEG file;
* a PIL image: converted as HF's ``convert_to_rgb`` does (transparency composited onto white,
  palette / gray / CMYK / 16-bit converted by PIL);
* a numpy ``uint8`` array: HxW (gray), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA, composited onto white).

Anything else raises :class:`aircache_cpp.InputError` (a missing file raises ``OSError``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, Sequence

import numpy as np

from . import _core

#: OpenAI CLIP normalisation, what LLaVA-1.5 mmproj files carry in clip.vision.image_mean/std.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_formats() -> List[str]:
    """The file formats this build decodes (``["png", "jpeg"]`` with libpng and libjpeg)."""
    return _core.image_formats()


def _pil_to_rgb(image: Any) -> np.ndarray:
    # HF transformers 5 convert_to_rgb: an image with an alpha band or a transparency entry is
    # made RGBA by PIL and composited onto white (done in C++, the same arithmetic as PIL's
    # alpha_composite); anything else is converted to RGB by PIL.
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    arr = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    return _core.image_from_pixels(arr)


def _data_uri_bytes(uri: str) -> bytes:
    import base64
    import binascii

    head, sep, data = uri.partition(",")
    if not sep or not head.endswith(";base64"):
        raise _core.InputError("an image data: URI must be base64 (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _core.InputError(f"an image data: URI holds invalid base64 ({e})") from None
    if not raw:
        raise _core.InputError("an image data: URI holds no data")
    return raw


def to_rgb_array(image: Any) -> np.ndarray:
    """``image`` (a path, file bytes, a PIL image or a uint8 array) as an RGB ``uint8`` array
    HxWx3."""
    if isinstance(image, str) and image.startswith("data:"):
        return _core.decode_image(_data_uri_bytes(image))
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        raise _core.InputError("image URLs are not fetched: pass a path, a data: URI, bytes, a PIL image or an array")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return _core.load_image(path)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _core.decode_image(bytes(image))
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(image, pil.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _core.image_from_pixels(image)
    raise _core.InputError(
        f"cannot read an image from a {type(image).__module__}.{type(image).__qualname__}: "
        "expected a path, PNG/JPEG bytes, a PIL image or a uint8 numpy array"
    )


def resize_bicubic(image: Any, width: int, height: int) -> np.ndarray:
    """``image`` resized to ``width`` x ``height``, identical to PIL's
    ``Image.resize((width, height), Image.BICUBIC)`` on the RGB image."""
    return _core.resize_bicubic(to_rgb_array(image), int(width), int(height))


def preprocess_image(
    image: Any,
    image_size: int = 336,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    mode: str = "pad",
) -> np.ndarray:
    """The vision tower's input, float32 ``[3, image_size, image_size]``.

    ``mode="pad"`` is LLaVA-1.5's: the image is first padded to a square with the colour
    ``int(255 * mean)`` (HF ``LlavaImageProcessor(do_pad=True)``); ``mode="crop"`` is CLIP's
    (``CLIPImageProcessor``). Then: bicubic resize of the shortest edge to ``image_size``, centre
    crop, ``x / 255``, ``(x - mean) / std``.
    """
    return _core.preprocess_image(
        to_rgb_array(image), int(image_size), [float(x) for x in mean], [float(x) for x in std], str(mode)
    )


__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "image_formats",
    "preprocess_image",
    "resize_bicubic",
    "to_rgb_array",
]


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> "tuple[int, int]":
    """HF's Qwen2-VL ``smart_resize``: ``(height, width)`` both multiples of ``factor`` (patch x
    merge), the aspect ratio kept, ``height * width`` in ``[min_pixels, max_pixels]``."""
    return tuple(_core.smart_resize(int(height), int(width), int(factor), int(min_pixels), int(max_pixels)))


def preprocess_dynamic(image: Any, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2,
                       min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280,
                       mean: Sequence[float] = OPENAI_CLIP_MEAN,
                       std: Sequence[float] = OPENAI_CLIP_STD) -> "tuple[np.ndarray, tuple[int, int, int]]":
    """The dynamic-resolution input of Qwen2-VL / Qwen2.5-VL (patch 14) and Qwen3-VL (patch 16,
    mean = std = 0.5), equal to HF's ``Qwen2VLImageProcessorPil``: ``(pixel_values, (t, h, w))``
    with ``pixel_values`` float32 ``[h * w, 3 * temporal_patch_size * patch_size**2]`` (rows in
    2x2-merge-block order) and the patch grid ``image_grid_thw``. The image is stretched to
    :func:`smart_resize`'s size (factor ``patch_size * merge_size``) with Pillow-exact bicubic."""
    rows, thw = _core.preprocess_dynamic(to_rgb_array(image), int(patch_size), int(merge_size),
                                         int(temporal_patch_size), int(min_pixels), int(max_pixels),
                                         [float(v) for v in mean], [float(v) for v in std])
    return rows, tuple(thw)
