"""The ablation cells as a shard task for `lposs.experiment.executors` (several processes, GPUs or nodes).

    run_settings_sharded(ds, index, store, points)       the records of ablation.run_settings

An ablation shard writes its integer counts (confusion and boundary histograms, per setting) to one
atomic .npz; the parent adds them up, so the numbers do not depend on the split. Shard counts of a killed
run are kept in the run folder (keyed by everything the numbers depend on, the package source included)
and reused by the next run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.metrics import SegmentationMetrics
from ..io import atomic_write_bytes
from . import executors
from .ablation import prediction_indices, prediction_path, run_settings
from .evaluation import SweepPoint, records
from .executors import Shard
from .parameters import resolve_device
from .store import FeatureStore


def source_fingerprint() -> str:
    """md5 of the package's source: shard counts of a killed run are reused only by the same code."""
    import torch

    digest = hashlib.md5(torch.__version__.encode())
    for path in sorted(Path(__file__).parents[1].rglob("*.py")):  # the whole lposs package
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class AblateTask:
    """Shard task: every point on a shard's images -> one .npz of integer counts per shard."""

    ds: Any
    index: dict[str, Any]
    store: FeatureStore
    points: list[SweepPoint]
    device: str
    predictions: int
    prediction_dir: str | None
    run_kwargs: dict[str, Any] = field(default_factory=dict)  # further keyword arguments of run_settings
    counts_dir: str = ""

    def fingerprint(self) -> str:
        return json.dumps([self.ds.name, self.index, self.store.manifest, str(self.store.folder.resolve()),
                           [(p.label, p.setting.flat()) for p in self.points], self.device, self.predictions,
                           str(self.prediction_dir), self.run_kwargs, source_fingerprint()], default=str)

    def counts_path(self, shard: Shard) -> Path:
        return Path(self.counts_dir) / f"{shard.key}-of-{shard.count}.npz"

    def prediction_paths(self, shard: Shard) -> list[Path]:
        if self.prediction_dir is None:
            return []
        keep = prediction_indices(len(self.ds), self.predictions) & set(shard.items)
        return [prediction_path(self.prediction_dir, point, self.ds.items[i].id)
                for i in sorted(keep) for point in self.points]

    def missing(self, shard: Shard) -> list[int]:
        try:
            self.load(shard)
        except (OSError, ValueError, KeyError):
            return list(shard.items)
        return list(shard.items) if not all(p.exists() for p in self.prediction_paths(shard)) else []

    def run(self, shard: Shard, advance: Callable[[int], None]) -> None:
        metrics, seconds = run_settings(self.ds, self.index, self.store, self.points, resolve_device(self.device),
                                        self.predictions, self.prediction_dir, progress=False, indices=shard.items,
                                        advance=advance, **self.run_kwargs)
        arrays = {"labels": np.array([p.label for p in self.points])}
        for j, point in enumerate(self.points):
            arrays.update({f"{j}.{k}": v for k, v in metrics[point.label].counts().items()})
            arrays[f"{j}.seconds"] = np.array(seconds[point.label])
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self.counts_path(shard), buffer.getvalue())

    def load(self, shard: Shard) -> list[tuple[dict[str, np.ndarray], float]]:
        """[(counts, seconds)] per point of one shard's .npz; ValueError if it holds other settings."""
        with np.load(self.counts_path(shard)) as data:
            if data["labels"].tolist() != [p.label for p in self.points]:
                raise ValueError(f"{self.counts_path(shard)} holds other settings")
            names = ("confusion", "boundary_intersection", "boundary_union", "images")
            return [({k: data[f"{j}.{k}"] for k in names}, float(data[f"{j}.seconds"]))
                    for j in range(len(self.points))]


def run_settings_sharded(ds: Any, index: dict[str, Any], store: FeatureStore, points: list[SweepPoint],
                         device: str = "cpu", predictions: int = 0,
                         prediction_dir: str | os.PathLike | None = None, progress: bool = True,
                         executor: str | None = None, workers: int | None = None,
                         **run_kwargs: Any) -> list[dict[str, Any]]:
    """ablation.run_settings over shards of the images on the executor -> the records, exact metrics.

    run_kwargs go to run_settings (protocol=, background=). device may be "auto" (resolved in each
    worker). Under torchrun every rank returns the records (write them from executors.is_main_process()).
    Each worker writes its images' integer counts; the parent adds them up.
    """
    config = executors.executor_config(executor, workers)
    task = AblateTask(ds, index, store, points, device, predictions,
                      None if prediction_dir is None else str(prediction_dir), run_kwargs)
    desc = f"ablate {ds.name}"
    task.counts_dir = str(executors.run_folder(task, config, desc)) + ".counts"
    report = executors.run_shards(task, len(ds), executor, workers, desc, progress)
    metrics = {p.label: SegmentationMetrics(ds.num_classes, ds.ignore_index, ds.reduce_zero_label) for p in points}
    seconds = {p.label: 0.0 for p in points}
    for shard in executors.split_shards(len(ds)):
        for point, (counts, spent) in zip(points, task.load(shard)):
            metrics[point.label].add_counts(counts)
            seconds[point.label] += spent
    executors.barrier()  # under torchrun: every rank has read the counts before rank 0 removes them
    if executors.is_main_process():
        shutil.rmtree(task.counts_dir, ignore_errors=True)
    if report["shards_run"] == 0 and len(ds):
        print(f"{desc}: every shard's counts were complete already (an earlier interrupted run)")
    return records(points, metrics, seconds, len(ds))
