"""What every dataset shares: the Sample record, file readers with clear errors, and the base class.

A dataset is a list of ``Item(id, image, label)`` paths, checked to exist when the dataset is built, and
``ds[i]`` reads one pair lazily: the image as uint8 [H, W, 3], the label as int64 [H, W] in the evaluation
encoding (class indices, ``ignore_index`` for ignored pixels; for ``reduce_zero_label`` datasets the raw
0 = "other" encoding, which the metrics reduce). Subclasses say where the files are (``list_items``) and
how a raw mask maps to that encoding (``encode_label``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

INDEX_MASK_MODES = ("L", "P", "I", "I;16", "1")


class Sample(NamedTuple):
    """One evaluation pair: image uint8 [H, W, 3], label int64 [H, W]."""

    id: str
    image: np.ndarray
    label: np.ndarray


@dataclass(frozen=True)
class Item:
    """Where one pair lives on disk."""

    id: str
    image: Path
    label: Path


def read_class_file(path) -> list[str]:
    """One class per line, kept exactly as written (trailing spaces included); no empty lines."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"class list {path} is a folder: pass a text file with one class name per line")
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist: pass a text file with one class name per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"class list {path} is not UTF-8 text ({err.reason} at byte {err.start}): "
                         "pass a text file with one class name per line") from None
    names = text.split("\n")
    if names and names[-1] == "":
        names = names[:-1]
    names = [name.rstrip("\r") for name in names]
    if not names:
        raise ValueError(f"class list {path} is empty: write one class name per line")
    empty = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if empty:
        raise ValueError(f"class list {path} has empty lines at {empty[:5]}: write one class name per line")
    return names


def packaged_class_names(stem: str) -> list[str]:
    """The class list shipped in lposs/datasets/classes/<stem>.txt."""
    resource = resources.files("lposs.datasets").joinpath("classes", f"{stem}.txt")
    with resources.as_file(resource) as path:
        return read_class_file(path)


DATASET_IMAGE_ADVICE = "The file is corrupt or truncated: re-download it (or delete it and re-run the fetch)"
USER_IMAGE_ADVICE = ("Pass a photo PIL can open (PNG, JPEG, WebP, BMP, TIFF, ...); if this one is, it is corrupt "
                     "or truncated: open it in an image viewer or save it again")


def read_image(path: Path, advice: str = USER_IMAGE_ADVICE) -> np.ndarray:
    """An RGB image as uint8 [H, W, 3]. A missing file, a folder or a file PIL cannot decode raises an error
    naming it, with `advice` (what to do about an undecodable file: a dataset's loader says re-fetch)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {path} is a folder, not an image file: pass the path of one image (png, jpg, ...)")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} is missing") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"cannot read image {path}: it is not in an image format PIL knows. {advice}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}. {advice}") from err
    return np.asarray(rgb, dtype=np.uint8)


def read_index_mask(path: Path, expected: str) -> np.ndarray:
    """A single-channel mask as int64 [H, W]; colour masks raise ValueError naming the file.

    ``expected`` describes the encoding the dataset wants, for the error message.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"label file {path} is missing") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read label {path}: {err}. The file is corrupt or truncated") from err
    if mode not in INDEX_MASK_MODES or array.ndim != 2:
        raise ValueError(
            f"label {path} is a {mode} image of shape {array.shape}; expected {expected}. "
            "A colour-coded mask must be converted to class indices first"
        )
    return array.astype(np.int64)


def check_values(label: np.ndarray, allowed_max: int, ignore_index: int | None, path: Path,
                 expected: str) -> None:
    """Raise ValueError naming ``path`` if the mask holds values outside 0..allowed_max and ignore."""
    bad = (label < 0) | (label > allowed_max)
    if ignore_index is not None:
        bad &= label != ignore_index
    if bad.any():
        values = np.unique(label[bad])[:10].tolist()
        raise ValueError(f"label {path} holds values {values} outside the encoding; expected {expected}")


class SegmentationDataset:
    """Base class: a checked list of items plus the label encoding of one benchmark.

    Attributes: ``name``, ``root``, ``split``, ``class_names``, ``num_classes``, ``ignore_index``,
    ``reduce_zero_label``, ``items``. ``class_names_for(i)`` gives the prompts for image i (the same list
    for every image, except in datasets whose classes vary per image, such as DAVIS).
    """

    ignore_index: int = 255
    reduce_zero_label: bool = False

    def __init__(self, name: str, root, split: str, class_names: list[str], layout: str,
                 fetch_hint: str) -> None:
        self.name = name
        self.root = Path(root)
        self.split = split
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.layout = layout
        self.fetch_hint = fetch_hint
        if not self.root.is_dir():
            raise self.missing(self.root)
        self.items = self.list_items()
        if not self.items:
            raise ValueError(f"dataset {name!r} (split {split!r}) found no images under {self.root}; "
                             f"expected layout: {layout}. {fetch_hint}")
        self.check_files()

    # -- what subclasses provide ---------------------------------------------------------------
    def list_items(self) -> list[Item]:
        raise NotImplementedError

    def encode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw mask values -> evaluation encoding (validated)."""
        raise NotImplementedError

    def read_label(self, path: Path) -> np.ndarray:
        return read_index_mask(path, self.label_encoding())

    def label_encoding(self) -> str:
        """Human description of the expected mask encoding (for error messages)."""
        return (f"a single-channel PNG (mode L or P) of class indices 0..{self.num_classes - 1}, "
                f"{self.ignore_index} = ignore")

    # -- shared behaviour ------------------------------------------------------------------------
    def read_pair_list(self, list_path: Path) -> list[tuple[str, str]]:
        """The (image, mask) path pairs of a list file with one `image mask` pair per line."""
        if not list_path.is_file():
            raise self.missing(list_path)
        lines = (line.split() for line in list_path.read_text().splitlines() if line.strip())
        return [(parts[0], parts[1]) for parts in lines]

    def missing(self, path: Path) -> FileNotFoundError:
        return FileNotFoundError(
            f"dataset {self.name!r}: {path} does not exist. Expected under root {self.root}: "
            f"{self.layout}. {self.fetch_hint}"
        )

    def check_files(self) -> None:
        absent = [p for item in self.items for p in (item.image, item.label) if not p.is_file()]
        if absent:
            shown = ", ".join(str(p) for p in absent[:3])
            raise FileNotFoundError(
                f"dataset {self.name!r} (split {self.split!r}): {len(absent)} listed file(s) missing, "
                f"e.g. {shown}. Expected layout under {self.root}: {self.layout}. {self.fetch_hint}"
            )

    def class_names_for(self, index: int) -> list[str]:
        """Class prompts for image ``index`` (the dataset's class list unless classes vary per image)."""
        return self.class_names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name!r} with {len(self)} images")
        item = self.items[index]
        image = read_image(item.image, DATASET_IMAGE_ADVICE)
        label = self.encode_label(self.read_label(item.label), item.label)
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"image {item.image} is {image.shape[1]}x{image.shape[0]} but its label {item.label} is "
                f"{label.shape[1]}x{label.shape[0]} (W x H): they must have the same size"
            )
        return Sample(item.id, image, label)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes}, root={str(self.root)!r})")
