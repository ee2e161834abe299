"""Label converters: raw annotations as released -> the encodings the loaders read.

- COCO-Stuff 164k (MMSegmentation's coco_stuff164k conversion): raw ids 0..181 with 11 unused ids and
  255 = unlabeled -> ``*_labelTrainIds.png`` 0..170 (255 kept).
- COCO-Object (the LPOSS reference's convert_coco_object.py): thing ids 0..90 -> their train id + 1
  (1..80), stuff ids and 255 -> 0 = background -> ``*_instanceTrainIds.png``.
- Cityscapes: ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` through the official labelIds ->
  trainIds table of cityscapesScripts (labels.py); ids without a train id -> 255.
- PASCAL Context: Stanford ``trainval/<id>.mat`` (``LabelMap``, 459 categories) -> 60-class PNGs with
  MMSegmentation's mapping (the 59 category ids below -> 1..59 in sorted order, everything else -> 0).
- DAVIS-2016: writes ``ImageSets/480p/train_every10.txt`` (frames with index % 10 == 0 of train.txt).

Every output is written atomically (temp file + os.replace) and existing outputs are skipped, so an
interrupted conversion resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io import atomic_write_bytes, save_image_png

# ---------------------------------------------------------------------------------------------- tables
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)  # ids 0..181 absent from COCO-Stuff
COCO_VALID_IDS = tuple(i for i in range(182) if i not in COCO_UNUSED_IDS)  # 171 ids, train id = position
COCO_LAST_THING_ID = 90

# cityscapesScripts labels.py: label id -> train id for the 19 evaluated classes (all others -> 255)
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

# MMSegmentation pascal_context.py: PASCAL Context category ids of the 59 classes (sorted = class order)
CONTEXT59_IDS = (2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105,
                 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308,
                 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454,
                 458)
CONTEXT_NUM_CATEGORIES = 460  # LabelMap ids 0..459


def coco_stuff_lut() -> np.ndarray:
    """uint8 [256]: raw COCO-Stuff id -> train id 0..170; unused ids and 255 -> 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[list(COCO_VALID_IDS)] = np.arange(len(COCO_VALID_IDS))
    return lut


def coco_object_lut() -> np.ndarray:
    """uint8 [256]: raw thing id -> train id + 1 (1..80); stuff ids, unused ids and 255 -> 0."""
    lut = np.zeros(256, dtype=np.uint8)
    things = [i for i in COCO_VALID_IDS if i <= COCO_LAST_THING_ID]
    lut[things] = np.arange(1, len(things) + 1)
    return lut


