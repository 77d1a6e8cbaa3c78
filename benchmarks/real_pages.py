#!/usr/bin/env python3
"""A real-page segmentation set, rendered from the PDF manuals that Debian documentation packages ship.

Not part of the test run. Install the manuals once (the script itself downloads nothing), then
build the set in the project's dataset layout (docs/dataset.md), from the repository root:

    apt-get install -y --no-install-recommends glpk-doc libsuitesparse-doc mpich-doc sbcl-doc
    pip install -e '.[bench]'                      # PyMuPDF
    python benchmarks/real_pages.py --out /tmp/real-pages

Every manual is typeset with TeX; its own layout gives three classes of small objects, each a few
percent of a page's pixels, like stamps and table numbers on scans:

- `heading`: lines set entirely in a bold face or well above the page's body size (section and
  subsection titles, bold run-in labels on a line of their own);
- `code`: spans in a monospace face (inline code, listings, command lines);
- `furniture`: text in the top or bottom band of the page (running heads, page numbers, footers).

Each span's box is filled in its class's mask (a span belongs to one class, furniture first).
Pages are rendered with PyMuPDF so that the longer side is `--size` pixels and padded with white
to a square, masks drawn on the same grid, so they align pixel for pixel; training resizes both
(`data.image_size`, e.g. 128). From each manual, `--pages-per-doc` pages spread evenly over it
(pages with little text, such as title pages and figures, skipped). The split is by document:
the manuals in VAL_DOCUMENTS are validation, whole. The same installed packages give the same
files, byte for byte: nothing random is involved.

R's manuals (Debian's r-base, r-doc-* and r-cran-* packages, or any PDF by the R Core Team) are
refused: they are kept for an independent check of the project.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("heading", "code", "furniture")
# Debian packages and the manuals they ship (TeX-made PDFs; some gzip-compressed).
DOCUMENTS = (
    ("glpk-doc", "/usr/share/doc/glpk-doc/glpk.pdf"),
    ("glpk-doc", "/usr/share/doc/glpk-doc/gmpl.pdf"),
    ("glpk-doc", "/usr/share/doc/glpk-doc/gmpl_es.pdf"),
    ("glpk-doc", "/usr/share/doc/glpk-doc/gmpl_pt-BR.pdf"),
    ("glpk-doc", "/usr/share/doc/glpk-doc/graphs.pdf"),
    ("glpk-doc", "/usr/share/doc/glpk-doc/cnfsat.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/AMD_UserGuide.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/CAMD_UserGuide.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/CHOLMOD_UserGuide.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/KLU_UserGuide.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/Mongoose_UserGuide.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/SLIP_LU_UserGuide.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/UMFPACK_QuickStart.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/UMFPACK_UserGuide.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/ldl_userguide.pdf"),
    ("libsuitesparse-doc", "/usr/share/doc/libsuitesparse-dev/spqr_user_guide.pdf"),
    ("mpich-doc", "/usr/share/doc/mpich/install.pdf.gz"),
    ("mpich-doc", "/usr/share/doc/mpich/user.pdf.gz"),
    ("sbcl-doc", "/usr/share/doc/sbcl/sbcl.pdf.gz"),
    ("sbcl-doc", "/usr/share/doc/sbcl/sbcl-internals.pdf.gz"),
)
# Validation manuals: one or two per package, whole, so no validation page shares a document
# with a training page.
VAL_DOCUMENTS = ("graphs", "KLU_UserGuide", "UMFPACK_QuickStart", "user", "sbcl-internals")
APT_COMMAND = "apt-get install -y --no-install-recommends " + " ".join(sorted({p for p, _ in DOCUMENTS}))

EDGE = 0.25  # running heads and page numbers lie within this share of the page height from its edge
GAP = 1.5  # ... and at least this many of their own line heights away from the body text
REPEATS = 3  # an edge row's text on this many pages of a document is a running head
PAGE_NUMBER = re.compile(r"\d{1,4}|[ivxlc]{1,6}", re.I)
HEADING_SIZE = 1.08  # a line this much larger than the page's body size is a heading
MIN_CHARS = 400  # pages with less text (title pages, full-page figures) are skipped
MONOSPACE = re.compile(r"cmtt|cmsltt|cmitt|sftt|ectt|tctt|mono|courier|typewriter|sourcecode|consol|menlo", re.I)
BOLD = re.compile(r"(cmbx|cmb\d|cmssbx|bold|black|heavy|semibold|demi)", re.I)
# R's manuals are reserved for an independent check: refused by path or by what the PDF says.
R_PATH = re.compile(r"(^|/)(r-[^/]*|R)/|(^|/)(R-(intro|admin|data|exts|ints|lang)|fullrefman|refman)\.pdf", re.I)
R_AUTHOR = re.compile(r"R (Development )?Core Team|R Foundation for Statistical Computing", re.I)


class RefusedDocument(ValueError):
    """A PDF that must not go into this set (R's manuals)."""


@dataclass(frozen=True)
class Span:
    bbox: tuple[float, float, float, float]
    font: str
    size: float
    text: str


def open_pdf(path: Path):
    """A PyMuPDF document from a .pdf or .pdf.gz file; R's manuals are refused."""
    import pymupdf

    if R_PATH.search(str(path)):
        raise RefusedDocument(f"{path}: R's manuals are reserved for an independent check; not used here")
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    doc = pymupdf.open(stream=data, filetype="pdf")
    meta = " ".join(str(v) for v in (doc.metadata or {}).values() if v)
    first_page = doc[0].get_text() if doc.page_count else ""
    if R_AUTHOR.search(meta) or R_AUTHOR.search(first_page[:3000]):
        raise RefusedDocument(f"{path}: a manual of the R project, reserved for an independent check; not used here")
    return doc


def line_groups(page) -> list[list[Span]]:
    lines = []
    for block in page.get_text("dict")["blocks"]:
        for line in block.get("lines", []):
            spans = [Span(tuple(s["bbox"]), s["font"], float(s["size"]), s["text"])
                     for s in line["spans"] if s["text"].strip()]
            if spans:
                lines.append(spans)
    return lines


@dataclass(frozen=True)
class Layout:
    """What a document's pages share: its body text size and the texts of its running heads."""

    body_size: float
    running_texts: frozenset[str]


def document_layout(doc) -> Layout:
    sizes: list[float] = []
    edge_texts: dict[str, int] = {}
    for number in range(doc.page_count):
        lines = line_groups(doc[number])
        # Body text: neither code (listings can outnumber prose, in a smaller size) nor bold.
        sizes += [s.size for line in lines for s in line if not MONOSPACE.search(s.font) and not BOLD.search(s.font)
                  for _ in range(len(s.text))]
        for row in edge_rows(lines, doc[number].rect.height):
            text = _letters(lines, row)
            if text:
                edge_texts[text] = edge_texts.get(text, 0) + 1
    repeated = frozenset(t for t, n in edge_texts.items() if n >= REPEATS)
    return Layout(statistics.median(sizes) if sizes else 10.0, repeated)


def edge_rows(lines: list[list[Span]], page_height: float) -> list[list[int]]:
    """The page's first and last row of lines (indices) where set apart from the body text by a
    wide gap, near the page's edge: where running heads, footers and page numbers sit."""
    rows: list[list[int]] = []  # line indices, rows ordered top to bottom
    for index in sorted(range(len(lines)), key=lambda i: lines[i][0].bbox[1]):
        y0, y1 = _extent(lines[index])
        if rows and abs((y0 + y1) / 2 - sum(_row_extent(lines, rows[-1])) / 2) < 0.5 * (y1 - y0):
            rows[-1].append(index)
        else:
            rows.append([index])
    if len(rows) < 3:
        return []
    found = []
    top, below = [_row_extent(lines, r) for r in rows[:2]]
    if top[1] < EDGE * page_height and below[0] - top[1] >= GAP * (top[1] - top[0]):
        found.append(rows[0])
    above, bottom = [_row_extent(lines, r) for r in rows[-2:]]
    if bottom[0] > (1 - EDGE) * page_height and bottom[0] - above[1] >= GAP * (bottom[1] - bottom[0]):
        found.append(rows[-1])
    return found


def _extent(line: list[Span]) -> tuple[float, float]:
    return min(s.bbox[1] for s in line), max(s.bbox[3] for s in line)


def _row_extent(lines: list[list[Span]], row: list[int]) -> tuple[float, float]:
    extents = [_extent(lines[i]) for i in row]
    return min(e[0] for e in extents), max(e[1] for e in extents)


def _letters(lines: list[list[Span]], row: list[int]) -> str:
    return re.sub(r"[^a-z]", "", "".join(s.text for i in row for s in lines[i]).lower())


def _has_page_number(lines: list[list[Span]], row: list[int]) -> bool:
    return any(PAGE_NUMBER.fullmatch(word) for i in row for s in lines[i] for word in s.text.split())


def classify(page, layout: Layout) -> dict[str, list[tuple[float, float, float, float]]]:
    """Boxes (PDF points) of each class on a page. Furniture: an edge row that holds a page
    number or a text repeated at the edge of other pages (a running head)."""
    lines = line_groups(page)
    furniture = {i for row in edge_rows(lines, page.rect.height)
                 if _has_page_number(lines, row) or _letters(lines, row) in layout.running_texts for i in row}
    boxes: dict[str, list] = {name: [] for name in CLASSES}
    for index, line in enumerate(lines):
        if index in furniture:
            boxes["furniture"] += [s.bbox for s in line]
            continue
        wordy = [s for s in line if re.search(r"[A-Za-z]", s.text)]
        if wordy and all(BOLD.search(s.font) or s.size >= HEADING_SIZE * layout.body_size for s in wordy):
            boxes["heading"] += [s.bbox for s in line]
            continue
        boxes["code"] += [s.bbox for s in line if MONOSPACE.search(s.font)]
    return boxes


def pick_pages(doc, count: int) -> list[int]:
    """Up to `count` page numbers spread evenly over the document, among pages with enough text."""
    usable = [n for n in range(doc.page_count) if len(doc[n].get_text().strip()) >= MIN_CHARS]
    if len(usable) <= count:
        return usable
    return [usable[round(i * (len(usable) - 1) / (count - 1))] for i in range(count)] if count > 1 else usable[:1]


def render(page, size: int, boxes: dict[str, list]) -> tuple[Image.Image, dict[str, Image.Image]]:
    """The page as an RGB square of `size` pixels (white padding) and one mask per class."""
    import pymupdf

    rect = page.rect
    scale = size / max(rect.width, rect.height)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), alpha=False, colorspace=pymupdf.csRGB)
    rendered = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    ox, oy = (size - pix.width) // 2, (size - pix.height) // 2
    image = Image.new("RGB", (size, size), "white")
    image.paste(rendered, (ox, oy))
    masks = {}
    for name in CLASSES:
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        for x0, y0, x1, y1 in boxes[name]:
            # Outward rounding: a thin span still covers at least one pixel row.
            box = (ox + math.floor((x0 - rect.x0) * scale), oy + math.floor((y0 - rect.y0) * scale),
                   ox + math.ceil((x1 - rect.x0) * scale) - 1, oy + math.ceil((y1 - rect.y0) * scale) - 1)
            if box[2] >= box[0] and box[3] >= box[1]:
                draw.rectangle(box, fill=255)
        masks[name] = mask
    return image, masks


