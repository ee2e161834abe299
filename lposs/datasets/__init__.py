"""Segmentation benchmarks: a registry of loaders, plus fetching and conversion of the public ones.

    from lposs.datasets import get_dataset
    ds = get_dataset("camvid", "data/camvid")          # split defaults to the benchmark's val split
    sample = ds[0]                                      # Sample(id, image uint8 [H,W,3], label int64 [H,W])
    prompts = ds.class_names_for(0)                     # per-image class names (differ only for DAVIS)

Names: voc21 voc20 context60 context59 coco_object coco_stuff cityscapes ade20k camvid davis2016 demo.
``python -m lposs data list`` / ``python -m lposs data fetch NAME --root DIR`` (see lposs/datasets/cli.py).
"""

from .base import Item, Sample, SegmentationDataset, read_class_file
from .cli import main_data
from .fetch import ChecksumError, DownloadError, download, fetch
from .registry import DATASETS, DatasetSpec, available_datasets, dataset_spec, default_root, get_dataset

__all__ = [
    "ChecksumError",
    "DATASETS",
    "DatasetSpec",
    "DownloadError",
    "Item",
    "Sample",
    "SegmentationDataset",
    "available_datasets",
    "dataset_spec",
    "default_root",
    "download",
    "fetch",
    "get_dataset",
    "main_data",
    "read_class_file",
]
