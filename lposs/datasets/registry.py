"""The registry of benchmarks: name -> DatasetSpec, and ``get_dataset(name, root, split)``.

Eight datasets of the paper (docs/method.md section 8, MMSegmentation layouts and encodings), two real sets that
this project can test on (CamVid, DAVIS-2016) and ``demo`` (a generated folder, see lposs/demo/).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from .base import SegmentationDataset, packaged_class_names
from .layouts import CamVidDataset, DavisDataset, FolderDataset, Layout, StandardDataset
from .mess import MESS, MESS_DATASETS, MessDataset

DATA_DIR_ENV = "LPOSS_DATA"
# Real data kept beside the clone (tests, benchmarks, the course notebook): $LPOSS_SHARED_DATA, else ../shared/data
SHARED_DATA_ENV = "LPOSS_SHARED_DATA"
REPOSITORY = Path(__file__).resolve().parents[2]  # the clone's root when lposs runs from a checkout

VOC12 = Layout("VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
               list_file="ImageSets/Segmentation/{split}.txt")
CONTEXT = Layout("VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                 list_file="ImageSets/SegmentationContext/{split}.txt")
COCO_SPLITS = {"val": "val2017", "train": "train2017"}
COCO_OBJECT = Layout("coco_stuff164k", "images/{split}", "annotations/{split}", ".jpg",
                     "_instanceTrainIds.png", split_folders=COCO_SPLITS)
COCO_STUFF = Layout("coco_stuff164k", "images/{split}", "annotations/{split}", ".jpg",
                    "_labelTrainIds.png", split_folders=COCO_SPLITS)
CITYSCAPES = Layout("cityscapes", "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                    "_gtFine_labelTrainIds.png")
ADE20K = Layout("ADEChallengeData2016", "images/{split}", "annotations/{split}", ".jpg", ".png",
                split_folders={"val": "validation", "train": "training"})

# A typical image (height, width) of each benchmark's evaluation split: the nominal figure used to size a feature
# store (lposs.experiment.sizing) when the data is not on disk. Under the paper's resize (short side 448, long side
# at most 2048) the window count depends only on the aspect ratio: a 4:3 image has 15 windows of 224 either way up.
TYPICAL_IMAGE_HW = {
    "voc": (375, 500),         # VOC2012 JPEGImages: at most 500 px a side, most 500 x 375 (landscape) or 375 x 500
    "context": (375, 500),     # PASCAL Context: the VOC2010 JPEGImages, the same sizes
    "coco": (480, 640),        # COCO 2017: at most 640 px a side, most 640 x 480 or 480 x 640
    "cityscapes": (1024, 2048),  # Cityscapes leftImg8bit: every frame 2048 x 1024
    "ade20k": (512, 683),      # ADEChallengeData2016: sizes vary, typically 512 px on the short side at about 4:3
    "camvid": (360, 480),      # SegNet's CamVid: every frame 480 x 360
    "davis2016": (480, 854),   # DAVIS-2016 480p: every frame 854 x 480
}


@dataclass(frozen=True)
class DatasetSpec:
    """One registered benchmark.

    ``folder``: default root under the data directory (``$LPOSS_DATA`` or ``data/``); datasets that
    share files share a folder (voc21/voc20, context60/59, coco_object/coco_stuff). ``label_max``: the
    largest raw mask value (before reduce_zero_label). ``images``: size of the default split in the
    paper's protocol (None where it depends on the copy). ``manual``: the download needs a person.
    ``image_hw``: a typical image (height, width) of that split, for sizing the feature store before the data is
    here (`lposs.experiment.sizing`; where the data is present, its files are measured instead), from
    ``TYPICAL_IMAGE_HW`` by folder (None where no figure is kept: MESS, the demo).
    """

    name: str
    description: str
    folder: str
    default_split: str
    images: int | None = None
    layout: Layout | None = None
    classes: str | None = None
    label_max: int = 0
    reduce_zero_label: bool = False
    manual: bool = False

    @property
    def image_hw(self) -> tuple[int, int] | None:
        return TYPICAL_IMAGE_HW.get(self.folder)

    def fetch_hint(self, root) -> str:
        hint = f"Get it with `python -m lposs data fetch {self.name} --root {root}`"
        if self.manual:
            hint += " (part of it needs a manual download; that command prints the exact steps)"
        if self.name == "demo":
            hint = f"Generate it with `python -m lposs.demo --out {root}`"
        return hint + "."


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("voc21", "PASCAL VOC 2012 val, 20 classes + background", "voc", "val", 1449, VOC12,
                    "voc21", label_max=20),
        DatasetSpec("voc20", "PASCAL VOC 2012 val, 20 classes (background ignored)", "voc", "val", 1449, VOC12,
                    "voc20", label_max=20, reduce_zero_label=True),
        DatasetSpec("context60", "PASCAL Context val, 59 classes + background", "context", "val", 5104,
                    CONTEXT, "context60", label_max=59),
        DatasetSpec("context59", "PASCAL Context val, 59 classes (background ignored)", "context", "val", 5104,
                    CONTEXT, "context59", label_max=59, reduce_zero_label=True),
        DatasetSpec("coco_object", "COCO-Object val2017, 80 things + background", "coco", "val", 5000,
                    COCO_OBJECT, "coco_object", label_max=80),
        DatasetSpec("coco_stuff", "COCO-Stuff 164k val2017, 171 classes", "coco", "val", 5000, COCO_STUFF,
                    "coco_stuff", label_max=170),
        DatasetSpec("cityscapes", "Cityscapes val, 19 classes", "cityscapes", "val", 500, CITYSCAPES,
                    "cityscapes", label_max=18, manual=True),
        DatasetSpec("ade20k", "ADE20K (SceneParsing) val, 150 classes", "ade20k", "val", 2000, ADE20K,
                    "ade20k", label_max=150, reduce_zero_label=True),
        DatasetSpec("camvid", "CamVid (SegNet 11 classes) val/test, void ignored", "camvid", "val", 101,
                    classes="camvid", label_max=11),
        DatasetSpec("davis2016", "DAVIS-2016 480p, background vs the primary object", "davis2016",
                    "train_every10", 215, label_max=255),
        DatasetSpec("demo", "generated demo scenes (lposs/demo/), a plain image/label folder", "demo", "all"),
    ]
}
# MESS's 22 (lposs/datasets/mess.py); each lives in its MESS folder under $LPOSS_DATA/mess (a MESS dataset dir)
DATASETS.update({
    m.name: DatasetSpec(m.name, f"MESS {m.domain}: {m.description}", f"mess/{m.folder}", m.main_split, m.images,
                        classes=m.split(None).classes, label_max=len(m.class_names()) - 1,
                        manual=m.download != "auto")
    for m in MESS
})


def available_datasets() -> list[str]:
    """Registered dataset names."""
    return list(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; unknown names raise ValueError listing the known ones."""
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name).lower(), list(DATASETS), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint}; known datasets: {', '.join(DATASETS)} "
                         "(python -m lposs data list)")
    return DATASETS[name]