def cityscapes_lut() -> np.ndarray:
    """uint8 [256]: Cityscapes label id -> train id; ids without one -> 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


def context_lut() -> np.ndarray:
    """uint8 [460]: PASCAL Context category id -> 1..59 for the 59 classes, 0 for everything else."""
    lut = np.zeros(CONTEXT_NUM_CATEGORIES, dtype=np.uint8)
    lut[list(CONTEXT59_IDS)] = np.arange(1, len(CONTEXT59_IDS) + 1)
    return lut


# ---------------------------------------------------------------------------------------------- writing
def save_png_atomic(array: np.ndarray, path: Path) -> None:
    """Write a uint8 [H, W] array as a mode-L PNG, atomically (lposs.io)."""
    save_image_png(Image.fromarray(array.astype(np.uint8), mode="L"), path)


def write_text_atomic(text: str, path: Path) -> None:
    atomic_write_bytes(path, text.encode())


def read_raw_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read annotation {path}: {err}") from err
    if array.ndim != 2:
        raise ValueError(f"annotation {path} has shape {array.shape}; expected a single-channel id mask")
    return array


def map_masks(jobs: list[tuple[Path, list[tuple[np.ndarray, Path]]]], desc: str, progress: bool) -> int:
    """For each (source, [(lut, target), ...]) write lut[source] to every target not yet written."""
    written = 0
    for source, targets in tqdm(jobs, desc=desc, unit="mask", disable=not progress):
        todo = [(lut, target) for lut, target in targets if not target.exists()]
        if not todo:
            continue
        raw = read_raw_mask(source)
        for lut, target in todo:
            if raw.max() >= len(lut):
                raise ValueError(f"annotation {source} holds id {raw.max()} beyond the table ({len(lut) - 1})")
            save_png_atomic(lut[raw], target)
            written += 1
    return written


# ---------------------------------------------------------------------------------------------- datasets
def convert_coco(root: Path, splits=("val2017",), progress: bool = True) -> int:
    """coco_stuff164k/annotations/<split>/<id>.png -> <id>_labelTrainIds.png and <id>_instanceTrainIds.png."""
    base = Path(root) / "coco_stuff164k" if (Path(root) / "coco_stuff164k").is_dir() else Path(root)
    stuff, things = coco_stuff_lut(), coco_object_lut()
    written = 0
    for split in splits:
        folder = base / "annotations" / split
        if not folder.is_dir():
            raise FileNotFoundError(f"COCO-Stuff annotations {folder} are missing: unpack "
                                    f"stuffthingmaps_trainval2017.zip into {base / 'annotations'}")
        raws = sorted(p for p in folder.glob("*.png") if "TrainIds" not in p.name)
        jobs = [(p, [(stuff, p.with_name(f"{p.stem}_labelTrainIds.png")),
                     (things, p.with_name(f"{p.stem}_instanceTrainIds.png"))]) for p in raws]
        written += map_masks(jobs, f"COCO {split} train ids", progress)
    return written


def convert_cityscapes(root: Path, splits=("val",), progress: bool = True) -> int:
    """cityscapes/gtFine/<split>/<city>/*_gtFine_labelIds.png -> *_gtFine_labelTrainIds.png."""
    base = Path(root) / "cityscapes" if (Path(root) / "cityscapes").is_dir() else Path(root)
    lut = cityscapes_lut()
    written = 0
    for split in splits:
        folder = base / "gtFine" / split
        if not folder.is_dir():
            raise FileNotFoundError(f"Cityscapes annotations {folder} are missing: unpack "
                                    f"gtFine_trainvaltest.zip into {base}")
        sources = sorted(folder.rglob("*_gtFine_labelIds.png"))
        jobs = [(p, [(lut, p.with_name(p.name.replace("_labelIds.png", "_labelTrainIds.png")))]) for p in sources]
        written += map_masks(jobs, f"Cityscapes {split} train ids", progress)
    return written


def find_context_mats(root: Path) -> Path:
    for candidate in (root / "VOCdevkit" / "VOC2010" / "trainval", root / "trainval", root):
        if candidate.is_dir() and any(candidate.glob("*.mat")):
            return candidate
    raise FileNotFoundError(f"PASCAL Context annotations (trainval/*.mat) not found under {root}: unpack "
                            "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz into "
                            f"{root / 'VOCdevkit' / 'VOC2010'}")


def load_label_map(path: Path) -> np.ndarray:
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise ImportError("reading PASCAL Context .mat files needs scipy: pip install scipy") from err
    try:
        return np.asarray(loadmat(path)["LabelMap"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read LabelMap from {path}: {err}") from err


def convert_pascal_context(root: Path, progress: bool = True) -> int:
    """Stanford .mat annotations -> VOCdevkit/VOC2010/SegmentationClassContext/*.png + split lists."""
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2010"
    context_lists = voc / "ImageSets" / "SegmentationContext"
    try:
        mats = find_context_mats(root)
    except FileNotFoundError:
        if (voc / "SegmentationClassContext").is_dir() and (context_lists / "val.txt").is_file():
            return 0  # converted elsewhere (e.g. MMSegmentation's detail-API tool): use as it is
        raise
    lut = context_lut()
    written = 0
    for mat in tqdm(sorted(mats.glob("*.mat")), desc="PASCAL Context masks", unit="mask", disable=not progress):
        target = voc / "SegmentationClassContext" / f"{mat.stem}.png"
        if target.exists():
            continue
        label_map = load_label_map(mat)
        if label_map.max() >= len(lut):
            raise ValueError(f"{mat} holds category {label_map.max()}, beyond PASCAL Context's 459")
        save_png_atomic(lut[label_map], target)
        written += 1
    annotated = {p.stem for p in mats.glob("*.mat")}
    for split in ("train", "val"):
        main_list = voc / "ImageSets" / "Main" / f"{split}.txt"
        if not main_list.is_file():
            raise FileNotFoundError(f"{main_list} is missing: unpack VOCtrainval_03-May-2010.tar into {root}")
        ids = [i.strip() for i in main_list.read_text().splitlines() if i.strip() in annotated]
        write_text_atomic("\n".join(ids) + "\n", context_lists / f"{split}.txt")
    return written


def write_davis_every10(root: Path, progress: bool = True) -> int:
    """DAVIS/ImageSets/480p/train_every10.txt: the train.txt frames whose index % 10 == 0."""
    base = Path(root) / "DAVIS" if (Path(root) / "DAVIS").is_dir() else Path(root)
    lists = base / "ImageSets" / "480p"
    train = lists / "train.txt"
    if not train.is_file():
        raise FileNotFoundError(f"{train} is missing: unpack DAVIS-data.zip into {root}")
    lines = [line.strip() for line in train.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if int(Path(line.split()[0]).stem) % 10 == 0]
    write_text_atomic("\n".join(keep) + "\n", lists / "train_every10.txt")
    return 1


CONVERTERS = {
    "coco": convert_coco,
    "cityscapes": convert_cityscapes,
    "pascal_context": convert_pascal_context,
    "davis_every10": write_davis_every10,
}
