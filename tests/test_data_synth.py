import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kt_cluster.core.dataset import DatasetError, list_examples, read_classes
from kt_cluster.worker.data.synth import DEFAULT_CLASSES, Canvas, generate, render_page, resolve_classes


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _masks(root: Path, classes: list[str]) -> list[np.ndarray]:
    """Per page, its masks stacked as (H, W, classes)."""
    examples = list_examples(root, "train", classes) + list_examples(root, "val", classes)
    return [np.stack([np.asarray(Image.open(m)) for m in e.masks], axis=-1) for e in examples]


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate(tmp_path / "a", 8, 48, 5, seed=7)
    generate(tmp_path / "b", 8, 48, 5, seed=7)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_different_seed_gives_different_pages(tmp_path):
    generate(tmp_path / "a", 8, 48, 3, seed=1)
    generate(tmp_path / "b", 8, 48, 3, seed=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if "/images/" in k)


def test_writes_the_documented_layout_with_a_val_split(tmp_path):
    generate(tmp_path, 12, 32, 3, seed=0, val_fraction=0.25)
    assert read_classes(tmp_path) == DEFAULT_CLASSES[:3]
    assert len(list_examples(tmp_path, "train", DEFAULT_CLASSES[:3])) == 9
    assert len(list_examples(tmp_path, "val", DEFAULT_CLASSES[:3])) == 3


def test_masks_are_binary_match_the_image_size_and_cover_a_small_area(tmp_path):
    classes = DEFAULT_CLASSES[:3]
    generate(tmp_path, 12, 40, classes, seed=3)
    masks = _masks(tmp_path, classes)
    image = Image.open(next((tmp_path / "train/images").iterdir()))
    assert image.size == (40, 40)
    for stack in masks:
        assert stack.shape == (40, 40, 3) and set(np.unique(stack)) <= {0, 255}
    # Class imbalance as on real scans: objects cover a small part of the page.
    assert np.mean([np.mean(s > 0) for s in masks]) < 0.1


def test_every_class_appears_and_most_pages_have_objects(tmp_path):
    generate(tmp_path, 16, 64, 8, seed=5)
    masks = _masks(tmp_path, DEFAULT_CLASSES[:8])
    per_class = np.sum([np.any(s > 0, axis=(0, 1)) for s in masks], axis=0)
    assert (per_class > 0).all(), dict(zip(DEFAULT_CLASSES, per_class))
    assert sum(bool(s.any()) for s in masks) >= 14


def test_custom_class_names_get_drawn_objects(tmp_path):
    generate(tmp_path, 12, 48, ["coffee_stain", "hologram"], seed=4)
    per_class = np.sum([np.any(s > 0, axis=(0, 1)) for s in _masks(tmp_path, ["coffee_stain", "hologram"])], axis=0)
    assert (per_class >= 3).all()


def test_canvas_ink_changes_exactly_the_masked_pixels():
    canvas = Canvas(64, ["signature"], (240, 235, 225))
    canvas.ink("signature", "line", [(5, 5), (30, 40), (60, 10)], fill=(20, 30, 150, 200), width=2, joint="curve")
    canvas.ink("signature", "ellipse", (10, 30, 25, 50), outline=(200, 0, 0, 255), width=1)
    changed = np.any(np.asarray(canvas.image) != (240, 235, 225), axis=-1)
    assert changed.any()
    assert np.array_equal(changed, np.asarray(canvas.masks["signature"]) > 0)


def test_ink_classes_are_dark_where_their_masks_are(tmp_path):
    classes = ["table_number", "signature", "text"]
    for index in range(6):
        image, masks = render_page(np.random.default_rng([9, index]), 64, classes)
        grey = np.asarray(image.convert("L"), dtype=float)
        background = grey[~np.any([np.asarray(m) > 0 for m in masks.values()], axis=0)].mean()
        for name, mask in masks.items():
            inside = np.asarray(mask) > 0
            if inside.any():
                assert grey[inside].mean() < background - 60, (index, name)


def test_class_count_beyond_the_defaults_is_an_error():
    assert len(DEFAULT_CLASSES) >= 8
    assert resolve_classes(2) == ["table_number", "stamp"]
    with pytest.raises(DatasetError, match="classes"):
        resolve_classes(len(DEFAULT_CLASSES) + 1)


def test_refuses_to_write_into_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match=str(tmp_path)):
        generate(tmp_path, 4, 32, 2, seed=0)


def test_64_pages_of_64_pixels_take_well_under_five_seconds(tmp_path):
    start = time.perf_counter()
    generate(tmp_path, 64, 64, 5, seed=0)
    assert time.perf_counter() - start < 5
