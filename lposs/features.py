"""The on-disk feature store: what the backbones say about each image, computed once, read by every ablation.

Layout: `ROOT/<dataset>/<backbone-key>/manifest.json` and one shard per image, `<image-id>.pt`, holding

    seeds        [N, C'] float32   raw cosine scores of the VLM's patch features against the class texts
    owner        [C'] int64        class index of each synonym column
    vm           {feature: [N, D]}  vision-model graph features, one per stored variant (q/k/v), float32
                                    or float16 as the manifest's vm_dtype says
    layout       list of (y1, y2, x1, x2)    windows in resized-image pixels
    resized_hw, original_hw, grid, crop      sizes needed to rebuild `segment.ImageFeatures`
    class_names  the prompts used for this image;  image_md5  the image file it was computed from
    seconds      wall time the backbones took on this image

The manifest names the backbones (ids), package versions, window parameters and class names. Opening a
store whose manifest differs raises `ManifestMismatch` naming the differences, or with `reset=True`
deletes the stale shards and starts afresh. Shards are written atomically (temp file + os.replace), so an
interrupted run leaves whole shards only; `fill_store` then computes just the missing ones. A shard that
cannot be read or has the wrong keys/shapes raises `CorruptShard` on load; `fill_store` recomputes it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from .segment import ImageFeatures, as_image_tensor, extract_features, to_graph_grid
from .windows import crop_windows, resize_image

FORMAT_VERSION = 1
SHARD_KEYS = frozenset({"id", "seeds", "owner", "vm", "layout", "resized_hw", "original_hw", "grid", "crop",
                        "class_names", "image_md5", "seconds"})
MANIFEST = "manifest.json"
VM_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class ManifestMismatch(RuntimeError):
    """The store on disk was made with other backbones / parameters / versions than requested."""


class CorruptShard(ValueError):
    """A shard is unreadable, truncated, or does not hold what the manifest promises."""


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------

def safe_name(image_id: str) -> str:
    """An image id as a file name: path separators become '__' (Cityscapes ids hold a city folder)."""
    name = re.sub(r"[\\/]", "__", image_id)
    if not name or name in {".", ".."} or name.startswith("."):
        raise ValueError(f"image id {image_id!r} cannot be used as a file name")
    return name


def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path through a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def package_versions() -> dict[str, str]:
    """Versions of the packages whose numbers the features depend on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("lposs", "torch", "open_clip_torch", "timm"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def code_fingerprint() -> str:
    """md5 of the source that turns an image into features (extraction, windows, both backbone modules)."""
    from . import backbones, demo, heads, loading, windows

    sources = [inspect.getsource(f) for f in (extract_features, to_graph_grid, as_image_tensor, extract_shard)]
    sources += [inspect.getsource(m) for m in (windows, backbones, heads, loading, demo)]
    return hashlib.md5("\n".join(sources).encode()).hexdigest()


def make_manifest(dataset: str, class_names: list[str], vlm_id: str, vm_ids: dict[str, str],
                  windows: dict[str, int], vm_dtype: str = "float32") -> dict[str, Any]:
    """The identity of a store: change any of it and the stored features no longer apply.

    vm_dtype: storage type of the vision features ("float16" halves the disk; seeds stay float32).
    """
    if vm_dtype not in VM_DTYPES:
        raise ValueError(f"vm_dtype must be one of {', '.join(VM_DTYPES)}, got {vm_dtype!r}")
    return {
        "format": FORMAT_VERSION,
        "vm_dtype": vm_dtype,
        "dataset": dataset,
        "class_names": list(class_names),
        "vlm": vlm_id,
        "vm": dict(sorted(vm_ids.items())),
        "windows": dict(sorted(windows.items())),
        "versions": package_versions(),
        "code": code_fingerprint(),
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            shown = [str(v) if len(str(v)) < 80 else str(v)[:77] + "..." for v in (a, b)]
            out.append(f"{prefix}{key}: stored {shown[0]} != requested {shown[1]}")
    return out


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------

class FeatureStore:
    """One folder of shards for one dataset and one backbone pair, guarded by its manifest."""

    def __init__(self, folder: str | os.PathLike, manifest: dict[str, Any], reset: bool = False):
        self.folder = Path(folder)
        self.manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as stored
        self.features = tuple(self.manifest["vm"])
        self.vm_dtype = VM_DTYPES[self.manifest.get("vm_dtype", "float32")]
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):  # temp files of an interrupted write
            stale.unlink(missing_ok=True)
        path = self.folder / MANIFEST
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                stored = {"unreadable manifest": str(error)}
            diffs = _differences(stored, self.manifest)
            if diffs and not reset:
                raise ManifestMismatch(
                    f"the feature store {self.folder} was made with other settings:\n  " + "\n  ".join(diffs)
                    + "\nRe-run with reset=True (the features notebook does) to recompute it, or delete the folder.")
            if diffs:
                print(f"feature store {self.folder}: settings changed, recomputing:\n  " + "\n  ".join(diffs),
                      file=sys.stderr)
                self.clear()
        if not path.exists():
            atomic_write_bytes(path, (json.dumps(self.manifest, indent=2) + "\n").encode())

    def clear(self) -> None:
        """Delete every shard and the manifest."""
        for shard in self.folder.glob("*.pt"):
            shard.unlink()
        (self.folder / MANIFEST).unlink(missing_ok=True)

    def path(self, image_id: str) -> Path:
        return self.folder / f"{safe_name(image_id)}.pt"

    def save(self, shard: dict[str, Any]) -> Path:
        """Write one shard atomically (temp file + os.replace)."""
        self.check(shard, shard.get("id", "?"))
        path = self.path(shard["id"])
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.folder)
        os.close(handle)
        try:
            torch.save(shard, temp)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return path

    def load(self, image_id: str, class_names: list[str] | None = None, image_md5: str | None = None,
             check_values: bool = True) -> dict[str, Any]:
        """Read and check one shard. Raises FileNotFoundError if absent, CorruptShard if unusable.

        class_names / image_md5: what the caller expects (a mismatch means the shard is stale).
        check_values: also check every value is finite (reads all the data).
        """
        path = self.path(image_id)
        if not path.exists():
            raise FileNotFoundError(f"no features for image {image_id!r} in {self.folder}; run the features stage")
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=not check_values)
        except Exception as error:  # noqa: BLE001 - any failure to read means the file is unusable
            raise CorruptShard(f"feature shard {path} is unreadable ({type(error).__name__}: {error})") from error
        self.check(shard, image_id, class_names, image_md5, check_values)
        return shard

    def check(self, shard: Any, image_id: str, class_names: list[str] | None = None,
              image_md5: str | None = None, check_values: bool = False) -> None:
        """Raise CorruptShard unless shard holds exactly the keys and shapes the manifest promises."""
        def fail(why: str) -> None:
            raise CorruptShard(f"feature shard for {image_id!r} in {self.folder}: {why}")

        if not isinstance(shard, dict) or set(shard) != SHARD_KEYS:
            fail(f"keys {sorted(shard) if isinstance(shard, dict) else type(shard).__name__}, "
                 f"expected {sorted(SHARD_KEYS)}")
        if shard["id"] != image_id:
            fail(f"holds image {shard['id']!r}")
        seeds, owner, layout, grid = shard["seeds"], shard["owner"], shard["layout"], shard["grid"]
        patches = len(layout) * grid * grid
        if not (isinstance(seeds, torch.Tensor) and seeds.dim() == 2 and seeds.shape[0] == patches):
            fail(f"seeds should be [{patches}, C'], got {getattr(seeds, 'shape', type(seeds))}")
        if not (isinstance(owner, torch.Tensor) and owner.shape == (seeds.shape[1],)):
            fail(f"owner should be [{seeds.shape[1]}], got {getattr(owner, 'shape', type(owner))}")
        if not isinstance(shard["vm"], dict) or tuple(sorted(shard["vm"])) != tuple(sorted(self.features)):
            fail(f"vision features {sorted(shard['vm']) if isinstance(shard['vm'], dict) else '?'}, "
                 f"expected {sorted(self.features)}")
        for name, feats in shard["vm"].items():
            if not (isinstance(feats, torch.Tensor) and feats.dim() == 2 and feats.shape[0] == patches):
                fail(f"vision feature {name!r} should be [{patches}, D], got {getattr(feats, 'shape', '?')}")
            if feats.dtype != self.vm_dtype:
                fail(f"vision feature {name!r} is {feats.dtype}, the manifest says {self.vm_dtype}")
        if class_names is not None and list(shard["class_names"]) != list(class_names):
            fail("computed for other class names")
        if image_md5 is not None and shard["image_md5"] != image_md5:
            fail("computed from another version of the image file")
        if check_values:
            tensors = [seeds] + list(shard["vm"].values())
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                fail("holds NaN or infinite values")


