"""The embedded default benchmark: synthetic high-resolution visual search, from a seed.

Each image (default 2048x1536 JPEG) has a low-contrast textured background, many small solid
distractor shapes (circles, squares, triangles; many colours; 20-150 px at 1536 px short side)
and one or more *named objects*: a thick frame of a named colour ("the red square", "the blue
circle") whose interior is a checkerboard of two complementary colours with `detail_px` cells.

Two question families mirror V* Bench:
- attribute: "What two colours make up the checkered pattern inside the red square?", options
  are colour pairs ("red and cyan", ...). Every pair averages to the same mid gray. With the
  defaults (24-px cells, targets 35-45% of the short side) a cell is 3 px in the 252x168 first
  view, so every 14-px patch there is the same gray and the answer is gone; in the 448-px crop
  of the model's box a cell is about a patch, an area the patch embedding sees (the manifest's
  patch-aware oracle checks both, components/data/oracle.py). The object spans 2-3 merged 28-px
  tokens of the first view: smaller ones were never found by the tiny model
  (docs/learnability.md). Decoy named objects with other patterns (taken from the wrong
  options, `decoys`) make the model find the *named* one rather than any framed one.
  `position_tint` blends the background's red and blue toward position ramps (see
  `background`).
- spatial: "Is the red square to the left or to the right of the blue circle?" (or above/below),
  2 options; answerable from the first view, as in V*.

Correct letters are balanced exactly per family within each block of `num_options` questions.
Each sample draws from its own generator seeded by (seed, split, index), so any sample can be
rebuilt alone and the same seed gives byte-identical JPEGs and parquet. Difficulty knobs:
`target_size`, `clutter_density`, `num_distractors`, `decoys`; the `scale_sweep` split fixes the
target size per block for accuracy-versus-size curves; `test_4k` uses 3840x2160 images.
Departure from the paper: synthetic data replaces MME-RealWorld for the embedded default.
"""

from __future__ import annotations

import colorsys
import io
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from components.config import SyntheticConfig
from components.data.record import Record, letter

# Complementary pairs: each averages to (127.5, 127.5, 127.5), so a checkerboard of any of them
# blurs to the same gray. Names use words the tiny tokenizer was trained on.
PAIRS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "red and cyan": ((255, 0, 0), (0, 255, 255)),
    "green and magenta": ((0, 255, 0), (255, 0, 255)),
    "blue and yellow": ((0, 0, 255), (255, 255, 0)),
    "orange and azure": ((255, 128, 0), (0, 127, 255)),
    "black and white": ((0, 0, 0), (255, 255, 255)),
}
PAIR_NAMES = list(PAIRS)

# Frame colours of named objects (the name says the frame's colour).
FRAME_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 170, 40),
    "blue": (20, 50, 230),
    "yellow": (245, 215, 0),
    "purple": (140, 30, 190),
    "white": (250, 250, 250),
}
SHAPES = ("square", "circle")
DISTRACTOR_SHAPES = ("circle", "square", "triangle")
FRAME_SHARE = 0.12  # frame thickness as a share of the object's side
REFERENCE_SHORT_SIDE = 1536  # distractor sizes (20-150 px) are given for this short side
SPLITS = ("train", "val", "test", "scale_sweep", "test_4k")


@dataclass(frozen=True)
class NamedObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]
    pattern: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class SplitSpec:
    name: str
    count: int
    width: int
    height: int
    attribute_share: float
    sizes: tuple[float, ...] | None = None  # scale sweep: one fixed size per block of per_size
    per_size: int = 0


def split_specs(cfg: SyntheticConfig) -> list[SplitSpec]:
    """Every split the config asks for, in writing order (empty splits included)."""
    w, h, share = cfg.width, cfg.height, cfg.attribute_share
    sweep = cfg.scale_sweep
    return [
        SplitSpec("train", cfg.train, w, h, share),
        SplitSpec("val", cfg.val, w, h, share),
        SplitSpec("test", cfg.test, w, h, share),
        SplitSpec(
            "scale_sweep", len(sweep.sizes) * sweep.per_size, w, h, 1.0, tuple(sweep.sizes), sweep.per_size
        ),
        SplitSpec("test_4k", cfg.split_4k.count, cfg.split_4k.width, cfg.split_4k.height, share),
    ]


