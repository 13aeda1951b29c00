"""`shapes`: an offline, procedurally rendered 10-class image set with a style-shift OOD split.

Each 32x32 RGB image shows one shape (the class) under nuisance factors: colour, size,
position, rotation, and background texture. Colours and backgrounds come from small finite
sets (8 foreground colours, 3 background colours, 5 texture kinds whose every parameter takes
one of ``LEVELS`` values: 33 backgrounds), so each one is shared by hundreds of images and
instance discrimination (SSL) can only tell an image from its look-alikes by the object's
shape, size, position and pose. With continuous texture parameters and a per-image colour
tint every image carried a unique fingerprint, and SSL learned that instead of the shape
(linear probes of SimCLR/BYOL within 2-5 points of random features). The ``style`` split renders the same
classes the way training never does (outline-only or sketchy strokes, hatched fills,
unseen palettes and backgrounds), so a model that learned shape generalises and one that
learned texture does not. Every image has a caption.

The ``web`` split plays the role of CLIP's web data (the ``clip`` pretraining kind): new images (never
the test images), without labels, whose renderings, palettes and backgrounds span the whole dataset,
the ``style`` split's included, while the labeled ``train`` split stays narrow. So, as with real CLIP,
pretraining covers the shift that fine-tuning data lacks. Its captions describe shape, colour, size,
rendering and background with web-like noise (``web_caption``): some paraphrase the shape's name, some
omit it, some omit other attributes.
Rendering is supersampled 2x and box-filtered, so edges are anti-aliased.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlbench.data.registry import register_dataset
from dlbench.data.store import write_meta, write_split

CLASSES = ["circle", "ring", "triangle", "square", "heart", "bar", "star", "cross", "crescent", "arrow"]
SIZE = 32
SUPER = 2
SPLIT_SIZES = {"unlabeled": 8000, "train": 1000, "val": 500, "test": 2000, "style": 1000, "web": 8000}
UNLABELED = ("unlabeled", "web")
SEED = 20241
MAX_ROTATION = np.pi / 6  # radians either way; wider makes 100 labels/class too few

TRAIN_PALETTE = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "orange": (240, 130, 30), "purple": (140, 50, 190), "white": (240, 240, 240), "black": (25, 25, 25),
}
STYLE_PALETTE = {
    "pink": (250, 160, 200), "brown": (130, 80, 40), "teal": (30, 140, 140), "gray": (128, 128, 128),
    "navy": (20, 30, 90),
}
TRAIN_BACKGROUNDS = ("plain", "gradient", "stripes", "checker", "noise")
STYLE_BACKGROUNDS = ("dots", "waves", "plaid", "paper")
TRAIN_RENDERINGS = ("filled",)
STYLE_RENDERINGS = ("outline", "sketch", "hatched")

PROMPT_TEMPLATES = [
    "a photo of a {}.", "a drawing of a {}.", "a {} shape.", "an image of a small {}.", "an image of a large {}.",
]


def _regular_polygon(k: int, start: float = np.pi / 2) -> np.ndarray:
    a = start + 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    a = np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


POLYGONS: dict[str, np.ndarray] = {
    "triangle": _regular_polygon(3),
    "square": _regular_polygon(4, np.pi / 4),
    "bar": np.array([[-1, -.3], [1, -.3], [1, .3], [-1, .3]]),
    "star": _star(),
    "cross": 0.95 * np.array([[-.3, 1], [.3, 1], [.3, .3], [1, .3], [1, -.3], [.3, -.3], [.3, -1], [-.3, -1],
                              [-.3, -.3], [-1, -.3], [-1, .3], [-.3, .3]]),
    "arrow": np.array([[-1, -.25], [.15, -.25], [.15, -.7], [1, 0], [.15, .7], [.15, .25], [-1, .25]]),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over all pixels."""
    inside = np.zeros(u.shape, dtype=bool)
    xj, yj = poly[-1]
    for xi, yi in poly:
        crosses = (yi > v) != (yj > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (xj - xi) * (v - yi) / (yj - yi + 1e-12) + xi
        inside ^= crosses & (u < x_at)
        xj, yj = xi, yi
    return inside


def shape_mask(cls: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary mask of class ``cls`` in shape-local coordinates (unit radius)."""
    r2 = u * u + v * v
    if cls == "circle":
        return r2 < 1.0
    if cls == "ring":
        return (r2 < 1.0) & (r2 > 0.55**2)
    if cls == "heart":  # the classic implicit heart curve, flipped so it points down
        hu, hv = 1.1 * u, 1.1 * v + 0.15
        return (hu * hu + hv * hv - 1) ** 3 - hu * hu * hv**3 < 0
    if cls == "crescent":
        return (r2 < 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2)
    return _inside_polygon(u, v, POLYGONS[cls])


@dataclass
class Recipe:
    """All the nuisance factors of one image; the caption is derived from it."""

    cls: int
    cx: float
    cy: float
    radius: float
    angle: float
    colour: str
    background: str
    rendering: str
    style_bg_colours: bool | None = None  # background base colours of the style split; None: those of the palette


# Backgrounds come from small finite sets, so that thousands of images share each one: a background
# (or a foreground tint) that is unique to an image would let instance discrimination tell two images
# apart without looking at the object (issue: SSL on continuous textures learned the texture fingerprint).
# Base colours are muted and far from the foreground; the texture's second colour is a fixed offset.
TRAIN_BG_COLOURS = ((0.55, 0.50, 0.42), (0.42, 0.52, 0.58), (0.38, 0.45, 0.38))
STYLE_BG_COLOURS = ((0.80, 0.72, 0.55), (0.50, 0.70, 0.65), (0.72, 0.55, 0.75), (0.85, 0.85, 0.80))
TEXTURE_OFFSET = (0.12, -0.10, 0.08)
LEVELS = 2  # every texture parameter (angle, frequency, noise pattern) takes one of this many values


def _level(rng: np.random.Generator, lo: float, hi: float, levels: int = LEVELS) -> float:
    """One of ``levels`` evenly spaced values in [lo, hi] (a finite set shared by many images)."""
    return lo + (hi - lo) * int(rng.integers(levels)) / max(1, levels - 1)


def _noise_pattern(index: int, cells: int = 8) -> np.ndarray:
    """The ``index``-th of LEVELS fixed coarse noise patterns (the same for every image that draws it)."""
    return np.random.default_rng(SEED + 7919 * index).uniform(0, 1, (cells, cells))


def _base_colour(rng: np.random.Generator, colours: tuple, fg: np.ndarray) -> np.ndarray:
    """A background colour of the set, drawn among those far enough from the foreground."""
    far = [np.array(c) for c in colours if np.abs(np.array(c) - fg).mean() > 0.25]
    pool = far or [np.array(c) for c in colours]
    return pool[int(rng.integers(len(pool)))]


def _background(kind: str, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, fg: np.ndarray,
                style: bool = False) -> np.ndarray:
    """H x W x 3 float background texture in [0, 1]; every parameter from a finite set."""
    h, w = xx.shape
    c1 = _base_colour(rng, STYLE_BG_COLOURS if style else TRAIN_BG_COLOURS, fg)
    c2 = np.clip(c1 + np.array(TEXTURE_OFFSET), 0, 1)
    if kind == "plain":
        t = np.zeros((h, w))
    elif kind == "gradient":
        a = _level(rng, 0, 2 * np.pi * (LEVELS - 1) / LEVELS)
        t = (np.cos(a) * xx + np.sin(a) * yy + 1) / 2
    elif kind == "stripes":
        a, f = _level(rng, 0, np.pi * (LEVELS - 1) / LEVELS), _level(rng, 3, 7)
        t = (np.sin(f * np.pi * (np.cos(a) * xx + np.sin(a) * yy)) > 0).astype(float)
    elif kind == "checker":
        f = _level(rng, 2, 5)
        t = ((np.floor((xx + 1) * f) + np.floor((yy + 1) * f)) % 2).astype(float)
    elif kind == "noise":
        t = np.kron(_noise_pattern(int(rng.integers(LEVELS))), np.ones((h // 8, w // 8)))
    elif kind == "dots":
        f = _level(rng, 3, 5)
        gx, gy = (xx + 1) * f % 1 - 0.5, (yy + 1) * f % 1 - 0.5
        t = (gx * gx + gy * gy < 0.09).astype(float)
    elif kind == "waves":
        f, ox, oy = _level(rng, 4, 8), _level(rng, -1, 1), _level(rng, -1, 1)
        t = (np.sin(f * np.pi * np.sqrt((xx - ox) ** 2 + (yy - oy) ** 2)) + 1) / 2
    elif kind == "plaid":
        f = _level(rng, 3, 6)
        t = 0.5 * (np.sin(f * np.pi * xx) > 0.6) + 0.5 * (np.sin(f * np.pi * yy) > 0.6)
    elif kind == "paper":
        c1, c2 = np.array([0.97, 0.96, 0.9]), np.array([0.6, 0.7, 0.9])
        t = (np.abs(np.sin(6 * np.pi * yy)) < 0.06).astype(float)
    else:
        raise ValueError(kind)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _stroke(cls: str, u: np.ndarray, v: np.ndarray, width: float) -> np.ndarray:
    """The outline of a shape: its mask minus the mask shrunk by ``width``."""
    return shape_mask(cls, u, v) & ~shape_mask(cls, u / (1 - width), v / (1 - width))


def render(recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """Render one recipe to a 32x32x3 uint8 image."""
    n = SIZE * SUPER
    lin = (np.arange(n) + 0.5) / n * 2 - 1
    xx, yy = np.meshgrid(lin, -lin)
    name = CLASSES[recipe.cls]
    palette = TRAIN_PALETTE if recipe.colour in TRAIN_PALETTE else STYLE_PALETTE
    fg = np.array(palette[recipe.colour]) / 255  # no per-image tint: it would fingerprint the image
    style_bg = palette is STYLE_PALETTE if recipe.style_bg_colours is None else recipe.style_bg_colours
    img = _background(recipe.background, rng, xx, yy, fg, style=style_bg)
    ca, sa = np.cos(recipe.angle), np.sin(recipe.angle)
    dx, dy = xx - recipe.cx, yy - recipe.cy
    u = (ca * dx + sa * dy) / recipe.radius
    v = (-sa * dx + ca * dy) / recipe.radius
    if recipe.rendering == "filled":
        mask = shape_mask(name, u, v)
    elif recipe.rendering == "outline":
        mask = _stroke(name, u, v, 0.22)
    elif recipe.rendering == "sketch":
        wobble = 0.06 * np.sin(rng.uniform(5, 9) * np.arctan2(v, u) + rng.uniform(0, 6))
        mask = _stroke(name, u * (1 + wobble), v * (1 + wobble), 0.18)
        mask &= rng.uniform(0, 1, mask.shape) > 0.25  # broken pencil strokes
    elif recipe.rendering == "hatched":
        mask = shape_mask(name, u, v) & ((np.sin(14 * (xx + yy)) > 0) | _stroke(name, u, v, 0.15))
    else:
        raise ValueError(recipe.rendering)
    img[mask] = fg
    img = img.reshape(SIZE, SUPER, SIZE, SUPER, 3).mean(axis=(1, 3))
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


RENDERING_WORDS = {"filled": "", "outline": " drawn as an outline", "sketch": " sketched in pencil",
                   "hatched": " with hatched fill"}


def _size_word(recipe: Recipe) -> str:
    return "small" if recipe.radius < 0.55 else "large" if recipe.radius > 0.65 else "medium"


def caption(recipe: Recipe) -> str:
    how = RENDERING_WORDS[recipe.rendering]
    return f"a {_size_word(recipe)} {recipe.colour} {CLASSES[recipe.cls]}{how} on a {recipe.background} background"


# Web-caption noise (the web split): how often the shape's name is paraphrased or left out, and how
# often each other attribute is left out. Alt-text on the web names the object most of the time and
# the background rarely.
PARAPHRASES = {
    "circle": ("disc", "round dot"), "ring": ("donut", "hoop"), "triangle": ("three-sided shape", "pyramid"),
    "square": ("box", "block"), "heart": ("love symbol", "valentine"), "bar": ("stripe", "rectangle"),
    "star": ("five-pointed star", "starburst"), "cross": ("plus sign", "x mark"),
    "crescent": ("moon", "sickle"), "arrow": ("pointer", "chevron arrow"),
}
P_PARAPHRASE, P_OMIT_SHAPE = 0.15, 0.15
P_OMIT = {"size": 0.5, "colour": 0.3, "rendering": 0.3, "background": 0.7}


def web_caption(recipe: Recipe, rng: np.random.Generator) -> str:
    """A noisy caption: the shape's name (70%), a paraphrase (15%) or nothing ("object", 15%); size,
    colour, rendering and background each left out with its ``P_OMIT`` probability."""
    r = rng.uniform()
    name = CLASSES[recipe.cls]
    noun = (name if r >= P_PARAPHRASE + P_OMIT_SHAPE
            else str(rng.choice(PARAPHRASES[name])) if r < P_PARAPHRASE else "object")
    keep = rng.uniform(size=4) >= np.array([P_OMIT[k] for k in ("size", "colour", "rendering", "background")])
    words = [w for w, k in ((_size_word(recipe), keep[0]), (recipe.colour, keep[1])) if k]
    text = " ".join(["a", *words, noun]) + (RENDERING_WORDS[recipe.rendering] if keep[2] else "")
    return text + (f" on a {recipe.background} background" if keep[3] else "")


def sample_web_recipe(cls: int, rng: np.random.Generator) -> Recipe:
    """Any rendering, palette colour, background and background colour set of the dataset (the style
    split's included), each drawn independently."""
    palette = {**TRAIN_PALETTE, **STYLE_PALETTE}
    return Recipe(
        cls=cls,
        cx=float(rng.uniform(-0.25, 0.25)),
        cy=float(rng.uniform(-0.25, 0.25)),
        radius=float(rng.uniform(0.45, 0.75)),
        angle=float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
        colour=str(rng.choice(list(palette))),
        background=str(rng.choice(TRAIN_BACKGROUNDS + STYLE_BACKGROUNDS)),
        rendering=str(rng.choice(TRAIN_RENDERINGS + STYLE_RENDERINGS)),
        style_bg_colours=bool(rng.uniform() < 0.5),
    )


def sample_recipe(cls: int, rng: np.random.Generator, style: bool) -> Recipe:
    palette = STYLE_PALETTE if style else TRAIN_PALETTE
    return Recipe(
        cls=cls,
        cx=float(rng.uniform(-0.25, 0.25)),
        cy=float(rng.uniform(-0.25, 0.25)),
        radius=float(rng.uniform(0.45, 0.75)),
        angle=float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
        colour=str(rng.choice(list(palette))),
        background=str(rng.choice(STYLE_BACKGROUNDS if style else TRAIN_BACKGROUNDS)),
        rendering=str(rng.choice(STYLE_RENDERINGS if style else TRAIN_RENDERINGS)),
    )


def render_split(n: int, seed: int, style: bool = False, web: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render ``n`` class-balanced images (classes cycle, then shuffled) from one seed; ``web``: the web
    split's recipes and noisy captions."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    captions = []
    for i, cls in enumerate(labels):
        recipe = sample_web_recipe(int(cls), rng) if web else sample_recipe(int(cls), rng, style)
        images[i] = render(recipe, rng)
        captions.append(web_caption(recipe, rng) if web else caption(recipe))
    return images, labels.astype(np.int64), captions


@register_dataset("shapes", offline=True, description="procedural 32x32 shapes, 10 classes, style-shift OOD split",
                  splits=SPLIT_SIZES, image_size=SIZE)
def build(out: Path, raw_dir: Path | None = None, sizes: dict[str, int] | None = None) -> None:
    sizes = {**SPLIT_SIZES, **(sizes or {})}
    out.mkdir(parents=True, exist_ok=True)
    splits_meta = {}
    for i, (split, n) in enumerate(sizes.items()):
        images, labels, caps = render_split(n, SEED + 1000 * i, style=split == "style", web=split == "web")
        if split in UNLABELED:
            labels = np.full_like(labels, -1)
        write_split(out, split, images, labels, caps)
        splits_meta[split] = {"n": n, "shift": "style" if split == "style" else "id", "labeled": split not in UNLABELED}
    splits_meta["web"]["role"] = ("language-image pretraining data (CLIP's web data): every rendering, palette and "
                                  "background of the dataset, the style split's included; noisy captions "
                                  f"(shape name paraphrased {P_PARAPHRASE:.0%}, omitted {P_OMIT_SHAPE:.0%}; omitted: "
                                  + ", ".join(f"{k} {v:.0%}" for k, v in P_OMIT.items()) + "); never the test images")
    write_meta(out, {
        "name": "shapes",
        "classes": CLASSES,
        "splits": splits_meta,
        "image_size": [SIZE, SIZE, 3],
        "prompt_templates": PROMPT_TEMPLATES,
        "source": "procedurally rendered by dlbench.data.shapes (seed %d)" % SEED,
        "license": "CC0 (synthetic)",
        "captions": True,
    })
