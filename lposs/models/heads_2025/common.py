"""What the 2025 heads share: one window's trace through CLIP, and the patch-similarity operators of SC-CLIP and SFP.

Notation (S an N x N patch similarity, f patch rows [N, W]):
    cosine(f)       F F^T of the L2-normalised rows
    threshold(S, t) S with entries < t set to 0
    aggregate(S, f) (S / (rowsum S + 1e-6)) f
    proxy_softmax(S) row softmax of 3 (S - mean S), entries < 0 set to -inf (mean over the window's N x N)
SC-CLIP clip/model.py:280-297, 318-346 @0417ba9; SFP SFP_ICCV/clip/model.py:303-316, 358-400 @2804f5b.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class WindowTrace:
    """One window through CLIP's first L-1 blocks (no batch dimension)."""

    hidden: list[Tensor]  # [x_0, ..., x_{L-1}], x_l = output of block l, each [1 + N, W]; x_{L-1} enters the last
    image: Tensor  # the CLIP-normalised window [3, H, W]
    grid: tuple[int, int]  # (gh, gw), N = gh * gw
    proxy: Tensor | None = None  # a vision model's features [h', w', Dv] (CASS), else None


def last_block(visual: nn.Module) -> nn.Module:
    return visual.transformer.resblocks[-1]


def cosine(f: Tensor) -> Tensor:
    """[N, W] -> [N, N] cosine similarities (rows divided by their norms, as the releases do)."""
    f = f / f.norm(dim=-1, keepdim=True)
    return f @ f.T


def threshold(similarity: Tensor, value: float) -> Tensor:
    return similarity.masked_fill(similarity < value, 0.0)


def aggregate(similarity: Tensor, f: Tensor) -> Tensor:
    """Each row of f [N, W] replaced by the similarity-weighted mean of all rows (weights normalised, + 1e-6)."""
    return (similarity / (similarity.sum(dim=-1, keepdim=True) + 1e-6)) @ f


def proxy_softmax(similarity: Tensor, gamma: float = 3.0) -> Tensor:
    """ProxyCLIP-style attention from a similarity [N, N]: softmax(gamma (S - mean S)), negatives -> -inf."""
    logits = (similarity - similarity.mean()) * gamma
    return torch.softmax(logits.masked_fill(logits < 0, float("-inf")), dim=-1)
