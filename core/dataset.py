"""The on-disk layout of a segmentation dataset, and functions to list and validate it.

    DATA/
      classes.txt                      one class name per line; line order = mask channel order
      train/images/<name>.png          page scans, RGB or grayscale (.png .jpg .jpeg)
      train/masks/<class>/<name>.png   one binary mask per class per image (0 = background,
                                       >0 = object), single-channel PNG, same size as the image
      val/images/...  val/masks/<class>/...   the same for validation

A mask is named after its image's stem with a .png suffix (`a.jpg` -> `masks/stamp/a.png`).
Listing only looks at names, never at file contents, so it is cheap on large sets; every
`DatasetError` names the file or directory it is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLASSES_FILE = "classes.txt"
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIX = ".png"


class DatasetError(ValueError):
    """A dataset that does not follow the layout; the message names the culprit path."""


@dataclass(frozen=True)
class Example:
    """One page: its image and one mask per class, in class order."""

    image: Path
    masks: tuple[Path, ...]


def read_classes(root: Path) -> list[str]:
    """Class names from `root/classes.txt`, in mask channel order (blank lines ignored)."""
    path = Path(root) / CLASSES_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DatasetError(f"{path}: lists no classes")
    for name in names:
        check_class_name(name, where=str(path))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"{path}: class {duplicates[0]!r} is listed twice")
    return names


def check_class_name(name: str, where: str) -> None:
    """Class names become directory names, so they must be plain path components."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise DatasetError(f"{where}: {name!r} is not a usable class name (it names a directory)")


def check_classes(root: Path, expected: list[str]) -> list[str]:
    """The dataset's classes, after checking they equal `expected` (the config's), order included."""
    found = read_classes(root)
    if found != list(expected):
        raise DatasetError(
            f"{Path(root) / CLASSES_FILE} lists classes {found} but the config's data.classes is "
            f"{list(expected)}; make them equal (same names, same order)")
    return found


def list_examples(root: Path, split: str, classes: list[str]) -> list[Example]:
    """Every example of `split`, sorted by image name, each with its masks in `classes` order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images = _list_images(Path(root) / split / "images")
    mask_dirs = [_mask_dir(root, split, name) for name in classes]
    return [Example(image, tuple(_mask_path(d, image) for d in mask_dirs)) for image in images]


def is_empty(root: Path) -> bool:
    """True when `root` does not exist or holds no files (empty subdirectories do not count)."""
    root = Path(root)
    if not root.exists():
        return True
    if not root.is_dir():
        return False
    return not any(p.is_file() for p in root.rglob("*"))


def _list_images(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise DatasetError(f"{directory}: image directory is missing")
    images = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue  # editor and OS droppings such as .DS_Store
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{path}: not an image file (expected {' '.join(IMAGE_SUFFIXES)})")
        images.append(path)
    if not images:
        raise DatasetError(f"{directory}: holds no images")
    stems = [p.stem for p in images]
    clash = next((p for p in images if stems.count(p.stem) > 1), None)
    if clash is not None:
        raise DatasetError(f"{clash}: another image has the same name stem, so they would share masks")
    return images


def _mask_dir(root: Path, split: str, name: str) -> Path:
    directory = Path(root) / split / "masks" / name
    if not directory.is_dir():
        raise DatasetError(f"{directory}: mask directory for class {name!r} is missing")
    return directory


def _mask_path(directory: Path, image: Path) -> Path:
    path = directory / (image.stem + MASK_SUFFIX)
    if not path.is_file():
        raise DatasetError(f"{path}: mask for image {image} is missing")
    return path
