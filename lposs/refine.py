"""LPOSS+: refine class scores at the pixel level by label propagation on the pixel graph."""

from __future__ import annotations

from torch import Tensor

from .graphs import PixelGraph
from .propagation import propagate


def refine_pixels(
    image: Tensor,
    scores: Tensor,
    r: int = 13,
    tau: float = 0.01,
    alpha: float = 0.95,
    maxiter: int = 10,
    tol: float = 1e-6,
) -> Tensor:
    """Propagate scores [C, H, W] over the r x r Lab-colour pixel graph of image [3, H, W] -> [C, H, W]."""
    if image.shape[1:] != scores.shape[1:]:
        raise ValueError(f"image {tuple(image.shape)} and scores {tuple(scores.shape)} differ in H, W")
    channels, height, width = scores.shape
    graph = PixelGraph(image.to(scores.dtype), r=r, tau=tau)
    Y = scores.permute(1, 2, 0).reshape(height * width, channels)  # [H*W, C]
    F = propagate(graph, Y, alpha=alpha, method="cg", maxiter=maxiter, tol=tol)
    return F.reshape(height, width, channels).permute(2, 0, 1)
