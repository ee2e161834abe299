"""Stage 1: the staged index of a dataset, and what later stages read back through it.

A `datasets` entry of params.yaml is a registry name (`voc21`: its default split) or `name:split`
(`paxray:test_lungs`). `stage_index` lists the evaluation images of one entry (paths, md5 of every image
and label file, class names) into staged/<entry>/index.json; `open_staged` reopens the dataset and checks
it still lists exactly those images. `prompts` gives the class prompts of an image under a protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..datasets.registry import dataset_spec, get_dataset
from ..io import file_md5, read_json
from ..models.protocols import class_names as protocol_class_names


def split_entry(entry: str) -> tuple[str, str | None]:
    """A `datasets` entry -> (registry name, split): 'paxray:test_lungs' names a split, 'voc21' the default."""
    name, _, split = entry.partition(":")
    return name, split or None


def dataset_root(entry: str, data_dir: str) -> Path:
    """data_dir/<the dataset's folder> (voc21 and voc20 share data/voc, ...)."""
    return Path(data_dir) / dataset_spec(split_entry(entry)[0]).folder


def open_entry(entry: str, data_dir: str) -> Any:
    """The dataset of a `datasets` entry under data_dir (an unknown split raises, naming the splits)."""
    name, split = split_entry(entry)
    return get_dataset(name, dataset_root(entry, data_dir), split)


def stage_index(entry: str, data_dir: str, progress: bool = True) -> dict[str, Any]:
    """Index of a dataset's evaluation images: paths, md5s, class names (what later stages read)."""
    ds = open_entry(entry, data_dir)
    images = []
    for i, item in enumerate(tqdm(ds.items, desc=f"index {entry}", unit="img", disable=not progress)):
        record = {"id": item.id, "image": str(item.image), "label": str(item.label),
                  "image_md5": file_md5(item.image), "label_md5": file_md5(item.label)}
        if ds.class_names_for(i) != ds.class_names:
            record["class_names"] = ds.class_names_for(i)
        images.append(record)
    return {"dataset": entry, "root": str(ds.root), "split": ds.split, "class_names": ds.class_names,
            "num_classes": ds.num_classes, "ignore_index": ds.ignore_index,
            "reduce_zero_label": ds.reduce_zero_label, "images": images}


def open_staged(staged_dir: str, entry: str) -> tuple[Any, dict[str, Any]]:
    """(dataset, index) for a staged dataset; the dataset must still list exactly the staged images."""
    index = read_json(Path(staged_dir) / entry / "index.json")
    ds = get_dataset(split_entry(entry)[0], index["root"], index["split"])
    if [item.id for item in ds.items] != [record["id"] for record in index["images"]]:
        raise ValueError(f"dataset {entry!r} under {index['root']} no longer lists the staged images: "
                         "re-run the stage step (dvc repro)")
    return ds, index


def prompts(ds: Any, index: int, protocol: str) -> list[str]:
    """The class prompts of image `index` under `protocol` (its release's class file where it has one)."""
    return protocol_class_names(protocol, ds.name, ds.class_names_for(index))
