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

The manifest (`lposs.experiment.extraction.make_manifest`) names the backbones (ids), package versions,
window parameters, class names and a fingerprint of the extraction code. Opening a
store whose manifest differs raises `ManifestMismatch` naming the differences, or with `reset=True`
deletes the stale shards and starts afresh. Shards are written atomically (temp file + os.replace), so an
interrupted run leaves whole shards only; `extraction.fill_store` then computes just the missing ones. A shard that
cannot be read or has the wrong keys/shapes raises `CorruptShard` on load; `fill_store` recomputes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write, atomic_write_bytes, safe_name

FORMAT_VERSION = 2  # 2: shards keep the queries' text self-affinity (PEARL's TLP, the own-step mode)
SHARD_KEYS = frozenset({"id", "seeds", "owner", "text_affinity", "vm", "layout", "resized_hw", "original_hw", "grid",
                        "crop", "class_names", "image_md5", "seconds"})
MANIFEST = "manifest.json"
VM_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class ManifestMismatch(RuntimeError):
    """The store on disk was made with other backbones / parameters / versions than requested."""


class CorruptShard(ValueError):
    """A shard is unreadable, truncated, or does not hold what the manifest promises."""


WHY = {  # what a difference in a manifest key means, said beside it
    "code": "the code that computes features changed (a module of the import closure of the extraction and the "
            "backbone factory, or a plugin's file; code_modules names which): its features may differ",
    "code_modules": "this module's source changed since the store was made",
    "versions": "a package the features depend on changed version",
    "format": "the shard format changed",
}


OLD_FINGERPRINT = ("made by the old code fingerprint, a hand-kept list of modules that missed some (the prompt "
                   "templates lposs/models/text.py and text_cache.py, DINOv3's RoPE lposs/models/rope.py, the input "
                   "normalisation lposs/core/color.py): whether its features are current cannot be told, so it must be "
                   "recomputed")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    if not prefix and "code_modules" in new and "code_modules" not in old and "code" in old:
        return [f"code: {OLD_FINGERPRINT}"] + _differences({k: v for k, v in old.items() if k != "code"},
                                                            {k: v for k, v in new.items() if k not in ("code",
                                                                                                   "code_modules")})
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            shown = [str(v) if len(str(v)) < 80 else str(v)[:77] + "..." for v in (a, b)]
            why = WHY.get(prefix.split(".")[0] or key)
            out.append(f"{prefix}{key}: stored {shown[0]} != requested {shown[1]}" + (f" ({why})" if why else ""))
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
        """Write one shard atomically (lposs.io.atomic_write)."""
        self.check(shard, shard.get("id", "?"))
        return atomic_write(self.path(shard["id"]), lambda out: torch.save(shard, out))

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

        keys = SHARD_KEYS | ({"regions"} if self.manifest.get("masks") else set())  # a mask model's regions
        keys |= {"masks"} if self.manifest.get("masks_overlap") else set()  # and its overlapping masks
        if not isinstance(shard, dict) or set(shard) != keys:
            fail(f"keys {sorted(shard) if isinstance(shard, dict) else type(shard).__name__}, "
                 f"expected {sorted(keys)}")
        if shard["id"] != image_id:
            fail(f"holds image {shard['id']!r}")
        seeds, owner, layout, grid = shard["seeds"], shard["owner"], shard["layout"], shard["grid"]
        patches = len(layout) * grid * grid
        if not (isinstance(seeds, torch.Tensor) and seeds.dim() == 2 and seeds.shape[0] == patches):
            fail(f"seeds should be [{patches}, C'], got {getattr(seeds, 'shape', type(seeds))}")
        if not (isinstance(owner, torch.Tensor) and owner.shape == (seeds.shape[1],)):
            fail(f"owner should be [{seeds.shape[1]}], got {getattr(owner, 'shape', type(owner))}")
        if not (isinstance(shard["text_affinity"], torch.Tensor) and shard["text_affinity"].shape == owner.shape):
            fail(f"text_affinity should be [{seeds.shape[1]}], got {getattr(shard['text_affinity'], 'shape', '?')}")
        if not isinstance(shard["vm"], dict) or tuple(sorted(shard["vm"])) != tuple(sorted(self.features)):
            fail(f"vision features {sorted(shard['vm']) if isinstance(shard['vm'], dict) else '?'}, "
                 f"expected {sorted(self.features)}")
        for name, feats in shard["vm"].items():
            if not (isinstance(feats, torch.Tensor) and feats.dim() == 2 and feats.shape[0] == patches):
                fail(f"vision feature {name!r} should be [{patches}, D], got {getattr(feats, 'shape', '?')}")
            if feats.dtype != self.vm_dtype:
                fail(f"vision feature {name!r} is {feats.dtype}, the manifest says {self.vm_dtype}")
        if "regions" in shard:
            code = shard["regions"]
            if not (isinstance(code, torch.Tensor) and code.dtype == torch.int32 and code.dim() == 1
                    and code.numel() >= 4 and tuple(code[:2].tolist()) == tuple(shard["resized_hw"])):
                fail(f"regions should be a run-length code of the {tuple(shard['resized_hw'])} resized image")
        if "masks" in shard:
            code = shard["masks"]
            if not (isinstance(code, torch.Tensor) and code.dtype == torch.int32 and code.dim() == 1
                    and code.numel() >= 5 and tuple(code[1:3].tolist()) == tuple(shard["original_hw"])):
                fail(f"masks should be a mask code (encode_masks) of the {tuple(shard['original_hw'])} image")
        if class_names is not None and list(shard["class_names"]) != list(class_names):
            fail("computed for other class names")
        if image_md5 is not None and shard["image_md5"] != image_md5:
            fail("computed from another version of the image file")
        if check_values:
            tensors = [seeds] + list(shard["vm"].values())
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                fail("holds NaN or infinite values")


def combo_name(head: str, vm: str) -> str:
    """A backbone combination's name in folders, stage outputs and tables: '<head>+<vm>'."""
    return f"{head}+{vm}"


def store_folder(root: str | os.PathLike, dataset: str, spec: Any) -> Path:
    """root/<dataset>/<head>+<vm>/<backbone key>: the folder DVC tracks per combination, one store per weights
    (spec: a `lposs.models.factory.BackboneSpec`)."""
    return Path(root) / dataset / combo_name(spec.head, spec.vm) / spec.key()
