"""Folder layouts of the benchmarks and the loaders that read them.

``Layout`` describes where a benchmark's files are (MMSegmentation conventions for the paper's eight);
``StandardDataset`` reads any layout whose masks are plain class-index PNGs; CamVid, DAVIS-2016 and the
demo folder have small loaders of their own because their lists or encodings differ.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import Item, SegmentationDataset, check_values, read_class_file


@dataclass(frozen=True)
class Layout:
    """Where the files of one benchmark live, relative to the dataset root.

    ``base`` is the folder under the root that holds everything (the root may also be that folder
    itself). ``image_dir`` / ``label_dir`` / ``list_file`` may contain ``{split}``; with ``list_file`` the
    ids come from that file (one per line), otherwise from scanning ``image_dir`` for ``image_suffix``.
    ``split_folders`` maps user split names to the names used on disk (``val`` -> ``val2017``).
    """

    base: str
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    list_file: str | None = None
    split_folders: dict = field(default_factory=dict)

    def folder(self, split: str) -> str:
        return self.split_folders.get(split, split)

    def describe(self, split: str = "{split}") -> str:
        split = self.folder(split) if split != "{split}" else split
        files = "*" if self.list_file else "**/*"  # scanned layouts may have sub-folders (cities)
        parts = [f"{self.image_dir}/{files}{self.image_suffix}", f"{self.label_dir}/{files}{self.label_suffix}"]
        if self.list_file:
            parts.append(self.list_file)
        inner = ", ".join(p.format(split=split) for p in parts)
        return f"{self.base}/{{{inner}}}"

    def resolve_base(self, root: Path, split: str) -> Path:
        """root/base, or root itself when the user pointed at the base folder directly."""
        image_dir = self.image_dir.format(split=self.folder(split))
        for candidate in (root / self.base, root):
            if (candidate / image_dir).is_dir():
                return candidate
        return root / self.base


class StandardDataset(SegmentationDataset):
    """Images + class-index PNG masks in a ``Layout``; raw mask values 0..label_max and ignore."""

    def __init__(self, name, root, split, class_names, layout: Layout, label_max: int,
                 reduce_zero_label: bool, fetch_hint: str) -> None:
        self.layout_spec = layout
        self.label_max = label_max
        self.reduce_zero_label = reduce_zero_label
        super().__init__(name, root, split, class_names, layout.describe(split), fetch_hint)

    def list_items(self) -> list[Item]:
        layout, folder = self.layout_spec, self.layout_spec.folder(self.split)
        base = layout.resolve_base(self.root, self.split)
        image_dir = base / layout.image_dir.format(split=folder)
        label_dir = base / layout.label_dir.format(split=folder)
        if layout.list_file:
            list_path = base / layout.list_file.format(split=folder)
            if not list_path.is_file():
                raise self.missing(list_path)
            ids = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
        else:
            if not image_dir.is_dir():
                raise self.missing(image_dir)
            ids = sorted(str(p.relative_to(image_dir))[: -len(layout.image_suffix)]
                         for p in image_dir.rglob(f"*{layout.image_suffix}"))
        return [Item(i, image_dir / f"{i}{layout.image_suffix}", label_dir / f"{i}{layout.label_suffix}")
                for i in ids]

    def label_encoding(self) -> str:
        text = f"a single-channel PNG (mode L or P) of class indices 0..{self.label_max}"
        if self.reduce_zero_label:
            text += " where 0 = 'other' (ignored: reduce_zero_label) and 1.. are the classes"
        return f"{text}, {self.ignore_index} = ignore"

    def encode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_values(raw, self.label_max, self.ignore_index, path, self.label_encoding())
        return raw


# ------------------------------------------------------------------------------------------ CamVid
CAMVID_LAYOUT = Layout("CamVid", "{split}", "{split}annot", ".png", ".png", list_file="{split}.txt")
CAMVID_VOID = 11


class CamVidDataset(SegmentationDataset):
    """SegNet's 11-class CamVid: ``CamVid/{split}.txt`` lists ``image mask`` pairs whose absolute
    ``/SegNet/CamVid/...`` prefix is dropped (the last two path components are kept: ``val/x.png``).
    Masks are mode-L indices 0..10, and 11 = void becomes the ignore label 255."""

    def __init__(self, name, root, split, class_names, fetch_hint) -> None:
        super().__init__(name, root, split, class_names, CAMVID_LAYOUT.describe(split), fetch_hint)

    def list_items(self) -> list[Item]:
        base = CAMVID_LAYOUT.resolve_base(self.root, self.split)
        items = []
        for image, label in (map(Path, pair) for pair in self.read_pair_list(base / f"{self.split}.txt")):
            items.append(Item(image.stem, base / image.parent.name / image.name,
                              base / label.parent.name / label.name))
        return items

    def label_encoding(self) -> str:
        return "a single-channel PNG (mode L) of class indices 0..10 and 11 = void (ignored)"

    def encode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_values(raw, CAMVID_VOID, self.ignore_index, path, self.label_encoding())
        return np.where(raw == CAMVID_VOID, self.ignore_index, raw)


# ------------------------------------------------------------------------------------------ DAVIS
DAVIS_LAYOUT = Layout("DAVIS", "JPEGImages/480p", "Annotations/480p", ".jpg", ".png",
                      list_file="ImageSets/480p/{split}.txt")
DAVIS_HINTS_FILE = "sequence_categories.csv"


class DavisDataset(SegmentationDataset):
    """DAVIS-2016 480p: binary masks of one primary object, {0, 255} with 255 = foreground.

    Labels become 0 = background, 1 = object (``mask > 127``); there is no ignore label. DAVIS has no
    semantic classes, so the class *names* vary per image: ``class_names_for(i)`` returns
    ``["background", hint]`` where the hint comes from the sequence's row of
    ``ROOT/sequence_categories.csv`` (column ``fg_category_hint``, e.g. ``"horse; person"``: synonyms
    of class 1, max-pooled) or, without that file, from the sequence name (``"bmx-bumps"`` ->
    ``"bmx bumps"``). ``class_names`` is the generic ``["background", "object"]``.
    """

    def __init__(self, name, root, split, class_names, fetch_hint) -> None:
        super().__init__(name, root, split, class_names, DAVIS_LAYOUT.describe(split), fetch_hint)
        self.hints = self.read_hints()

    def list_items(self) -> list[Item]:
        base = DAVIS_LAYOUT.resolve_base(self.root, self.split)
        items = []
        for pair in self.read_pair_list(base / DAVIS_LAYOUT.list_file.format(split=self.split)):
            image, label = (p.lstrip("/") for p in pair)
            sequence_frame = f"{Path(image).parent.name}/{Path(image).stem}"
            items.append(Item(sequence_frame, base / image, base / label))
        return items

    def read_hints(self) -> dict[str, str]:
        for path in (self.root / DAVIS_HINTS_FILE, self.root / "DAVIS" / DAVIS_HINTS_FILE):
            if path.is_file():
                with path.open(newline="", encoding="utf-8") as f:
                    return {row["sequence"]: row["fg_category_hint"].strip() for row in csv.DictReader(f)}
        return {}

    def sequence(self, index: int) -> str:
        return self.items[index].id.split("/")[0]

    def class_names_for(self, index: int) -> list[str]:
        sequence = self.sequence(index)
        hint = self.hints.get(sequence) or sequence.replace("-", " ")
        return [self.class_names[0], hint]

    def label_encoding(self) -> str:
        return "a single-channel PNG (mode L) with 0 = background and 255 = foreground"

    def encode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_values(raw, 255, None, path, self.label_encoding())
        if 0 < raw.max() <= 127:
            raise ValueError(f"label {path} holds only values {np.unique(raw)[:10].tolist()}: it looks like an "
                             f"index mask (1 = object); expected {self.label_encoding()}")
        return (raw > 127).astype(np.int64)


# ------------------------------------------------------------------------------------------ demo folder
DEMO_LAYOUT = Layout(".", "images", "labels", ".png", ".png")
DEMO_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class FolderDataset(SegmentationDataset):
    """A plain folder: ``ROOT/images/*.png`` (or .jpg), ``ROOT/labels/<same stem>.png`` (mode L, class
    indices, 255 = ignore) and ``ROOT/classes.txt`` (one class per line, ``a; b`` for synonyms).
    The ``demo`` dataset (written by ``python -m lposs.demo --out DIR``) uses it; so can your own data.
    ``split`` None or ``"all"`` takes every image; another name reads the ids in ``ROOT/<split>.txt``."""

    LAYOUT_TEXT = "images/*.png, labels/*.png (mode L class indices, 255 = ignore), classes.txt"

    def __init__(self, name, root, split, fetch_hint) -> None:
        root = Path(root)
        classes_path = root / "classes.txt"
        if not classes_path.is_file():
            absent = classes_path if root.is_dir() else root
            raise FileNotFoundError(f"dataset {name!r}: {absent} does not exist. Expected under root {root}: "
                                    f"{self.LAYOUT_TEXT}. {fetch_hint}")
        super().__init__(name, root, split or "all", read_class_file(classes_path), self.LAYOUT_TEXT, fetch_hint)

    def list_items(self) -> list[Item]:
        image_dir, label_dir = self.root / "images", self.root / "labels"
        if not image_dir.is_dir():
            raise self.missing(image_dir)
        if self.split == "all":
            images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in DEMO_IMAGE_SUFFIXES)
        else:
            list_path = self.root / f"{self.split}.txt"
            if not list_path.is_file():
                raise self.missing(list_path)
            stems = [s.strip() for s in list_path.read_text().splitlines() if s.strip()]
            images = [self.find_image(image_dir, stem) for stem in stems]
        return [Item(p.stem, p, label_dir / f"{p.stem}.png") for p in images]

    @staticmethod
    def find_image(image_dir: Path, stem: str) -> Path:
        for suffix in DEMO_IMAGE_SUFFIXES:
            if (image_dir / f"{stem}{suffix}").is_file():
                return image_dir / f"{stem}{suffix}"
        return image_dir / f"{stem}.png"  # reported as missing by check_files

    def encode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_values(raw, self.num_classes - 1, self.ignore_index, path, self.label_encoding())
        return raw
