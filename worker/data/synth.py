"""A synthetic dataset of scanned paper pages, written in the layout of `kt_cluster.core.dataset`.

Pages are off-white, tinted and noisy, with body text (dark bars, or letter-like strokes at
larger sizes), tables whose first column holds ordering numbers, translucent round or
rectangular stamps, cursive signatures, barcodes, checkboxes and logos; some are slightly
skewed or blurred. Every shape is drawn on the page and, when its class is requested, with
the same geometry on that class's mask, so masks are pixel-exact. Which pixels a class covers:

  text, table_number, signature, logo, <custom>   the ink of the object itself
  stamp, table, barcode, checkbox                 the whole area the object covers

Objects of unrequested default classes still appear as clutter (e.g. text and tables around
the table numbers), as on real scans. A custom class name gets a filled shape whose colour
and kind derive from the name, so any class list works. Output is deterministic: the same
arguments give byte-identical files.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kt_cluster.core.dataset import CLASSES_FILE, DatasetError, check_class_name, is_empty

DEFAULT_CLASSES = ["table_number", "stamp", "signature", "text", "table", "barcode", "checkbox", "logo"]
MIN_SIZE = 32
PRESENCE = 0.7  # chance that a requested class is drawn on a page
CLUTTER = 0.15  # chance that an unrequested default object is drawn anyway
REFERENCE = 64  # object sizes are given in pixels of a 64-pixel page and scaled

Box = tuple[int, int, int, int]  # x0, y0, x1, y1; x1 and y1 exclusive
Colour = tuple[int, ...]
Rng = np.random.Generator

# Seven-segment digits keep numbers legible at 5 pixels high without any font files.
SEGMENTS = {"a": ((0, 0), (1, 0)), "b": ((1, 0), (1, .5)), "c": ((1, .5), (1, 1)), "d": ((0, 1), (1, 1)),
            "e": ((0, .5), (0, 1)), "f": ((0, 0), (0, .5)), "g": ((0, .5), (1, .5))}
DIGITS = {"0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd",
          "6": "afgedc", "7": "abc", "8": "abcdefg", "9": "abcdfg"}


def generate(out: Path, count: int, size: int, classes: list[str] | int, seed: int,
             val_fraction: float = 0.25) -> None:
    """Write `count` pages of `size`x`size` pixels to `out` (which must be empty or absent).

    `classes` is a list of names or a number C meaning the first C of DEFAULT_CLASSES. The
    last round(count * val_fraction) pages (at least one when val_fraction > 0) go to val/.
    """
    out = Path(out)
    names = resolve_classes(classes)
    n_val = _check_args(out, count, size, seed, val_fraction)
    for split in ("train", "val"):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        for name in names:
            (out / split / "masks" / name).mkdir(parents=True, exist_ok=True)
    (out / CLASSES_FILE).write_text("".join(name + "\n" for name in names), encoding="utf-8")
    for index in range(count):
        split = "train" if index < count - n_val else "val"
        # One generator per page: a page does not depend on how many came before it.
        image, masks = render_page(np.random.default_rng([seed, index]), size, names)
        stem = f"page{index:05d}.png"
        image.save(out / split / "images" / stem)
        for name, mask in masks.items():
            mask.save(out / split / "masks" / name / stem)


def resolve_classes(classes: list[str] | int) -> list[str]:
    """Class names for `classes`: the list itself (validated) or the first N default names."""
    if isinstance(classes, int):
        if not 1 <= classes <= len(DEFAULT_CLASSES):
            raise DatasetError(f"classes: must be 1..{len(DEFAULT_CLASSES)} default classes "
                               f"({', '.join(DEFAULT_CLASSES)}), got {classes}")
        return DEFAULT_CLASSES[:classes]
    names = list(classes)
    if not names:
        raise DatasetError("classes: must name at least one class")
    for name in names:
        check_class_name(name, where="classes")
    if len(set(names)) != len(names):
        raise DatasetError(f"classes: names must be unique, got {names}")
    return names


def render_page(rng: Rng, size: int, classes: list[str]) -> tuple[Image.Image, dict[str, Image.Image]]:
    """One page (RGB, or L for a grayscale scan) and a 0/255 'L' mask per class."""
    paper = _paper_colour(rng)
    canvas = Canvas(size, classes, paper)
    wanted = {name for name in classes if rng.random() < PRESENCE}
    clutter = {name for name in DEFAULT_CLASSES if name not in classes and rng.random() < CLUTTER}
    drawn = wanted | clutter
    if drawn & {"table", "table_number"}:
        _draw_table(canvas, rng)
    for name in dict.fromkeys([*DEFAULT_CLASSES, *classes]):  # sets have no stable order
        if name in drawn and name not in DRAWN_APART:
            BLOCKS.get(name, _draw_custom)(canvas, rng, name)
    _draw_text(canvas, rng)  # body text fills whatever space the blocks left
    if "stamp" in drawn:
        _draw_stamp(canvas, rng)
    return _scan(canvas, rng, paper)


class Canvas:
    """Draws each shape on the page and, if its class is requested, identically on its mask."""

    def __init__(self, size: int, classes: list[str], paper: Colour) -> None:
        self.size = size
        self.unit = size / REFERENCE
        self.margin = self.px(3)
        self.image = Image.new("RGB", (size, size), paper)
        self.masks = {name: Image.new("L", (size, size), 0) for name in classes}
        self.boxes: list[Box] = []
        self._page = ImageDraw.Draw(self.image, "RGBA")  # RGBA: translucent ink blends (stamps)
        self._masks = {name: ImageDraw.Draw(mask) for name, mask in self.masks.items()}

    def px(self, units: float) -> int:
        """A length given on the 64-pixel reference page, in pixels of this page (at least 1)."""
        return max(1, round(units * self.unit))

    def ink(self, label: str | None, shape: str, *args: object, **options: object) -> None:
        """Draw `shape` (an ImageDraw method) on the page and, in white, on `label`'s mask."""
        getattr(self._page, shape)(*args, **options)
        mask = self._masks.get(label) if label else None
        if mask is not None:
            white = {k: (255 if k in ("fill", "outline") and v is not None else v) for k, v in options.items()}
            getattr(mask, shape)(*args, **white)

    def region(self, label: str, shape: str, *args: object) -> None:
        """Mark the area of `shape` on `label`'s mask only (objects annotated by their extent)."""
        mask = self._masks.get(label)
        if mask is not None:
            getattr(mask, shape)(*args, fill=255)

    def place(self, rng: Rng, width: int, height: int, top: float = 0.0) -> Box | None:
        """A free spot for a width x height block (below `top` * size), or None if none is found."""
        m, pad = self.margin, self.px(2)
        low_y = max(m, int(top * self.size))
        if width > self.size - 2 * m or height > self.size - m - low_y:
            return None
        for _ in range(30):
            x = int(rng.integers(m, self.size - m - width + 1))
            y = int(rng.integers(low_y, self.size - m - height + 1))
            box = (x, y, x + width, y + height)
            if not any(_overlaps(box, other, pad) for other in self.boxes):
                self.boxes.append(box)
                return box
        return None

    def free_spans(self, y0: int, y1: int) -> list[tuple[int, int]]:
        """Horizontal stretches between the margins that no block occupies within rows y0..y1."""
        pad = self.px(1.5)
        blocked = sorted((b[0] - pad, b[2] + pad) for b in self.boxes if b[1] - pad < y1 and b[3] + pad > y0)
        spans, x = [], self.margin
        for start, end in blocked:
            if start > x:
                spans.append((x, start))
            x = max(x, end)
        if x < self.size - self.margin:
            spans.append((x, self.size - self.margin))
        return spans


