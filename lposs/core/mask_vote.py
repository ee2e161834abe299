"""LaVG's label step (Kang and Cho, ECCV 2024; dahyun-kang/lavg@2db88e5 clip_segmentor.py:62-97): every mask of
the image votes its mean scores, window by window, BEFORE the windows are merged.

    canvas = vote_windows(window_scores, layout, (H', W'), crop, masks, background_queries)
        window_scores [B, C', g, g] each window's patch cosines (the stored seeds), layout its windows,
        masks [M, H', W'] bool at the resized image (Panoptic Cut's, the complement last) -> [C', H', W']

Per window, as released:
  1. logits = the window's cosines resized bilinearly (align_corners False) to its pixels; linear, so the same
     as resizing the unit features first, as the release does;
  2. for i = M-1, ..., 0 (the complement first, mask 0 last), masks empty in the window skipped: every pixel of
     mask i in the window takes the mean of the logits over ALL pixels of mask i in the window. The means are
     taken from the logits of step 1 (the release averages the features, never the written logits), over each
     mask's full extent, so where masks overlap the lowest index wins but the others still average over the
     overlap; a partition of the pixels (`regions.region_vote`) would average over less. The means are not
     renormalised (a mean of unit vectors is shorter: smaller logits after the logit scale);
  3. VOC21 only (`background_queries`, the release's `'voc21' in name_path`): on the complement's pixels every
     query of a class other than the background (index >= the first query of class 1) is set to the window's
     smallest logit after step 2, so those pixels can only be background;
then the windows are averaged where they overlap (`windows.merge_windows`' rule) and scored as the head's scores.
A window smaller than the crop (an image side below it) is padded as `windows.crop_windows` pads it: its logits
are resized to the crop and cut to the window, as `merge_windows` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .regions import masks_to_regions
from .windows import Window, window_coverage


def vote_window(logits: Tensor, masks: Tensor, background_queries: Tensor | None = None) -> Tensor:
    """One window: logits [C', h, w], masks [M, h, w] bool (the complement last) -> voted logits [C', h, w].

    background_queries [C'] bool: the queries to push to the window's minimum on the complement (VOC21's rule:
    every query of a class other than the background), or None."""
    if masks.dim() != 3 or masks.dtype != torch.bool or tuple(masks.shape[1:]) != tuple(logits.shape[1:]):
        raise ValueError(f"masks must be bool [M, {logits.shape[1]}, {logits.shape[2]}], got {masks.dtype} "
                         f"{tuple(masks.shape)}")
    flat, inside = logits.reshape(logits.shape[0], -1), masks.reshape(masks.shape[0], -1)  # [C', hw], [M, hw]
    sizes = inside.sum(dim=1)  # [M]; an empty mask casts no vote
    means = flat @ inside.to(flat.dtype).T / sizes.clamp_min(1).to(flat.dtype)  # [C', M], each over its full extent
    region = masks_to_regions(masks).reshape(-1)  # [hw]: 1 + the lowest covering index (written last), 0 = none
    voted = torch.where(region > 0, means[:, (region - 1).clamp_min(0)], flat)  # uncovered pixels keep theirs
    if background_queries is not None:
        low = voted.min()
        push = background_queries.to(voted.device)[:, None] & inside[-1][None]  # [C', hw]
        voted = torch.where(push, low, voted)
    return voted.reshape(logits.shape)


def vote_windows(window_scores: Tensor, layout: list[Window], size: tuple[int, int], crop: int, masks: Tensor,
                 background_queries: Tensor | None = None) -> Tensor:
    """Each window's patch scores [B, C', g, g] voted by the masks [M, H', W'] (bool, at the resized size `size`)
    inside it, then merged over the windows -> canvas [C', H', W']."""
    if tuple(masks.shape[1:]) != tuple(size):
        raise ValueError(f"masks {tuple(masks.shape)} must be at the resized image's size {tuple(size)}")
    up = F.interpolate(window_scores, size=(crop, crop), mode="bilinear", align_corners=False)  # [B, C', crop, crop]
    canvas = window_scores.new_zeros(window_scores.shape[1], *size)
    masks = masks.to(window_scores.device)
    for block, (y1, y2, x1, x2) in zip(up, layout):
        canvas[:, y1:y2, x1:x2].add_(vote_window(block[:, : y2 - y1, : x2 - x1], masks[:, y1:y2, x1:x2],
                                                 background_queries))
    return canvas.div_(window_coverage(layout, *size).to(canvas.device, canvas.dtype))
