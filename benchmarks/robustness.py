"""Coarse score maps as a head would deliver them: the transforms of the refinement robustness protocol.

The refinement benchmark (benchmarks/refine.py) builds coarse scores from the ground truth averaged over
16x16 patches; a real head delivers them shifted, scaled, noisy or as probabilities. `coarse_map` applies
one named transform of `TRANSFORMS` (issue 13):

- "clean": the patch fractions upsampled bilinearly (the protocol of docs/method.md section 11);
- "affine": 0.1 * s - 0.5 (a positive scale and an offset that makes every score negative);
- "noiseX": per-pixel Gaussian noise N(0, X^2) added to the upsampled fractions;
- "smoothX": low-frequency noise: N(0, X^2) per class on a grid of nodes every 64 pixels, bilinear between;
- "softmaxT": cosine-like scores 0.2 + 0.1 * s (a pure class 0.1 above an absent one, as CLIP cosines
  are spread), softmaxed over the classes at logit scale T (40 and 100: the field's heads);
- "patchesX": a fraction X of the 16x16 patches (exactly round(X * patches)) replaced by the one-hot of a
  class drawn uniformly among the classes other than the patch's majority, before upsampling.

Every random draw comes from a generator seeded by the transform's name and the image's index
(`transform_seed`), so runs repeat and resume exactly.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import Tensor

TRANSFORMS: dict[str, tuple[str, float]] = {
    "clean": ("clean", 0.0),
    "affine": ("affine", 0.0),
    "noise0.01": ("noise", 0.01),
    "noise0.03": ("noise", 0.03),
    "noise0.1": ("noise", 0.1),
    "smooth0.2": ("smooth", 0.2),
    "softmax40": ("softmax", 40.0),
    "softmax100": ("softmax", 100.0),
    "patches0.1": ("patches", 0.1),
}
AFFINE_SCALE, AFFINE_OFFSET = 0.1, -0.5
COSINE_BASE, COSINE_SPREAD = 0.2, 0.1
SMOOTH_CELL = 64  # pixels between the nodes of the low-frequency noise


def transform_seed(name: str, index: int) -> int:
    """A stable seed for transform `name` on image `index` (the same in every run and process)."""
    return zlib.crc32(f"{name}:{index}".encode())


def coarse_map(pooled: Tensor, size: tuple[int, int], name: str, generator: torch.Generator) -> Tensor:
    """Patch fractions [C, gh, gw] -> the coarse scores [C, h, w] of transform `name` (see `TRANSFORMS`)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
    kind, value = TRANSFORMS[name]
    if kind == "patches":
        pooled = patch_label_noise(pooled, value, generator)
    scores = upsample(pooled, size)  # [C, h, w]
    if kind == "affine":
        return affine(scores, AFFINE_SCALE, AFFINE_OFFSET)
    if kind == "noise":
        return gaussian_noise(scores, value, generator)
    if kind == "smooth":
        return smooth_noise(scores, value, generator)
    if kind == "softmax":
        return cosine_softmax(scores, value)
    return scores


def upsample(pooled: Tensor, size: tuple[int, int]) -> Tensor:
    """[C, gh, gw] -> [C, h, w], bilinear with align_corners False (the protocol's upsampling)."""
    return F.interpolate(pooled[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def affine(scores: Tensor, scale: float, offset: float) -> Tensor:
    """scale * scores + offset."""
    return scale * scores + offset


def gaussian_noise(scores: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """scores + independent N(0, std^2) per pixel and class."""
    noise = torch.randn(scores.shape, generator=generator, dtype=scores.dtype)
    return scores + std * noise.to(scores.device)


def smooth_noise(scores: Tensor, std: float, generator: torch.Generator, cell: int = SMOOTH_CELL) -> Tensor:
    """scores [C, h, w] + per-class N(0, std^2) drawn on nodes every `cell` pixels, bilinear between."""
    channels, height, width = scores.shape
    nodes = (height - 1) // cell + 2, (width - 1) // cell + 2  # covers the image with a node at each end
    field = std * torch.randn(channels, *nodes, generator=generator, dtype=scores.dtype)  # [C, ny, nx]
    field = F.interpolate(field[None], size=((nodes[0] - 1) * cell + 1, (nodes[1] - 1) * cell + 1),
                          mode="bilinear", align_corners=True)[0]  # node k at pixel k * cell
    return scores + field[:, :height, :width].to(scores.device)


def cosine_softmax(scores: Tensor, logit_scale: float) -> Tensor:
    """softmax over classes of logit_scale * (0.2 + 0.1 * scores): probabilities as a CLIP head gives them."""
    return (logit_scale * (COSINE_BASE + COSINE_SPREAD * scores)).softmax(dim=0)


def patch_label_noise(pooled: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Patch fractions [C, gh, gw] with round(fraction * gh * gw) patches, drawn at random, replaced by the
    one-hot of a random class other than their majority class."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"the fraction of patches to relabel must be in [0, 1], got {fraction}")
    channels = pooled.shape[0]
    if channels < 2:
        raise ValueError("patch label noise needs at least 2 classes to give a wrong one")
    flat = pooled.reshape(channels, -1).clone()  # [C, gh*gw]
    count = round(fraction * flat.shape[1])
    chosen = torch.randperm(flat.shape[1], generator=generator)[:count].to(pooled.device)
    majority = flat[:, chosen].argmax(0)  # [count]
    shift = torch.randint(1, channels, (count,), generator=generator).to(pooled.device)
    wrong = (majority + shift) % channels  # uniform over the other C - 1 classes
    flat[:, chosen] = F.one_hot(wrong, channels).T.to(flat.dtype)
    return flat.reshape(pooled.shape)
