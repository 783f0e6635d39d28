"""Procedurally rendered scenes of 1-3 coloured shapes with compositional captions.

Each 64x64 image holds 1-3 shapes laid out left to right; captions state their colour, kind,
count and relative position. The test split is compositional: every test image contains at
least one colour-shape pair (e.g. a red triangle) that never appears in the train split. The val
split is new scenes drawn as the training ones are (no held-out pair): what a model does on
unseen images of seen pairs, to set beside what it does on unseen pairs. Everything is
deterministic from the seed.

Records also carry the exact layout the renderer drew: `regions`, one per object, its box
([x0, y0, x1, y1] in pixels) and a description that picks it out ("a red circle", or with a
neighbour where the scene holds two alike: "a red circle left of a blue square"), and
`segmentation`, a PNG whose pixel values are the object index + 1 (0: background).

Records also carry `negative_captions`: captions of the same scene made false by exchanging the
colours of two objects (binding) or reversing their order (relation), in every caption form that
states what was changed, for ITM's text negatives (`itm.text_negatives`, NegCLIP's swaps). None
names a held-out pair, so no held-out pair's words reach training, as negatives either.

And `gray_captions`, the captions with the colours left out, true of the image in grayscale, for
`data.grayscale`: an augmentation that shows kinds apart from colour without showing a held-out
pair (no colour reaches the image, no colour word the caption). `hue_shifts()` are the angles
by which `data.hue_shift` may turn the hues of a training image (with those captions) and show
no held-out pair either: kinds in colours that are none of the named ones.

`TOKENIZER` is a word-level tokenizer of the captions' 24 words (`tokenizer.name=hf`; 17 ids for
the longest caption, where bytes take 79), written by `write_tokenizer` and shipped.
"""
from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw

from vlm_jax.data import records

# 1.1: negative_captions, regions, segmentation; 1.2: the val split; 1.3: gray_captions
VERSION = "1.3.0"
SIZE = 64
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230),
          "yellow": (230, 210, 40), "purple": (150, 60, 190), "white": (235, 235, 235)}
KINDS = ("circle", "square", "triangle")
BACKGROUND = (25, 25, 30)
HELD_OUT = (("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle"))
COUNT_WORDS = ("one", "two", "three")
SPLITS = {"train": (4000, 1), "test": (500, 2), "val": (500, 3)}   # split -> (examples, seed)
TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_tokenizer.json")
SPECIALS = ("<pad>", "<s>", "</s>", "[MASK]", "[UNK]")


def _draw(draw: ImageDraw.ImageDraw, kind: str, color, cx: float, cy: float, r: float) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)


def describe(objects: list[tuple[str, str]], colours: bool = True) -> list[str]:
    """Captions for shapes listed left to right; without `colours`, what they are in grayscale
    ("a circle left of a square")."""
    looks = [f"{c} {k}" if colours else k for c, k in objects]
    names = [f"a {x}" for x in looks]
    n = len(objects)
    if n == 1:
        return [names[0], f"one {looks[0]}", f"a picture of {names[0]}"]
    if n == 2:
        return [f"{names[0]} left of {names[1]}", f"{names[1]} right of {names[0]}",
                f"two shapes: {names[0]} and {names[1]}"]
    return [f"{names[0]}, {names[1]} and {names[2]} from left to right",
            f"three shapes: {names[0]}, {names[1]}, {names[2]}",
            f"{names[1]} between {names[0]} and {names[2]}"]


def swaps(objects: list[tuple[str, str]]):
    """(i, j, scene) for each pair of objects i < j differing in colour and in kind, the scene
    with their colours exchanged: it holds colour-kind pairs the original does not."""
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            (ci, ki), (cj, kj) = objects[i], objects[j]
            if ci != cj and ki != kj:
                new = list(objects)
                new[i], new[j] = (cj, ki), (ci, kj)
                yield i, j, new


def negative_captions(objects: list[tuple[str, str]]) -> list[str]:
    """Captions false of the scene: every colour swap in all three forms, and the reversed order
    in the forms that state it (two objects: "left of" and "right of"; three: "from left to
    right", not "between", which reads the same both ways). Those naming a held-out pair are
    left out."""
    objects = [tuple(o) for o in objects]
    held = {tuple(p) for p in HELD_OUT}
    scenes = [(new, (0, 1, 2)) for _, _, new in swaps(objects)]
    if objects[::-1] != objects:
        scenes.append((objects[::-1], (0, 1) if len(objects) == 2 else (0,)))
    true = set(describe(objects))
    out = []
    for new, forms in scenes:
        if held.isdisjoint(new):
            out.extend(c for c in (describe(new)[f] for f in forms)
                       if c not in true and c not in out)
    return out


def hue(colour: str) -> float | None:
    """A named colour's hue in degrees [0, 360); None for white (no hue)."""
    h, s, _ = colorsys.rgb_to_hsv(*(v / 255 for v in COLORS[colour]))
    return h * 360 if s > 0.1 else None


