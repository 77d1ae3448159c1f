"""Procedural scenes: coloured shapes on a 3x3 grid of cells, deterministic from a seed.

A scene is a plain description (`Scene`: background, objects with shape, colour name, RGB, centre,
size, cell) and a rendering (`render(scene)` -> 128x128 RGB uint8 and a per-pixel object-id map).
Objects sit inside distinct grid cells (at most one per cell, randomly sized and jittered inside
their cell), so they never overlap and every object's cell, and the left/right and above/below
relation of two objects in different columns/rows, is unambiguous. Within a scene no two objects
share both shape and colour, so "the red star" names one object.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128
GRID = 3
SS = 2  # supersampling factor of the RGB rendering (anti-aliased edges)

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 177, 56),
    "blue": (45, 95, 235),
    "yellow": (236, 214, 40),
    "purple": (150, 60, 205),
    "orange": (246, 140, 28),
    "white": (236, 236, 236),
}
COLOUR_NAMES: List[str] = list(COLOURS)
SHAPES: List[str] = ["circle", "square", "triangle", "star", "cross"]
CELL_NAMES: List[str] = ["top left", "top middle", "top right",
                         "middle left", "centre", "middle right",
                         "bottom left", "bottom middle", "bottom right"]
TEXTURES = ["plain", "noise", "stripes", "dots"]


@dataclass
class SceneConfig:
    """What a scene generator draws from (the curriculum changes these)."""
    min_objects: int = 3
    max_objects: int = 6
    min_size: int = 22           # object diameter in pixels (bounding box side)
    max_size: int = 36
    texture_prob: float = 0.6    # probability of a non-plain background texture
    colour_jitter: int = 14      # +- per channel around the palette colour
    max_colours: int = 4         # at most this many distinct colours per scene (makes counts 2-3 common)


@dataclass
class Obj:
    shape: str
    colour: str
    rgb: Tuple[int, int, int]
    cx: float
    cy: float
    size: float
    cell: int                   # 0..8, row-major from the top left

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    seed: int
    background: Tuple[int, int, int]
    texture: str
    texture_seed: int
    objects: List[Obj] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        objs = [Obj(**{**o, "rgb": tuple(o["rgb"])}) for o in d["objects"]]
        return Scene(seed=d["seed"], background=tuple(d["background"]), texture=d["texture"],
                     texture_seed=d["texture_seed"], objects=objs)

    def count(self, colour: str) -> int:
        return sum(o.colour == colour for o in self.objects)

    def with_shape(self, shape: str) -> List[Obj]:
        return [o for o in self.objects if o.shape == shape]

    def at_cell(self, cell: int) -> Optional[Obj]:
        for o in self.objects:
            if o.cell == cell:
                return o
        return None

    def has(self, colour: str, shape: str) -> bool:
        return any(o.colour == colour and o.shape == shape for o in self.objects)


def cell_bounds(cell: int) -> Tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a grid cell in pixels."""
    w = IMAGE_SIZE / GRID
    r, c = divmod(cell, GRID)
    return c * w, r * w, (c + 1) * w, (r + 1) * w


