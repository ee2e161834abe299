"""The features stage and the ablation cells as shard tasks for `lposs.executors` (several GPUs / nodes).

    fill_store_sharded(store, items, compute)            features: per-image store shards, as fill_store
    run_settings_sharded(ds, index, store, settings)     ablate: the records of pipeline.run_settings

The executor comes from LPOSS_EXECUTOR / LPOSS_WORKERS (see lposs.executors), never from params.yaml.
Features are per-image atomic files already. An ablation shard writes its integer counts (confusion and
boundary histograms, per setting) to one atomic .npz; the parent adds them up, so the numbers do not
depend on the split. Shard counts of a killed run are kept in the run folder (keyed by everything the
numbers depend on, the package source included) and reused by the next run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import executors
from .executors import Shard
from .features import CorruptShard, FeatureStore, atomic_write_bytes, extract_shard, file_md5, fill_store
from .metrics import SegmentationMetrics

Item = tuple[str, Path, list[str]]  # (image id, image path, class names): fill_store's items


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------

@dataclass
class DatasetFeatures:
    """fill_store's compute callback for a staged dataset, picklable: each process builds the backbones once.

    backbone: keyword arguments of pipeline.build_backbones except device (vlm, vlm_pretrained, vm,
    vm_pretrained, vm_features as a list, bf16). device "auto" is resolved where the work runs (a SLURM
    job's node, not the login node). `use(vlm, vms)` hands over models this process has built already.
    """

    staged_dir: str
    dataset: str
    backbone: dict[str, Any]
    windows: dict[str, int]
    vm_dtype: str = "float32"
    device: str = "auto"
    protocol: str | None = None  # whose class prompts (pipeline.prompts); None: the dataset's class names
    _loaded: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}  # models and dataset are rebuilt in each worker

    def use(self, vlm: Any, vms: dict[str, Any]) -> "DatasetFeatures":
        self._loaded = {**self._dataset(), "vlm": vlm, "vms": vms}
        self._loaded["text"] = self._shared_text()
        return self

    def _dataset(self) -> dict[str, Any]:
        from .pipeline import open_staged

        ds, _ = open_staged(self.staged_dir, self.dataset)
        return {"ds": ds, "position": {item.id: i for i, item in enumerate(ds.items)}}

    def prompts(self, ds: Any, i: int) -> list[str]:
        if self.protocol is None:
            return ds.class_names_for(i)
        from .pipeline import prompts

        return prompts(ds, i, self.protocol)

    def _shared_text(self) -> tuple | None:
        """The text classifier, once, when every image has the same prompts (as fill_dataset does)."""
        ds = self._loaded["ds"]
        first = self.prompts(ds, 0) if len(ds) else []
        shared = all(self.prompts(ds, i) == first for i in range(len(ds)))
        return self._loaded["vlm"].text_embeddings(first) if shared and first else None

    def _models(self) -> dict[str, Any]:
        if self._loaded is None:
            from .pipeline import build_backbones, resolve_device

            vlm, vms = build_backbones(**self.backbone, device=resolve_device(self.device))
            self.use(vlm, vms)
        return self._loaded

    def items(self) -> list[Item]:
        ds = self._dataset()["ds"]
        return [(item.id, item.image, self.prompts(ds, i)) for i, item in enumerate(ds.items)]

    def __call__(self, image_id: str, image_path: Path, class_names: list[str], md5: str) -> dict[str, Any]:
        loaded = self._models()
        sample = loaded["ds"][loaded["position"][image_id]]
        return extract_shard(image_id, sample.image, class_names, loaded["vlm"], loaded["vms"], self.windows, md5,
                             text=loaded["text"], vm_dtype=self.vm_dtype)


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


# --------------------------------------------------------------------------------------------------
# Ablation cells
# --------------------------------------------------------------------------------------------------

def source_fingerprint() -> str:
    """md5 of the package's source: shard counts of a killed run are reused only by the same code."""
    import torch

    digest = hashlib.md5(torch.__version__.encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class AblateTask:
    """Shard task: every setting on a shard's images -> one .npz of integer counts per shard."""

    ds: Any
    index: dict[str, Any]
    store: FeatureStore
    settings: list[dict[str, Any]]
    device: str
    predictions: int
    prediction_dir: str | None
    run_kwargs: dict[str, Any] = field(default_factory=dict)  # further keyword arguments of run_settings
    counts_dir: str = ""

    def fingerprint(self) -> str:
        return json.dumps([self.ds.name, self.index, self.store.manifest, str(self.store.folder.resolve()),
                           self.settings, self.device, self.predictions, str(self.prediction_dir),
                           self.run_kwargs, source_fingerprint()], default=str)

    def counts_path(self, shard: Shard) -> Path:
        return Path(self.counts_dir) / f"{shard.key}-of-{shard.count}.npz"

    def prediction_paths(self, shard: Shard) -> list[Path]:
        from .pipeline import safe_id

        if self.prediction_dir is None:
            return []
        from .pipeline import prediction_indices

        keep = prediction_indices(len(self.ds), self.predictions) & set(shard.items)
        return [Path(self.prediction_dir) / s["label"] / f"{safe_id(self.ds.items[i].id)}.png"
                for i in sorted(keep) for s in self.settings]

    def missing(self, shard: Shard) -> list[int]:
        try:
            self.load(shard)
        except (OSError, ValueError, KeyError):
            return list(shard.items)
        return list(shard.items) if not all(p.exists() for p in self.prediction_paths(shard)) else []

    def run(self, shard: Shard, advance: Callable[[int], None]) -> None:
        metrics, seconds = evaluate_images(self, shard.items, advance)
        arrays = {"labels": np.array([s["label"] for s in self.settings])}
        for j in range(len(self.settings)):
            arrays.update({f"{j}.{k}": v for k, v in metrics[j].counts().items()})
            arrays[f"{j}.seconds"] = np.array(seconds[j])
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self.counts_path(shard), buffer.getvalue())

    def load(self, shard: Shard) -> list[tuple[dict[str, np.ndarray], float]]:
        """[(counts, seconds)] per setting of one shard's .npz; ValueError if it holds other settings."""
        with np.load(self.counts_path(shard)) as data:
            if data["labels"].tolist() != [s["label"] for s in self.settings]:
                raise ValueError(f"{self.counts_path(shard)} holds other settings")
            names = ("confusion", "boundary_intersection", "boundary_union", "images")
            return [({k: data[f"{j}.{k}"] for k in names}, float(data[f"{j}.seconds"]))
                    for j in range(len(self.settings))]


def _accumulators(task: "AblateTask") -> tuple[dict[str, SegmentationMetrics], dict[str, float]]:
    ds = task.ds
    return ({s["label"]: SegmentationMetrics(ds.num_classes, ds.ignore_index, ds.reduce_zero_label)
             for s in task.settings}, {s["label"]: 0.0 for s in task.settings})


def records_from_counts(task: "AblateTask", counts: list[dict[str, np.ndarray]], seconds: list[float]
                        ) -> list[dict[str, Any]]:
    """run_settings' own records for merged counts: it runs over no image into preloaded accumulators."""
    from .pipeline import run_settings

    metrics, spent = _accumulators(task)
    for setting, shard_counts, shard_seconds in zip(task.settings, counts, seconds):
        metrics[setting["label"]].add_counts(shard_counts)
        spent[setting["label"]] = shard_seconds
    return run_settings(task.ds, task.index, task.store, task.settings, "cpu", 0, None, progress=False,
                        indices=[], metrics=metrics, seconds=spent, **task.run_kwargs)


def evaluate_images(task: "AblateTask", indices: Sequence[int], advance: Callable[[int], None]
                    ) -> tuple[list[SegmentationMetrics], list[float]]:
    """pipeline.run_settings over `indices`, one image at a time for progress: (metrics, seconds) per setting.

    The label maps kept are those run_settings keeps over the whole dataset.
    """
    from .pipeline import resolve_device, run_settings

    metrics, seconds = _accumulators(task)
    for i in indices:
        run_settings(task.ds, task.index, task.store, task.settings, resolve_device(task.device), task.predictions,
                     task.prediction_dir, progress=False, indices=[i], metrics=metrics, seconds=seconds,
                     **task.run_kwargs)
        advance(1)
    return [metrics[s["label"]] for s in task.settings], [seconds[s["label"]] for s in task.settings]


def run_settings_sharded(ds: Any, index: dict[str, Any], store: FeatureStore, settings: list[dict[str, Any]],
                         device: str = "cpu", predictions: int = 0,
                         prediction_dir: str | os.PathLike | None = None, progress: bool = True,
                         executor: str | None = None, workers: int | None = None,
                         **run_kwargs: Any) -> list[dict[str, Any]]:
    """pipeline.run_settings over shards of the images on the executor; the same records, exact metrics.

    run_kwargs go to run_settings (protocol=, background=, ...). device may be "auto" (resolved in each
    worker). Under torchrun every rank returns the records (write them from executors.is_main_process()).

    Each worker runs run_settings on its images into its own accumulators; the records come from
    run_settings itself, over no image with the merged counts preloaded, so their format is its own.
    """
    config = executors.executor_config(executor, workers)
    task = AblateTask(ds, index, store, settings, device, predictions,
                      None if prediction_dir is None else str(prediction_dir), run_kwargs)
    desc = f"ablate {ds.name}"
    task.counts_dir = str(executors.run_folder(task, config, desc)) + ".counts"
    report = executors.run_shards(task, len(ds), executor, workers, desc, progress)
    total = [SegmentationMetrics(ds.num_classes, ds.ignore_index, ds.reduce_zero_label) for _ in settings]
    seconds = [0.0] * len(settings)
    for shard in executors.split_shards(len(ds)):
        for j, (counts, spent) in enumerate(task.load(shard)):
            total[j].add_counts(counts)
            seconds[j] += spent
    executors.barrier()  # under torchrun: every rank has read the counts before rank 0 removes them
    if executors.is_main_process():
        shutil.rmtree(task.counts_dir, ignore_errors=True)
    if report["shards_run"] == 0 and len(ds):
        print(f"{desc}: every shard's counts were complete already (an earlier interrupted run)")
    return records_from_counts(task, [m.counts() for m in total], seconds)
