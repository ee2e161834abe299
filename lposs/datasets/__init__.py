"""Segmentation benchmarks: a registry of loaders, plus fetching and conversion of the public ones.

    from lposs.datasets import get_dataset
    ds = get_dataset("camvid", "data/camvid")          # split defaults to the benchmark's val split
    sample = ds[0]                                      # Sample(id, image uint8 [H,W,3], label int64 [H,W])
    prompts = ds.class_names_for(0)                     # per-image class names (differ only for DAVIS)

Names: voc21 voc20 context60 context59 coco_object coco_stuff cityscapes ade20k camvid davis2016 demo.
``python -m lposs data list`` / ``python -m lposs data fetch NAME --root DIR`` (see lposs/datasets/cli.py).

Rooms: `base` (items, samples, reading), `layouts` and `mess` (the loaders), `registry` (names -> loaders),
`archives`, `sources`, `fetching`, `convert` (downloading and converting), `mess_sources`, `mess_prepare`
(MESS's datasets), `cli`. The names below are imported on first use, so reading a dataset does not load
the downloaders.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "Item": "base", "Sample": "base", "SegmentationDataset": "base", "read_class_file": "base",
    "main_data": "cli",
    "ChecksumError": "fetching", "DownloadError": "fetching", "download": "fetching", "fetch": "fetching",
    "DATASETS": "registry", "DatasetSpec": "registry", "available_datasets": "registry", "dataset_spec": "registry",
    "default_root": "registry", "find_dataset": "registry", "get_dataset": "registry", "shared_data_dir": "registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lposs.datasets' has no attribute {name!r}")
    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
