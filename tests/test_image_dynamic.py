"""Dynamic-resolution preprocessing (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) against HF's
Qwen2VLImageProcessorPil: smart_resize on a grid of sizes (half-way roundings, both limits), and
pixel_values + image_grid_thw bit for bit for images that stay, shrink and grow."""

import numpy as np
import pytest
from PIL import Image

import aircache_cpp as ac
from aircache_cpp.image import preprocess_dynamic, smart_resize

from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hfq

QWEN2 = dict(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
             mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
QWEN3 = dict(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=65536, max_pixels=16777216,
             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_smart_resize_equals_hf():
    sizes = [1, 10, 27, 28, 42, 56, 70, 98, 100, 126, 333, 640, 1000, 1023, 1920, 4000]
    for factor, lo, hi in [(28, 56 * 56, 28 * 28 * 1280), (28, 3136, 12845056), (32, 65536, 16777216), (28, 100, 5000)]:
        for h in sizes:
            for w in sizes:
                if max(h, w) / min(h, w) > 200:
                    with pytest.raises(ac.InputError, match="aspect ratio"):
                        smart_resize(h, w, factor, lo, hi)
                    continue
                assert smart_resize(h, w, factor, lo, hi) == hfq.smart_resize(h, w, factor, lo, hi), (h, w, factor)


def hf(img, cfg):
    p = hfq.Qwen2VLImageProcessorPil(patch_size=cfg["patch_size"], merge_size=cfg["merge_size"],
                                     temporal_patch_size=cfg["temporal_patch_size"],
                                     size={"shortest_edge": cfg["min_pixels"], "longest_edge": cfg["max_pixels"]},
                                     image_mean=list(cfg["mean"]), image_std=list(cfg["std"]))
    out = p(images=[img], return_tensors="np")
    return np.asarray(out["pixel_values"]), tuple(int(v) for v in out["image_grid_thw"][0])


@pytest.mark.parametrize("cfg", [QWEN2, QWEN3], ids=["qwen2", "qwen3"])
@pytest.mark.parametrize("w,h", [(100, 75), (56, 56), (13, 90), (640, 480), (333, 127), (1500, 1100)])
def test_pixel_values_equal_hf(cfg, w, h):
    rng = np.random.default_rng(w * 7 + h)
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    if cfg is QWEN2 and w * h > 1_000_000:
        cfg = dict(cfg, max_pixels=200_000)  # the shrinking branch, quickly
    want, thw = hf(Image.fromarray(arr), cfg)
    got, gthw = preprocess_dynamic(arr, **cfg)
    assert gthw == thw
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_errors():
    arr = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ac.InputError, match="aspect ratio"):
        preprocess_dynamic(np.zeros((1, 300, 3), np.uint8))
    with pytest.raises(ac.InputError, match="pixel limits"):
        preprocess_dynamic(arr, min_pixels=10, max_pixels=5)
    with pytest.raises(ac.InputError, match="std"):
        preprocess_dynamic(arr, std=(0.5, 0.0, 0.5))
    with pytest.raises(ac.InputError, match="out of range"):
        preprocess_dynamic(arr, patch_size=0)
