"""The releases' own post-steps on a head's scores, run by name so that a table sets each beside LPOSS.

    refined = run_own_step(canvas, image, {"name": "tlp", "grid": 80}, text_affinity)
        canvas [C', H, W] query scores (cosines, before any logit scale), image [3, H, W] in [0, 1],
        text_affinity [C'] (`tlp.text_self_affinity` of the queries' embeddings; TLP reads only that) -> [C', H, W]

    tlp    PEARL's text-aware label propagation (`lposs.core.tlp`) on the CLIP-normalised image; params: grid
    pamr   NACLIP's PAMR (`lposs.core.pamr`, 10 iterations at dilations 8 and 16); params: iterations, dilations

    scores = run_label_step(scores, regions, {"name": "region_mode"}, rule)
        scores [K, H, W] class scores at the original size, regions [H, W] mask-region ids, the background rule

    region_mode  CorrCLIP's map correction (`lposs.core.regions.region_mode`): after the labels are taken,
                 each mask region takes its commonest label
    sam_refine   Trident's SAM refinement (`lposs.models.sam_refine`, run by `lposs.segmentation`: it needs
                 SAM); params: coarse_thresh, minimal_area, sam_mask_coff, sam_iou_thresh, sam (the weights)

    canvas = run_window_step(window_scores, layout, size, crop, masks, owner, {"name": "lavg_vote"})
        window_scores [B, C', g, g] each window's patch scores (cosines), masks [M, H', W'] bool at the resized
        size, owner [C'] each query's class -> the merged canvas [C', H', W'], in place of `windows.merge_windows`

    lavg_vote    LaVG's per-window mask vote (`lposs.core.mask_vote`): each window's pixels take the mean scores
                 of the first mask covering them, before the windows are merged; params:
                 complement_to_background (VOC21's rule: the complement's pixels can only be background)

A label step returns scores in which a pixel whose label it changes gets that label's one-hot scores
(`relabel`), so `scoring.labels_from_scores` reads the corrected map.

Which release has which step, with its per-dataset values: `lposs.models.protocols.own_step`. The steps return
scores of the size they were given, so the background rule and the argmax apply after them as after the head.
TLP and PAMR run on the canvas that LPOSS+ refines (the windows' scores merged at the resized image size), so the
rows "head + own step" and "head + LPOSS+" start from the same scores; the releases resize the logits to the
original image first (PEARL pools them to about 80 x 80 for TLP either way). A window step runs where its
release runs it: on each window, before the merge.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .mask_vote import vote_windows
from .pamr import clip_normalise, pamr
from .regions import region_mode, resize_regions
from .scoring import labels_from_scores
from .tlp import tlp
from .windows import Window

LABEL_STEPS = ("region_mode", "sam_refine")  # steps on the label map, after the background rule
# sam_refine (Trident's) prompts SAM: it runs in lposs.segmentation through lposs.models.sam_refine
WINDOW_STEPS = {"lavg_vote": ("complement_to_background",)}  # steps on each window's scores: {name: its params}
OWN_STEPS = ("tlp", "pamr", *LABEL_STEPS, *WINDOW_STEPS)


def step_kind(step: dict[str, Any]) -> str:
    """Where step {"name": ...} runs: "window" (on each window's scores, in place of the merge), "label" (on the
    label map at the original size) or "canvas" (on the merged scores, `run_own_step`)."""
    name = step.get("name")
    if name not in OWN_STEPS:
        raise ValueError(f"unknown own step {name!r}; the steps are {', '.join(OWN_STEPS)}")
    return "window" if name in WINDOW_STEPS else "label" if name in LABEL_STEPS else "canvas"


def run_own_step(canvas: Tensor, image: Tensor, step: dict[str, Any], text_affinity: Tensor | None = None) -> Tensor:
    """Apply step {"name": one of OWN_STEPS, **its params} to canvas [C', H, W] with image [3, H, W] in [0, 1]."""
    name, params = step.get("name"), {key: value for key, value in step.items() if key != "name"}
    kind = step_kind(step)  # an unknown name stops here
    if kind == "label":
        raise ValueError(f"own step {name} runs on labels: run_label_step(scores, regions, step, rule)")
    if kind == "window":
        raise ValueError(f"own step {name} runs on each window's scores: run_window_step(window_scores, layout, "
                         "size, crop, masks, owner, step)")
    if tuple(image.shape[1:]) != tuple(canvas.shape[1:]):
        raise ValueError(f"own step {name}: image {tuple(image.shape)} and scores {tuple(canvas.shape)} differ in size")
    if name == "pamr":
        return pamr(image.to(canvas.dtype), canvas, **params)
    if text_affinity is None or text_affinity.shape != canvas.shape[:1]:
        raise ValueError(f"TLP needs the queries' text self-affinity [{canvas.shape[0]}], got "
                         f"{None if text_affinity is None else tuple(text_affinity.shape)}: features stored "
                         "before it was kept must be recomputed (re-run the features stage)")
    normalised = clip_normalise(image.to(canvas.dtype))[None]  # [1, 3, H, W]
    return tlp(canvas[None], normalised, self_affinity=text_affinity.to(canvas), **params)[0]  # [C', H, W]


def run_label_step(scores: Tensor, regions: Tensor, step: dict[str, Any], rule: dict[str, Any]) -> Tensor:
    """Apply CorrCLIP's label step ({"name": "region_mode"}) to class scores [K, H, W] with mask regions [H, W] (any size:
    resized to the scores' by nearest neighbour) under background `rule` -> scores [K, H, W]."""
    if step.get("name") != "region_mode":
        raise ValueError(f"{step.get('name')!r} is not a label step of lposs.core; here: region_mode")
    if tuple(regions.shape) != tuple(scores.shape[1:]):
        regions = resize_regions(regions, scores.shape[1:])
    labels = labels_from_scores(scores, rule)  # [H, W]
    return relabel(scores, labels, region_mode(labels, regions.to(labels.device)))


def relabel(scores: Tensor, labels: Tensor, corrected: Tensor) -> Tensor:
    """scores [K, H, W] whose labels were `labels` [H, W] -> scores whose labels are `corrected`: each pixel
    whose label changed gets its new label's one-hot scores, the others keep theirs."""
    one_hot = F.one_hot(corrected.to(scores.device), scores.shape[0]).permute(2, 0, 1).to(scores.dtype)  # [K, H, W]
    return torch.where((corrected.to(scores.device) != labels.to(scores.device))[None], one_hot, scores)


def run_window_step(window_scores: Tensor, layout: list[Window], size: tuple[int, int], crop: int, masks: Tensor,
                    owner: Tensor, step: dict[str, Any]) -> Tensor:
    """Apply a window step ({"name": "lavg_vote", **its params}) to each window's patch scores [B, C', g, g] with
    the image's masks [M, H', W'] (bool, at the resized size) and the queries' classes owner [C'], then merge the
    windows -> canvas [C', H', W']."""
    name, params = step.get("name"), {key: value for key, value in step.items() if key != "name"}
    if name not in WINDOW_STEPS:
        raise ValueError(f"{name!r} is not a window step of lposs.core; here: {', '.join(WINDOW_STEPS)}")
    unknown = set(params) - set(WINDOW_STEPS[name])
    if unknown:
        raise ValueError(f"own step {name} has no parameter {sorted(unknown)}; its parameters: "
                         f"{', '.join(WINDOW_STEPS[name])}")
    background = (owner != 0).to(window_scores.device) if params.get("complement_to_background") else None
    return vote_windows(window_scores, layout, size, crop, masks, background)