def _overlaps(a: Box, b: Box, pad: int) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _paper_colour(rng: Rng) -> Colour:
    base = rng.uniform(228, 250)
    tint = rng.normal(0, 3, 3) + np.array([3, 1, -5])  # paper tends to warm, yellowish white
    return tuple(int(v) for v in np.clip(base + tint, 200, 255))


def _ink_colour(rng: Rng) -> Colour:
    grey = rng.uniform(10, 60)
    return (int(grey), int(grey), int(grey + rng.uniform(0, 35)), 255)


def _draw_text(canvas: Canvas, rng: Rng) -> None:
    height = canvas.px(rng.uniform(0.9, 1.4))
    pitch = height + canvas.px(rng.uniform(1.4, 2.6))
    colour = _ink_colour(rng)
    y = canvas.margin + int(rng.integers(0, pitch))
    while y + height <= canvas.size - canvas.margin:
        if rng.random() > 0.12:  # otherwise a blank line between paragraphs
            ragged = int(rng.integers(0, canvas.size // 2)) if rng.random() < 0.25 else 0
            for x0, x1 in canvas.free_spans(y - height, y + 2 * height):
                _draw_words(canvas, rng, (x0, y, x1 - ragged, height), colour)
        y += pitch


def _draw_words(canvas: Canvas, rng: Rng, line: Box, colour: Colour, label: str = "text") -> None:
    """Words on one line from x0 to x1 at top y: solid bars when small, letter strokes when large."""
    x, y, x1, height = line
    glyph, gap = canvas.px(0.8), round(0.35 * canvas.unit)
    while x < x1 - canvas.px(1):
        end = min(x + canvas.px(rng.uniform(2, 8)), x1)
        if gap == 0:
            canvas.ink(label, "rectangle", (x, y, end - 1, y + height - 1), fill=colour)
        else:
            for gx in range(x, end - glyph + 1, glyph + gap):
                tall = rng.random()
                top = y - height // 2 if tall < 0.2 else y
                bottom = y + height + height // 2 if tall > 0.92 else y + height
                canvas.ink(label, "rectangle", (gx, top, gx + glyph - 1, bottom - 1), fill=colour)
        x = end + canvas.px(rng.uniform(1, 2))


def _draw_table(canvas: Canvas, rng: Rng) -> None:
    """A ruled table; its first column holds the ordering numbers 1, 2, ... (or continues a list)."""
    digit_h = max(5, canvas.px(rng.uniform(3.5, 4.5)))
    digit_w = max(3, round(digit_h * 0.6))
    row_h = digit_h + max(3, canvas.px(rng.uniform(2, 3.5)))
    rows = int(rng.integers(2, 6))
    header = bool(rng.random() < 0.5)
    first = 1 if rng.random() < 0.7 else int(rng.integers(2, 40))
    widest = len(str(first + rows - 1)) + 1  # room for digits plus a dot
    widths = [widest * (digit_w + 1) + canvas.px(3)] + [canvas.px(rng.uniform(8, 18))
                                                         for _ in range(int(rng.integers(1, 4)))]
    while len(widths) > 1 and sum(widths) > canvas.size - 2 * canvas.margin - 1:
        widths.pop()
    box = canvas.place(rng, sum(widths) + 1, (rows + header) * row_h + 1)
    if box is None:
        return
    canvas.region("table", "rectangle", (box[0], box[1], box[2] - 1, box[3] - 1))
    _draw_grid(canvas, rng, box, widths, row_h)
    text = _ink_colour(rng)
    for row in range(rows + header):
        top = box[1] + row * row_h
        if header and row == 0:
            _fill_cells(canvas, rng, box[0], top, widths, row_h, text, everywhere=True)
            continue
        number_box = (box[0] + canvas.px(1.5), top + (row_h - digit_h) // 2 + 1, digit_w, digit_h)
        _draw_number(canvas, rng, first + row - header, number_box, text)
        _fill_cells(canvas, rng, box[0] + widths[0], top, widths[1:], row_h, text, everywhere=False)


def _draw_grid(canvas: Canvas, rng: Rng, box: Box, widths: list[int], row_h: int) -> None:
    colour = _ink_colour(rng)[:3] + (int(rng.integers(150, 256)),)
    width = canvas.px(0.4)
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    for y in range(y0, y1 + 1, row_h):
        canvas.ink(None, "line", [(x0, y), (x1, y)], fill=colour, width=width)
    for x in np.cumsum([x0, *widths]):
        canvas.ink(None, "line", [(int(x), y0), (int(x), y1)], fill=colour, width=width)


def _fill_cells(canvas: Canvas, rng: Rng, x: int, top: int, widths: list[int], row_h: int,
                colour: Colour, everywhere: bool) -> None:
    height = canvas.px(1.1)
    for width in widths:
        if everywhere or rng.random() < 0.8:
            end = x + int(width * rng.uniform(0.4, 0.9))
            _draw_words(canvas, rng, (x + canvas.px(1.5), top + (row_h - height) // 2, end, height), colour)
        x += width


def _draw_number(canvas: Canvas, rng: Rng, number: int, box: Box, colour: Colour) -> None:
    x, y, width, height = box
    stroke = canvas.px(0.5)
    for char in str(number):
        for segment in DIGITS[char]:
            (ax, ay), (bx, by) = SEGMENTS[segment]
            points = [(x + round(ax * (width - 1)), y + round(ay * (height - 1))),
                      (x + round(bx * (width - 1)), y + round(by * (height - 1)))]
            canvas.ink("table_number", "line", points, fill=colour, width=stroke)
        x += width + 1
    if rng.random() < 0.5:  # "1." style numbering
        dot = (x, y + height - stroke, x + stroke - 1, y + height - 1)
        canvas.ink("table_number", "rectangle", dot, fill=colour)


def _draw_stamp(canvas: Canvas, rng: Rng, label: str = "stamp") -> None:
    """A translucent round or rectangular stamp; it may overlap text and signatures, as real ones do."""
    hue = [(40, 60, 170), (95, 45, 160), (185, 40, 55)][int(rng.integers(0, 3))]
    colour = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in hue) + (int(rng.integers(150, 230)),)
    radius = canvas.px(rng.uniform(5, 8))
    low = canvas.margin + radius
    cx = int(rng.integers(low, canvas.size - low + 1))
    cy = int(rng.integers(max(low, canvas.size // 3), canvas.size - low + 1))
    if rng.random() < 0.65:
        _round_stamp(canvas, rng, (cx, cy, radius), colour, label)
    else:
        _rect_stamp(canvas, rng, (cx, cy, radius), colour, label)


def _round_stamp(canvas: Canvas, rng: Rng, circle: tuple[int, int, int], colour: Colour, label: str) -> None:
    cx, cy, r = circle
    ring = canvas.px(0.6)
    canvas.region(label, "ellipse", (cx - r, cy - r, cx + r, cy + r))
    canvas.ink(label, "ellipse", (cx - r, cy - r, cx + r, cy + r), outline=colour, width=ring)
    inner = max(2, round(r * 0.62))
    canvas.ink(label, "ellipse", (cx - inner, cy - inner, cx + inner, cy + inner), outline=colour, width=1)
    mid = (r + inner) // 2
    start = float(rng.uniform(0, 360))
    for _ in range(int(rng.integers(6, 12))):  # "letters" running round the ring
        extent = float(rng.uniform(8, 30))
        canvas.ink(label, "arc", (cx - mid, cy - mid, cx + mid, cy + mid), start, start + extent, fill=colour,
                   width=canvas.px(0.7))
        start += extent + float(rng.uniform(6, 14))
    star = canvas.px(1.2)
    canvas.ink(label, "regular_polygon", (cx, cy, star), 5, float(rng.uniform(0, 72)), fill=colour)


def _rect_stamp(canvas: Canvas, rng: Rng, circle: tuple[int, int, int], colour: Colour, label: str) -> None:
    cx, cy, r = circle
    half_w, half_h = round(r * 1.5), round(r * 0.8)
    box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    canvas.region(label, "rectangle", box)
    canvas.ink(label, "rectangle", box, outline=colour, width=canvas.px(0.6))
    inset = canvas.px(1.5)
    for y in range(box[1] + inset, box[3] - inset, canvas.px(2.5)):
        end = box[0] + inset + int((2 * half_w - 2 * inset) * rng.uniform(0.5, 1.0))
        canvas.ink(label, "rectangle", (box[0] + inset, y, end, y + canvas.px(0.8) - 1), fill=colour)


def _draw_signature(canvas: Canvas, rng: Rng, label: str) -> None:
    """A slanted cursive scribble: looping (prolate-cycloid) pen strokes on a drifting baseline."""
    box = canvas.place(rng, canvas.px(rng.uniform(12, 22)), canvas.px(rng.uniform(4, 8)), top=0.4)
    if box is None:
        return
    t = np.linspace(0.0, 1.0, 24 + 6 * (box[2] - box[0]))
    angle = 2 * np.pi * rng.uniform(2.5, 7) * t + rng.uniform(0, 2 * np.pi)
    wobble = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6))
    x = t + rng.uniform(0.03, 0.08) * wobble * np.cos(angle)
    drift = rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * rng.uniform(0.3, 1) * t + rng.uniform(0, 6))
    y = np.sin(angle) * wobble + drift
    x = x + rng.uniform(0, 0.05) * y  # forward slant
    colour = (int(rng.integers(10, 50)), int(rng.integers(20, 60)), int(rng.integers(110, 170)), 235)
    points = _fit_to_box(x, y, box)
    lift = int(rng.integers(len(points) // 3, len(points))) if rng.random() < 0.5 else len(points)
    for stroke in (points[:lift], points[lift + 3:]):  # the pen is lifted once, or not at all
        if len(stroke) > 1:
            canvas.ink(label, "line", stroke, fill=colour, width=canvas.px(0.5), joint="curve")


def _fit_to_box(x: np.ndarray, y: np.ndarray, box: Box) -> list[tuple[float, float]]:
    def scale(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return lo + (v - v.min()) / max(float(np.ptp(v)), 1e-9) * (hi - 1 - lo)

    return list(zip(scale(x, box[0], box[2]).tolist(), scale(y, box[1], box[3]).tolist()))


def _draw_barcode(canvas: Canvas, rng: Rng, label: str) -> None:
    box = canvas.place(rng, canvas.px(rng.uniform(10, 18)), canvas.px(rng.uniform(4, 7)))
    if box is None:
        return
    canvas.region(label, "rectangle", (box[0], box[1], box[2] - 1, box[3] - 1))
    x = box[0]
    while x < box[2]:
        bar = canvas.px(float(rng.choice([0.5, 1.0, 1.5])))
        canvas.ink(label, "rectangle", (x, box[1], min(x + bar, box[2]) - 1, box[3] - 1), fill=(15, 15, 15, 255))
        x += bar + canvas.px(float(rng.choice([0.5, 1.0, 1.5])))


def _draw_checkbox(canvas: Canvas, rng: Rng, label: str) -> None:
    """A column of 1-3 checkboxes, some ticked, each followed by a short text label."""
    side, count = max(3, canvas.px(rng.uniform(2.5, 4))), int(rng.integers(1, 4))
    step = side + canvas.px(2)
    box = canvas.place(rng, side + canvas.px(14), count * step)
    if box is None:
        return
    colour = _ink_colour(rng)
    for i in range(count):
        x, y = box[0], box[1] + i * step
        square = (x, y, x + side - 1, y + side - 1)
        canvas.region(label, "rectangle", square)
        canvas.ink(label, "rectangle", square, outline=colour, width=1)
        if rng.random() < 0.5:
            tick = [(x, y + side // 2), (x + side // 2, y + side - 1), (x + side, y - 1)]
            canvas.ink(label, "line", tick, fill=colour, width=canvas.px(0.5))
        words = (x + side + canvas.px(2), y + (side - canvas.px(1)) // 2, box[2], canvas.px(1))
        _draw_words(canvas, rng, words, colour)


def _draw_logo(canvas: Canvas, rng: Rng, label: str) -> None:
    """One to three overlapping saturated shapes, like a letterhead emblem."""
    side = canvas.px(rng.uniform(6, 10))
    box = canvas.place(rng, side, side)
    if box is None:
        return
    colour = _saturated(rng.uniform())
    for _ in range(int(rng.integers(1, 4))):
        _draw_shape(canvas, rng, label, box, int(rng.integers(0, 3)), colour)


def _draw_custom(canvas: Canvas, rng: Rng, label: str) -> None:
    """Any other class: a filled shape whose kind and colour are fixed by the class name."""
    code = zlib.crc32(label.encode("utf-8"))  # stable across runs, unlike hash()
    side = canvas.px(rng.uniform(4, 8))
    box = canvas.place(rng, side, side)
    if box is not None:
        _draw_shape(canvas, rng, label, box, code % 3, _saturated((code >> 8) % 360 / 360))


def _draw_shape(canvas: Canvas, rng: Rng, label: str, box: Box, kind: int, colour: Colour) -> None:
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    if kind == 0:
        canvas.ink(label, "ellipse", (x0, y0, x1, y1), fill=colour)
    elif kind == 1:
        inset = int(rng.integers(0, max(1, (x1 - x0) // 3)))
        canvas.ink(label, "rectangle", (x0 + inset, y0 + inset, x1, y1), fill=colour)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        canvas.ink(label, "polygon", [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=colour)


def _saturated(hue: float) -> Colour:
    rgb = np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)  # HSV hue wheel
    return tuple(int(30 + 190 * v) for v in rgb) + (255,)


DRAWN_APART = {"table", "table_number", "text", "stamp"}  # render_page places these itself
BLOCKS: dict[str, Callable[[Canvas, Rng, str], None]] = {
    "signature": _draw_signature,
    "barcode": _draw_barcode,
    "checkbox": _draw_checkbox,
    "logo": _draw_logo,
}


def _scan(canvas: Canvas, rng: Rng, paper: Colour) -> tuple[Image.Image, dict[str, Image.Image]]:
    """Scanner effects: slight skew (applied to the masks too), blur, paper texture and noise."""
    image, masks = canvas.image, canvas.masks
    if rng.random() < 0.5:
        angle = float(rng.uniform(-1.5, 1.5))
        image = image.rotate(angle, Image.Resampling.BILINEAR, fillcolor=paper)
        masks = {k: m.rotate(angle, Image.Resampling.NEAREST, fillcolor=0) for k, m in masks.items()}
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.15, 0.4)) * canvas.unit))
    pixels = np.asarray(image, dtype=np.float32)
    shading = 1 + rng.uniform(0.02, 0.06) * _smooth_field(rng, canvas.size, 4)
    shading += 0.015 * _smooth_field(rng, canvas.size, max(4, canvas.size // 8))  # paper fibres
    pixels = pixels * shading[..., None] + rng.normal(0, rng.uniform(1.5, 5), pixels.shape)
    if rng.random() < 0.15:  # a grayscale scan
        pixels = pixels.mean(axis=2)
    scan = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return scan, masks


def _smooth_field(rng: Rng, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a cells x cells random grid upsampled bicubically."""
    grid = Image.fromarray(rng.normal(0, 0.5, (cells, cells)).astype(np.float32))
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC))


def _check_args(out: Path, count: int, size: int, seed: int, val_fraction: float) -> int:
    """Validate the arguments; return the number of validation pages."""
    if not is_empty(out):
        raise DatasetError(f"{out}: not empty; synthesize into a new or empty directory")
    if size < MIN_SIZE:
        raise DatasetError(f"size: must be >= {MIN_SIZE} pixels, got {size}")
    if seed < 0:
        raise DatasetError(f"seed: must be >= 0, got {seed}")
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction: must be in [0, 1), got {val_fraction}")
    n_val = max(1, round(count * val_fraction)) if val_fraction > 0 else 0
    if count - n_val < 1:
        raise DatasetError(f"count: {count} pages leave no training pages after {n_val} validation pages")
    return n_val
