"""Mask-model regions inside LPOSS's graphs, beyond the releases: propagation that respects object regions.

A region map is an integer map [H, W] at the resized image size (the canvas LPOSS+ refines): each pixel's region
id, 0..R-1, from a class-agnostic mask model (SAM, SAM 2, or the demo's stand-in). Id 0 is whatever no mask
covers, counted as one more region, so a map of zeros means "no regions" and changes nothing.

    fractions = patch_region_fractions(regions, layout, grid, crop)   # [N, R] each patch's share of each region
    factor = region_factor(fractions, neighbours, beta)               # [N, k]: beta + (1 - beta) <f_i, f_j>
    voted = region_vote(scores, regions)                               # each region takes its mean scores
    labels = region_mode(labels, regions)                              # each region takes its commonest label
    smaller = resize_regions(regions, (h, w))                          # an id map at another size (nearest)
    code = encode_regions(regions); regions = decode_regions(code)     # run-length code, as a feature store keeps it

Overlapping masks (Panoptic Cut's, `lposs.models.panoptic_cut`: binary masks that may overlap, in the order the
model found them, the last one the complement) become a region map by priority to the lowest index:

    regions = masks_to_regions(masks)          # [M, H, W] bool -> [H, W]: 1 + the first mask covering a pixel
    smaller = resize_masks(masks, (h, w))      # nearest, as LaVG resizes them
    masks = partition_masks(regions)           # a region map as non-overlapping masks, id 0 last
    code = encode_masks(masks); masks = decode_masks(code)             # bit i of a run-length coded map = mask i

Patch graph: the kNN weights get a third factor S_r = beta + (1 - beta) <f_i, f_j> (`lposs.core.graphs.patch_graph`
`regions=`, `region_beta=`): 1 between two patches inside one region, beta between patches of different regions,
in between for patches that straddle a boundary. beta = 1 gives today's graph exactly (the factor is not applied).
Pixel graph: an edge whose two pixels lie in different regions is multiplied by beta (`PixelGraph(regions=,
region_beta=)`). Region voting: after propagation every region's pixels take the region's mean scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .windows import Window


def check_regions(regions: Tensor, height: int, width: int) -> None:
    """ValueError unless regions is an integer map [height, width] of ids >= 0."""
    if regions.dtype.is_floating_point or regions.dim() != 2 or tuple(regions.shape) != (height, width):
        raise ValueError(f"regions must be an integer map [{height}, {width}] (the resized image), got "
                         f"{regions.dtype} {tuple(regions.shape)}")
    if regions.numel() and int(regions.min()) < 0:
        raise ValueError("region ids must be >= 0 (0: pixels no mask covers)")


def patch_region_fractions(regions: Tensor, layout: list[Window], grid: int, crop: int) -> Tensor:
    """Region map [H, W] -> [N, R]: for each patch of each window (row-major, as the seeds), the share of its
    pixels in each region (rows sum to 1). N = windows x grid x grid; R = the largest id + 1. A window smaller
    than crop (an image side below it) is zero-padded as its pixels are (`windows.crop_windows`): its patches
    past the image have shares summing to less than 1."""
    count = int(regions.max()) + 1 if regions.numel() else 1
    one_hot = F.one_hot(regions.long(), count).permute(2, 0, 1).float()  # [R, H, W]
    patch = crop // grid
    blocks = [F.avg_pool2d(F.pad(one_hot[None, :, y1:y2, x1:x2], (0, crop - (x2 - x1), 0, crop - (y2 - y1))),
                           patch)[0] for y1, y2, x1, x2 in layout]  # [R, g, g] each
    return torch.stack(blocks).permute(0, 2, 3, 1).reshape(-1, count)  # [N, R]


def region_factor(fractions: Tensor, neighbours: Tensor, beta: float) -> Tensor:
    """fractions [N, R], kNN indices [N, k] -> S_r [N, k] = beta + (1 - beta) * <f_i, f_j>."""
    if not 0 < beta <= 1:
        raise ValueError(f"the region factor beta must lie in (0, 1], got {beta}")
    overlap = (fractions[:, None, :] * fractions[neighbours]).sum(dim=-1)  # [N, k]
    return beta + (1 - beta) * overlap


def region_vote(scores: Tensor, regions: Tensor) -> Tensor:
    """scores [C, H, W] -> [C, H, W]: every pixel takes the mean scores of its region. Id 0 (no mask) keeps
    its own scores: voting there would average whatever no mask covered."""
    check_regions(regions, *scores.shape[1:])
    flat, ids = scores.reshape(scores.shape[0], -1), regions.reshape(-1).long()  # [C, HW], [HW]
    count = int(ids.max()) + 1 if ids.numel() else 1
    sums = flat.new_zeros(flat.shape[0], count).index_add_(1, ids, flat)  # [C, R]
    sizes = torch.bincount(ids, minlength=count).clamp_min(1).to(flat.dtype)  # [R]
    voted = (sums / sizes)[:, ids]  # [C, HW]
    return torch.where(ids == 0, flat, voted).reshape(scores.shape)


def resize_regions(regions: Tensor, size: tuple[int, int]) -> Tensor:
    """An id map [H, W] (regions or labels) -> [h, w] int64 by nearest neighbour (F.interpolate's "nearest":
    row floor(i H / h)), through float64 so that every id survives exactly."""
    return F.interpolate(regions[None, None].to(torch.float64), size=tuple(size), mode="nearest")[0, 0].long()


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Binary masks [M, H, W] -> [M, h, w] bool by nearest neighbour (F.interpolate's "nearest" on float32, as
    LaVG's segmentor resizes Panoptic Cut's masks to the resized image, clip_segmentor.py:130)."""
    return F.interpolate(masks[None].float(), size=tuple(size), mode="nearest")[0] > 0


