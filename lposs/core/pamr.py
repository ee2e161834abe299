"""PAMR, pixel-adaptive mask refinement (Araslanov and Roth, CVPR 2020), as NACLIP applies it.

NACLIP (docs/field.md section 6) refines its upsampled cosine logits with the released PAMR module
(github.com/visinf/1-stage-wseg, models/mods/pamr.py; copied as NACLIP's pamr.py) on the CLIP-normalised
image, 10 iterations at dilations (8, 16). Written here with plain torch ops, matching the released code:

- neighbours: for each dilation d, the 8 pixels at (dy, dx) in {-d, 0, d}^2 minus (0, 0), with
  replicate padding (a neighbour outside the image is the nearest border pixel): P = 8 * |dilations|.
- local spread: per colour channel, the unbiased std (torch.std) of the 9 values of each dilated 3x3
  window, centre included, over all dilations together (9 * |dilations| values, the centre counted once per
  dilation), as the released `LocalStDev` does.
- affinity of pixel i to neighbour j: mean over the colour channels of -|x_i - x_j| / (1e-8 + 0.1 * std_i),
  softmaxed over the P neighbours of i.
- each iteration replaces the scores by the affinity-weighted sum of the neighbours' scores (the centre
  itself is not among them).

The released code works on the colour channels in BGR order (mmseg's preprocessor); the affinity is a mean
over channels, so the order does not matter.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .color import CLIP_MEAN, CLIP_STD
from .refiners import PAMR_DILATIONS, PAMR_ITERATIONS

# the released kernel order: row by row over the 3x3 window, the centre left out
_UNIT_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def clip_normalise(image: Tensor) -> Tensor:
    """Image [3, H, W] in [0, 1] -> (image - CLIP mean) / CLIP std, per channel [3, H, W]."""
    # made on the host and sent without a stream sync (torch waits for the GPU after a blocking copy)
    mean = torch.tensor(CLIP_MEAN, dtype=image.dtype).to(image.device, non_blocking=True)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=image.dtype).to(image.device, non_blocking=True)[:, None, None]
    return (image - mean) / std


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The P = 8 * |dilations| offsets (dy, dx) of PAMR, dilation by dilation in the released order."""
    if not dilations or any(int(d) != d or d < 1 for d in dilations):
        raise ValueError(f"PAMR dilations must be positive integers, got {tuple(dilations)}")
    return [(dy * d, dx * d) for d in dilations for dy, dx in _UNIT_OFFSETS]


def shifted(x: Tensor, offsets: Sequence[tuple[int, int]]) -> Tensor:
    """x [K, H, W] -> [K, P, H, W]: entry [:, p, y, x] is x at (y + dy_p, x + dx_p), clamped to the image."""
    height, width = x.shape[1:]
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x[None], [reach] * 4, mode="replicate")[0]  # [K, H + 2r, W + 2r]
    views = [padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width] for dy, dx in offsets]
    return torch.stack(views, dim=1)


def pamr_affinity(image: Tensor, dilations: Sequence[int] = PAMR_DILATIONS) -> Tensor:
    """Affinities [P, H, W] of each pixel to its P neighbours (softmax over P) for a normalised image [3, H, W]."""
    offsets = neighbour_offsets(dilations)
    window = [(0, 0)] + _UNIT_OFFSETS  # the 3x3 window with its centre, for the local std
    windows = shifted(image, [(dy * d, dx * d) for d in dilations for dy, dx in window])  # [3, 9|D|, H, W]
    spread = windows.std(dim=1)  # [3, H, W], unbiased, over all dilations together
    distance = (image[:, None] - shifted(image, offsets)).abs()  # [3, P, H, W]
    logits = (-distance / (1e-8 + 0.1 * spread[:, None])).mean(dim=0)  # [P, H, W]
    return logits.softmax(dim=0)


def pamr(image: Tensor, scores: Tensor, iterations: int = PAMR_ITERATIONS,
         dilations: Sequence[int] = PAMR_DILATIONS) -> Tensor:
    """PAMR of scores [C, H, W] on image [3, H, W] in [0, 1] (CLIP-normalised inside) -> [C, H, W].

    scores: what NACLIP feeds it, the upsampled cosine logits; any scores work (the update is linear, a
    convex combination of neighbours, so it commutes with adding a constant or a positive scaling).
    """
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"PAMR iterations must be a non-negative integer, got {iterations}")
    offsets = neighbour_offsets(dilations)
    affinity = pamr_affinity(clip_normalise(image.to(scores.dtype)), dilations)  # [P, H, W]
    for _ in range(iterations):
        scores = neighbour_mean(scores, affinity, offsets)
    return scores


def neighbour_mean(scores: Tensor, affinity: Tensor, offsets: Sequence[tuple[int, int]]) -> Tensor:
    """sum_p affinity[p] * scores shifted by offsets[p]: [C, H, W] -> [C, H, W], one offset at a time
    (memory C*H*W, not the C*P*H*W of stacking all neighbours, which many classes would not fit)."""
    height, width = scores.shape[1:]
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(scores[None], [reach] * 4, mode="replicate")[0]  # [C, H + 2r, W + 2r]
    out = torch.zeros_like(scores)
    for p, (dy, dx) in enumerate(offsets):
        out.addcmul_(padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width], affinity[p])
    return out
