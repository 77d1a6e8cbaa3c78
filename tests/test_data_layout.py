from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kt_cluster.core.dataset import DatasetError, Example, check_classes, is_empty, list_examples, read_classes

CLASSES = ["stamp", "signature"]


def _write(path: Path, shape=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(shape, np.uint8)).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def _dataset(root: Path, names=("a.png", "b.jpg"), classes=CLASSES) -> Path:
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for name in names:
        _write(root / "train" / "images" / name)
        for cls in classes:
            _write(root / "train" / "masks" / cls / (Path(name).stem + ".png"))
    return root


def test_list_examples_pairs_each_image_with_its_masks_in_class_order(tmp_path):
    root = _dataset(tmp_path)
    examples = list_examples(root, "train", ["signature", "stamp"])
    masks = root / "train" / "masks"
    assert examples == [
        Example(root / "train/images/a.png", (masks / "signature/a.png", masks / "stamp/a.png")),
        Example(root / "train/images/b.jpg", (masks / "signature/b.png", masks / "stamp/b.png")),
    ]


def test_missing_mask_error_names_the_missing_path(tmp_path):
    root = _dataset(tmp_path)
    missing = root / "train/masks/signature/b.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=str(missing)):
        list_examples(root, "train", CLASSES)


def test_missing_class_directory_error_names_it(tmp_path):
    root = _dataset(tmp_path)
    with pytest.raises(DatasetError, match=str(root / "train/masks/logo")):
        list_examples(root, "train", [*CLASSES, "logo"])


def test_missing_split_error_names_the_image_directory(tmp_path):
    root = _dataset(tmp_path)
    with pytest.raises(DatasetError, match=str(root / "val/images")):
        list_examples(root, "val", CLASSES)


def test_non_image_file_among_images_is_named(tmp_path):
    root = _dataset(tmp_path)
    stray = root / "train/images/notes.txt"
    stray.write_text("hello")
    with pytest.raises(DatasetError, match=str(stray)):
        list_examples(root, "train", CLASSES)


def test_classes_mismatch_error_names_the_file_and_both_lists(tmp_path):
    root = _dataset(tmp_path)
    with pytest.raises(DatasetError) as info:
        check_classes(root, ["signature", "stamp"])
    message = str(info.value)
    assert str(root / "classes.txt") in message
    assert "['stamp', 'signature']" in message and "['signature', 'stamp']" in message


def test_read_classes_keeps_line_order_and_skips_blank_lines(tmp_path):
    (tmp_path / "classes.txt").write_text("stamp\n\n  signature \n")
    assert read_classes(tmp_path) == ["stamp", "signature"]


def test_read_classes_rejects_duplicates_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "classes.txt")):
        read_classes(tmp_path)
    (tmp_path / "classes.txt").write_text("stamp\nstamp\n")
    with pytest.raises(DatasetError, match="stamp"):
        read_classes(tmp_path)


def test_is_empty_only_for_absent_or_fileless_directories(tmp_path):
    assert is_empty(tmp_path / "absent")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    assert is_empty(tmp_path / "d")
    (tmp_path / "d" / "sub" / "f").write_text("x")
    assert not is_empty(tmp_path / "d")
