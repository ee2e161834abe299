"""LPOSS+: refine class scores at the pixel level by label propagation on the pixel graph.

`refine_pixels(image, scores, refiner="reference")` runs one of the named settings in `REFINERS`;
keyword arguments override single settings. "reference" is the released code's refiner (spec section 5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .graphs import PixelGraph
from .propagation import propagate

REFINERS: dict[str, dict[str, Any]] = {
    "reference": {"r": 13, "tau": 0.01, "alpha": 0.95, "maxiter": 10, "tol": 1e-6},
}


def refine_pixels(image: Tensor, scores: Tensor, refiner: str = "reference", **overrides: Any) -> Tensor:
    """Propagate class scores [C, H, W] over the pixel graph of image [3, H, W] in [0, 1] -> [C, H, W].

    refiner: a name of `REFINERS`; overrides: single settings of it (r, tau, alpha, maxiter, tol).
    """
    settings = refiner_settings(refiner, overrides)
    check_inputs(image, scores)
    channels, height, width = scores.shape
    graph = PixelGraph(image.to(scores.dtype), r=settings["r"], tau=settings["tau"])
    Y = scores.reshape(channels, height * width).T  # [H*W, C], a channel-first view (what the stencil wants)
    F = propagate(graph, Y, alpha=settings["alpha"], method="cg", maxiter=settings["maxiter"], tol=settings["tol"])
    return F.T.reshape(channels, height, width)


def refiner_settings(refiner: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings of a named refiner with `overrides` applied; unknown names raise ValueError."""
    if refiner not in REFINERS:
        raise ValueError(f"unknown refiner {refiner!r}; choose one of {', '.join(REFINERS)}")
    settings = dict(REFINERS[refiner])
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"refiner {refiner!r} has no setting {sorted(unknown)}; its settings are {sorted(settings)}")
    settings.update(overrides)
    return settings


def check_inputs(image: Tensor, scores: Tensor) -> None:
    """Clear errors for the shapes, dtypes and devices refine_pixels cannot work with."""
    if not isinstance(image, Tensor) or not isinstance(scores, Tensor):
        raise TypeError("image and scores must be torch tensors: image [3, H, W] in [0, 1], scores [C, H, W]")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W] RGB in [0, 1], got shape {tuple(image.shape)}")
    if scores.dim() != 3 or scores.shape[0] < 1:
        raise ValueError(f"scores must be [C, H, W] with C >= 1, got shape {tuple(scores.shape)}")
    if image.shape[1:] != scores.shape[1:]:
        raise ValueError(f"image {tuple(image.shape)} and scores {tuple(scores.shape)} differ in H, W; "
                         "resize the scores to the image first")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}; convert with .float()")
    if image.device != scores.device:
        raise ValueError(f"image is on {image.device} and scores on {scores.device}: put both on one device")
