"""Outlier patches of CLIP's late blocks, found and repaired (SC-CLIP, SFP).

    idx = lof_outliers(patches, neighbours=30, contamination=0.05)     # SC-CLIP: local outlier factor
    idx = salient_outliers(attention, cls_gain=1.5, count=10)          # SFP: CLS attends to it more than it does
    patches = fix_outliers(patches, grid, idx)                         # each takes its neighbours' mean

Outlier indices are row-major over the patch grid, (row, col) = (i // gw, i % gw). The releases divide by the
number of ROWS instead (SC-CLIP clip/model.py:275 @0417ba9, SFP SFP_ICCV/clip/model.py:283 @2804f5b): the same on
the square 224 windows their protocols use, a misplaced patch or an index error on any other grid. Not copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_ROWS_PER_CHUNK = 64  # squared distances computed this many rows at a time (memory N x 64 x W, not N x N x W)


def squared_distances(x: Tensor) -> Tensor:
    """[N, W] -> [N, N] squared Euclidean distances, as SC-CLIP computes them (norm of the differences, squared)."""
    chunks = [torch.norm(x[i : i + _ROWS_PER_CHUNK, None] - x[None], dim=2, p=2) ** 2
              for i in range(0, x.shape[0], _ROWS_PER_CHUNK)]
    return torch.cat(chunks)


def lof_outliers(x: Tensor, neighbours: int = 30, contamination: float = 0.05) -> Tensor:
    """SC-CLIP's local outlier factor (clip/model.py:208-227 @0417ba9) of the rows of x [N, W] -> indices [n].

    With the k = `neighbours` nearest rows (self dropped), the reach distance of every neighbour is the row's own
    k-th distance, LRD = k / that, LOF = mean over neighbours of LRD_o / LRD_p; outliers: LOF > its
    (1 - contamination) quantile (10 of 196 patches by default).
    """
    knn_dist, knn_idx = torch.topk(squared_distances(x), k=neighbours + 1, largest=False)
    knn_dist, knn_idx = knn_dist[:, 1:], knn_idx[:, 1:]  # [N, k], self dropped
    reach = torch.maximum(knn_dist, knn_dist[:, -1:])  # [N, k]: the row's own k-distance
    lrd = neighbours / torch.nan_to_num(reach.mean(dim=1), nan=1e-6)  # [N]
    lof = (lrd[knn_idx] / lrd[:, None]).mean(dim=1)  # [N]
    return torch.where(lof > torch.quantile(lof.float(), 1 - contamination))[0]


def salient_outliers(attention: Tensor, cls_gain: float = 1.5, count: int = 10) -> Tensor:
    """SFP's SOM (SFP_ICCV/clip/model.py:264-287 @2804f5b): attention [heads, 1 + N, 1 + N] -> indices [<= count].

    Salient patches: the CLS row's weight on them (x cls_gain, then averaged over heads) exceeds their
    self-attention; the `count` most salient of them.
    """
    cls_to_patch = (attention[:, 0, 1:] * cls_gain).mean(dim=0)  # [N]
    self_attention = attention[:, 1:, 1:].diagonal(dim1=-2, dim2=-1).mean(dim=0)  # [N]
    salient = torch.where(cls_to_patch > self_attention)[0]
    order = torch.sort(cls_to_patch[salient], descending=True).indices
    return salient[order[:count]]


def fix_outliers(x: Tensor, grid: tuple[int, int], outliers: Tensor) -> Tensor:
    """Patch rows x [N, W]: each outlier row -> the mean of its non-outlier 8-neighbours inside the grid.

    All at once from the original values; an outlier without such a neighbour keeps its value
    (SC-CLIP clip/model.py:348-373 @0417ba9, SFP SFP_ICCV/clip/model.py:416-441 @2804f5b).
    """
    if outliers.numel() == 0:
        return x
    (gh, gw), width = grid, x.shape[1]
    keep = torch.ones(gh * gw, dtype=x.dtype, device=x.device)
    keep[outliers] = 0
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 0
    fmap = (x * keep[:, None]).T.reshape(1, width, gh, gw)
    sums = F.conv2d(F.pad(fmap, (1, 1, 1, 1)), kernel.expand(width, 1, 3, 3), groups=width)  # [1, W, gh, gw]
    counts = F.conv2d(F.pad(keep.reshape(1, 1, gh, gw), (1, 1, 1, 1)), kernel[None, None])  # [1, 1, gh, gw]
    means = (sums / counts.clamp_min(1)).reshape(width, -1).T  # [N, W]
    update = (1 - keep) * (counts.flatten() > 0).to(x.dtype)  # [N]: outliers with a neighbour to take from
    return x * (1 - update[:, None]) + means * update[:, None]
