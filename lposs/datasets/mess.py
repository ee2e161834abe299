"""MESS (Blumenstiel et al., NeurIPS 2023): the 22 datasets as the ``mess-benchmark`` package registers them.

Every fact below comes from mess-benchmark 0.2 (PyPI; github.com/blumenstiel/MESS @ cc701b5):
folders, splits, image/label folders and file endings from ``mess/datasets/register_<name>.py``; class
names from the same files (``lposs/datasets/classes/mess_<name>[_<variant>].txt`` were written from
``MetadataCatalog.get(<split>).stuff_classes`` and tests/test_mess.py compares them with the installed
package); image counts from ``expected_dataset_length`` in ``mess/prepare_all_datasets.py``; titles and
domains from ``dataset_names`` / ``dataset_domains`` in ``mess/evaluation/mess_evaluation.py``; the
image each split feeds (IRRG, thermal, tiles) from ``mess/prepare_datasets/prepare_<name>.py`` and
DATASETS.md.

The prepared layout MESS writes is read as it is (no detectron2): images and single-channel masks of class
indices, 255 = ignore (MESS sets ``ignore_label=255`` everywhere). Background is an ordinary named class
(e.g. ``others``); there is no synonym or threshold rule. A registry name is MESS's dataset name
(``isprs_potsdam``), a split is MESS's split (``test_irrg``; ``*_official`` gives the dataset's official
class names, ``test_rgb`` the RGB images). MESS's main split of each dataset is the default; PAXRay-4 is
evaluated as four binary splits whose results MESS averages (``combine_paxray``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import Item, SegmentationDataset, check_values, packaged_class_names

DOMAINS = ("General", "Earth Monitoring", "Medical Sciences", "Engineering", "Agriculture and Biology")
IGNORE_LABEL = 255
TILES = "1024x1024 tiles of the large originals, zero-padded (padding labelled 255 = ignored)"


@dataclass(frozen=True)
class MessSplit:
    """One registered MESS split: folders under the dataset folder, its class list and input modality."""

    image_dir: str
    label_dir: str
    classes: str  # stem of lposs/datasets/classes/<stem>.txt
    modality: str = "RGB"


@dataclass(frozen=True)
class MessSpec:
    """One MESS dataset. ``folder``: MESS's folder under its dataset directory (DETECTRON2_DATASETS).
    ``classes_of_interest`` / ``background_class`` (255 = none) as MESS's metadata sets them."""

    name: str
    title: str
    domain: str
    folder: str
    images: int
    image_ext: str
    label_ext: str
    splits: dict[str, MessSplit]
    classes_of_interest: tuple[int, ...] | str  # "all" / "all_but_background" or explicit ids
    background_class: int
    download: str  # "auto", "registration", "unrar", "drive folder"
    description: str
    eval_splits: tuple[str, ...] = field(default=())

    @property
    def main_split(self) -> str:
        return next(iter(self.splits))

    @property
    def evaluated_splits(self) -> tuple[str, ...]:
        """The split(s) MESS evaluates (eval.sh): the main split, or PAXRay's four binary tasks."""
        return self.eval_splits or (self.main_split,)

    def class_names(self, split: str | None = None) -> list[str]:
        return packaged_class_names(self.split(split).classes)

    def split(self, split: str | None) -> MessSplit:
        split = split or self.main_split
        if split not in self.splits:
            raise ValueError(f"MESS dataset {self.name!r} has no split {split!r}; its splits: {', '.join(self.splits)}")
        return self.splits[split]

    def interest(self, num_classes: int) -> list[int]:
        """Class ids of MESS's class-of-interest mIoU."""
        if self.classes_of_interest == "all":
            return list(range(num_classes))
        if self.classes_of_interest == "all_but_background":
            return [c for c in range(num_classes) if c != self.background_class]
        return list(self.classes_of_interest)


def _split(image_dir, label_dir, stem, modality="RGB"):
    return MessSplit(image_dir, label_dir, f"mess_{stem}", modality)


def _std(split, stem, modality="RGB"):
    """The common MESS layout: images_detectron2/<split>, annotations_detectron2/<split>."""
    return _split(f"images_detectron2/{split}", f"annotations_detectron2/{split}", stem, modality)