def _code(text: str) -> int:
    # A stable integer for a name (Python's hash() is salted per process).
    return zlib.crc32(text.encode())


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _code(split), index])


def family_count_before(index: int, share: float) -> int:
    """Attribute questions among the first `index` questions of a split (exact share)."""
    return math.floor(index * share + 1e-9)


def is_attribute(index: int, share: float) -> bool:
    return family_count_before(index + 1, share) > family_count_before(index, share)


def balanced_position(seed: int, split: str, family: str, k: int, n: int) -> int:
    """Correct option position of the k-th question of a family: every block of n questions
    uses each position once, in a seeded order (so letters are balanced and not periodic)."""
    perm = np.random.default_rng([seed, _code(split), _code(family), k // n]).permutation(n)
    return int(perm[k % n])


# ---------------------------------------------------------------------------------- drawing


# Half-range of the position gradient at position_tint 1, in colour levels.
TINT_LEVELS = 100.0


def background(rng: np.random.Generator, w: int, h: int, clutter: float, tint: float = 0.0) -> np.ndarray:
    """Low-contrast smooth texture around a random mid gray (smooth: it costs few JPEG bytes).

    With `tint` > 0 the red channel is blended (share `tint`) toward a ramp from left to right and
    the blue channel toward one from top to bottom (127.5 +- TINT_LEVELS). Why: Qwen2.5-VL's vision tower has no absolute position
    embedding (only relative 2-D RoPE) and its LM sees position only through rotary attention
    scores, so a random-weight model has no feature that says where a token sits; the 7B model
    learned that in pretraining. The gradient puts position into the pixels, where a tiny model
    reads it like a colour (docs/learnability.md has the measurements)."""
    # Built at 1/4 resolution and upsampled once: the texture is smooth anyway, and full-size
    # float arithmetic was most of the generation time.
    sw, sh = max(1, w // 4), max(1, h // 4)
    base = rng.uniform(105, 150) + rng.uniform(-10, 10, size=3)
    img = np.broadcast_to(base, (sh, sw, 3)).astype(np.float32)
    for cell, amplitude in ((24, 36.0), (3, 10.0)):
        small = rng.uniform(0, 255, size=(sh // cell + 2, sw // cell + 2, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(small).resize((sw, sh), Image.Resampling.BILINEAR), np.float32)
        img += (smooth / 255.0 - 0.5) * 2 * amplitude * clutter
    if tint > 0:
        # Blended toward an absolute ramp (not added to the random base colour, whose per-image
        # offset would hide where on the ramp a pixel is).
        ramp_x = 127.5 + np.linspace(-1.0, 1.0, sw, dtype=np.float32)[None, :] * TINT_LEVELS
        ramp_y = 127.5 + np.linspace(-1.0, 1.0, sh, dtype=np.float32)[:, None] * TINT_LEVELS
        img[..., 0] = (1 - tint) * img[..., 0] + tint * ramp_x
        img[..., 2] = (1 - tint) * img[..., 2] + tint * ramp_y
    low = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(low.resize((w, h), Image.Resampling.BILINEAR))


def _distractor_colour(rng: np.random.Generator, avoid: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    colour = (128, 128, 128)
    for _ in range(20):
        r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.25, 1.0), rng.uniform(0.3, 1.0))
        colour = (int(r * 255), int(g * 255), int(b * 255))
        # No distractor may share a named object's colour: names stay unambiguous.
        if all(sum((a - c) ** 2 for a, c in zip(colour, ref, strict=True)) > 110**2 for ref in avoid):
            return colour
    return colour


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def draw_distractors(
    image: Image.Image, rng: np.random.Generator, count: int, keep_out: list, avoid_colours: list
) -> int:
    """Solid small shapes, never touching a named object's box. Returns how many were drawn."""
    draw = ImageDraw.Draw(image)
    scale = min(image.size) / REFERENCE_SHORT_SIDE
    lo, hi = max(3, round(20 * scale)), max(4, round(150 * scale))
    drawn = 0
    for _ in range(count):
        s = int(rng.integers(lo, hi + 1))
        shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        colour = _distractor_colour(rng, avoid_colours)
        for _try in range(20):
            x, y = int(rng.integers(0, image.width - s)), int(rng.integers(0, image.height - s))
            box = (x, y, x + s, y + s)
            if not any(_overlaps(box, k, max(2, s // 8)) for k in keep_out):
                break
        else:
            continue
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape == "square":
            draw.rectangle((x, y, x + s - 1, y + s - 1), fill=colour)
        else:
            draw.polygon([(x + s / 2, y), (x + s, y + s), (x, y + s)], fill=colour)
        drawn += 1
    return drawn


def draw_object(pixels: np.ndarray, obj: NamedObject, detail_px: int) -> None:
    """A thick frame of the name colour; inside, a checkerboard of the pattern's two colours.

    The checker grid is aligned to the image origin (cells at multiples of detail_px), which
    with 8-px cells matches JPEG's 8x8 blocks and keeps the pattern crisp after encoding.
    """
    x1, y1, x2, y2 = obj.box
    side = x2 - x1
    t = max(2, round(FRAME_SHARE * side))
    yy, xx = np.mgrid[y1:y2, x1:x2]
    if obj.shape == "circle":
        c = (side - 1) / 2
        d = np.hypot(xx - x1 - c, yy - y1 - c)
        outer, inner = d <= side / 2, d <= side / 2 - t
    else:
        outer = np.ones_like(xx, dtype=bool)
        inner = (xx >= x1 + t) & (xx < x2 - t) & (yy >= y1 + t) & (yy < y2 - t)
    region = pixels[y1:y2, x1:x2]
    region[outer & ~inner] = FRAME_COLOURS[obj.colour]
    c1, c2 = PAIRS[obj.pattern]
    parity = ((xx // detail_px) + (yy // detail_px)) % 2 == 0
    region[inner & parity] = c1
    region[inner & ~parity] = c2


def place(rng: np.random.Generator, w: int, h: int, side: int, taken: list, gap: int) -> tuple:
    margin = max(1, round(0.02 * min(w, h)))
    for _ in range(500):
        x = int(rng.integers(margin, w - side - margin + 1))
        y = int(rng.integers(margin, h - side - margin + 1))
        box = (x, y, x + side, y + side)
        if not any(_overlaps(box, other, gap) for other in taken):
            return box
    raise RuntimeError(f"cannot place a {side}px object in a {w}x{h} image beside {len(taken)} others")


def place_shrinking(rng: np.random.Generator, w: int, h: int, side: int, taken: list, gap: int) -> tuple:
    """`place`, with the side shrunk by 15% after each failure (large decoys beside a large
    target do not always fit); raises when even an 8-px object does not fit."""
    while True:
        try:
            return place(rng, w, h, side, taken, gap)
        except RuntimeError:
            if side <= 8:
                raise
            side = max(8, int(side * 0.85))


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    # Explicit settings (no optimize, no metadata): same bytes each run. 4:4:4 chroma: with 4:2:0
    # the decoder's chroma upsampling blends neighbouring cells of complementary colours (mean
    # error 42 levels inside the pattern, 1.7 with 4:4:4, for ~50% more bytes).
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, subsampling=0, optimize=False)
    return buf.getvalue()


# -------------------------------------------------------------------------------- questions


def _names(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    combos = [(c, s) for c in FRAME_COLOURS for s in SHAPES]
    picks = rng.choice(len(combos), size=count, replace=False)
    return [combos[int(i)] for i in picks]


def make_sample(cfg: SyntheticConfig, seed: int, spec: SplitSpec, index: int, source: str) -> Record:
    """Question `index` of split `spec`: the same inputs always give the same record and bytes."""
    rng = sample_rng(seed, spec.name, index)
    w, h = spec.width, spec.height
    short = min(w, h)
    if spec.sizes is not None:
        size = spec.sizes[index // spec.per_size]
        attribute = True
    else:
        size = float(rng.uniform(*cfg.target_size))
        attribute = is_attribute(index, spec.attribute_share)
    side = max(8, round(size * short))
    gap = max(4, round(0.04 * short))
    family = "attribute" if attribute else "spatial"
    # k: this question's rank within its family (letters are balanced per family).
    if spec.sizes is not None:
        k = index
    elif attribute:
        k = family_count_before(index, spec.attribute_share)
    else:
        k = index - family_count_before(index, spec.attribute_share)

    objects: list[NamedObject] = []
    if attribute:
        n = cfg.num_options
        pos = balanced_position(seed, spec.name, family, k, n)
        correct = PAIR_NAMES[int(rng.integers(len(PAIR_NAMES)))]
        others = [p for p in PAIR_NAMES if p != correct]
        wrong = [others[int(i)] for i in rng.choice(len(others), size=n - 1, replace=False)]
        options = [*wrong[:pos], correct, *wrong[pos:]]
        names = _names(rng, 1 + cfg.decoys)
        target = NamedObject(*names[0], place(rng, w, h, side, [], gap), correct)
        objects.append(target)
        for j, (colour, shape) in enumerate(names[1:]):
            # Decoys carry a wrong option's pattern: cropping the wrong object gives a wrong answer.
            pattern = wrong[j % len(wrong)]
            decoy_side = max(8, round(float(rng.uniform(*cfg.target_size)) * short))
            box = place_shrinking(rng, w, h, decoy_side, [o.box for o in objects], gap)
            objects.append(NamedObject(colour, shape, box, pattern))
        question = f"What two colours make up the checkered pattern inside the {target.name}?"
        boxes = [list(target.box)]
        meta = {"family": family, "target_size": size, "targets": [target.name], "pattern": correct}
    else:
        (ca, sa), (cb, sb) = _names(rng, 2)
        axis = "horizontal" if rng.uniform() < 0.5 else "vertical"
        a_box = place(rng, w, h, side, [], gap)
        b_side = max(8, round(float(rng.uniform(*cfg.target_size)) * short))
        lo_i, hi_i = (0, 2) if axis == "horizontal" else (1, 3)
        for _ in range(500):
            b_box = place(rng, w, h, b_side, [a_box], gap)
            if a_box[hi_i] + gap <= b_box[lo_i] or b_box[hi_i] + gap <= a_box[lo_i]:
                break
        else:
            raise RuntimeError(f"{spec.name} sample {index}: cannot separate two objects along {axis}")
        pats = rng.choice(len(PAIR_NAMES), size=2, replace=False)
        a = NamedObject(ca, sa, a_box, PAIR_NAMES[int(pats[0])])
        b = NamedObject(cb, sb, b_box, PAIR_NAMES[int(pats[1])])
        objects += [a, b]
        first = a_box[lo_i] < b_box[lo_i]
        if axis == "horizontal":
            words, truth = ("left", "right"), ("left" if first else "right")
            question = f"Is the {a.name} to the left or to the right of the {b.name}?"
        else:
            words, truth = ("above", "below"), ("above" if first else "below")
            question = f"Is the {a.name} above or below the {b.name}?"
        pos = balanced_position(seed, spec.name, family, k, 2)
        other = words[1] if truth == words[0] else words[0]
        options = [truth, other] if pos == 0 else [other, truth]
        boxes = [list(a.box), list(b.box)]
        meta = {"family": family, "target_size": size, "targets": [a.name, b.name], "axis": axis}

    pixels = background(rng, w, h, cfg.clutter_density, cfg.position_tint)
    image = Image.fromarray(pixels)
    draw_distractors(
        image,
        rng,
        cfg.num_distractors,
        [o.box for o in objects],
        [FRAME_COLOURS[o.colour] for o in objects],
    )
    pixels = np.array(image)
    for obj in objects:
        draw_object(pixels, obj, cfg.detail_px)
    meta["objects"] = [{"name": o.name, "box": list(o.box), "pattern": o.pattern} for o in objects]
    return Record(
        id=f"{source}-{spec.name}-{index:05d}",
        source=source,
        split=spec.name,
        image_bytes=encode_jpeg(pixels, cfg.jpeg_quality),
        width=w,
        height=h,
        question=question,
        options=options,
        answer=letter(pos),
        category=family,
        target_boxes=[[float(v) for v in b] for b in boxes],
        meta=meta,
    )


def generate_split(
    cfg: SyntheticConfig, seed: int, spec: SplitSpec, source: str | None = None
) -> Iterator[Record]:
    """Stream the records of one split, in index order."""
    for index in range(spec.count):
        yield make_sample(cfg, seed, spec, index, source or cfg.name)