# --------------------------------------------------------------------------------------------------
# Computing and reading features
# --------------------------------------------------------------------------------------------------

def extract_shard(image_id: str, image: Any, class_names: list[str], vlm: Any, vms: dict[str, Any],
                  windows: dict[str, int], image_md5: str = "", text: tuple | None = None,
                  vm_dtype: str = "float32", keep_on_device: bool = False) -> dict[str, Any]:
    """Run the VLM once and every VM variant once over one image's windows -> a shard dict.

    keep_on_device: the tensors stay where the backbones ran (a streaming pass on a GPU that propagates
    at once); a shard to be saved must be on the CPU (the default)."""
    start = time.perf_counter()
    first, *others = vms
    graph = _OneForward(vms) if others and _one_network(vms) else vms[first]
    feats = extract_features(image, class_names, vlm, graph, text=text, keep_on_device=True, **windows)
    vm = {first: feats.vm_feats}
    if isinstance(graph, _OneForward):  # q, k, v, tokens of one network came from the same forward
        vm.update({name: graph.flat(name) for name in others})
    elif others:
        batch = crop_windows(feats.image_resized, feats.layout, crop=feats.crop)  # [B, 3, crop, crop]
        for name in others:
            dense = vms[name].dense_features(batch)  # [B, g, g, D]
            vm[name] = dense.reshape(-1, dense.shape[-1]).float()
    place = (lambda t: t) if keep_on_device else (lambda t: t.cpu())  # the one place the shard leaves the device
    return {
        "id": image_id,
        "seeds": place(feats.seeds.float().contiguous()),
        "owner": feats.owner.long(),
        "vm": {name: place(t.to(VM_DTYPES[vm_dtype]).contiguous()) for name, t in vm.items()},
        "layout": [tuple(int(v) for v in w) for w in feats.layout],
        "resized_hw": tuple(int(v) for v in feats.resized_hw),
        "original_hw": tuple(int(v) for v in feats.original_hw),
        "grid": int(feats.grid),
        "crop": int(feats.crop),
        "class_names": list(class_names),
        "image_md5": image_md5,
        "seconds": time.perf_counter() - start,
    }


