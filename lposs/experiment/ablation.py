"""Stage 3: one ablation sweep over a feature store: its settings, the loop over the images, the label maps kept.

    points = sweep_points(base, "alpha", [0.5, 0.9], mode="lposs")     one SweepPoint per value
    metrics, seconds = run_settings(ds, index, store, points, ...)       every point on every image
    rows = evaluation.records(points, metrics, seconds, len(ds))

`lposs.experiment.sharded.run_settings_sharded` runs the same on shards of the images (several
processes, GPUs or SLURM jobs) and adds up their integer counts, so the numbers do not depend on the split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..core.metrics import SegmentationMetrics
from ..io import safe_name, save_label_map
from ..settings import EVALUATED_MODES, Setting
from .evaluation import SettingsRun, SweepPoint
from .staging import prompts
from .store import FeatureStore

SWEEPABLE = Setting.names()  # mode, then every graph / lp / pixel setting


def sweep_points(base: Setting, param: str, values: list, mode: str) -> list[SweepPoint]:
    """One point per swept value: `base` in `mode` with `param` replaced (labels "param=value")."""
    if param not in SWEEPABLE:
        raise ValueError(f"cannot sweep {param!r}; sweepable: {', '.join(SWEEPABLE)}")
    if not isinstance(values, list) or not values:
        raise ValueError(f"sweep over {param!r} needs a non-empty list of values, got {values!r}")
    if mode not in EVALUATED_MODES:
        raise ValueError(f"sweep mode {mode!r}: choose one of {', '.join(EVALUATED_MODES)}")
    points = [SweepPoint(f"{param}={value}", base.replace(**{"mode": mode, param: value}), param) for value in values]
    if len({point.label for point in points}) != len(points):
        raise ValueError(f"sweep over {param!r} repeats a value: {values}")
    return points


def prediction_indices(n_images: int, predictions: int) -> set[int]:
    """The images whose label maps are kept: `predictions` of them spread evenly over the dataset."""
    if not predictions or not n_images:
        return set()
    return set(np.linspace(0, n_images - 1, min(predictions, n_images)).round().astype(int).tolist())


def prediction_path(prediction_dir: str | os.PathLike, point: SweepPoint, image_id: str) -> Path:
    return Path(prediction_dir) / point.label / f"{safe_name(image_id)}.png"


def run_settings(ds: Any, index: dict[str, Any], store: FeatureStore, points: list[SweepPoint],
                 device: str = "cpu", predictions: int = 0, prediction_dir: str | os.PathLike | None = None,
                 progress: bool = True, protocol: str = "lposs", background: dict[str, Any] | None = None,
                 indices: Sequence[int] | None = None, advance: Callable[[int], None] | None = None,
                 own_step: dict[str, Any] | None = None) -> tuple[dict[str, SegmentationMetrics], dict[str, float]]:
    """Every point on the dataset's images (each shard read once) -> ({label: metrics}, {label: seconds}).

    protocol: whose class prompts the features were computed with; background: the rule that turns
    scores into labels (`parameters.background_rule`; None = LPOSS's synonym max); own_step: the head's
    release's post-step, run by mode "own" (`lposs.models.protocols.own_step`). indices: the images
    (default all; `lposs.experiment.sharded` runs subsets); advance(1) after each image. The label maps of
    `predictions` images spread over the whole dataset go to prediction_dir/<label>/<image id>.png.
    """
    keep = prediction_indices(len(ds), predictions) if prediction_dir is not None else set()
    run = SettingsRun(ds, points, device, background, own_step)
    for i in tqdm(range(len(ds)) if indices is None else indices, desc=f"ablate {ds.name}", unit="img",
                  disable=not progress):
        record, sample = index["images"][i], ds[i]
        shard = store.load(sample.id, class_names=prompts(ds, i, protocol), image_md5=record["image_md5"])
        keeper = None
        if i in keep:
            def keeper(point: SweepPoint, labels: Any, image_id: str = sample.id) -> None:
                save_label_map(prediction_path(prediction_dir, point, image_id), labels.cpu().numpy())
        run.add(shard, sample.image, run.label(sample.label), keeper)
        if advance is not None:
            advance(1)
    return run.metrics(), run.seconds()
