"""The feature store of a run, sized before it starts: bytes per dataset by arithmetic on the shard format.

    estimate = estimate_store(["voc21", "ade20k"], "data", StoreShape(vm="dino_vitb16", vm_dtype="float16"))
    print(estimate.report());  estimate.disk_problem()    # None, or what does not fit and what to do

A shard (`lposs.experiment.store`) holds, for an image of N graph patches and C' class prompts (synonyms):

    seeds [N, C'] float32 + owner [C'] int64 + text_affinity [C'] float32 (the diagonal of a [C', C'] matrix:
            torch.save writes the whole matrix when the features were computed on the CPU; counted so)
    one [N, D] graph feature per stored variant, in vm_dtype (2 bytes in float16)
    regions, with a mask model: a run-length code of the resized image, 8 bytes a run (content-dependent:
            counted at RUNS_PER_ROW runs per row, a nominal figure)
    small metadata (ids, window layout, class names) and torch.save's zip records around each tensor

N = windows x grid^2: the windows of `lposs.core.windows` over the resized image (the protocol's crop, stride,
short and long side), grid = crop / the graph model's patch (the seeds are resampled to the graph's grid). The
metadata and zip overhead is measured by saving the same shard with one element per tensor.

The image sizes come from the files where the dataset is on disk ("measured"), else from the registry's image
count and typical size (`lposs.datasets.registry.TYPICAL_IMAGE_HW`, "nominal").
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

FEATURES_DIR = "features"  # where dvc.yaml's features stage writes its stores (-r out_dir features)
RUNS_PER_ROW = 20  # nominal runs of equal region id per row of a mask model's region map (a few dozen regions)
GB, MB = 1e9, 1e6


@dataclass(frozen=True)
class StoreShape:
    """What a shard's size depends on besides the image and its class prompts."""

    vm: str = "dino_vitb16"  # graph model: a VISION_MODELS short name, a timm name, or clip (the VLM's own)
    features: tuple[str, ...] = ("v",)  # stored graph features (backbone.vm_features)
    vm_dtype: str = "float32"  # their storage type (backbone.vm_dtype)
    masks: bool = False  # a mask model's regions kept with each shard
    masks_overlap: bool = False  # and its overlapping masks at the original size (Panoptic Cut's)
    vlm: str = "ViT-B-16"  # open_clip model (its patch and width matter only for vm = clip)


@dataclass(frozen=True)
class DatasetEstimate:
    """The store of one dataset: images, windows and bytes, and where the image sizes came from."""

    entry: str
    images: int | None  # None: unknown (not on disk, no count in the registry)
    windows: float | None  # mean windows per image
    bytes: float | None  # None: no image size known
    source: str  # "measured: ..." or "nominal: ..." or why there is no estimate

    @property
    def per_image(self) -> float | None:
        return None if self.bytes is None or not self.images else self.bytes / self.images


@dataclass
class StoreEstimate:
    """The estimate of every dataset of a run beside the free disk where the stores go."""

    datasets: list[DatasetEstimate]
    folder: Path  # the stores' root (features/)
    free: int  # bytes free on the disk holding folder (or its nearest existing parent)
    stored: int = 0  # bytes of shards already in the run's store folders (a resumed run reuses them)
    what: str = ""  # the run's backbones and storage, one line
    unknown: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(d.bytes for d in self.datasets if d.bytes is not None)

    @property
    def needed(self) -> float:
        return max(self.total - self.stored, 0.0)

    def report(self) -> str:
        wide = max([len("dataset"), *(len(d.entry) for d in self.datasets)]) + 2
        lines = [f"Feature store of this run ({self.what}) under {self.folder}/:",
                 f"  {'dataset':<{wide}}{'images':>8}{'windows':>9}{'per image':>12}{'store':>11}  image sizes"]
        for d in self.datasets:
            lines.append(f"  {d.entry:<{wide}}{d.images if d.images is not None else '?':>8}"
                         f"{f'{d.windows:.1f}' if d.windows is not None else '?':>9}"
                         f"{f'{d.per_image / MB:.2f} MB' if d.per_image is not None else '?':>12}"
                         f"{f'{d.bytes / GB:.2f} GB' if d.bytes is not None else '?':>11}  {d.source}")
        lines.append(f"  {'total':<{wide}}{sum(d.images or 0 for d in self.datasets):>8}{'':>21}"
                     f"{self.total / GB:>8.2f} GB" + (f"  (without {len(self.unknown)} of {len(self.datasets)} "
                                                     "datasets: no image size known)" if self.unknown else ""))
        if self.stored:
            lines.append(f"  already stored: {self.stored / GB:.2f} GB (reused), still to write: {self.needed / GB:.2f} GB")
        lines.append(f"  free disk: {self.free / GB:.2f} GB at {free_space_path(self.folder)}  (1 GB = 10^9 bytes)")
        return "\n".join(lines)

    def disk_problem(self, avoid: str = "") -> str | None:
        """None when the store fits on the disk, else what is needed, what is free, and what to do."""
        if self.needed <= self.free:
            return None
        return (f"disk: the feature store needs about {self.needed / GB:.1f} GB but {self.free / GB:.1f} GB are free "
                f"at {free_space_path(self.folder)}. Free space, or make {self.folder}/ a link to a larger disk"
                + (f", or {avoid}" if avoid else "") + ".")