def _one_network(vms: dict[str, Any]) -> bool:
    """True when every variant is a feature of one network that can give several in one forward."""
    models = {id(getattr(m, "model", None)) for m in vms.values()}
    return len(models) == 1 and all(getattr(m, "model", None) is not None and hasattr(m, "dense_features_multi")
                                    for m in vms.values())


class _OneForward:
    """A graph model standing for all stored variants of one network: one forward, every feature kept."""

    def __init__(self, vms: dict[str, Any]) -> None:
        self.model, self.names = next(iter(vms.values())), list(vms)
        self.out: dict[str, torch.Tensor] = {}

    def dense_features(self, windows: torch.Tensor) -> torch.Tensor:
        self.out = self.model.dense_features_multi(windows, self.names)  # {feature: [B, g, g, D]}
        return self.out[self.names[0]]

    def flat(self, name: str) -> torch.Tensor:
        return self.out[name].reshape(-1, self.out[name].shape[-1]).float()  # [N, D], where the forward ran


def to_image_features(shard: dict[str, Any], vm_feature: str, image: Any = None) -> ImageFeatures:
    """A shard as `segment.ImageFeatures` with the chosen VM variant; image (the original) for LPOSS+."""
    if vm_feature not in shard["vm"]:
        raise ValueError(f"vision feature {vm_feature!r} is not stored (stored: {sorted(shard['vm'])}); "
                         "add it to backbone.vm_features in params.yaml and re-run the features stage")
    resized = None
    if image is not None:
        tensor = as_image_tensor(image)
        if tuple(tensor.shape[1:]) != tuple(shard["original_hw"]):
            raise ValueError(f"image {shard['id']!r} is {tuple(tensor.shape[1:])} but its features were "
                             f"computed at {tuple(shard['original_hw'])}")
        resized = resize_image(tensor, tuple(shard["resized_hw"]))
    return ImageFeatures(
        seeds=shard["seeds"], vm_feats=shard["vm"][vm_feature].float(), owner=shard["owner"],
        layout=[tuple(w) for w in shard["layout"]], resized_hw=tuple(shard["resized_hw"]),
        original_hw=tuple(shard["original_hw"]), grid=shard["grid"], crop=shard["crop"], image_resized=resized,
    )