def _hue_gap(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def hue_shifts(margin: float = 15.0) -> tuple[tuple[float, float], ...]:
    """The bands of angles (degrees, [lo, hi]) by which turning a training image's hues keeps
    every coloured object at least `margin` from each named hue, the named hue nearest it one
    its kind is seen in: the turned image shows no held-out pair, nor any named colour (white
    stays white). On a grid of whole degrees, each with PIL's hue step (360 / 256 degrees) to
    spare either side (images.rotate_hue turns in those steps)."""
    hues = {c: hue(c) for c in COLORS if hue(c) is not None}
    seen = [(c, k) for c in hues for k in KINDS if (c, k) not in HELD_OUT]

    def safe_at(t: float) -> bool:
        for c, k in seen:
            h = (hues[c] + t) % 360
            near = min(hues, key=lambda n: _hue_gap(h, hues[n]))
            if _hue_gap(h, hues[near]) < margin or (near, k) in HELD_OUT:
                return False
        return True

    step = 360 / 256
    safe = lambda t: all(safe_at(t + e) for e in (-step, 0, step))

    bands, start = [], None
    for t in range(-180, 182):
        if t <= 180 and safe(t):
            start = t if start is None else start
        elif start is not None:
            bands.append((float(start), float(t - 1)))
            start = None
    return tuple(bands)


def _sample_objects(rng: np.random.Generator, split: str) -> list[tuple[str, str]]:
    colors = list(COLORS)
    while True:
        n = int(rng.integers(1, 4))
        objs = [(colors[rng.integers(len(colors))], KINDS[rng.integers(len(KINDS))]) for _ in range(n)]
        held = any(o in HELD_OUT for o in objs)
        if held == (split == "test"):
            return objs


def render(objects: list[tuple[str, str]], rng: np.random.Generator):
    """(image uint8 [SIZE, SIZE, 3], segmentation uint8 [SIZE, SIZE] of object index + 1,
    boxes [[x0, y0, x1, y1], ...] in pixels, one per object)."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    seg = Image.new("L", (SIZE, SIZE), 0)
    draw, draw_seg = ImageDraw.Draw(img), ImageDraw.Draw(seg)
    slot = SIZE / len(objects)
    boxes = []
    for i, (color, kind) in enumerate(objects):
        r = float(rng.uniform(6, min(11, slot / 2 - 1)))
        cx = slot * i + slot / 2 + float(rng.uniform(-1, 1)) * max(0.0, slot / 2 - r - 1)
        cy = float(rng.uniform(r + 1, SIZE - r - 1))
        _draw(draw, kind, COLORS[color], cx, cy, r)
        _draw(draw_seg, kind, i + 1, cx, cy, r)
    seg = np.asarray(seg, np.uint8)
    for i in range(len(objects)):       # the drawn pixels' extent, pixel edges: [x0, x1) x [y0, y1)
        ys, xs = np.nonzero(seg == i + 1)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return np.asarray(img, np.uint8), seg, boxes


def region_descriptions(objects: list[tuple[str, str]]) -> list[str]:
    """For each object, a phrase that picks it out of its scene: its colour and kind, and where
    another object looks the same, where it is relative to its look-alike ("a red circle left
    of a red circle"; the middle of three alike: "... between ...")."""
    objects = [tuple(o) for o in objects]
    out = []
    for i, (c, k) in enumerate(objects):
        name = f"a {c} {k}"
        alike = [j for j, o in enumerate(objects) if o == (c, k) and j != i]
        if len(alike) == 2 and alike[0] < i < alike[1]:
            name += f" between {name} and {name}"
        elif alike:
            name += f" {'left' if alike[0] > i else 'right'} of {name}"
        out.append(name)
    return out


def examples(split: str):
    n, seed = SPLITS[split]
    rng = np.random.default_rng(seed)
    for i in range(n):
        objs = _sample_objects(rng, split)
        image, seg, boxes = render(objs, rng)
        yield {"image": records.encode_png(image), "label": len(objs) - 1,
               "captions": describe(objs), "id": i,
               "objects": [list(o) for o in objs],
               "negative_captions": negative_captions(objs),
               "gray_captions": describe(objs, colours=False),
               "regions": [{"box": b, "caption": d}
                           for b, d in zip(boxes, region_descriptions(objs))],
               "segmentation": records.encode_png(seg)}


def vocabulary() -> list[str]:
    """Every word and punctuation mark of every caption `describe` can write."""
    import itertools

    from tokenizers import pre_tokenizers
    split = pre_tokenizers.Whitespace().pre_tokenize_str
    words = set()
    for n in (1, 2, 3):
        for objs in itertools.product(itertools.product(COLORS, KINDS), repeat=n):
            words.update(w for c in describe(list(objs)) for w, _ in split(c))
    return sorted(words)


def write_tokenizer(path: str = TOKENIZER) -> str:
    """The word-level tokenizer.json of the captions: the specials, then the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(SPECIALS + tuple(vocabulary()))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()      # words joined by spaces
    tok.add_special_tokens(list(SPECIALS))  # their ids kept; decoding leaves them out
    tok.save(path)
    return path


def prepare(out_dir: str) -> dict:
    sizes = {s: records.write(os.path.join(out_dir, f"{s}.array_record"), examples(s))
             for s in SPLITS}
    return {"name": "shapes", "version": VERSION, "image_size": SIZE, "splits": sizes,
            "held_out": [list(p) for p in HELD_OUT],
            "classes": [{"count": w} for w in COUNT_WORDS],
            "templates": ["{count} shapes"]}
