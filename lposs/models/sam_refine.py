"""Trident's SAM refinement (`--sam_refine`): its label map's connected regions prompt SAM, whose masks redraw them.

    labels, probs = sam_refine(predictor, image_hw, labels, probs, step)
        predictor: a segment-anything SamPredictor with the image set; labels [H, W] after the background rule,
        probs [K, H, W] its class probabilities (softmax, background synonyms pooled) -> the refined pair

As YuHengsss/Trident@a93b346 `seg_utils/utils.py:28-197` computes it, with its constants (`trident.py:33-36`,
`configs/base_config.py`, per dataset `coarse_thresh` in `configs/cfg_*.py`):
1. labels and probabilities halved (nearest / bilinear); a pixel whose top probability is below coarse_thresh
   goes to an extra "uncertain" class, which is never refined;
2. per class (background included) whose top probability reaches coarse_thresh: its 8-connected regions of at
   least minimal_area (225) pixels of the halved map; each gives SAM a box (the region's extent), a point (its
   most probable pixel) and, shared by the class, a mask prompt (the class's probabilities on SAM's 256 grid,
   times sam_mask_coff 0.005 where above coarse_thresh, else 0, passed unbatched: SAM's LayerNorm2d then
   normalises it over rows, a quirk kept); one mask per prompt (`multimask_output=False`);
3. masks whose predicted IoU exceeds sam_iou_thresh (0.8) are kept: a class's refined probability is, inside
   the union of its masks, the max over them of sigmoid(SAM's logit) x its own probability, else 0; each pixel
   takes the class of the largest; pixels no kept mask covers keep their label;
4. regions whose masks failed keep the coarse probabilities where those are larger (the release's last
   relabelling there compares a max against a larger one and never fires: kept as released).
Connected regions: scipy.ndimage.label with 8-connectivity, the labelling skimage.measure.label gives.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.regions import resize_regions

STEP_DEFAULTS: dict[str, Any] = {"coarse_thresh": 0.2, "minimal_area": 225, "sam_mask_coff": 0.005,
                                 "sam_iou_thresh": 0.8}
DOWN = 2  # the release halves the maps before looking for regions


def class_regions(onehot: np.ndarray, probs: Tensor, classes: int, coarse: float, minimal_area: int):
    """Step 2's regions on the halved maps: {class: (masks [R, h, w] bool, boxes [R, 4] xyxy, points [R, 2] xy)}."""
    from scipy import ndimage
    from torchvision.ops import masks_to_boxes

    found = {}
    for c in range(classes):
        if probs[c].max() < coarse:
            continue
        labelled, count = ndimage.label(onehot[c], structure=np.ones((3, 3)))
        masks = [torch.from_numpy(labelled == r) for r in range(1, count + 1)]
        masks = [m for m in masks if int(m.sum()) >= minimal_area]
        if not masks:
            continue
        stack = torch.stack(masks)  # [R, h, w]
        peaks = [int(torch.argmax(probs[c] * m)) for m in stack]  # flat index of each region's most probable pixel
        points = torch.tensor([[p % probs.shape[2], p // probs.shape[2]] for p in peaks], dtype=torch.float32)
        found[c] = (stack, masks_to_boxes(stack).float(), points)
    return found


def prompt_class(predictor: Any, prob: Tensor, boxes: Tensor, points: Tensor, down_hw: tuple[int, int],
                 image_hw: tuple[int, int], step: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """SAM on one class's regions -> (low-res logits [R, 1, 256, 256], predicted IoU [R])."""
    height, width = predictor.transform.get_preprocess_shape(image_hw[0], image_hw[1], 256)
    mask = F.interpolate(prob[None, None], size=(height, width), mode="bilinear", align_corners=False)[0]
    mask = F.pad(mask, (0, 256 - width, 0, 256 - height))  # [1, 256, 256]
    mask = torch.where(mask > step["coarse_thresh"], step["sam_mask_coff"] * mask, torch.zeros_like(mask))
    device = predictor.device
    box = predictor.transform.apply_boxes_torch(boxes, down_hw).to(device)
    point = predictor.transform.apply_coords_torch(points, down_hw)[:, None].to(device)  # [R, 1, 2]
    # the mask prompt goes in as [1, 256, 256], unbatched, as released: SAM's LayerNorm2d then normalises its
    # downscaled embedding over rows instead of channels (a 4-D [1, 1, 256, 256] gives other masks)
    _, scores, logits = predictor.predict_torch(point_coords=point, point_labels=torch.ones(len(point), 1, device=device),
                                                boxes=box, mask_input=mask.to(device), multimask_output=False)
    return logits.float().cpu(), scores[:, 0].float().cpu()


def sam_refine(predictor: Any, image_hw: tuple[int, int], labels: Tensor, probs: Tensor,
               step: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """labels [H, W], probs [K, H, W] at the image's size -> (refined labels [H, W], refined probabilities)."""
    step = {**STEP_DEFAULTS, **{k: v for k, v in step.items() if k in STEP_DEFAULTS}}
    classes, coarse = probs.shape[0], float(step["coarse_thresh"])
    down_hw = (probs.shape[1] // DOWN, probs.shape[2] // DOWN)
    labels_down = resize_regions(labels, down_hw)
    probs_down = F.interpolate(probs[None].float(), size=down_hw, mode="bilinear", align_corners=False)[0]
    if coarse > 0:  # the uncertain pixels form class K, never refined
        labels_down[probs_down.max(0).values < coarse] = classes
    onehot = F.one_hot(labels_down, classes + (coarse > 0)).permute(2, 0, 1).numpy().astype(bool)
    regions = class_regions(onehot, probs_down, classes, coarse, int(step["minimal_area"]))
    kept, failed = {}, []
    for c, (masks, boxes, points) in regions.items():
        logits, iou = prompt_class(predictor, probs_down[c], boxes, points, down_hw, image_hw, step)
        valid = iou > step["sam_iou_thresh"]
        failed += list(masks[~valid])
        if valid.any():
            kept[c] = logits[valid]
    if not kept:
        return labels.clone(), probs.clone()
    refined = torch.zeros_like(probs)  # [K, H, W]
    for c, logits in kept.items():
        full = predictor.model.postprocess_masks(logits.to(predictor.device), predictor.input_size,
                                                 predictor.original_size).float().cpu()  # [R, 1, H_s, W_s]
        if tuple(full.shape[-2:]) != tuple(probs.shape[1:]):
            full = F.interpolate(full, size=probs.shape[1:], mode="bilinear", align_corners=False)
        inside = (full[:, 0] > predictor.model.mask_threshold).any(dim=0)  # [H, W]
        refined[c] = (full[:, 0].sigmoid() * probs[c]).max(dim=0).values * inside
    new_labels = torch.where(refined.sum(dim=0) == 0, labels, refined.argmax(dim=0))
    if failed:  # step 4
        area = F.interpolate(torch.stack(failed)[None].float(), size=probs.shape[1:], mode="nearest")[0].any(dim=0)
        coarse_there = probs * area
        refined = torch.where(coarse_there > refined, coarse_there, refined)
        new_labels = torch.where(coarse_there.max(0).values > refined.max(0).values, labels, new_labels)
    return new_labels, refined


@lru_cache(maxsize=2)
def sam_predictor(weights: str | None = None, device: str = "cpu") -> Any:
    """A SamPredictor of SAM ViT-B, built once per weights ("random": seeded random weights; None: torch hub's
    cached sam_vit_b_01ec64.pth, downloaded when online; else a local file)."""
    from segment_anything import SamPredictor

    from .sam_masks import build_sam_vit_b

    return SamPredictor(build_sam_vit_b(weights)[0].to(device).eval())


def refine_with_sam(image: Tensor, labels: Tensor, probs: Tensor, step: dict[str, Any],
                    predictor: Any = None) -> Tensor:
    """The own step "sam_refine" on one image: image [3, h, w] in [0, 1] (any size: SAM sees it with its sides
    rounded up to multiples of 16, as Trident's features do), labels [H, W], probs [K, H, W] -> labels [H, W].
    predictor: a SamPredictor to use (tests); else `sam_predictor(step["sam"])`."""
    from .sam_attention import rounded_image

    predictor = predictor or sam_predictor(step.get("sam"))
    with torch.no_grad():
        predictor.set_image(rounded_image(image))
        return sam_refine(predictor, tuple(labels.shape), labels, probs, step)[0]