def document_name(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".pdf")


def build(out: Path, documents: list[Path], val_documents: set[str], size: int, pages_per_doc: int,
          log=print) -> dict:
    """Write the set under `out`; returns the manifest (also written to `out/manifest.json`)."""
    for path in documents:
        if R_PATH.search(str(path)):
            raise RefusedDocument(f"{path}: R's manuals are reserved for an independent check; not used here")
        if not path.exists():
            raise FileNotFoundError(f"{path}: not installed; install the manuals with: {APT_COMMAND}")
    names = [document_name(p) for p in documents]
    if len(set(names)) != len(names):
        raise ValueError(f"documents: two files share a name ({sorted(n for n in names if names.count(n) > 1)[0]})")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; give a new directory")
    (out / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    manifest = {"size": size, "classes": list(CLASSES), "pages": []}
    for path, name in zip(documents, names):
        split = "val" if name in val_documents else "train"
        doc = open_pdf(path)
        chosen = pick_pages(doc, pages_per_doc)
        layout = document_layout(doc)
        for number in chosen:
            page = doc[number]
            image, masks = render(page, size, classify(page, layout))
            stem = f"{name}-p{number + 1:03d}"
            (out / split / "images").mkdir(parents=True, exist_ok=True)
            image.save(out / split / "images" / f"{stem}.png", optimize=False)
            fractions = {}
            for cls, mask in masks.items():
                (out / split / "masks" / cls).mkdir(parents=True, exist_ok=True)
                mask.save(out / split / "masks" / cls / f"{stem}.png", optimize=False)
                fractions[cls] = round(float(np.mean(np.asarray(mask) > 0)), 5)
            manifest["pages"].append({"name": stem, "document": str(path), "page": number + 1, "split": split,
                                      "fractions": fractions})
        log(f"{path}: {len(chosen)} of {doc.page_count} pages -> {split}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def summary(manifest: dict) -> str:
    lines = []
    for split in ("train", "val"):
        pages = [p for p in manifest["pages"] if p["split"] == split]
        docs = len({p["document"] for p in pages})
        means = {c: statistics.fmean(p["fractions"][c] for p in pages) if pages else 0.0 for c in manifest["classes"]}
        lines.append(f"{split}: {len(pages)} pages from {docs} documents; mean pixel share "
                     + ", ".join(f"{c} {100 * v:.1f}%" for c, v in means.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="new (or empty) directory for the dataset")
    p.add_argument("--size", type=int, default=256, help="pixels of the square pages (training resizes)")
    p.add_argument("--pages-per-doc", type=int, default=8)
    p.add_argument("--pdf", action="append", help="use these PDFs instead of the Debian manuals (repeatable)")
    p.add_argument("--val", action="append", help="validation document names (file name without .pdf); "
                                                  "default: " + ", ".join(VAL_DOCUMENTS))
    args = p.parse_args(argv)
    documents = [Path(x) for x in args.pdf] if args.pdf else [Path(x) for _, x in DOCUMENTS]
    try:
        import pymupdf  # noqa: F401
    except ImportError:
        print("real_pages: needs PyMuPDF (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    try:
        manifest = build(Path(args.out), documents, set(args.val or VAL_DOCUMENTS), args.size, args.pages_per_doc)
    except (RefusedDocument, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"real_pages: {exc}", file=sys.stderr)
        return 2
    print(summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
