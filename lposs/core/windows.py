"""The resize rule, the sliding-window layout, and the window -> canvas merge with overlap averaging."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .defaults import CROP, LONG_SIDE, SHORT_SIDE, STRIDE

Window = tuple[int, int, int, int]  # (y1, y2, x1, x2) in resized-image pixels


def resize_scale(height: int, width: int, short_side: int = SHORT_SIDE, long_side: int = LONG_SIDE) -> float:
    """s = min(short_side / short, long_side / long): VOC 375x500 -> 448x597, Cityscapes 1024x2048 -> 448x896."""
    return min(short_side / min(height, width), long_side / max(height, width))


def resized_size(height: int, width: int, short_side: int = SHORT_SIDE, long_side: int = LONG_SIDE) -> tuple[int, int]:
    s = resize_scale(height, width, short_side, long_side)
    return int(height * s + 0.5), int(width * s + 0.5)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [C, H, W] (align_corners False, no antialiasing) -> [C, *size]."""
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def _starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, length)
        spans.append((max(end - crop, 0), end))  # the last window is pushed back inside
    return spans


def window_layout(height: int, width: int, crop: int = CROP, stride: int = STRIDE) -> list[Window]:
    """Sliding windows over a resized image, row by row: 448x597 gives 3x5 = 15, 448x896 gives 3x7 = 21."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return [(y1, y2, x1, x2) for y1, y2 in _starts(height, crop, stride) for x1, x2 in _starts(width, crop, stride)]


def crop_windows(image: Tensor, layout: list[Window], crop: int = CROP) -> Tensor:
    """[C, H, W] -> [B, C, crop, crop]; a window smaller than crop (tiny image) is zero-padded right/bottom."""
    out = []
    for y1, y2, x1, x2 in layout:
        patch = image[:, y1:y2, x1:x2]
        out.append(F.pad(patch, (0, crop - (x2 - x1), 0, crop - (y2 - y1))))
    return torch.stack(out)


def patch_centers(layout: list[Window], grid: int = 14, patch: int = 16) -> Tensor:
    """Centres (y, x) in resized-image pixels of every patch of every window, row-major: [B * grid * grid, 2]."""
    steps = torch.arange(grid, dtype=torch.float32) * patch + patch / 2
    yy, xx = torch.meshgrid(steps, steps, indexing="ij")
    local = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)  # [grid*grid, 2]
    origins = torch.tensor([[y1, x1] for y1, _, x1, _ in layout], dtype=torch.float32)  # [B, 2]
    return (origins[:, None, :] + local[None]).reshape(-1, 2)


def merge_windows(window_scores: Tensor, layout: list[Window], height: int, width: int, crop: int = CROP) -> Tensor:
    """Upsample each window's [C, g, g] block to the crop size, sum into a canvas, divide by coverage.

    window_scores [B, C, g, g] -> canvas [C, height, width].
    """
    up = F.interpolate(window_scores, size=(crop, crop), mode="bilinear", align_corners=False)  # [B, C, crop, crop]
    canvas = window_scores.new_zeros(window_scores.shape[1], height, width)
    for block, (y1, y2, x1, x2) in zip(up, layout):
        canvas[:, y1:y2, x1:x2].add_(block[:, : y2 - y1, : x2 - x1])  # one kernel (`+=` on a slice is two)
    return canvas.div_(window_coverage(layout, height, width).to(canvas.device, canvas.dtype, non_blocking=True))


def window_coverage(layout: list[Window], height: int, width: int) -> Tensor:
    """How many windows cover each pixel, at least 1 -> [1, height, width] (on the host: no data involved)."""
    count = torch.zeros(1, height, width)
    for y1, y2, x1, x2 in layout:
        count[:, y1:y2, x1:x2] += 1
    return count.clamp_(min=1)