_PAXRAY = {f"test_{part}": _split("images_detectron2/test", f"annotations_detectron2/test/{part}", f"paxray_{part}",
                                  "chest X-ray (greyscale, fed as RGB); one binary task per label")
           for part in ("lungs", "mediastinum", "bones", "diaphragm")}

MESS: tuple[MessSpec, ...] = (
    # ------------------------------------------------------------------------------------------ General
    MessSpec("bdd100k", "BDD100K", "General", "bdd100k", 1000, "jpg", "png",
             {"val": _split("images/10k/val", "annotations_detectron2/val", "bdd100k", "RGB (driving)")},
             "all", 255, "registration", "BDD100K 10k val, 19 Cityscapes classes (driving)"),
    MessSpec("dark_zurich", "Dark Zurich", "General", "Dark_Zurich", 50, "_rgb_anon.png", "_gt_labelIds.png",
             {"val": _split("rgb_anon/val/night/GOPR0356", "annotations_detectron2/val", "dark_zurich",
                            "RGB (night-time driving)")},
             "all_but_background", 0, "auto", "Dark Zurich val (night), 19 Cityscapes classes + unlabeled"),
    MessSpec("mhp_v1", "MHP v1", "General", "LV-MHP-v1", 980, "jpg", "png",
             {s: _std(s, "mhp_v1") for s in ("test", "train", "val")},
             "all_but_background", 0, "auto", "LV-MHP v1 test, 18 human parts + others"),
    MessSpec("foodseg103", "FoodSeg103", "General", "FoodSeg103", 2125, "jpg", "png",
             {"test": _split("Images/img_dir/test", "Images/ann_dir/test", "foodseg103")},
             "all_but_background", 0, "auto", "FoodSeg103 test, 103 ingredients + background"),
    MessSpec("atlantis", "ATLANTIS", "General", "atlantis", 1295, "jpg", "png",
             {"test": _std("test", "atlantis")},
             "all", 255, "auto", "ATLANTIS test, 56 water-body classes"),
    MessSpec("dram", "DRAM", "General", "DRAM_processed", 718, "jpg", "png",
             {"test": _std("test", "dram", "RGB (art paintings)")},
             tuple(range(11)), 11, "unrar", "DRAM test (paintings), 11 VOC classes + background"),
    # ------------------------------------------------------------------------------------------ Earth Monitoring
    MessSpec("isaid", "iSAID", "Earth Monitoring", "isaid", 4055, "png", "png",
             {s: _std("val", "isaid" + v, f"RGB satellite, {TILES}") for s, v in
              (("val", ""), ("val_official", "_official"))},
             "all_but_background", 0, "drive folder", "iSAID val, 15 object classes + others"),
    MessSpec("isprs_potsdam", "ISPRS Potsdam", "Earth Monitoring", "ISPRS_Potsdam", 504, "png", "png",
             {"test_irrg": _split("images_detectron2/test/irrg", "annotations_detectron2/test", "isprs_potsdam",
                                  f"IRRG (near-infrared, red, green) aerial, {TILES}"),
              "test_irrg_official": _split("images_detectron2/test/irrg", "annotations_detectron2/test",
                                           "isprs_potsdam_official", f"IRRG aerial, {TILES}"),
              "test_rgb": _split("images_detectron2/test/rgb", "annotations_detectron2/test", "isprs_potsdam",
                                 f"RGB aerial, {TILES}")},
             tuple(range(5)), 5, "registration", "ISPRS Potsdam test tiles, 5 classes + others"),
    MessSpec("worldfloods", "WorldFloods", "Earth Monitoring", "WorldFloods", 160, "png", "png",
             {"test_irrg": _split("images_detectron2/test/irrg", "annotations_detectron2/test", "worldfloods",
                                  "Sentinel-2 'IRRG' composite of bands [7, 3, 1] (B8 NIR, B4 red, B2 blue in "
                                  f"prepare_worldfloods.py's band table), {TILES}"),
              "test_rgb": _split("images_detectron2/test/rgb", "annotations_detectron2/test", "worldfloods",
                                 f"Sentinel-2 RGB (bands B4, B3, B2), {TILES}")},
             (1,), 0, "drive folder", "WorldFloods test, land / water / cloud"),
    MessSpec("floodnet", "FloodNet", "Earth Monitoring", "FloodNet-Supervised_v1.0", 5571, ".jpg", ".png",
             {"test": _std("test", "floodnet", f"RGB UAV, {TILES}")},
             (1, 3), 0, "registration", "FloodNet test tiles, 9 classes + background"),
    MessSpec("uavid", "UAVid", "Earth Monitoring", "uavid_v1.5", 840, "png", "png",
             {s: _std("val", "uavid" + v, f"RGB UAV, {TILES}") for s, v in (("val", ""), ("val_official", "_official"))},
             "all_but_background", 0, "registration", "UAVid val tiles, 7 classes + others"),
    # ------------------------------------------------------------------------------------------ Medical Sciences
    MessSpec("kvasir_instrument", "Kvasir-Instrument", "Medical Sciences", "kvasir-instrument", 118, "png", "png",
             {s: _std("test", "kvasir_instrument" + v, "RGB endoscopy") for s, v in
              (("test", ""), ("test_official", "_official"))},
             (1,), 0, "auto", "Kvasir-Instrument test, binary (tool vs others)"),
    MessSpec("chase_db1", "CHASE DB1", "Medical Sciences", "CHASEDB1", 20, "jpg", "png",
             {"test": _std("test", "chase_db1", "RGB retinal fundus")},
             (1,), 0, "auto", "CHASE DB1 (last 20 images), binary (blood vessels vs others)"),
    MessSpec("cryonuseg", "CryoNuSeg", "Medical Sciences", "CryoNuSeg", 30, "png", "png",
             {"test": _split("images_detectron2", "annotations_detectron2", "cryonuseg", "RGB H&E histology")},
             (1,), 0, "registration", "CryoNuSeg, binary (nuclei vs others)"),
    MessSpec("paxray", "PAXRay-4", "Medical Sciences", "paxray_dataset", 180, "png", "png", _PAXRAY,
             (1,), 0, "auto", "PAXRay test, 4 binary tasks (lungs, mediastinum, bones, diaphragm), averaged",
             eval_splits=("test_lungs", "test_bones", "test_mediastinum", "test_diaphragm")),
    # ------------------------------------------------------------------------------------------ Engineering
    MessSpec("corrosion_cs", "Corrosion CS", "Engineering", "Corrosion Condition State Classification", 44,
             "jpeg", "png",
             {s: _split("original/Test/images", "original/Test/masks", "corrosion_cs" + v) for s, v in
              (("test", ""), ("test_official", "_official"))},
             "all_but_background", 0, "auto", "Corrosion Condition State test, 3 corrosion states + others"),
    MessSpec("deepcrack", "DeepCrack", "Engineering", "DeepCrack", 237, "jpg", "png",
             {s: _split("test_img", "annotations_detectron2/test", "deepcrack" + v) for s, v in
              (("test", ""), ("test_adapted", "_adapted"))},
             (1,), 0, "auto", "DeepCrack test, binary (crack vs concrete or asphalt)"),
    MessSpec("pst900", "PST900", "Engineering", "PST900_RGBT_Dataset", 288, "png", "png",
             {"test": _split("test/thermal", "test/labels", "pst900", "thermal (8-bit greyscale, fed as RGB)"),
              "test_official": _split("test/thermal", "test/labels", "pst900_official", "thermal (greyscale)"),
              "test_pseudo": _split("test/thermal_pseudo", "test/labels", "pst900",
                                    "thermal in matplotlib's 'inferno' colour map"),
              "test_rgb": _split("test/rgb", "test/labels", "pst900", "RGB")},
             "all_but_background", 0, "auto", "PST900 test (thermal), 4 objects + background"),
    MessSpec("zerowaste", "ZeroWaste-f", "Engineering", "zerowaste-f", 929, "PNG", "PNG",
             {"test": _split("splits_final_deblurred/test/data", "splits_final_deblurred/test/sem_seg", "zerowaste")},
             "all_but_background", 0, "auto", "ZeroWaste-f test, 4 materials + background or trash"),
    # ------------------------------------------------------------------------------------------ Agriculture and Biology
    MessSpec("suim", "SUIM", "Agriculture and Biology", "SUIM", 110, "jpg", "png",
             {"test": _split("TEST/images", "annotations_detectron2/test", "suim", "RGB underwater")},
             "all_but_background", 0, "auto", "SUIM test (underwater), 7 classes + waterbody background"),
    MessSpec("cub_200", "CUB-200", "Agriculture and Biology", "CUB_200_2011", 5794, "jpg", "png",
             {"test": _std("test", "cub_200")},
             "all_but_background", 0, "auto", "CUB-200-2011 test, 200 bird species + background"),
    MessSpec("cwfid", "CWFID", "Agriculture and Biology", "cwfid", 21, "image.png", "annotation.png",
             {s: _split("images", "annotations_detectron2/test", "cwfid" + v, "RGB field images") for s, v in
              (("test", ""), ("test_official", "_official"))},
             "all_but_background", 0, "auto", "CWFID test, crop seedling / weed / ground"),
)
MESS_DATASETS: dict[str, MessSpec] = {spec.name: spec for spec in MESS}


