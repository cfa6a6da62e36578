"""Procedural scenes and their captions: the training data of easel's bundled model.

A scene is a plain background with one or two objects. An object has a shape, a color, a size and a
position on a 3x3 grid. Every scene can be described in several phrasings, and any optional part of
a caption (size, position, background) may be left out, so that "a red star" is a valid prompt: what
the caption does not say is whatever the scene happened to have.

Everything is deterministic from a seed (numpy's PCG64). Images are drawn with PIL at 4x the
target size and reduced with a box filter, so edges are antialiased the same way every time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLORS = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 30),
    "green": (40, 170, 60),
    "blue": (30, 70, 220),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
# Grid cells: (column, row), 0..2 each. Names as a caption says them.
POSITIONS = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
# Radius as a fraction of the image side; centre of each grid cell for each size.
RADIUS = {"small": 0.11, "large": 0.22}
CENTRE = {"small": (0.2, 0.5, 0.8), "large": (0.28, 0.5, 0.72)}


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]


def held_out_triples(seed: int = 8) -> set[tuple[str, str, str]]:
    """(shape, color, background) combinations that training never shows in a one-object scene:
    about one in eight, chosen so that every shape, color and background still appears in training."""
    rng = np.random.default_rng(seed)
    triples = [(s, c, b) for s, c, b in itertools.product(SHAPES, COLORS, COLORS) if c != b]
    rng.shuffle(triples)
    return set(map(tuple, triples[: len(triples) // 8]))


def random_object(rng, background: str, taken: set[tuple[int, int]]) -> Obj:
    while True:
        pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
        if POSITIONS[pos] not in taken:
            break
    color = background
    while color == background:
        color = list(COLORS)[rng.integers(len(COLORS))]
    return Obj(SHAPES[rng.integers(len(SHAPES))], color, SIZES[rng.integers(len(SIZES))], pos)


def random_scene(rng, held_out: set, two_objects: float = 0.3) -> Scene:
    """One training scene. Two-object scenes put their objects in different columns and rows
    (so "left"/"right" or "top"/"bottom" tells them apart) and are both small."""
    while True:
        bg = list(COLORS)[rng.integers(len(COLORS))]
        if rng.random() < two_objects:
            a = random_object(rng, bg, set())
            a = Obj(a.shape, a.color, "small", a.position)
            ca, ra = POSITIONS[a.position]
            b = random_object(rng, bg, {(c, r) for c in range(3) for r in range(3) if c == ca or r == ra})
            b = Obj(b.shape, b.color, "small", b.position)
            return Scene(bg, (a, b))
        o = random_object(rng, bg, set())
        if (o.shape, o.color, bg) not in held_out:
            return Scene(bg, (o,))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "star":
        pts = []
        for i in range(10):
            a = -np.pi / 2 + i * np.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a) + r * 0.1))
        return pts
    if shape == "cross":
        t = r * 0.36
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    return None


def render(scene: Scene, size: int, jitter=None) -> np.ndarray:
    """The scene as an RGB uint8 array of size x size. `jitter` (a numpy Generator) moves each
    object by up to 4 % of the side and scales it by ±10 %, as training does; evaluation renders
    ground truth without it."""
    k = 4
    big = size * k
    img = Image.new("RGB", (big, big), COLORS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        col, row = POSITIONS[o.position]
        cx, cy = CENTRE[o.size][col] * big, CENTRE[o.size][row] * big
        r = RADIUS[o.size] * big
        if jitter is not None:
            cx += jitter.uniform(-0.04, 0.04) * big
            cy += jitter.uniform(-0.04, 0.04) * big
            r *= jitter.uniform(0.9, 1.1)
        poly = _polygon(o.shape, cx, cy, r)
        if poly is None:
            draw.ellipse((cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9), fill=COLORS[o.color])
        else:
            draw.polygon(poly, fill=COLORS[o.color])
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.uint8)


# --- captions ------------------------------------------------------------------------------------

def _where(position: str, rng) -> str:
    if position == "center":
        return ["in the center", "in the middle", "at the center"][rng.integers(3)]
    return [f"on the {position}", f"at the {position}", f"in the {position}"][rng.integers(3)]


def object_phrase(o: Obj, rng, keep_size=True, keep_position=True) -> str:
    words = ["a"]
    if keep_size:
        words.append(o.size if rng.random() < 0.8 else {"small": "tiny", "large": "big"}[o.size])
    words += [o.color, o.shape]
    text = " ".join(words)
    if keep_position:
        text += " " + _where(o.position, rng)
    return text


def background_phrase(bg: str, rng) -> str:
    return [f"{bg} background", f"on a {bg} background", f"a {bg} background"][rng.integers(3)]


def caption(scene: Scene, rng, drop: float = 0.25) -> str:
    """One caption of the scene, in one of several phrasings; each optional part is left out with
    probability `drop`."""
    keep = lambda: rng.random() >= drop  # noqa: E731
    objs = [object_phrase(o, rng, keep(), len(scene.objects) > 1 or keep()) for o in scene.objects]
    things = " and ".join(objs)
    if not keep():
        return things
    bg = scene.background
    form = rng.integers(4)
    if form == 0:
        return f"{things}, {bg} background"
    if form == 1:
        return f"{things} on a {bg} background"
    if form == 2:
        return f"a {bg} background with {things}"
    return f"{things}. {bg} background"


def full_caption(scene: Scene) -> str:
    """The canonical caption with every part, as the evaluation prompts are written."""
    things = " and ".join(
        f"a {o.size} {o.color} {o.shape} " + ("in the center" if o.position == "center" else f"on the {o.position}")
        for o in scene.objects)
    return f"{things}, {scene.background} background"


# --- caption parsing (labels for the text encoder's pretraining) ------------------------------------

LABELS = {"background": tuple(COLORS), "count": (1, 2)}
OBJECT_LABELS = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "position": tuple(POSITIONS)}
_SIZE_WORDS = {"small": "small", "tiny": "small", "large": "large", "big": "large"}
_POSITION_PHRASES = sorted(
    [(f"{p} {w}", w) for w in POSITIONS for p in ("on the", "at the", "in the")]
    + [("in the center", "center"), ("in the middle", "center"), ("at the center", "center")],
    key=lambda x: -len(x[0]))


def parse_caption(text: str) -> dict[str, int]:
    """What a caption of this grammar says, as label indices (-1 where it says nothing): the
    background, the number of objects and each object's shape, color, size and position, in caption
    order. Pretraining the text encoder to read these off its own outputs keeps the outputs
    informative (see train_model.pretrain_text)."""
    out = {"background": -1, "count": -1}
    out.update({f"{k}{i}": -1 for i in range(2) for k in OBJECT_LABELS})
    text = text.lower().strip().rstrip(".")
    for bg in COLORS:
        if f"{bg} background" in text:
            out["background"] = LABELS["background"].index(bg)
            text = (text.replace(f"a {bg} background with ", "").replace(f" on a {bg} background", "")
                    .replace(f", {bg} background", "").replace(f". {bg} background", "")
                    .replace(f"on a {bg} background", "").replace(f"a {bg} background", "")
                    .replace(f"{bg} background", ""))
            break
    phrases = [p.strip(" ,.") for p in text.split(" and ") if p.strip(" ,.")]
    if not phrases or len(phrases) > 2:
        return out
    out["count"] = len(phrases) - 1
    for i, p in enumerate(phrases):
        for phrase, pos in _POSITION_PHRASES:
            if p.endswith(phrase):
                out[f"position{i}"] = OBJECT_LABELS["position"].index(pos)
                p = p[: -len(phrase)]
                break
        for w in p.split():
            if w in _SIZE_WORDS:
                out[f"size{i}"] = SIZES.index(_SIZE_WORDS[w])
            elif w in COLORS:
                out[f"color{i}"] = OBJECT_LABELS["color"].index(w)
            elif w in SHAPES:
                out[f"shape{i}"] = SHAPES.index(w)
    return out
