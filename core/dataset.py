"""The on-disk layout of a segmentation dataset, and functions to list and validate it.

    DATA/
      classes.txt                      one class name per line; line order = mask channel order
      train/images/<name>.png          page scans, RGB or grayscale (.png .jpg .jpeg)
      train/masks/<class>/<name>.png   one binary mask per class per image (0 = background,
                                       >0 = object), single-channel PNG, same size as the image
      val/images/...  val/masks/<class>/...   the same for validation

A mask is named after its image's stem with a .png suffix (`a.jpg` -> `masks/stamp/a.png`).
Listing only looks at names, never at file contents, so it is cheap on large sets; every
`DatasetError` names the file or directory it is about. `check_dataset` adds a decode of a sample
of pages (PIL, no TensorFlow): what the chief, `ktc local` and `ktc data check` run before any
training, so that a broken dataset fails in seconds rather than one failed trial at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

CLASSES_FILE = "classes.txt"
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIX = ".png"


SAMPLE_PAGES = 8  # pages per split that `check_dataset` decodes


class DatasetError(ValueError):
    """A dataset that does not follow the layout; the message names the culprit path."""


@dataclass(frozen=True)
class DatasetSummary:
    """What `check_dataset` found."""

    root: Path
    classes: tuple[str, ...]
    train: int  # pages
    val: int
    sampled: int  # pages decoded

    def __str__(self) -> str:
        return (f"dataset {self.root}: {self.train} train and {self.val} val pages, {len(self.classes)} classes "
                f"({', '.join(self.classes)}); {self.sampled} sampled pages decode")


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


def check_dataset(root: Path, classes: list[str], sample: int = SAMPLE_PAGES) -> DatasetSummary:
    """Check a dataset before training: the folder exists, classes.txt equals `classes` (order
    included), every image of both splits has a mask per class, and `sample` pages per split
    (spread over the split) decode with their masks at the image's size. Raises `DatasetError`
    naming the first culprit."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory does not exist" if not root.exists()
                           else f"{root}: is not a directory")
    found = check_classes(root, classes)
    splits = {split: list_examples(root, split, found) for split in SPLITS}
    sampled = 0
    for examples in splits.values():
        for example in _spread(examples, sample):
            problem = check_example(example)
            if problem is not None:
                raise DatasetError(problem)
            sampled += 1
    return DatasetSummary(root, tuple(found), len(splits["train"]), len(splits["val"]), sampled)


def _spread(items: list, count: int) -> list:
    """Up to `count` items evenly spread from the first to the last."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]


def check_example(example: Example) -> str | None:
    """'<path>: <problem>' for the first file of `example` that cannot be used, or None: the
    image and every mask decode fully, masks have one channel and their image's size."""
    image, problem = open_image(example.image, ("PNG", "JPEG"))
    if problem is not None:
        return problem
    for path in example.masks:
        mask, problem = open_image(path, ("PNG",))
        if problem is not None:
            return problem
        if mask.mode == "P" or len(mask.getbands()) != 1:
            return f"{path}: mask has {len(mask.getbands())} channels ({mask.mode}), expected 1"
        if mask.size != image.size:
            w, h = mask.size
            return f"{path}: mask is {w}x{h} pixels but its image {example.image} is {image.width}x{image.height}"
    return None


def open_image(path: Path, formats: tuple[str, ...]) -> tuple[Image.Image | None, str | None]:
    """The fully decoded image, or a description of why it cannot be used."""
    from PIL import Image  # here: listing and the command line's error paths never decode

    try:
        with Image.open(path) as image:
            image.load()
    except OSError as exc:
        return None, f"{path}: cannot be read or decoded ({exc})"
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"{path}: cannot be decoded ({exc})"
    if image.format not in formats:
        return None, f"{path}: is {image.format}, expected {' or '.join(formats)}"
    return image, None