def mess_datasets() -> dict[str, str]:
    """The 22 registry names in MESS's table order -> their domain (``General`` ... ``Agriculture and Biology``)."""
    return {spec.name: spec.domain for spec in MESS}


def mess_spec(name: str) -> MessSpec:
    if name not in MESS_DATASETS:
        raise ValueError(f"{name!r} is not a MESS dataset; MESS datasets: {', '.join(MESS_DATASETS)}")
    return MESS_DATASETS[name]


def evaluation_runs() -> list[tuple[str, str]]:
    """(registry name, split) pairs MESS evaluates: 25 runs (PAXRay-4 is four binary splits)."""
    return [(spec.name, split) for spec in MESS for split in spec.evaluated_splits]


class MessDataset(SegmentationDataset):
    """A MESS dataset in the layout its preparation script writes (``ROOT/<folder>/...`` or ROOT = that folder).

    Pairs are found as MESS's ``load_sem_seg`` finds them: files ending in the image / label ending in the
    two folders (not recursive), matched by the name before that ending (the intersection when the counts
    differ, as MESS does). Labels are class indices 0..C-1 with 255 = ignore.
    """

    def __init__(self, spec: MessSpec, root, split: str, fetch_hint: str) -> None:
        self.spec = spec
        self.split_spec = spec.split(split)
        image_files, label_files = (f"*.{e}" if e.isalpha() else f"*{e}" for e in (spec.image_ext, spec.label_ext))
        where = f"{spec.folder}/{{{self.split_spec.image_dir}/{image_files}, {self.split_spec.label_dir}/{label_files}}}"
        super().__init__(spec.name, root, split, spec.class_names(split), where, fetch_hint)
        self.modality = self.split_spec.modality

    def base(self) -> Path:
        for candidate in (self.root / self.spec.folder, self.root):
            if (candidate / self.split_spec.image_dir).is_dir():
                return candidate
        return self.root / self.spec.folder

    def list_items(self) -> list[Item]:
        base = self.base()
        image_dir, label_dir = base / self.split_spec.image_dir, base / self.split_spec.label_dir
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise self.missing(folder)
        images = _stems(image_dir, self.spec.image_ext)
        labels = _stems(label_dir, self.spec.label_ext)
        return [Item(stem.rstrip(".") or stem, images[stem], labels[stem]) for stem in sorted(images.keys() & labels)]

    def label_encoding(self) -> str:
        return (f"a single-channel PNG of class indices 0..{self.num_classes - 1} "
                f"({self.num_classes} MESS classes), {IGNORE_LABEL} = ignore")

    def encode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_values(raw, self.num_classes - 1, IGNORE_LABEL, path, self.label_encoding())
        return raw


def _stems(folder: Path, ending: str) -> dict[str, Path]:
    """name-before-ending -> path for the files of ``folder`` whose name ends with ``ending``."""
    return {p.name[: -len(ending)]: p for p in folder.iterdir() if p.name.endswith(ending) and p.is_file()}
