"""The one evaluation loop: every propagation setting on each image -> labels -> metric counts -> records.

    run = SettingsRun(ds, points, device, background)
    for each image:  run.add(shard, image, run.label(sample.label))    features from a store or a stream
    records = run.records()

The ablation cells (`lposs.experiment.ablation`, features read from a store, on any executor) and the
streaming evaluator (`lposs.experiment.streaming`, features straight from the backbones) both feed this
loop, so their numbers come from the same code. Counts accumulate on the device (`DeviceMetrics`: no host
wait on a GPU); times per setting come from `SettingClock` (CUDA events on a GPU).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..core.metrics import DeviceMetrics, SegmentationMetrics
from ..core.scoring import labels_from_scores
from ..segmentation import propagate_features
from ..settings import OWN_STEP, Setting
from .extraction import to_image_features


@dataclass(frozen=True)
class SweepPoint:
    """One evaluated setting: its label in results ("alpha=0.9"), the setting, and the swept name."""

    label: str
    setting: Setting
    swept: str = ""


class SettingClock:
    """Seconds spent per setting. On the CPU the wall clock; on a GPU, where the host only queues the work
    and a clock read would measure the queueing, CUDA events recorded around each setting and read once
    at the end (`seconds()`), so timing adds no wait inside the loop."""

    def __init__(self, device: str | torch.device):
        self.cuda = str(device).startswith("cuda")
        self.spans: dict[str, list[Any]] = {}

    @contextmanager
    def timing(self, label: str) -> Iterator[None]:
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            yield
            end.record()
            self.spans.setdefault(label, []).append((begin, end))
        else:
            tick = time.perf_counter()
            yield
            self.spans.setdefault(label, []).append(time.perf_counter() - tick)

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {label: sum(b.elapsed_time(e) for b, e in spans) / 1e3 for label, spans in self.spans.items()}
        return {label: float(sum(spans)) for label, spans in self.spans.items()}


class SettingsRun:
    """Accumulates every sweep point's metric counts and time over the images it is given."""

    def __init__(self, ds: Any, points: list[SweepPoint], device: str | torch.device = "cpu",
                 background: dict[str, Any] | None = None, own_step: dict[str, Any] | None = None):
        labels = [point.label for point in points]
        if len(set(labels)) != len(labels):
            raise ValueError(f"the settings repeat a label: {labels}")
        self.points, self.device, self.background, self.own_step = list(points), device, background, own_step
        self.like = SegmentationMetrics(ds.num_classes, ds.ignore_index, ds.reduce_zero_label)
        self.counts = {point.label: DeviceMetrics(self.like, device) for point in points}
        self.clock = SettingClock(device)

    def label(self, raw_label: Any) -> Tensor:
        """A ground-truth map as the dataset stores it -> checked evaluation labels [H, W] on the device."""
        return torch.from_numpy(self.like.prepare_label(raw_label)).to(self.device, non_blocking=True)

    def add(self, shard: dict[str, Any], image: Any, label: Tensor,
            on_labels: Callable[[SweepPoint, Tensor], None] | None = None) -> None:
        """One image: its shard (features), the image (for LPOSS+), its prepared label; on_labels(point,
        labels [H, W]) sees each setting's label map (to keep a few as PNGs)."""
        for point in self.points:
            setting = point.setting
            with self.clock.timing(point.label):
                needs_image = setting.mode in ("lposs+", OWN_STEP)
                features = to_image_features(shard, setting.graph.vm_feature, image if needs_image else None)
                scores = propagate_features(features, device=self.device, background=self.background,
                                            setting=setting, own_step=self.own_step)
                labels = labels_from_scores(scores, self.background or {})  # [H, W]
                self.counts[point.label].update(labels, label)
            if on_labels is not None:
                on_labels(point, labels)

    def metrics(self) -> dict[str, SegmentationMetrics]:
        return {label: counts.to_metrics() for label, counts in self.counts.items()}

    def seconds(self) -> dict[str, float]:
        spent = self.clock.seconds()  # on a GPU: waits for the last image
        return {point.label: spent.get(point.label, 0.0) for point in self.points}


def records(points: list[SweepPoint], metrics: dict[str, SegmentationMetrics], seconds: dict[str, float],
            images: int) -> list[dict[str, Any]]:
    """One record per point: the setting as run, its metrics summary and confusion matrix, its seconds."""
    return [{"setting": point.setting.flat(), "label": point.label,
             "metrics": {**metrics[point.label].summary(), "confusion": metrics[point.label].confusion.tolist()},
             "seconds": seconds[point.label], "seconds_per_image": seconds[point.label] / max(images, 1)}
            for point in points]


def without_times(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(records without their wall times, {label: seconds per image}): results.json holds only what the
    numbers depend on, so its hash is the same for any executor or machine; the times go to timings/."""
    times = {r["label"]: r["seconds_per_image"] for r in rows}
    return [{k: v for k, v in r.items() if k not in ("seconds", "seconds_per_image")} for r in rows], times