def region_mode(labels: Tensor, regions: Tensor) -> Tensor:
    """CorrCLIP's map correction (zdk258/CorrCLIP corrclip_segmentor.py:216-222): labels [H, W] -> [H, W], every
    region but the one of the SMALLEST id present takes its most frequent label (the smallest among ties, as
    torch.mode). The release skips the smallest id as "unsegmented": 0 when some pixel has no mask, else a real
    region, which then keeps its labels (reproduced)."""
    check_regions(regions, *labels.shape)
    ids = regions.reshape(-1).long()  # [HW]
    flat = labels.reshape(-1).long()
    present = torch.unique(ids)  # sorted
    if present.numel() < 2:
        return labels.clone()
    index = torch.searchsorted(present, ids)  # [HW] region ranks 0..R-1
    classes = int(flat.max()) + 1
    counts = torch.bincount(index * classes + flat, minlength=present.numel() * classes).view(-1, classes)  # [R, K]
    winners = counts.argmax(dim=1)  # [R] the first maximum: the smallest label among ties
    corrected = torch.where(index == 0, flat, winners[index])
    return corrected.view(labels.shape).to(labels.dtype)


def encode_regions(regions: Tensor) -> Tensor:
    """Region map [H, W] -> int32 [2 + 2 * runs]: H, W, then (id, length) of each run of equal ids in row-major
    order. Mask regions are piecewise constant, so a map of a few hundred kB takes a few kB (written as is by
    torch.save, the same bytes on every machine)."""
    height, width = regions.shape
    flat = regions.reshape(-1).to(torch.int32)  # [H * W]
    change = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    change[1:] = flat[1:] != flat[:-1]
    starts = change.nonzero().squeeze(1)  # [runs]
    lengths = torch.diff(starts, append=torch.tensor([flat.numel()], device=flat.device)).to(torch.int32)
    size = torch.tensor([height, width], dtype=torch.int32, device=flat.device)
    return torch.cat([size, torch.stack([flat[starts], lengths], dim=1).reshape(-1)]).cpu()


def decode_regions(code: Tensor) -> Tensor:
    """`encode_regions`' int32 code -> the region map [H, W] (int64)."""
    height, width = int(code[0]), int(code[1])
    if code.numel() % 2:
        raise ValueError(f"a region code of odd length {code.numel()}: damaged")
    pairs = code[2:].reshape(-1, 2).long()  # [runs, 2]: id, length
    if int(pairs[:, 1].sum()) != height * width:
        raise ValueError(f"a region code of {int(pairs[:, 1].sum())} pixels for a {height} x {width} map: damaged")
    return torch.repeat_interleave(pairs[:, 0], pairs[:, 1]).reshape(height, width)


MAX_MASKS = 31  # bits of an int32 code (`encode_masks`)


def masks_to_regions(masks: Tensor) -> Tensor:
    """Binary masks [M, H, W] (may overlap) -> region ids [H, W] int64: 1 + the index of the FIRST mask covering
    the pixel (the lowest index wins where masks overlap), 0 where none does. With Panoptic Cut's masks, whose
    last channel is the complement, every pixel is covered: ids 1..M, the complement M."""
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool [M, H, W], got {masks.dtype} {tuple(masks.shape)}")
    covered = masks.any(dim=0)  # [H, W]
    first = masks.to(torch.uint8).argmax(dim=0)  # [H, W]: the first maximum, so the lowest covering index
    return torch.where(covered, first.long() + 1, torch.zeros_like(first, dtype=torch.long))


def partition_masks(regions: Tensor) -> Tensor:
    """A region map [H, W] -> its regions as binary masks [R, H, W] bool: ids 1, 2, ... in increasing order, then
    id 0 (what no mask covers) last, as Panoptic Cut puts its complement. Empty channels for absent ids."""
    count = int(regions.max()) + 1 if regions.numel() else 1
    ids = torch.cat([torch.arange(1, count), torch.zeros(1, dtype=torch.long)]).to(regions.device)  # [R]
    return regions[None] == ids[:, None, None]


def encode_masks(masks: Tensor) -> Tensor:
    """Binary masks [M, H, W] (M <= 31, may overlap) -> int32 [1 + 2 + 2 * runs]: M, then `encode_regions` of the
    map whose bit i is mask i. Exact: every mask, empty ones included, comes back from `decode_masks`."""
    if masks.dim() != 3 or masks.dtype != torch.bool or not 0 < masks.shape[0] <= MAX_MASKS:
        raise ValueError(f"masks must be bool [M, H, W] with 1 <= M <= {MAX_MASKS}, got {masks.dtype} "
                         f"{tuple(masks.shape)}")
    weights = (1 << torch.arange(masks.shape[0], dtype=torch.int64)).to(masks.device)  # [M]
    bits = (masks.long() * weights[:, None, None]).sum(dim=0)  # [H, W]
    return torch.cat([torch.tensor([masks.shape[0]], dtype=torch.int32), encode_regions(bits)])


def decode_masks(code: Tensor) -> Tensor:
    """`encode_masks`' int32 code -> the masks [M, H, W] bool."""
    count = int(code[0])
    if not 0 < count <= MAX_MASKS:
        raise ValueError(f"a mask code of {count} masks: damaged")
    bits = decode_regions(code[1:])  # [H, W]
    if bits.numel() and int(bits.max()) >= 1 << count:
        raise ValueError(f"a mask code of {count} masks holds higher bits: damaged")
    return (bits[None] >> torch.arange(count)[:, None, None]) & 1 == 1
