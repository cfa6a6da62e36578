"""Pixel rules that read a scene back from an image: background color, and for each object its
color, position, size and shape. The adherence evaluation compares what these rules read with what
the prompt asked for. They are validated on ground-truth renders (they must read those right) and
on shuffled captions (a caption of another scene must score near chance), so a model cannot pass
by drawing something the rules misread.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scenes import COLORS, POSITIONS, RADIUS, SHAPES, Obj, Scene, _polygon

PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
NAMES = list(COLORS)


def nearest_color(rgb: np.ndarray) -> str:
    return NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(-1)))]


def _mask_for(shape: str, cx: float, cy: float, r: float, n: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(img)
    poly = _polygon(shape, cx, cy, r)
    if poly is None:
        d.ellipse((cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9), fill=1)
    else:
        d.polygon(poly, fill=1)
    return np.asarray(img, dtype=bool)


def read_scene(img: np.ndarray, max_objects: int = 2) -> Scene:
    """What the rules see in an RGB uint8 image: the background and up to `max_objects` objects,
    the largest first."""
    n = img.shape[0]
    px = img.astype(np.float32)
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    # Background: the palette color nearest to most border pixels.
    votes = [nearest_color(p) for p in border[:: max(1, len(border) // 64)]]
    bg = max(set(votes), key=votes.count)
    far = np.sqrt(((px - np.array(COLORS[bg], dtype=np.float32)) ** 2).sum(-1)) > 60.0
    labels, count = ndimage.label(far)
    sizes = ndimage.sum(far, labels, range(1, count + 1)) if count else []
    order = np.argsort(sizes)[::-1][:max_objects]
    objects = []
    for i in order:
        if sizes[i] < 0.004 * n * n:
            continue
        m = labels == (i + 1)
        ys, xs = np.nonzero(m)
        color = nearest_color(np.median(px[m], axis=0))
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        area = m.sum() / (n * n)
        size = "large" if area > 0.065 else "small"
        cell = lambda v: 0 if v < n / 3 else (1 if v < 2 * n / 3 else 2)  # noqa: E731
        position = next(k for k, v in POSITIONS.items() if v == (cell(cx), cell(cy)))
        # Shape: the template with the best IoU at the blob's centre, over a range of radii.
        best, shape = -1.0, SHAPES[0]
        for s in SHAPES:
            for f in (0.8, 0.9, 1.0, 1.1, 1.2):
                r = RADIUS[size] * n * f
                # Align the template's centroid (not its drawing centre) with the blob's.
                t = _mask_for(s, cx, cy, r, n)
                ty, tx = np.nonzero(t)
                t = _mask_for(s, 2 * cx - tx.mean() - 0.5, 2 * cy - ty.mean() - 0.5, r, n)
                iou = (t & m).sum() / max(1, (t | m).sum())
                if iou > best:
                    best, shape = iou, s
        objects.append(Obj(shape, color, size, position))
    return Scene(bg, tuple(objects))


ATTRIBUTES = ("background", "color", "position", "size", "shape")


def score(asked: Scene, seen: Scene) -> dict[str, bool]:
    """Per attribute, whether the image shows what was asked. For one-object scenes every
    attribute is judged on the largest blob, and `all` also needs it to be the only one (a stray
    second object fails the image, not the asked object's attributes). For two objects, the objects
    are paired in position order and each attribute needs exactly two objects, both right."""
    out = {"background": asked.background == seen.background}
    want, got = paired(asked, seen)
    counted = len(want) == 1 or len(seen.objects) == len(want)  # two objects: both, and only them
    for a in ("color", "position", "size", "shape"):
        out[a] = counted and all(y is not None and getattr(x, a) == getattr(y, a) for x, y in zip(want, got))
    out["all"] = all(out[a] for a in ATTRIBUTES) and len(seen.objects) == len(asked.objects)
    return out


def paired(asked: Scene, seen: Scene) -> tuple[list[Obj], list[Obj | None]]:
    """The asked objects and the seen objects they are judged against, in the same order: for one
    asked object the largest seen one; for two, the seen ones in position order. None where there
    is no seen object left to pair."""
    want = sorted(asked.objects, key=lambda o: POSITIONS[o.position])
    got = list(seen.objects[:1]) if len(want) == 1 else sorted(seen.objects, key=lambda o: POSITIONS[o.position])
    return want, (got + [None] * len(want))[: len(want)]

