"""MaskCLIP, LPOSS and LPOSS+ on one image from a single backbone pass, each stage timed.

The backbones run once (`extract_features`); the three label maps come from `propagate_features` on
those same features, so each stage's time is the cost of that stage alone. LPOSS+ reruns the patch
LP before its pixel LP (that is how `propagate_features` builds it), and its time says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..core.scoring import labels_from_scores
from ..models.records import DEFAULT_HEAD
from ..segmentation import MODES, as_image_tensor, extract_features, propagate_features

DEMO_TITLE = "Demo stand-in"  # the web page's name for the demo VLM ("demo-vlm"), which has no head record


def head_title(head: str) -> str:
    """A head's display name: its record's title (the demo stand-in's, or the name itself, otherwise)."""
    from ..models.head_registry import records

    record = records().get(head)
    return record.title if record is not None else DEMO_TITLE if head == "demo-vlm" else head


def mode_titles(head: str = DEFAULT_HEAD) -> dict[str, str]:
    """What each mode is called on screen: the seeds-only mode takes the name of the head that made them."""
    seeds = head_title(head)
    return {"maskclip": seeds if head == DEFAULT_HEAD else f"{seeds} (seeds only)", "lposs": "LPOSS",
            "lposs+": "LPOSS+"}


def stage_names(head: str = DEFAULT_HEAD, refiner: str = "reference") -> dict[str, str]:
    """Stage key -> the line shown beside its time."""
    titles = mode_titles(head)
    return {
        "text": "text encoder: class-name embeddings",
        "features": "backbones over the image windows (once, shared by the three)",
        "maskclip": f"{titles['maskclip']}: seeds -> label map",
        "lposs": "LPOSS: patch kNN graph + label propagation",
        "lposs+": f"LPOSS+: patch LP again + pixel LP (refiner {refiner!r})",
    }


@dataclass
class SideBySide:
    """Three label maps [H, W] (class indices) of one image, and the seconds each stage took."""

    labels: dict[str, np.ndarray] = field(default_factory=dict)  # mode -> [H, W] int64
    seconds: dict[str, float] = field(default_factory=dict)  # stage key (see stage_names) -> seconds


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def segment_side_by_side(
    image: Any,
    class_names: list[str],
    vlm: Any,
    vm: Any,
    device: str | torch.device = "cpu",
    refiner: str = "reference",
    on_stage: Callable[[str], None] | None = None,
    short_side: int = 448,
    background: dict[str, Any] | None = None,
) -> SideBySide:
    """Run the backbones once, then every mode of `segment.MODES` on the same features.

    image: uint8 [H, W, 3] or float [3, H, W] in [0, 1]. on_stage(key) is called as each stage starts
    (key: "text", "features" or a mode), e.g. to show progress. short_side: the image is resized to it before
    the windows are cut (448 as in the paper; smaller is faster and coarser). background: a scoring rule of
    `lposs.models.protocols` (None: LPOSS's max over synonyms); see `labels_without_background` for the labels.
    """
    device = torch.device(device)
    announce = on_stage or (lambda key: None)
    result = SideBySide()
    image = as_image_tensor(image).to(device)  # [3, H, W]
    announce("text")
    start = time.perf_counter()
    text = vlm.text_embeddings(class_names)  # ([C', D], [C'])
    _synchronise(device)
    result.seconds["text"] = time.perf_counter() - start
    announce("features")
    start = time.perf_counter()
    features = extract_features(image, class_names, vlm, vm, short_side=short_side, text=text)
    _synchronise(device)
    result.seconds["features"] = time.perf_counter() - start
    for mode in MODES:
        announce(mode)
        start = time.perf_counter()
        extra = {"refiner": refiner} if mode == "lposs+" else {}
        scores = propagate_features(features, mode=mode, device=device, background=background, **extra)  # [K, H, W]
        labels = labels_without_background(scores, background or {"background": "synonyms"})
        result.labels[mode] = labels.cpu().numpy()  # the copy to the CPU waits for the device
        result.seconds[mode] = time.perf_counter() - start
    return result


def can_leave_unlabelled(rule: dict[str, Any]) -> bool:
    """Whether `rule` may leave pixels out (the softmax rule with a probability or area threshold)."""
    return rule.get("background") == "softmax" and (rule.get("prob_thd", 0) > 0 or rule.get("area_thd") is not None)


def labels_without_background(scores: Tensor, rule: dict[str, Any]) -> Tensor:
    """Class scores [K, H, W] of user-named classes, none of them a background -> labels [H, W] in 0..K.

    `protocols.labels_from_scores` sends the pixels its thresholds reject to class 0, the release's background.
    The classes typed on a page have no background, so the rule runs on a background row of probability 0
    put in front (the user's classes all count as foreground for area_thd, as the release's do), and the
    pixels it rejects get K, "unlabelled", instead of the first class.
    """
    if not can_leave_unlabelled(rule):
        return labels_from_scores(scores, rule)
    with_background = torch.cat([scores.new_zeros((1, *scores.shape[1:])), scores])  # [K + 1, H, W]
    labels = labels_from_scores(with_background, rule) - 1  # -1: sent to the background
    labels[labels < 0] = scores.shape[0]
    return labels
