from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kt_cluster.core.dataset import (DatasetError, Example, check_classes, check_dataset, is_empty, list_examples,
                                     read_classes)

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


def _both_splits(root: Path, classes=CLASSES) -> Path:
    _dataset(root, classes=classes)
    for name in ("c.png", "d.png", "e.png"):
        _write(root / "val" / "images" / name)
        for cls in classes:
            _write(root / "val" / "masks" / cls / (Path(name).stem + ".png"))
    return root


def test_check_dataset_counts_pages_and_decodes_a_sample(tmp_path):
    summary = check_dataset(_both_splits(tmp_path), CLASSES)
    assert (summary.train, summary.val, summary.sampled) == (2, 3, 5)
    assert str(summary).startswith(f"dataset {tmp_path}: 2 train and 3 val pages, 2 classes (stamp, signature)")


def test_check_dataset_names_a_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'absent'}: dataset directory does not exist"):
        check_dataset(tmp_path / "absent", CLASSES)


def test_check_dataset_refuses_classes_in_another_order(tmp_path):
    with pytest.raises(DatasetError, match="make them equal"):
        check_dataset(_both_splits(tmp_path), ["signature", "stamp"])


def test_check_dataset_names_a_missing_mask_of_the_val_split(tmp_path):
    root = _both_splits(tmp_path)
    (root / "val" / "masks" / "stamp" / "d.png").unlink()
    with pytest.raises(DatasetError, match=r"val/masks/stamp/d\.png: mask for image .* is missing"):
        check_dataset(root, CLASSES)


def test_check_dataset_names_a_page_that_does_not_decode(tmp_path):
    root = _both_splits(tmp_path)
    (root / "val" / "masks" / "signature" / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match=r"val/masks/signature/e\.png: cannot be"):
        check_dataset(root, CLASSES)


def test_check_dataset_names_a_mask_of_another_size(tmp_path):
    root = _both_splits(tmp_path)
    _write(root / "train" / "masks" / "signature" / "a.png", shape=(8, 9))
    with pytest.raises(DatasetError, match=r"train/masks/signature/a\.png: mask is 9x8 pixels but its image"):
        check_dataset(root, CLASSES)


def test_ktc_data_check_prints_one_line_and_exits_2_on_a_broken_dataset(tmp_path):
    import subprocess
    import sys

    root = _both_splits(tmp_path / "data")
    (root / "classes.txt").write_text("stamp\n")
    config = tmp_path / "search.yaml"
    config.write_text(f"data: {{path: {root}, classes: [stamp, signature]}}\n")
    bad = subprocess.run([sys.executable, "-m", "kt_cluster", "data", "check", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"ktc data: {root / 'classes.txt'} lists classes ['stamp'] but the config's data.classes is "
        "['stamp', 'signature']; make them equal (same names, same order)"]
    (root / "classes.txt").write_text("stamp\nsignature\n")
    good = subprocess.run([sys.executable, "-m", "kt_cluster", "data", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and good.stdout.startswith(f"dataset {root}: 2 train and 3 val pages")


def test_ktc_data_check_waits_for_a_dataset_that_arrives(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "data"
    config = tmp_path / "search.yaml"
    config.write_text(f"data: {{path: {root}, classes: [stamp, signature]}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "kt_cluster", "data", "check", "--config", str(config),
                             "--wait", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"ktc data check: waiting for the dataset: {root}: dataset directory does not exist")
        _both_splits(root)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith(f"dataset {root}: 2 train and 3 val pages")


def test_the_chief_checks_the_dataset_at_start_and_stops_in_seconds_naming_the_culprit(tmp_path):
    import subprocess
    import sys
    import time

    root = _both_splits(tmp_path / "data")
    (root / "train" / "masks" / "signature" / "b.png").unlink()
    config = tmp_path / "search.yaml"
    config.write_text(f"data: {{path: {root}, classes: [stamp, signature]}}\nresults: {tmp_path / 'results'}\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "kt_cluster", "chief", "--insecure", "--config", str(config)],
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"ktc chief: {root / 'train/masks/signature/b.png'}: mask for image {root / 'train/images/b.jpg'} is missing"]
    assert time.monotonic() - started < 15  # in seconds: before TensorFlow loads, long before a trial
    assert not (tmp_path / "results").exists()
