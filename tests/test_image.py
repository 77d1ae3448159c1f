"""Images: decoding (PNG/JPEG) and the CLIP/LLaVA preprocessing against the references.

References: Hugging Face transformers 5 image processors with the PIL backend
(``CLIPImageProcessorPil`` for ``crop``, ``LlavaImageProcessorPil(do_pad=True)`` for ``pad``),
HF's ``convert_to_rgb``, and Pillow (``Image.open``, ``Image.resize(BICUBIC)``). The preprocessing,
the resize and the decoders are expected to be exact, not just close.
"""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil
from transformers.image_transforms import convert_to_rgb
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

import aircache_cpp as ac
from aircache_cpp import _core
from aircache_cpp import image as aim

MEAN = aim.OPENAI_CLIP_MEAN
STD = aim.OPENAI_CLIP_STD


# ------------------------------------------------------------------------------------------------
# Generated images
# ------------------------------------------------------------------------------------------------


def noise(h, w, seed=0):
    return np.random.default_rng(seed + 1000 * h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def gradient(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    fy, fx = y / max(h - 1, 1), x / max(w - 1, 1)
    img = np.stack([255 * fx, 255 * fy, 127.5 + 127.5 * np.sin(6.0 * (fx + fy))], axis=-1)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def shapes(h, w):
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = (30, 90, 160)
    img[h // 5 : h // 2 + 1, w // 6 : (2 * w) // 3 + 1] = (250, 240, 20)
    y, x = np.mgrid[0:h, 0:w]
    r = max(min(h, w) // 4, 1)
    img[(y - (2 * h) // 3) ** 2 + (x - w // 2) ** 2 <= r * r] = (200, 10, 40)
    img[:, ::7] = (0, 0, 0)
    return img


IMAGES = {
    "1x1": noise(1, 1),
    "1x37 (1xN)": noise(1, 37),
    "41x1 (Nx1)": gradient(41, 1),
    "2x3": noise(2, 3),
    "5x5 shapes": shapes(5, 5),
    "7x13": noise(7, 13),
    "13x7 gradient": gradient(13, 7),
    "100x640 wide gradient": gradient(100, 640),
    "100x640 wide noise": noise(100, 640),
    "640x100 tall shapes": shapes(640, 100),
    "336x336 exact noise": noise(336, 336),
    "336x336 exact shapes": shapes(336, 336),
    "335x337 gradient": gradient(335, 337),
    "32x32 noise": noise(32, 32),
    "31x33 shapes": shapes(31, 33),
    "480x640 shapes": shapes(480, 640),
    "640x480 gradient": gradient(640, 480),
    "750x1000 noise (larger)": noise(750, 1000),
    "1000x300 tall gradient": gradient(1000, 300),
    "200x50 noise": noise(200, 50),
    "17x250 shapes": shapes(17, 250),
    "123x457 noise": noise(123, 457),
    "3x1000 gradient": gradient(3, 1000),
    "150x2400 panorama shapes": shapes(150, 2400),
    "2400x90 tall noise": noise(2400, 90),
}
SIZES = (336, 32)


@pytest.fixture(scope="module")
def hf_processors():
    procs = {}
    for s in SIZES:
        size, crop = {"shortest_edge": s}, {"height": s, "width": s}
        procs[("crop", s)] = CLIPImageProcessorPil(size=size, crop_size=crop, image_mean=MEAN, image_std=STD)
        procs[("pad", s)] = LlavaImageProcessorPil(
            size=size, crop_size=crop, do_pad=True, image_mean=MEAN, image_std=STD
        )
    return procs


def hf_resized_size(width, height, s):
    # transformers get_resize_output_image_size(default_to_square=False), written out
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(s * long / short)
    return (s, new_long) if width <= height else (new_long, s)


# ------------------------------------------------------------------------------------------------
# Preprocessing vs HF
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(IMAGES))
def test_preprocess_matches_hf(hf_processors, name, size, mode, record_property):
    arr = IMAGES[name]
    proc = hf_processors[(mode, size)]
    ref = proc(Image.fromarray(arr), return_tensors="np")["pixel_values"][0]
    ours = aim.preprocess_image(arr, size, MEAN, STD, mode)
    assert ours.dtype == np.float32 and ours.shape == (3, size, size) == ref.shape

    # |delta| in pixel levels before normalisation: |delta| * std * 255
    levels = float((np.abs(ours - ref) * np.asarray(STD, np.float32)[:, None, None] * 255).max())
    record_property("max_delta_levels", levels)
    assert levels <= 2.0, f"{name} {mode} {size}: max |delta| = {levels} / 255"
    assert float(np.abs(ours - ref).max()) <= 1e-6, f"{name} {mode} {size}: not float-equal to HF"

    # The uint8 pixels before rescale are identical to HF's (its processor without rescale and
    # normalize) - composed from our separate steps.
    ref_u8 = proc(Image.fromarray(arr), do_rescale=False, do_normalize=False, return_tensors="np")
    ref_u8 = np.moveaxis(np.asarray(ref_u8["pixel_values"][0]), 0, -1)
    img = arr
    if mode == "pad":
        img = _core.expand_to_square(arr, [int(255 * m) for m in MEAN])
    rw, rh = hf_resized_size(img.shape[1], img.shape[0], size)
    ours_u8 = _core.center_crop(_core.resize_bicubic(img, rw, rh), size, size)
    assert ours_u8.dtype == np.uint8
    assert np.array_equal(ours_u8, ref_u8.astype(np.uint8)), f"{name} {mode} {size}: uint8 pixels differ"
    # ... and the float output is exactly those pixels rescaled and normalised
    x = (ours_u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    expect = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    assert np.array_equal(np.moveaxis(expect, -1, 0), ours)


def test_preprocess_other_mean_std_and_inputs_agree(tmp_path):
    # Non-CLIP normalisation (pad colour int(255 * mean) = (25, 204, 127)), and every input kind.
    mean, std = (0.1, 0.8, 0.5), (0.5, 0.25, 0.125)
    arr = shapes(90, 160)
    proc = LlavaImageProcessorPil(
        size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, do_pad=True, image_mean=mean, image_std=std
    )
    ref = proc(Image.fromarray(arr), return_tensors="np")["pixel_values"][0]
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    for src in (arr, Image.fromarray(arr), str(path), path, path.read_bytes()):
        ours = aim.preprocess_image(src, 48, mean, std, "pad")
        assert float(np.abs(ours - ref).max()) <= 1e-6, type(src)


def test_pad_and_crop_modes_differ_only_for_non_square():
    sq, wide = noise(64, 64), noise(40, 64)
    assert np.array_equal(aim.preprocess_image(sq, 32, mode="pad"), aim.preprocess_image(sq, 32, mode="crop"))
    assert not np.array_equal(aim.preprocess_image(wide, 32, mode="pad"), aim.preprocess_image(wide, 32, mode="crop"))
    # pad: the top and bottom rows are the mean colour, normalised (int(255*mean)/255 - mean)/std
    out = aim.preprocess_image(wide, 32, mode="pad")
    fill = np.array([int(255 * m) for m in MEAN], np.float64)
    expect = ((fill / 255).astype(np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    assert np.allclose(out[:, 0, :], expect[:, None], atol=1e-6)


def test_pad_mode_does_not_make_the_square():
    # 40000x30 pads to a 40000x40000 square (4.8 GB as uint8) that pad mode never allocates: the
    # rows of pure fill are resized once. Equal to the composed steps on a smaller panorama.
    fill = [int(255 * m) for m in MEAN]
    small = shapes(30, 4000)
    composed = _core.resize_bicubic(_core.expand_to_square(small, fill), 336, 336)
    x = (composed.astype(np.float64) * (1 / 255)).astype(np.float32)
    expect = np.moveaxis((x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32), -1, 0)
    assert np.array_equal(aim.preprocess_image(small, 336, mode="pad"), expect)
    out = aim.preprocess_image(shapes(30, 40000), 336, mode="pad")
    fill_value = ((np.array(fill) / 255).astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    assert np.array_equal(out[:, 0, :], np.repeat(fill_value.astype(np.float32)[:, None], 336, axis=1))
    assert not np.allclose(out[:, 168, :], fill_value[:, None])
    with pytest.raises(ac.InputError, match="pad mode takes sides up to 65536"):
        aim.preprocess_image(np.zeros((1, 70000), np.uint8), 336, mode="pad")
    assert aim.preprocess_image(np.zeros((1, 70000), np.uint8), 32, mode="crop").shape == (3, 32, 32)


# ------------------------------------------------------------------------------------------------
# Bicubic resize vs PIL
# ------------------------------------------------------------------------------------------------


def _resize_cases():
    rng = np.random.default_rng(123)
    cases = []
    for _ in range(160):
        h, w = (int(v) for v in rng.integers(1, 160, 2))
        kind = rng.integers(0, 3)
        if kind == 0:  # around the input size, up or down
            nh, nw = (int(v) for v in rng.integers(1, 2 * np.array([h, w]) + 2))
        elif kind == 1:
            nh, nw = (int(v) for v in rng.integers(1, 320, 2))
        else:  # tiny outputs: large reduction factors
            nh, nw = (int(v) for v in rng.integers(1, 6, 2))
        cases.append((w, h, nw, nh))
    cases += [
        (1, 1, 500, 3), (1, 1, 1, 1), (1000, 1, 1, 1), (3, 2000, 2, 7), (640, 100, 4000, 5), (5, 5, 5, 300),
        (2, 300, 1, 299), (300, 2, 299, 1), (97, 1013, 13, 101), (1013, 97, 101, 13), (64, 64, 64, 63),
        # vertical reduction more than twice the horizontal one: Pillow 13 runs the vertical pass first
        (300, 1000, 100, 336), (100, 640, 90, 300), (50, 400, 49, 40),
    ]
    return cases


@pytest.mark.parametrize("w,h,nw,nh", _resize_cases())
def test_resize_bicubic_bit_exact_with_pil(w, h, nw, nh):
    arr = noise(h, w, seed=nw * 7 + nh)
    ref = np.array(Image.fromarray(arr).resize((nw, nh), Image.BICUBIC))
    ours = aim.resize_bicubic(arr, nw, nh)
    assert ours.shape == (nh, nw, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, ref), f"{w}x{h} -> {nw}x{nh}: max diff {np.abs(ours.astype(int) - ref).max()}"


def test_resize_smooth_image_and_identity():
    arr = gradient(480, 640)
    for nw, nh in ((336, 252), (1000, 750), (640, 200), (100, 480)):
        assert np.array_equal(_core.resize_bicubic(arr, nw, nh), np.array(Image.fromarray(arr).resize((nw, nh), 3)))
    assert np.array_equal(_core.resize_bicubic(arr, 640, 480), arr)


def test_resize_errors():
    with pytest.raises(ac.InputError, match="must be positive"):
        _core.resize_bicubic(noise(4, 4), 0, 5)
    with pytest.raises(ac.InputError, match="HxWx3"):
        _core.resize_bicubic(np.zeros((4, 4), np.uint8), 2, 2)


# ------------------------------------------------------------------------------------------------
# expand_to_square and center_crop vs HF
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(3, 8), (8, 3), (4, 7), (7, 4), (5, 5), (1, 6), (6, 1)])
def test_expand_to_square_matches_hf(h, w):
    arr = noise(h, w)
    ref = LlavaImageProcessorPil().pad_to_square(np.moveaxis(arr, -1, 0), background_color=(1, 2, 3))
    assert np.array_equal(_core.expand_to_square(arr, [1, 2, 3]), np.moveaxis(ref, 0, -1))


@pytest.mark.parametrize(
    "h,w,ch,cw", [(10, 10, 4, 4), (10, 9, 4, 5), (9, 10, 5, 4), (3, 4, 7, 6), (4, 3, 6, 7), (5, 20, 8, 3), (20, 5, 3, 8), (1, 1, 2, 3)]
)
def test_center_crop_matches_hf_also_when_padding(h, w, ch, cw):
    from transformers.image_transforms import center_crop

    arr = noise(h, w) | 1  # no zero pixels: the padding is visible
    ref = center_crop(np.moveaxis(arr, -1, 0), (ch, cw), input_data_format="channels_first")
    assert np.array_equal(_core.center_crop(arr, cw, ch), np.moveaxis(ref, 0, -1))


# ------------------------------------------------------------------------------------------------
# Conversion to RGB: PIL images and arrays vs HF convert_to_rgb
# ------------------------------------------------------------------------------------------------


def _pil_inputs():
    rng = np.random.default_rng(5)
    rgb = noise(19, 23)
    rgba = rng.integers(0, 256, (19, 23, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    gray = rgb[..., 0].copy()
    out = {
        "RGB": Image.fromarray(rgb),
        "RGBA": Image.fromarray(rgba, "RGBA"),
        "LA": Image.fromarray(rgba[..., 2:].copy(), "LA"),
        "L": Image.fromarray(gray),
        "1": Image.fromarray(gray > 128),
        "CMYK": Image.fromarray(rgba, "RGBA").convert("RGB").convert("CMYK"),
        "CMYK raw": Image.frombytes("CMYK", (23, 19), rgba.tobytes()),
        "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 3),
        "YCbCr": Image.fromarray(rgb).convert("YCbCr"),
    }
    p = Image.fromarray(rgb).quantize(16)
    p.info["transparency"] = 3
    out["P transparency index"] = p
    p2 = Image.fromarray(rgb).quantize(16)
    p2.info["transparency"] = bytes(range(0, 256, 16))
    out["P transparency bytes"] = p2
    out["P"] = Image.fromarray(rgb).quantize(16)
    out["PA"] = Image.fromarray(rgba, "RGBA").convert("PA")
    lt = Image.fromarray(gray)
    lt.info["transparency"] = int(gray[3, 3])
    out["L transparency"] = lt
    rt = Image.fromarray(rgb)
    rt.info["transparency"] = tuple(int(v) for v in rgb[2, 2])
    out["RGB transparency"] = rt
    return out


PIL_INPUTS = _pil_inputs()


@pytest.mark.parametrize("mode", list(PIL_INPUTS))
def test_pil_inputs_convert_like_hf(mode):
    im = PIL_INPUTS[mode]
    ref = convert_to_rgb(im, return_numpy=True)
    ours = aim.to_rgb_array(im)
    assert ours.dtype == np.uint8 and ours.shape == (im.height, im.width, 3)
    assert np.array_equal(ours, ref)


def test_rgba_composite_every_colour_and_alpha():
    # All 65536 (colour, alpha) pairs: equal to HF's numpy formula and to PIL's alpha_composite.
    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.stack([c, 255 - c, c // 2, a], axis=-1).astype(np.uint8)
    ours = aim.to_rgb_array(rgba)
    assert np.array_equal(ours, convert_to_rgb(rgba, return_numpy=True))
    white = Image.new("RGBA", (256, 256), (255, 255, 255, 255))
    pil = np.array(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB"))
    assert np.array_equal(ours, pil)
    assert np.array_equal(ours, aim.to_rgb_array(Image.fromarray(rgba, "RGBA")))


def test_array_inputs():
    rgb = noise(9, 11)
    assert np.array_equal(aim.to_rgb_array(rgb), rgb)
    gray = rgb[..., 1].copy()
    assert np.array_equal(aim.to_rgb_array(gray), np.repeat(gray[..., None], 3, axis=-1))
    assert np.array_equal(aim.to_rgb_array(gray[..., None]), convert_to_rgb(gray[..., None], return_numpy=True))
    # strided views and Fortran order are read correctly
    big = noise(40, 50)
    view = big[::3, 1::2]
    assert np.array_equal(aim.to_rgb_array(view), np.ascontiguousarray(view))
    t = big.transpose(1, 0, 2)
    assert np.array_equal(aim.to_rgb_array(t), np.ascontiguousarray(t))
    assert np.array_equal(aim.to_rgb_array(np.asfortranarray(big)), big)
    ro = big.copy()
    ro.flags.writeable = False
    assert np.array_equal(aim.to_rgb_array(ro), big)


# ------------------------------------------------------------------------------------------------
# Decoding files vs PIL
# ------------------------------------------------------------------------------------------------

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _pack_rows(samples, depth):
    h, w, c = samples.shape
    if depth == 16:
        return [samples[y].astype(">u2").tobytes() for y in range(h)]
    if depth == 8:
        return [samples[y].astype(np.uint8).tobytes() for y in range(h)]
    per = 8 // depth
    shifts = (8 - depth) - depth * np.arange(per)
    rows = []
    for y in range(h):
        v = np.concatenate([samples[y, :, 0].astype(np.int64), np.zeros((-w) % per, np.int64)]).reshape(-1, per)
        rows.append((v << shifts).sum(axis=1).astype(np.uint8).tobytes())
    return rows


def png_bytes(samples, depth, color_type, plte=None, trns=None, interlace=False):
    """A PNG written by hand: any bit depth and colour type, PLTE, tRNS, Adam7 interlacing."""
    if samples.ndim == 2:
        samples = samples[..., None]
    h, w = samples.shape[:2]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b""
    for x0, y0, dx, dy in ADAM7 if interlace else [(0, 0, 1, 1)]:
        sub = samples[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            raw += b"".join(b"\0" + r for r in _pack_rows(sub, depth))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace)))
    if plte is not None:
        out += chunk(b"PLTE", bytes(np.asarray(plte, np.uint8).reshape(-1)))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def composite(rgb, alpha):
    rgb, a = rgb.astype(np.int64), alpha.astype(np.int64)[..., None]
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def hf_view(data):
    """What HF sees for a file: convert_to_rgb(PIL.Image.open(file))."""
    return convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)


def _png_cases():
    """(name, file bytes, expected RGB by the PNG spec, whether Pillow decodes it the same)."""
    rng = np.random.default_rng(11)
    h, w = 13, 21
    cases = []
    for depth in (1, 2, 4, 8, 16):
        g = rng.integers(0, 2**depth, (h, w))
        g8 = g >> 8 if depth == 16 else g * (255 // (2**depth - 1))
        rgb = np.repeat(g8[..., None], 3, -1).astype(np.uint8)
        for interlace in (False, True):
            cases.append((f"gray{depth}{' interlaced' if interlace else ''}", png_bytes(g, depth, 0, interlace=interlace), rgb, depth != 16))
        # tRNS on gray: Pillow compares the raw value with the scaled sample for 2/4 bits, so only 0 agrees
        alpha = np.where(g == 0, 0, 255)
        cases.append((f"gray{depth} tRNS=0", png_bytes(g, depth, 0, trns=struct.pack(">H", 0)), composite(rgb, alpha), depth != 16))
        t = int(g[g > 0][0])  # a non-zero value present in the image
        alpha = np.where(g == t, 0, 255)
        cases.append((f"gray{depth} tRNS={t}", png_bytes(g, depth, 0, trns=struct.pack(">H", t)), composite(rgb, alpha), depth in (1, 8)))
    for depth in (8, 16):
        c = rng.integers(0, 2**depth, (h, w, 3))
        c8 = (c >> 8 if depth == 16 else c).astype(np.uint8)
        cases.append((f"rgb{depth}", png_bytes(c, depth, 2), c8, True))
        cases.append((f"rgb{depth} interlaced", png_bytes(c, depth, 2, interlace=True), c8, True))
        t = c[2, 3]
        alpha = np.where((c == t).all(-1), 0, 255)
        trns = struct.pack(">HHH", *(int(v) for v in t))
        cases.append((f"rgb{depth} tRNS", png_bytes(c, depth, 2, trns=trns), composite(c8, alpha), depth == 8))
        a = rng.integers(0, 2**depth, (h, w, 1))
        a[0] = 0
        a[1] = 2**depth - 1
        a8 = (a >> 8 if depth == 16 else a)[..., 0]
        cases.append((f"rgba{depth}", png_bytes(np.concatenate([c, a], -1), depth, 6), composite(c8, a8), True))
        cases.append((f"la{depth}", png_bytes(np.concatenate([c[..., :1], a], -1), depth, 4),
                      composite(np.repeat(c8[..., :1], 3, -1), a8), True))
    for depth in (1, 2, 4, 8):
        n = 2**depth
        plte = rng.integers(0, 256, (n, 3))
        idx = rng.integers(0, n, (h, w))
        rgb = plte[idx].astype(np.uint8)
        cases.append((f"palette{depth}", png_bytes(idx, depth, 3, plte=plte), rgb, True))
        alphas = rng.integers(0, 256, max(n - 1, 1))  # shorter than the palette: the rest are opaque
        full = np.concatenate([alphas, np.full(n - len(alphas), 255)])
        cases.append((f"palette{depth} tRNS", png_bytes(idx, depth, 3, plte=plte, trns=bytes(alphas.astype(np.uint8))),
                      composite(rgb, full[idx]), True))
        cases.append((f"palette{depth} interlaced", png_bytes(idx, depth, 3, plte=plte, interlace=True), rgb, True))
    return cases


PNG_CASES = _png_cases()


@pytest.mark.parametrize("case", PNG_CASES, ids=[c[0] for c in PNG_CASES])
def test_png_decoding(case, tmp_path):
    name, data, expected, pillow_agrees = case
    path = tmp_path / "x.png"
    path.write_bytes(data)
    ours = aim.to_rgb_array(str(path))
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    assert np.array_equal(ours, expected), name
    if pillow_agrees:
        assert np.array_equal(ours, hf_view(data)), name
    else:
        # Where Pillow departs from the PNG spec (16-bit gray is clipped to 255 by convert("RGB");
        # tRNS is compared against scaled 2/4-bit samples or 8-bit-reduced 16-bit samples) we
        # follow the spec; the difference is real, which this checks stays the case.
        assert not np.array_equal(ours, hf_view(data)), name


def _pil_files():
    rng = np.random.default_rng(3)
    smooth = gradient(120, 170)
    smooth[30:60, 40:90] = (200, 30, 60)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    files = {}

    def save(name, im, **kw):
        b = io.BytesIO()
        im.save(b, format="PNG" if name.endswith("png") else "JPEG", **kw)
        files[name] = b.getvalue()

    save("rgb.png", Image.fromarray(noise(37, 53)))
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("gray.png", Image.fromarray(noise(37, 53)[..., 0]))
    save("la.png", Image.fromarray(rgba[..., :2].copy(), "LA"))
    save("palette.png", Image.fromarray(noise(37, 53)).quantize(64))
    save("palette-transparency.png", Image.fromarray(noise(37, 53)).quantize(64), transparency=5)
    save("palette-alpha.png", Image.fromarray(rgba, "RGBA").quantize(32))
    save("1bit.png", Image.fromarray(noise(37, 53)[..., 0] > 128))
    save("gray16.png", Image.fromarray(gradient(37, 53)[..., 0].astype(np.uint16) * 257))
    save("rgb-optimized.png", Image.fromarray(smooth), optimize=True)
    save("rgb.jpg", Image.fromarray(smooth), quality=90)
    save("rgb-444.jpg", Image.fromarray(smooth), quality=95, subsampling=0)
    save("rgb-422.jpg", Image.fromarray(smooth), quality=75, subsampling=1)
    save("progressive.jpg", Image.fromarray(smooth), quality=85, progressive=True)
    save("gray.jpg", Image.fromarray(smooth[..., 1]), quality=85)
    save("gray-progressive.jpg", Image.fromarray(smooth[..., 2]), quality=60, progressive=True)
    save("cmyk.jpg", Image.fromarray(smooth).convert("CMYK"), quality=90)
    save("odd-size.jpg", Image.fromarray(smooth[:37, :51]), quality=80)
    save("noise.jpg", Image.fromarray(noise(64, 48)), quality=50)
    save("1x1.jpg", Image.fromarray(noise(1, 1)))
    save("1x1.png", Image.fromarray(noise(1, 1)))
    return files


PIL_FILES = _pil_files()


@pytest.mark.parametrize("name", list(PIL_FILES))
def test_files_written_by_pil(name, tmp_path):
    data = PIL_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    ours = aim.to_rgb_array(path)
    if name == "gray16.png":
        # Pillow keeps 16-bit gray as mode I;16 and convert("RGB") clips it to 255; we keep the
        # high byte of each sample, as for every other 16-bit PNG (and as libpng's strip_16).
        expected = np.repeat((np.array(Image.open(io.BytesIO(data))) >> 8).astype(np.uint8)[..., None], 3, -1)
        assert np.array_equal(ours, expected)
        return
    ref = hf_view(data)
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    # JPEG: the same libjpeg settings as Pillow (ISLOW DCT, fancy upsampling), so exact too
    assert int(np.abs(ours.astype(np.int64) - ref).max()) == 0, name
    # bytes in memory decode the same
    assert np.array_equal(aim.to_rgb_array(data), ours)


def test_formats_reported():
    assert aim.image_formats() == ["png", "jpeg"]
    assert ac.build_info()["image_formats"] == ["png", "jpeg"]
    assert "images:       png jpeg\n" in ac.build_info_text()


# ------------------------------------------------------------------------------------------------
# Errors: a clear exception, never a crash
# ------------------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        aim.to_rgb_array(tmp_path / "nope.png")
    with pytest.raises(IsADirectoryError):
        aim.to_rgb_array(tmp_path)


def test_bad_files(tmp_path):
    def write(name, data):
        p = tmp_path / name
        p.write_bytes(data)
        return str(p)

    with pytest.raises(ac.FormatError, match=r"text\.png: not a PNG or JPEG image"):
        aim.to_rgb_array(write("text.png", b"just some text, not an image\n"))
    with pytest.raises(ac.FormatError, match=r"empty\.png: empty file \(0 bytes\)"):
        aim.to_rgb_array(write("empty.png", b""))
    png, jpg, prog = PIL_FILES["rgb.png"], PIL_FILES["rgb.jpg"], PIL_FILES["progressive.jpg"]
    with pytest.raises(ac.FormatError, match="corrupt PNG: the file is truncated"):
        aim.to_rgb_array(write("t.png", png[: len(png) // 2]))
    with pytest.raises(ac.FormatError, match="corrupt PNG"):
        aim.to_rgb_array(write("sig-only.png", png[:8]))
    with pytest.raises(ac.FormatError, match="corrupt JPEG: the file is truncated"):
        aim.to_rgb_array(write("t.jpg", jpg[: len(jpg) // 2]))
    with pytest.raises(ac.FormatError, match="corrupt JPEG: the file is truncated"):
        aim.to_rgb_array(write("t-progressive.jpg", prog[: len(prog) * 2 // 3]))
    with pytest.raises(ac.FormatError, match="corrupt JPEG"):
        aim.to_rgb_array(write("soi-only.jpg", jpg[:3]))
    bad_crc = bytearray(png)
    bad_crc[png.index(b"IDAT") + 10] ^= 0xFF
    with pytest.raises(ac.FormatError, match="corrupt PNG"):
        aim.to_rgb_array(write("crc.png", bytes(bad_crc)))
    with pytest.raises(ac.UnsupportedError, match=r"GIF images are not supported; this build reads: png, jpeg"):
        aim.to_rgb_array(write("a.gif", b"GIF89a" + bytes(30)))


def test_huge_dimensions_are_refused_before_allocating():
    png = bytearray(png_bytes(np.zeros((2, 2), np.uint8), 8, 0))
    png[16:24] = struct.pack(">II", 100000, 100000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    with pytest.raises(ac.FormatError, match="larger than the limit"):
        _core.decode_image(bytes(png))
    jpg = bytearray(PIL_FILES["rgb.jpg"])
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(ac.FormatError, match="larger than the limit"):
        _core.decode_image(bytes(jpg))


@pytest.mark.parametrize("name", ["rgb.png", "palette-alpha.png", "rgb.jpg", "progressive.jpg", "cmyk.jpg"])
def test_mutated_files_never_crash(name):
    # Truncations at many lengths and random byte changes: a result or a FormatError, nothing else.
    data = PIL_FILES[name]
    rng = np.random.default_rng(len(data))
    variants = [data[:n] for n in range(1, len(data), max(len(data) // 150, 1))]
    for _ in range(250):
        b = bytearray(data)
        for pos in rng.integers(2, len(b), rng.integers(1, 8)):
            b[pos] = int(rng.integers(0, 256))
        variants.append(bytes(b))
    errors = 0
    for v in variants:
        try:
            out = _core.decode_image(v)
            assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
        except ac.FormatError as e:
            errors += 1
            assert "corrupt" in str(e) or "not a PNG or JPEG" in str(e)
    assert errors > 0


def test_bad_arrays_and_objects():
    with pytest.raises(ac.InputError, match="dtype uint8"):
        aim.to_rgb_array(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ac.InputError, match="dtype uint8"):
        aim.to_rgb_array(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(ac.InputError, match=r"must be positive .* shape \(0, 0, 3\)"):
        aim.to_rgb_array(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ac.InputError, match=r"must be positive .* shape \(0, 5\)"):
        aim.to_rgb_array(np.zeros((0, 5), np.uint8))
    with pytest.raises(ac.InputError, match=r"HxW or HxWxC, got shape \(7,\)"):
        aim.to_rgb_array(np.zeros(7, np.uint8))
    with pytest.raises(ac.InputError, match=r"HxW or HxWxC"):
        aim.to_rgb_array(np.zeros((2, 2, 3, 1), np.uint8))
    with pytest.raises(ac.InputError, match="2 channels"):
        aim.to_rgb_array(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ac.InputError, match="cannot read an image from a builtins.list"):
        aim.to_rgb_array([[1, 2], [3, 4]])
    with pytest.raises(ac.InputError, match="must be positive"):
        aim.to_rgb_array(Image.new("RGB", (0, 0)))
    for exc in (ac.InputError, ac.FormatError, ac.UnsupportedError):
        assert issubclass(exc, ValueError)


def test_bad_preprocess_arguments():
    img = noise(8, 8)
    with pytest.raises(ac.InputError, match="unknown image mode 'letterbox'"):
        aim.preprocess_image(img, 32, mode="letterbox")
    with pytest.raises(ac.InputError, match="mean must have 3 values"):
        aim.preprocess_image(img, 32, mean=(0.5, 0.5))
    with pytest.raises(ac.InputError, match="std\\[1\\] = 0 is not a positive number"):
        aim.preprocess_image(img, 32, std=(1.0, 0.0, 1.0))
    with pytest.raises(ac.InputError, match="image_size 0 is outside"):
        aim.preprocess_image(img, 0)
    with pytest.raises(ac.InputError, match=r"mean\[2\] = 1.5 is outside \[0, 1\]"):
        aim.preprocess_image(noise(8, 9), 32, mean=(0.5, 0.5, 1.5))
    with pytest.raises(ac.InputError, match="fill\\[0\\] = 300"):
        _core.expand_to_square(img, [300, 0, 0])