# --------------------------------------------------------------------------------------------------
# One shard
# --------------------------------------------------------------------------------------------------

@cache
def graph_geometry(vm: str, vlm: str = "ViT-B-16") -> tuple[int, int]:
    """(patch size, feature width D) of a graph model, from its architecture alone (no weights: built on the
    meta device); clip = the VLM's own features (its patch, its embedding width)."""
    if vm == "clip":
        import open_clip

        config = open_clip.get_model_config(vlm)
        if config is None:
            raise ValueError(f"open_clip has no model {vlm!r}: cannot size its features")
        return int(config["vision_cfg"]["patch_size"]), int(config["embed_dim"])
    import timm
    import torch

    from ..models.loading import timm_name

    with torch.device("meta"):
        model = timm.create_model(timm_name(vm), pretrained=False)
    return int(model.patch_embed.patch_size[0]), int(model.blocks[-1].attn.qkv.out_features // 3)


def shard_bytes(image_hw: tuple[int, int], class_names: tuple[str, ...], windows: tuple[int, int, int, int],
                shape: StoreShape, image_id: str = "2007_000033") -> tuple[int, int]:
    """(bytes of the shard of one image of this size, its windows). windows: (crop, stride, short_side, long_side)."""
    from ..core.windows import resized_size, window_layout
    from ..models.text import split_synonyms
    from .store import VM_DTYPES

    crop, stride, short_side, long_side = windows
    resized_hw = resized_size(*image_hw, short_side=short_side, long_side=long_side)
    layout = window_layout(*resized_hw, crop=crop, stride=stride)
    patch, width = graph_geometry(shape.vm, shape.vlm)
    grid = crop // patch
    patches, columns = len(layout) * grid * grid, len(split_synonyms(list(class_names))[0])  # N, C'
    tensors = (patches * columns * 4  # seeds [N, C'] float32
               + columns * 8 + columns * columns * 4  # owner [C'] int64, text_affinity's [C', C'] float32 storage
               + len(shape.features) * patches * width * VM_DTYPES[shape.vm_dtype].itemsize)  # vm {f: [N, D]}
    if shape.masks:  # regions: int32 [2 + 2 * runs], nominal runs
        tensors += 4 * (2 + 2 * RUNS_PER_ROW * resized_hw[0])
    if shape.masks_overlap:  # masks: int32 [3 + 2 * runs] at the original size, nominal runs
        tensors += 4 * (3 + 2 * RUNS_PER_ROW * image_hw[0])
    return tensors + _format_overhead(class_names, tuple(layout), resized_hw, image_hw, grid, crop, shape,
                                      image_id), len(layout)


@lru_cache(maxsize=4096)
def _format_overhead(class_names: tuple[str, ...], layout: tuple, resized_hw: tuple[int, int],
                     image_hw: tuple[int, int], grid: int, crop: int, shape: StoreShape, image_id: str) -> int:
    """What torch.save writes besides the tensors' values: the shard saved with one element per tensor, less
    those elements."""
    import torch

    from .store import SHARD_KEYS, VM_DTYPES

    one = {"seeds": torch.zeros(1), "owner": torch.zeros(1, dtype=torch.long), "text_affinity": torch.zeros(1),
           "vm": {name: torch.zeros(1, dtype=VM_DTYPES[shape.vm_dtype]) for name in shape.features}}
    if shape.masks:
        one["regions"] = torch.zeros(4, dtype=torch.int32)
    if shape.masks_overlap:
        one["masks"] = torch.zeros(5, dtype=torch.int32)
    shard = one | {"id": image_id, "layout": [tuple(w) for w in layout], "resized_hw": resized_hw,
                   "original_hw": image_hw, "grid": grid, "crop": crop,
                   "class_names": list(class_names), "image_md5": "0" * 32, "seconds": 0.0}
    if set(shard) - {"regions", "masks"} != SHARD_KEYS:
        raise RuntimeError("the shard format changed (lposs.experiment.store.SHARD_KEYS): update lposs.experiment.sizing")
    buffer = io.BytesIO()
    torch.save(shard, buffer)
    values = sum(t.numel() * t.element_size() for t in [*one["vm"].values(), *(v for k, v in one.items() if k != "vm")])
    return buffer.getbuffer().nbytes - values


# --------------------------------------------------------------------------------------------------
# A dataset, a run
# --------------------------------------------------------------------------------------------------

def image_sizes(entry: str, data_dir: str) -> tuple[list[tuple[int, int]], str, tuple[str, ...]] | None:
    """(every image's (height, width) read from its file's header, where they were read, the dataset's class names
    of its first image), or None when the dataset is not on disk or lists no readable image."""
    from PIL import Image

    from .staging import open_entry

    try:
        ds = open_entry(entry, data_dir)
    except (FileNotFoundError, ValueError, OSError):
        return None
    sizes = []
    for item in ds.items:
        try:
            with Image.open(item.image) as image:
                sizes.append((image.height, image.width))
        except (OSError, ValueError):  # unreadable: the run will say so; size it as the others
            continue
    return (sizes, f"measured: {len(sizes)} image files under {ds.root}", tuple(ds.class_names_for(0))) if sizes else None


def estimate_dataset(entry: str, data_dir: str, shape: StoreShape, protocol: str = "lposs") -> DatasetEstimate:
    """The store of one `datasets` entry under `protocol`'s windows and class prompts."""
    from ..datasets.base import packaged_class_names
    from ..datasets.registry import dataset_spec
    from ..models.protocols import class_names, resolve
    from .staging import split_entry

    name, split = split_entry(entry)
    spec, rule = dataset_spec(name), resolve(protocol, name)
    windows = (rule["crop"], rule["stride"], rule["short_side"], rule["long_side"])
    measured = image_sizes(entry, data_dir)
    if measured is not None:
        sizes, source, dataset_names = measured
    elif spec.images and spec.image_hw and split in (None, spec.default_split):
        sizes = [spec.image_hw] * spec.images
        source = f"nominal: {spec.images} images of {spec.image_hw[0]} x {spec.image_hw[1]} (not on disk)"
        dataset_names = packaged_class_names(spec.classes) if spec.classes else ["background", "object"]
    else:
        count = spec.images if split in (None, spec.default_split) else None  # the registry counts the default split
        return DatasetEstimate(entry, count, None, None, "no estimate: not on disk, no typical image size known")
    names = tuple(class_names(protocol, name, list(dataset_names)))
    total, windows_total = 0, 0
    for hw, count in Counter(sizes).items():
        size, window_count = shard_bytes(hw, names, windows, shape)
        total, windows_total = total + size * count, windows_total + window_count * count
    return DatasetEstimate(entry, len(sizes), windows_total / len(sizes), float(total), source)


def free_space_path(folder: Path) -> Path:
    """folder, or its nearest existing parent: where the disk's free space is read."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def stored_bytes(folder: Path) -> int:
    """Bytes of the shards under folder (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*.pt")) if Path(folder).is_dir() else 0


def estimate_store(entries: list[str], data_dir: str, shape: StoreShape, protocol: str = "lposs",
                   combo: str = "", features_dir: str | Path = FEATURES_DIR) -> StoreEstimate:
    """Every entry's store beside the free disk of features_dir; combo ('<head>+<vm>') names the store folders
    whose shards are already there (features_dir/<entry>/<combo>)."""
    estimates = [estimate_dataset(entry, data_dir, shape, protocol) for entry in entries]
    folder = Path(features_dir)
    stored = sum(stored_bytes(folder / entry / combo) for entry in entries) if combo else 0
    what = (f"{combo or shape.vm}, graph features {','.join(shape.features)} in {shape.vm_dtype}"
            + (f", mask regions{' and masks' if shape.masks_overlap else ''} (nominal: {RUNS_PER_ROW} runs a row)"
               if shape.masks else "") + f", {protocol} protocol")
    return StoreEstimate(estimates, folder, shutil.disk_usage(free_space_path(folder)).free, stored, what,
                         [d.entry for d in estimates if d.bytes is None])