def fill_store(store: FeatureStore, items: Iterable[tuple[str, Path, list[str]]],
               compute: Callable[[str, Path, list[str], str], dict[str, Any]], progress: bool = True,
               desc: str = "features", advance: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Make sure every (image_id, image_path, class_names) has a valid shard; compute only the others.

    compute(image_id, image_path, class_names, image_md5) -> shard. Existing shards are checked
    (readable, right keys and shapes, same class names and image file); corrupt or stale ones are
    recomputed. Returns counts, this run's seconds, and backbone_seconds: the backbone time of every shard
    (whenever it was computed), i.e. what the features of this dataset cost.
    items may be any subset of a dataset (a worker's shard, lposs.sharded): the store is never reset here,
    only its shards for these items are written. advance(1) is called after each item (workers' progress).
    """
    items = list(items)
    stats = {"images": len(items), "computed": 0, "reused": 0, "recomputed_corrupt": 0, "seconds": 0.0,
             "backbone_seconds": 0.0}
    start = time.perf_counter()
    bar = tqdm(items, desc=desc, unit="img", disable=not progress)
    for image_id, image_path, class_names in bar:
        md5 = file_md5(image_path)
        if store.path(image_id).exists():
            try:
                shard = store.load(image_id, class_names=class_names, image_md5=md5, check_values=False)
                stats["reused"] += 1
                stats["backbone_seconds"] += float(shard["seconds"])
                if advance:
                    advance(1)
                continue
            except CorruptShard as error:
                tqdm.write(f"recomputing: {error}")
                stats["recomputed_corrupt"] += 1
        shard = compute(image_id, image_path, class_names, md5)
        store.save(shard)
        stats["computed"] += 1
        stats["backbone_seconds"] += float(shard["seconds"])
        if advance:
            advance(1)
    stats["seconds"] = time.perf_counter() - start
    return stats


def fill_dataset(store: FeatureStore, dataset: Any, vlm: Any, vms: dict[str, Any], windows: dict[str, int],
                 progress: bool = True, prompts: Callable[[int], list[str]] | None = None) -> dict[str, Any]:
    """`fill_store` over a `lposs.datasets` dataset: backbones run only on images without a valid shard.

    prompts(i): the class prompts of image i (default `dataset.class_names_for`; a protocol's class files).
    """
    prompts = prompts or dataset.class_names_for
    index = {item.id: i for i, item in enumerate(dataset.items)}
    first = prompts(0) if len(dataset) else []
    shared = first if all(prompts(i) == first for i in range(len(dataset))) else None
    text = vlm.text_embeddings(shared) if shared else None  # the same classifier for every image

    def compute(image_id: str, image_path: Path, class_names: list[str], md5: str) -> dict[str, Any]:
        sample = dataset[index[image_id]]
        return extract_shard(image_id, sample.image, class_names, vlm, vms, windows, md5,
                             text=text if shared else None, vm_dtype=store.manifest["vm_dtype"])

    items = [(item.id, item.image, prompts(i)) for i, item in enumerate(dataset.items)]
    return fill_store(store, items, compute, progress=progress, desc=f"features {dataset.name}")
