"""benchmarks/real_pages.py: a real-page set in the project's layout from a Debian manual,
split by document, byte-for-byte repeatable, and R's manuals refused."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kt_cluster.core.dataset import check_dataset

pymupdf = pytest.importorskip("pymupdf", reason="PyMuPDF is the benchmark's extra: pip install -e '.[bench]'")

TRAIN_PDF = Path("/usr/share/doc/glpk-doc/cnfsat.pdf")
VAL_PDF = Path("/usr/share/doc/glpk-doc/graphs.pdf")
if not (TRAIN_PDF.exists() and VAL_PDF.exists()):
    pytest.skip("glpk-doc is not installed (apt-get install glpk-doc; .ci/run installs it)", allow_module_level=True)

spec = importlib.util.spec_from_file_location("real_pages", Path(__file__).parent.parent / "benchmarks" / "real_pages.py")
real_pages = importlib.util.module_from_spec(spec)
sys.modules["real_pages"] = real_pages
spec.loader.exec_module(real_pages)


def build(out):
    return real_pages.build(out, [TRAIN_PDF, VAL_PDF], {"graphs"}, size=96, pages_per_doc=3, log=lambda *_: None)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("pages") / "set"
    return out, build(out)


def test_the_set_follows_the_dataset_layout_and_splits_by_document(built):
    out, manifest = built
    summary = check_dataset(out, list(real_pages.CLASSES))
    assert (summary.train, summary.val) == (3, 3)
    assert {p["split"] for p in manifest["pages"] if "graphs" in p["document"]} == {"val"}
    assert {p["split"] for p in manifest["pages"] if "cnfsat" in p["document"]} == {"train"}
    image = Image.open(next((out / "val" / "images").iterdir()))
    assert image.size == (96, 96) and image.mode == "RGB"


def test_masks_mark_small_objects_of_each_kind(built):
    out, manifest = built
    shares = {c: [p["fractions"][c] for p in manifest["pages"]] for c in real_pages.CLASSES}
    assert max(shares["heading"]) > 0 and max(shares["code"]) > 0 and max(shares["furniture"]) > 0
    assert all(0 <= s < 0.25 for values in shares.values() for s in values)  # objects, not the page
    mask = np.asarray(Image.open(next((out / "train" / "masks" / "heading").iterdir())))
    assert set(np.unique(mask)) <= {0, 255}


def test_the_same_manuals_give_the_same_files(built, tmp_path):
    out, _ = built
    build(tmp_path / "again")
    first = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert first == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.png"))
    assert all((out / p).read_bytes() == (tmp_path / "again" / p).read_bytes() for p in first)


def test_r_manuals_are_refused_by_path_or_by_author(tmp_path):
    for path in ("/usr/share/R/doc/manual/R-intro.pdf", "/usr/share/doc/r-base-core/fullrefman.pdf",
                 "/usr/lib/R/library/stats/doc/x.pdf"):
        with pytest.raises(real_pages.RefusedDocument):
            real_pages.build(tmp_path / "x", [Path(path)], set(), 64, 1)
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "An Introduction to R. R Core Team")
    doc.set_metadata({"author": "R Core Team"})
    doc.save(tmp_path / "intro.pdf")
    with pytest.raises(real_pages.RefusedDocument):
        real_pages.build(tmp_path / "y", [tmp_path / "intro.pdf"], set(), 64, 1)
    assert real_pages.main(["--out", str(tmp_path / "z"), "--pdf", str(tmp_path / "intro.pdf")]) == 2
