"""Features of images: the backbones over each image's windows -> a shard; filling a feature store.

    shard = extract_shard(image_id, image, class_names, vlm, {"v": vm}, windows)    one image
    fill_store(store, items, compute)                                               the one filling loop
    compute = ShardComputer(dataset, vlm, vms, windows)                             its compute for a dataset
    features = to_image_features(shard, "v", image)                                 a shard as `segment.ImageFeatures`

`make_manifest` names what the features depend on (backbone ids, windows, class names, package versions,
a fingerprint of this extraction code): a store opened with another manifest is recomputed or refused
(`lposs.experiment.store`). The pipeline's features stage (through `lposs.experiment.sharded` on any
executor), `fill_dataset` and the streaming evaluator all compute shards with `extract_shard`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.regions import decode_masks, decode_regions, encode_masks, encode_regions
from ..core.scoring import pool_synonyms
from ..core.windows import crop_windows, resize_image
from ..image_features import ImageFeatures, as_image_tensor, extract_features, merge_patches
from ..io import file_md5
from ..settings import WindowSettings
from .store import FORMAT_VERSION, VM_DTYPES, CorruptShard, FeatureStore


def window_values(windows: WindowSettings | dict[str, int]) -> dict[str, int]:
    """Window settings as a plain dict (crop, stride, short_side, long_side)."""
    return windows.as_dict() if isinstance(windows, WindowSettings) else dict(windows)


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


# What computes a shard: this extraction and the factory that builds every backbone it runs (heads, proxies, mask
# models, SAM, the demo stand-ins); their import closure is the code the features depend on
SHARD_CODE = ("lposs.experiment.extraction", "lposs.models.factory")


def code_digests(package_dir: str | Path | None = None) -> dict[str, str]:
    """md5 of every source file that can change a shard: the import closure of `SHARD_CODE`, read from the code
    (lposs.import_graph: the heads' modules, the backbones, their loading, the windows, the mask models, the text
    prompts, the input normalisation, ... and nothing else, so a solver is not among them), and
    the file of every head registered from outside the package (lposs.plugins). {relative path: md5}.
    package_dir: another copy of the package to read (tests); default this one."""
    from .. import plugins
    from ..import_graph import ImportGraph

    graph = ImportGraph(package_dir) if package_dir is not None else ImportGraph()
    files = graph.files(graph.closure(set(SHARD_CODE)))
    digests = {str(path.relative_to(graph.root)): file_md5(path) for path in files.values()}
    digests |= {f"plugin:{path.name}": file_md5(path) for path in plugins.sources()}  # by name: clones agree
    return dict(sorted(digests.items()))


def code_fingerprint(package_dir: str | Path | None = None) -> str:
    """One md5 of `code_digests`: what the feature store's manifest keeps as "code". Editing any module of the
    extraction's import closure, or a plugin's file, changes it."""
    return hashlib.md5(json.dumps(code_digests(package_dir), sort_keys=True).encode()).hexdigest()


def make_manifest(dataset: str, class_names: list[str], vlm_id: str, vm_ids: dict[str, str],
                  windows: WindowSettings | dict[str, int], vm_dtype: str = "float32",
                  masks: str | None = None, masks_overlap: bool = False) -> dict[str, Any]:
    """The identity of a store: change any of it and the stored features no longer apply.

    vm_dtype: storage type of the vision features ("float16" halves the disk; seeds stay float32).
    masks: the id of the mask model whose regions each shard keeps (None: no regions, no "masks" key).
    masks_overlap: that model makes overlapping masks (Panoptic Cut), which each shard keeps too ("masks").
    """
    if vm_dtype not in VM_DTYPES:
        raise ValueError(f"vm_dtype must be one of {', '.join(VM_DTYPES)}, got {vm_dtype!r}")
    if masks_overlap and not masks:
        raise ValueError("masks_overlap: name the mask model (masks=its id) whose overlapping masks the shards keep")
    return ({"masks": masks} if masks else {}) | ({"masks_overlap": True} if masks_overlap else {}) | {
        "format": FORMAT_VERSION,
        "vm_dtype": vm_dtype,
        "dataset": dataset,
        "class_names": list(class_names),
        "vlm": vlm_id,
        "vm": dict(sorted(vm_ids.items())),
        "windows": dict(sorted(window_values(windows).items())),
        "versions": package_versions(),
        "code": code_fingerprint(),
        "code_modules": {path: digest[:12] for path, digest in code_digests().items()},
    }


def extract_shard(image_id: str, image: Any, class_names: list[str], vlm: Any, vms: dict[str, Any],
                  windows: WindowSettings | dict[str, int], image_md5: str = "", text: tuple | None = None,
                  vm_dtype: str = "float32", keep_on_device: bool = False, masks: Any = None) -> dict[str, Any]:
    """Run the VLM once and every VM variant once over one image's windows -> a shard dict.

    keep_on_device: the tensors stay where the backbones ran (a streaming pass on a GPU that propagates
    at once); a shard to be saved must be on the CPU (the default). masks: a mask model
    (`lposs.models.masks`): the shard also keeps the resized image's regions, run-length coded, and a model's
    overlapping masks at the original size (Panoptic Cut's, as its release keeps them), coded by `encode_masks`."""
    start = time.perf_counter()
    first, *others = vms
    graph = _OneForward(vms) if others and _one_network(vms) else vms[first]
    feats = extract_features(image, class_names, vlm, graph, text=text, keep_on_device=True, masks=masks,
                             **window_values(windows))
    vm = {first: feats.vm_feats}
    if isinstance(graph, _OneForward):  # q, k, v, tokens of one network came from the same forward
        vm.update({name: graph.flat(name) for name in others})
    elif others:
        batch = crop_windows(feats.image_resized, feats.layout, crop=feats.crop)  # [B, 3, crop, crop]
        for name in others:
            dense = vms[name].dense_features(batch)  # [B, g, g, D]
            vm[name] = dense.reshape(-1, dense.shape[-1]).float()
    place = (lambda t: t) if keep_on_device else (lambda t: t.cpu())  # the one place the shard leaves the device
    regions = {} if feats.regions is None else {"regions": encode_regions(feats.regions)}
    regions |= {} if feats.masks is None else {"masks": encode_masks(feats.masks)}
    return regions | {
        "id": image_id,
        "seeds": place(feats.seeds.float().contiguous()),
        "owner": feats.owner.long(),
        "text_affinity": place(feats.text_affinity.float()),
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
    """A shard as `segment.ImageFeatures` with the chosen VM variant; image (the original) for LPOSS+ and the
    own steps."""
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
        text_affinity=shard["text_affinity"],
        regions=decode_regions(shard["regions"]) if "regions" in shard else None,
        masks=decode_masks(shard["masks"]) if "masks" in shard else None,
    )


def seeds_label_map(shard: dict[str, Any], vm_feature: str) -> torch.Tensor:
    """The head's own prediction [H, W]: the argmax of the raw seed scores merged over the windows, pooled over
    synonyms and resized to the image (what `propagate_features(mode="maskclip")` labels)."""
    features = to_image_features(shard, vm_feature)
    scores = pool_synonyms(merge_patches(features, features.seeds), features.owner)  # [K, H', W']
    return F.interpolate(scores[None], size=features.original_hw, mode="bilinear", align_corners=False)[0].argmax(0)


def fill_store(store: FeatureStore, items: Iterable[tuple[str, Path, list[str]]],
               compute: Callable[[str, Path, list[str], str], dict[str, Any]], progress: bool = True,
               desc: str = "features", advance: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Make sure every (image_id, image_path, class_names) has a valid shard; compute only the others.

    compute(image_id, image_path, class_names, image_md5) -> shard. Existing shards are checked
    (readable, right keys and shapes, same class names and image file); corrupt or stale ones are
    recomputed. Returns counts, this run's seconds, and backbone_seconds: the backbone time of every shard
    (whenever it was computed), i.e. what the features of this dataset cost.
    items may be any subset of a dataset (a worker's shard, lposs.experiment.sharded): the store is never reset here,
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


class ShardComputer:
    """fill_store's compute for a `lposs.datasets` dataset: (image id, path, class names, md5) -> a shard.

    prompts(i): the class prompts of image i (default `dataset.class_names_for`; a protocol's class files).
    The text classifier is computed once when every image has the same prompts.
    """

    def __init__(self, dataset: Any, vlm: Any, vms: dict[str, Any], windows: WindowSettings | dict[str, int],
                 prompts: Callable[[int], list[str]] | None = None, vm_dtype: str = "float32", masks: Any = None):
        self.dataset, self.vlm, self.vms, self.windows, self.vm_dtype = dataset, vlm, vms, windows, vm_dtype
        self.masks = masks
        self.prompts = prompts or dataset.class_names_for
        self.position = {item.id: i for i, item in enumerate(dataset.items)}
        first = self.prompts(0) if len(dataset) else []
        shared = bool(first) and all(self.prompts(i) == first for i in range(len(dataset)))
        self.text = vlm.text_embeddings(first) if shared else None  # the same classifier for every image

    def items(self) -> list[tuple[str, Path, list[str]]]:
        """(image id, image path, class prompts) of every image: what fill_store walks."""
        return [(item.id, item.image, self.prompts(i)) for i, item in enumerate(self.dataset.items)]

    def __call__(self, image_id: str, image_path: Path, class_names: list[str], md5: str) -> dict[str, Any]:
        sample = self.dataset[self.position[image_id]]
        return extract_shard(image_id, sample.image, class_names, self.vlm, self.vms, self.windows, md5,
                             text=self.text, vm_dtype=self.vm_dtype, masks=self.masks)


def fill_dataset(store: FeatureStore, dataset: Any, vlm: Any, vms: dict[str, Any],
                 windows: WindowSettings | dict[str, int], progress: bool = True,
                 prompts: Callable[[int], list[str]] | None = None) -> dict[str, Any]:
    """`fill_store` over a `lposs.datasets` dataset: backbones run only on images without a valid shard."""
    compute = ShardComputer(dataset, vlm, vms, windows, prompts, store.manifest["vm_dtype"])
    return fill_store(store, compute.items(), compute, progress=progress, desc=f"features {dataset.name}")


def write_fingerprint(params_file: str | Path, out: str | Path) -> dict[str, Any]:
    """The pipeline's `fingerprint` stage: import params.yaml's plugins, then write the code fingerprint and the
    digest of every module it covers to `out` (JSON). The features stage depends on that file, so DVC re-runs
    it when a module of the closure or a plugin's file changes (their folder deps cover the package; a plugin
    may live anywhere)."""
    import yaml

    from .. import plugins
    from ..io import write_json

    path = Path(params_file)
    plugins.load_plugins((yaml.safe_load(path.read_text()) or {}).get("plugins") or [], root=path.resolve().parent)
    fingerprint = {"code": code_fingerprint(), "modules": code_digests()}
    write_json(out, fingerprint)
    return fingerprint


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m lposs.experiment.extraction PARAMS_YAML OUT_JSON")
    print(f"code fingerprint {write_fingerprint(sys.argv[1], sys.argv[2])['code']}")