def cell_of_point(x: float, y: float) -> int:
    w = IMAGE_SIZE / GRID
    return min(int(y // w), GRID - 1) * GRID + min(int(x // w), GRID - 1)


def scene_parts(rng: random.Random, cfg, margin: float, bounds) -> Tuple[Tuple[int, int, int], str, List[Obj]]:
    """Background colour, texture and objects of a scene, drawn from rng in a fixed order (make_scene
    and scenes.sized.make_sized_scene: same seed, same draws). cfg: a SceneConfig or SizedConfig;
    bounds(cell) -> (x0, y0, x1, y1) in pixels; objects keep `margin` pixels inside their cell."""
    g = rng.randint(18, 72)
    tint = [rng.randint(-8, 8) for _ in range(3)]
    background = tuple(max(0, min(255, g + t)) for t in tint)
    texture = "plain" if rng.random() >= cfg.texture_prob else rng.choice(TEXTURES[1:])
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    cells = rng.sample(range(GRID * GRID), n)
    palette = rng.sample(COLOUR_NAMES, min(len(COLOUR_NAMES), rng.randint(2, cfg.max_colours)))
    used = set()
    objs: List[Obj] = []
    for cell in cells:
        for _ in range(100):
            colour, shape = rng.choice(palette), rng.choice(SHAPES)
            if (colour, shape) not in used:
                break
        else:  # palette too small for distinct pairs: any colour
            colour, shape = next((c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in used)
        used.add((colour, shape))
        x0, y0, x1, y1 = bounds(cell)
        size = rng.uniform(cfg.min_size, min(cfg.max_size, x1 - x0 - 2 * margin, y1 - y0 - 2 * margin))
        h = size / 2
        cx = rng.uniform(x0 + margin + h, x1 - margin - h)
        cy = rng.uniform(y0 + margin + h, y1 - margin - h)
        j = cfg.colour_jitter
        rgb = tuple(max(0, min(255, v + rng.randint(-j, j))) for v in COLOURS[colour])
        objs.append(Obj(shape, colour, rgb, round(cx, 2), round(cy, 2), round(size, 2), cell))
    return background, texture, objs


def make_scene(seed: int, cfg: Optional[SceneConfig] = None) -> Scene:
    """The scene of `seed` (same seed and config -> same scene)."""
    cfg = cfg or SceneConfig()
    rng = random.Random(seed * 2654435761 % (2 ** 61) + 17)
    background, texture, objs = scene_parts(rng, cfg, 2.0, cell_bounds)
    return Scene(seed=seed, background=background, texture=texture,
                 texture_seed=rng.randrange(2 ** 31), objects=objs)


# -------------------------------------------------------------------------------------------------
# Rendering
# -------------------------------------------------------------------------------------------------

def shape_polygon(shape: str, cx: float, cy: float, size: float) -> Optional[List[Tuple[float, float]]]:
    """Polygon of a shape inside a size x size box centred at (cx, cy) (None for the circle)."""
    h = size / 2
    if shape == "circle":
        return None
    if shape == "square":
        s = 0.86 * h
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h * 0.8), (cx - h, cy + h * 0.8)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = h if k % 2 == 0 else h * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + h * 0.08 + r * math.sin(a)))
        return pts
    if shape == "cross":
        a = h / 3
        return [(cx - a, cy - h), (cx + a, cy - h), (cx + a, cy - a), (cx + h, cy - a), (cx + h, cy + a),
                (cx + a, cy + a), (cx + a, cy + h), (cx - a, cy + h), (cx - a, cy + a), (cx - h, cy + a),
                (cx - h, cy - a), (cx - a, cy - a)]
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, o: Obj, scale: float, fill) -> None:
    cx, cy, size = o.cx * scale, o.cy * scale, o.size * scale
    poly = shape_polygon(o.shape, cx, cy, size)
    if poly is None:
        h = size / 2
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def _background(scene: Scene) -> np.ndarray:
    S = IMAGE_SIZE * SS
    rng = np.random.default_rng(scene.texture_seed)
    bg = np.empty((S, S, 3), np.float32)
    bg[:] = scene.background
    if scene.texture == "noise":
        bg += rng.normal(0, 9, (S // SS, S // SS, 1)).repeat(SS, 0).repeat(SS, 1)
    elif scene.texture == "stripes":
        period = rng.uniform(6, 14) * SS
        ang = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:S, 0:S]
        phase = (xx * math.cos(ang) + yy * math.sin(ang)) / period
        bg += (np.sin(2 * math.pi * phase) > 0)[..., None] * rng.uniform(10, 22)
    elif scene.texture == "dots":
        for _ in range(int(rng.integers(40, 90))):
            x, y = rng.integers(0, S - 3 * SS, 2)
            r = int(rng.integers(1, 3)) * SS
            bg[y:y + r, x:x + r] += rng.uniform(-25, 35)
    return np.clip(bg, 0, 255)


def render(scene: Scene) -> Tuple[np.ndarray, np.ndarray]:
    """(image HxWx3 uint8, object-id map HxW int8: -1 background, else the object's index)."""
    S = IMAGE_SIZE * SS
    img = Image.fromarray(_background(scene).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    ids = Image.new("L", (S, S), 255)
    idraw = ImageDraw.Draw(ids)
    for k, o in enumerate(scene.objects):
        _draw_shape(draw, o, SS, tuple(o.rgb))
        _draw_shape(idraw, o, SS, k)
    rgb = np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.uint8)
    idmap = np.asarray(ids, dtype=np.int16)[SS // 2::SS, SS // 2::SS]
    idmap = np.where(idmap == 255, -1, idmap).astype(np.int8)
    return rgb, idmap


def object_patch_labels(objects, idmap: np.ndarray, patch: int, min_cover: float = 0.25) -> Dict[str, np.ndarray]:
    """patch_labels' four arrays for an idmap of any size (rows x cols patches, row-major)."""
    rows, cols = idmap.shape[0] // patch, idmap.shape[1] // patch
    blocks = idmap.reshape(rows, patch, cols, patch).transpose(0, 2, 1, 3).reshape(rows * cols, patch * patch)
    colour = np.zeros(rows * cols, np.int64)
    shape = np.zeros(rows * cols, np.int64)
    centre = np.zeros(rows * cols, np.int64)
    cover = np.zeros(rows * cols, np.float32)
    for k, o in enumerate(objects):
        frac = (blocks == k).mean(1)
        sel = (frac >= min_cover) & (frac > cover)
        colour[sel] = 1 + COLOUR_NAMES.index(o.colour)
        shape[sel] = 1 + SHAPES.index(o.shape)
        cover[sel] = frac[sel]
        px, py = min(int(o.cx // patch), cols - 1), min(int(o.cy // patch), rows - 1)
        centre[py * cols + px] = 1
    return {"colour": colour, "shape": shape, "centre": centre, "cover": cover}


def patch_labels(scene: Scene, idmap: np.ndarray, patch: int = 8, min_cover: float = 0.25) -> Dict[str, np.ndarray]:
    """Dense labels per patch (row-major, (IMAGE_SIZE/patch)^2 entries): `colour` (0 background,
    1 + index in COLOUR_NAMES), `shape` (0 background, 1 + index in SHAPES), `centre` (1 where
    the patch holds an object's centre), `cover` (fraction of the patch covered by the object)."""
    return object_patch_labels(scene.objects, idmap, patch, min_cover)
