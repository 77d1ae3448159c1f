"""Scenes of varying size for the second demo model (Qwen2-VL): the same 3x3-cell task as `scene`,
rendered at W x H pixels with both sides multiples of 28 in [224, 448] (one Qwen2-VL merged token
per 28 x 28 px, so 8x8 .. 16x16 = 64 .. 256 merged tokens, and HF's smart_resize leaves the image
unchanged), with small objects (28-48 px, 1-4 merged tokens) so that a question needs specific
few image tokens. Plus the list question ("List the shapes in the top row.").

Nothing here changes `scene` / `questions` (the first model's data): the question makers of
`questions` work on a `SizedScene` (they read objects and cells only); this module adds the
scene generator, renderer, per-patch labels and the `list` question type.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .questions import Question, article
from .scene import GRID, Obj, Scene, _draw_shape, object_patch_labels, scene_parts

MERGED_PX = 28          # Qwen2-VL: patch 14 x spatial merge 2
PATCH_PX = 14
SS = 2                  # supersampling of the rendering
LINE_NAMES = ["top row", "middle row", "bottom row", "left column", "middle column", "right column"]
ORDINALS = ["first", "second", "third"]
LIST_EMPTY = "no shapes"


@dataclass
class SizedConfig:
    """What a sized scene is drawn from. Sides are multiples of MERGED_PX in [min_side, max_side]."""
    min_side: int = 224
    max_side: int = 448
    min_objects: int = 3
    max_objects: int = 6
    min_size: float = 28.0       # object bounding-box side in pixels
    max_size: float = 48.0
    texture_prob: float = 0.6
    colour_jitter: int = 14
    max_colours: int = 4


# images of a prompt with several images are smaller (fewer tokens in all)
MULTI_MAX_SIDE = {1: 448, 2: 336, 3: 308}


def multi_config(n_images: int, base: Optional[SizedConfig] = None) -> SizedConfig:
    b = base or SizedConfig()
    return SizedConfig(**{**b.__dict__, "max_side": min(b.max_side, MULTI_MAX_SIDE[n_images])})


@dataclass
class SizedScene(Scene):
    width: int = 128
    height: int = 128

    @staticmethod
    def from_dict(d: dict) -> "SizedScene":
        objs = [Obj(**{**o, "rgb": tuple(o["rgb"])}) for o in d["objects"]]
        return SizedScene(seed=d["seed"], background=tuple(d["background"]), texture=d["texture"],
                          texture_seed=d["texture_seed"], objects=objs, width=d["width"], height=d["height"])

    @property
    def grid(self) -> Tuple[int, int]:
        """(rows, cols) of merged tokens."""
        return self.height // MERGED_PX, self.width // MERGED_PX

    @property
    def n_tokens(self) -> int:
        r, c = self.grid
        return r * c


def cell_bounds(cell: int, width: int, height: int) -> Tuple[float, float, float, float]:
    r, c = divmod(cell, GRID)
    w, h = width / GRID, height / GRID
    return c * w, r * h, (c + 1) * w, (r + 1) * h


def make_sized_scene(seed: int, cfg: Optional[SizedConfig] = None) -> SizedScene:
    """The sized scene of `seed` (same seed and config -> same scene). Its own random stream (not
    `make_scene`'s), so a seed's sized scene is unrelated to its 128 x 128 scene."""
    cfg = cfg or SizedConfig()
    rng = random.Random(seed * 2654435761 % (2 ** 61) + 1009)
    lo, hi = cfg.min_side // MERGED_PX, cfg.max_side // MERGED_PX
    width, height = rng.randint(lo, hi) * MERGED_PX, rng.randint(lo, hi) * MERGED_PX
    background, texture, objs = scene_parts(rng, cfg, 3.0, lambda cell: cell_bounds(cell, width, height))
    return SizedScene(seed=seed, background=background, texture=texture, texture_seed=rng.randrange(2 ** 31),
                      objects=objs, width=width, height=height)


def _background(scene: SizedScene) -> np.ndarray:
    W, H = scene.width * SS, scene.height * SS
    rng = np.random.default_rng(scene.texture_seed)
    bg = np.empty((H, W, 3), np.float32)
    bg[:] = scene.background
    if scene.texture == "noise":
        bg += rng.normal(0, 9, (scene.height, scene.width, 1)).astype(np.float32).repeat(SS, 0).repeat(SS, 1)
    elif scene.texture == "stripes":
        period = rng.uniform(10, 24) * SS
        ang = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        phase = (xx * math.cos(ang) + yy * math.sin(ang)) / period
        bg += (np.sin(2 * math.pi * phase) > 0)[..., None] * np.float32(rng.uniform(10, 22))
    elif scene.texture == "dots":
        n = int(rng.integers(40, 90) * scene.width * scene.height / (256 * 256))
        for _ in range(n):
            x = int(rng.integers(0, W - 3 * SS))
            y = int(rng.integers(0, H - 3 * SS))
            r = int(rng.integers(1, 4)) * SS
            bg[y:y + r, x:x + r] += np.float32(rng.uniform(-25, 35))
    return np.clip(bg, 0, 255)


def render_sized(scene: SizedScene) -> Tuple[np.ndarray, np.ndarray]:
    """(image H x W x 3 uint8, object-id map H x W int8: -1 background, else the object's index)."""
    W, H = scene.width * SS, scene.height * SS
    img = Image.fromarray(_background(scene).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    ids = Image.new("L", (W, H), 255)
    idraw = ImageDraw.Draw(ids)
    for k, o in enumerate(scene.objects):
        _draw_shape(draw, o, SS, tuple(o.rgb))
        _draw_shape(idraw, o, SS, k)
    rgb = np.asarray(img.resize((scene.width, scene.height), Image.BOX), dtype=np.uint8)
    idmap = np.asarray(ids, dtype=np.int16)[SS // 2::SS, SS // 2::SS]
    idmap = np.where(idmap == 255, -1, idmap).astype(np.int8)
    return rgb, idmap


def image_sha256(rgb: np.ndarray) -> str:
    """Digest of a rendering (shape and pixels): held-out files record it, so that a change of the
    renderer (or of PIL's rasteriser) is caught instead of silently changing the test images."""
    h = hashlib.sha256(f"{rgb.shape}".encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def qwen_patch_order(rows: int, cols: int, merge: int = 2) -> np.ndarray:
    """Raster patch index of each row of Qwen2-VL's pixel_values for a rows x cols patch grid: the
    processor emits patches grouped by merged token ((hm, wm) row-major, then the merge x merge
    block row-major), which is also the order of the vision tower's per-patch outputs."""
    hm = np.arange(rows // merge).reshape(-1, 1, 1, 1)
    wm = np.arange(cols // merge).reshape(1, -1, 1, 1)
    i = np.arange(merge).reshape(1, 1, -1, 1)
    j = np.arange(merge).reshape(1, 1, 1, -1)
    return ((merge * hm + i) * cols + merge * wm + j).reshape(-1)


def sized_patch_labels(scene: SizedScene, idmap: np.ndarray, patch: int = PATCH_PX,
                       min_cover: float = 0.25, qwen_order: bool = True) -> Dict[str, np.ndarray]:
    """Dense labels per 14-px patch (`scene.patch_labels`' meaning: colour / shape 0 background else
    1 + index, centre 1 where an object's centre lies, cover fraction; and `cell`, the 3x3 grid cell
    of the patch's centre, which only the patch's place in the image tells), in Qwen2-VL's
    pixel_values order (qwen_patch_order) unless qwen_order=False (raster order)."""
    rows, cols = scene.height // patch, scene.width // patch
    out = object_patch_labels(scene.objects, idmap, patch, min_cover)
    yc = (np.arange(rows) + 0.5) * patch
    xc = (np.arange(cols) + 0.5) * patch
    row = np.minimum((yc * GRID / scene.height).astype(np.int64), GRID - 1)
    col = np.minimum((xc * GRID / scene.width).astype(np.int64), GRID - 1)
    cell = (row[:, None] * GRID + col[None, :]).reshape(-1)
    out["cell"] = cell
    if qwen_order:
        order = qwen_patch_order(rows, cols)
        out = {k: v[order] for k, v in out.items()}
    return out


# -------------------------------------------------------------------------------------------------
# the list question and questions naming one image of several
# -------------------------------------------------------------------------------------------------

def line_objects(scene: Scene, line: int) -> List[int]:
    """Indices of the objects in LINE_NAMES[line], left to right (rows) or top to bottom (columns)."""
    if line < 3:
        ks = [k for k, o in enumerate(scene.objects) if o.row == line]
        return sorted(ks, key=lambda k: scene.objects[k].col)
    ks = [k for k, o in enumerate(scene.objects) if o.col == line - 3]
    return sorted(ks, key=lambda k: scene.objects[k].row)


def list_phrase(names: List[str]) -> str:
    """"a red circle", "a red circle and a blue star", "a red circle, a blue star and an orange cross"."""
    items = [f"{article(n)} {n}" for n in names]
    if not items:
        return LIST_EMPTY
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def list_question(scene: Scene, rng: random.Random, line: Optional[int] = None,
                  allow_empty: bool = True) -> Optional[Question]:
    """"List the shapes in the top row." -> "The top row has a red circle and a blue star."
    (left to right; columns top to bottom; "The top row has no shapes." when empty). The whole answer
    is scored (exact match); `key` is the first word that depends on the scene (the first colour,
    or "no"), after the lead-in "The top row has a(n) "."""
    lines = [line] if line is not None else list(range(len(LINE_NAMES)))
    if not allow_empty:
        lines = [l for l in lines if line_objects(scene, l)]
        if not lines:
            return None
    ln = rng.choice(lines)
    ks = line_objects(scene, ln)
    if not ks and not allow_empty:
        return None
    name = LINE_NAMES[ln]
    phrase = list_phrase([scene.objects[k].name for k in ks])
    answer = f"The {name} has {phrase}."
    key = scene.objects[ks[0]].colour if ks else "no"
    off = len(f"The {name} has ") + (len(article(key)) + 1 if ks else 0)
    assert answer[off:].startswith(key)
    return Question("list", f"List the shapes in the {name}.", answer, key, off, ks)


def check_list_answer(scene: Scene, q: Question) -> bool:
    text = q.question
    if not (text.startswith("List the shapes in the ") and text.endswith(".")):
        return False
    name = text[len("List the shapes in the "):-1]
    if name not in LINE_NAMES:
        return False
    ks = line_objects(scene, LINE_NAMES.index(name))
    want = f"The {name} has {list_phrase([scene.objects[k].name for k in ks])}."
    return q.answer == want and q.key == (scene.objects[ks[0]].colour if ks else "no") and \
        q.answer[q.key_offset:].startswith(q.key)


def name_image(question: str, index: int) -> str:
    """"What colour is the star?" about image `index` (0-based) of several ->
    "In the second image, what colour is the star?"."""
    return f"In the {ORDINALS[index]} image, " + question[0].lower() + question[1:]


def unname_image(question: str) -> Tuple[Optional[int], str]:
    """The inverse of name_image: (index or None, the question as for one image)."""
    for i, o in enumerate(ORDINALS):
        p = f"In the {o} image, "
        if question.startswith(p):
            rest = question[len(p):]
            return i, rest[0].upper() + rest[1:]
    return None, question