def default_root(name: str) -> Path:
    """Where ``name`` lives by default: ``$LPOSS_DATA/<folder>`` (``data/<folder>`` without the variable)."""
    return Path(os.environ.get(DATA_DIR_ENV, "data")) / dataset_spec(name).folder


def shared_data_dir() -> Path:
    """$LPOSS_SHARED_DATA, else ../shared/data next to the clone (relative to the repository, not the working
    directory)."""
    return Path(os.environ.get(SHARED_DATA_ENV, REPOSITORY.parent / "shared" / "data")).expanduser()


def find_dataset(name: str, candidates=(), split: str | None = None) -> Path | None:
    """The first folder holding dataset `name` whatever the working directory: each of `candidates`, then
    default_root(name); a relative one is tried from the working directory, then from the repository root
    (so a notebook finds the same data run from the root or from notebooks/). A folder holds the dataset
    when get_dataset reads its index; None when none does."""
    for candidate in [*candidates, default_root(name)]:
        path = Path(candidate).expanduser()
        for folder in [path] if path.is_absolute() else [path, REPOSITORY / path]:
            try:
                get_dataset(name, folder, split)
            except (FileNotFoundError, ValueError, OSError):
                continue
            return folder.resolve()
    return None


def get_dataset(name: str, root=None, split: str | None = None) -> SegmentationDataset:
    """Load benchmark ``name`` from ``root`` (default: ``default_root(name)``), split default per dataset.

    Raises ValueError for unknown names, FileNotFoundError (naming the expected layout and the fetch
    command) when the folder or a listed file is missing.
    """
    spec = dataset_spec(name)
    root = Path(root) if root is not None else default_root(name)
    split = split or spec.default_split
    hint = spec.fetch_hint(root)
    if name == "demo":
        return FolderDataset(name, root, None if split == "all" else split, hint)
    class_names = packaged_class_names(spec.classes) if spec.classes else ["background", "object"]
    if name == "camvid":
        return CamVidDataset(name, root, split, class_names, hint)
    if name == "davis2016":
        return DavisDataset(name, root, split, class_names, hint)
    if name in MESS_DATASETS:
        return MessDataset(MESS_DATASETS[name], root, split, hint)
    return StandardDataset(name, root, split, class_names, spec.layout, spec.label_max,
                           spec.reduce_zero_label, hint)
