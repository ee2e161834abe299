"""The features stage and the ablation cells as shard tasks for `lposs.experiment.executors` (several GPUs / nodes).

    fill_store_sharded(store, items, compute)            features: per-image store shards, as fill_store
    run_settings_sharded(ds, index, store, points)       ablate: the records of ablation.run_settings

The executor comes from LPOSS_EXECUTOR / LPOSS_WORKERS (see lposs.experiment.executors), never from
params.yaml.
Features are per-image atomic files already. An ablation shard writes its integer counts (confusion and
boundary histograms, per setting) to one atomic .npz; the parent adds them up, so the numbers do not
depend on the split. Shard counts of a killed run are kept in the run folder (keyed by everything the
numbers depend on, the package source included) and reused by the next run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io import file_md5
from ..models.factory import BackboneSpec, create_backbones
from ..models.loading import BackboneUnavailable
from ..settings import WindowSettings
from . import executors
from .executors import Shard
from .extraction import ShardComputer, fill_store
from .parameters import resolve_device
from .staging import open_staged, prompts
from .store import CorruptShard, FeatureStore

Item = tuple[str, Path, list[str]]  # (image id, image path, class names): fill_store's items


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------

@dataclass
class DatasetFeatures:
    """fill_store's compute for a staged dataset, picklable: each process builds the backbones once.

    spec: the backbones (`BackboneSpec`, its mask model too); device "auto" is resolved where the work runs (a
    SLURM job's node, not the login node); protocol: whose class prompts (None: the dataset's class names).
    `use(vlm, vms, masks)` hands over models this process has built already. The work itself is `extraction.ShardComputer`'s.
    """

    staged_dir: str
    dataset: str
    spec: BackboneSpec
    windows: WindowSettings
    vm_dtype: str = "float32"
    device: str = "auto"
    protocol: str | None = None
    _computer: ShardComputer | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_computer": None}  # models and dataset are rebuilt in each worker

    def use(self, vlm: Any, vms: dict[str, Any], masks: Any = None) -> "DatasetFeatures":
        ds, _ = open_staged(self.staged_dir, self.dataset)
        self._computer = ShardComputer(ds, vlm, vms, self.windows, self.prompts(ds), self.vm_dtype, masks)
        return self

    def prompts(self, ds: Any) -> Callable[[int], list[str]]:
        return ds.class_names_for if self.protocol is None else (lambda i: prompts(ds, i, self.protocol))

    def items(self) -> list[Item]:
        ds, _ = open_staged(self.staged_dir, self.dataset)
        return [(item.id, item.image, self.prompts(ds)(i)) for i, item in enumerate(ds.items)]

    def load(self) -> "DatasetFeatures":
        """Build the backbones now (missing weights raise `BackboneUnavailable` within seconds)."""
        if self._computer is None:
            try:
                backbones = create_backbones(self.spec, device=resolve_device(self.device))
            except BackboneUnavailable as error:  # the pipeline takes no weight files: only the fetch commands
                raise BackboneUnavailable(error.without_files(), error.missing) from None
            self.use(backbones.vlm, backbones.graphs, backbones.masks)
        return self

    @property
    def masks_id(self) -> str | None:
        """The mask model's id for the manifest (None without one)."""
        masks = self.load()._computer.masks
        return None if masks is None else masks.id

    @property
    def masks_overlap(self) -> bool:
        """Whether the mask model makes overlapping masks that the shards keep (Panoptic Cut's)."""
        return bool(getattr(self.load()._computer.masks, "overlapping", False))

    @property
    def vlm(self) -> Any:
        return self.load()._computer.vlm

    @property
    def vms(self) -> dict[str, Any]:
        return self.load()._computer.vms

    def __call__(self, image_id: str, image_path: Path, class_names: list[str], md5: str) -> dict[str, Any]:
        return self.load()._computer(image_id, image_path, class_names, md5)


class FeaturesTask:
    """Shard task: fill_store over a shard's items. The parent remembers which items it verified."""

    def __init__(self, store: FeatureStore, items: Sequence[Item], compute: Callable[..., dict[str, Any]]):
        self.store, self.items, self.compute = store, list(items), compute
        self.verified: dict[int, float] = {}  # item -> backbone seconds of its valid shard (parent side)
        self.absent: set[int] = set()
        self.corrupt: set[int] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "verified": {}, "absent": set(), "corrupt": set()}

    def fingerprint(self) -> str:
        return json.dumps([str(self.store.folder.resolve()), self.store.manifest])

    def run(self, shard: Shard, advance: Callable[[int], None]) -> None:
        fill_store(self.store, [self.items[i] for i in shard.items], self.compute, progress=False, advance=advance)

    def missing(self, shard: Shard) -> list[int]:
        return [i for i in shard.items if not self.valid(i)]

    def valid(self, i: int) -> bool:
        """Whether item i has a shard fill_store would reuse (readable, same class names and image file)."""
        if i in self.verified:
            return True
        image_id, image_path, class_names = self.items[i]
        if not self.store.path(image_id).exists():
            self.absent.add(i)
            return False
        try:
            shard = self.store.load(image_id, class_names=class_names, image_md5=file_md5(image_path),
                                    check_values=False)
        except CorruptShard:
            self.corrupt.add(i)
            return False
        self.verified[i] = float(shard["seconds"])
        return True


def fill_store_sharded(store: FeatureStore, items: Sequence[Item], compute: Callable[..., dict[str, Any]],
                       progress: bool = True, desc: str = "features", executor: str | None = None,
                       workers: int | None = None) -> dict[str, Any]:
    """features.fill_store on the executor of LPOSS_EXECUTOR (or `executor`); the same returned counts.

    compute must be picklable for the other executors (DatasetFeatures is). Workers never reset the
    store: open it (FeatureStore(..., reset=True)) in the parent first. Adds "executor", "workers", "shards".
    """
    config = executors.executor_config(executor, workers)
    if config.kind == "inline":
        return {**fill_store(store, items, compute, progress, desc), "executor": "inline", "workers": 1}
    start = time.perf_counter()
    task = FeaturesTask(store, items, compute)
    report = executors.run_shards(task, len(task.items), executor, workers, desc, progress)
    redone = task.absent | task.corrupt
    return {"images": len(task.items), "computed": len(redone), "reused": len(task.items) - len(redone),
            "recomputed_corrupt": len(task.corrupt), "seconds": time.perf_counter() - start,
            "backbone_seconds": sum(task.verified.values()), "executor": report["executor"],
            "workers": report["workers"], "shards": report["shards"]}
