"""LPOSS+: refine class scores at the pixel level by label propagation on the pixel graph, or by PAMR.

`refine_pixels(image, scores, refiner="reference")` runs one of the named settings in `REFINERS`;
keyword arguments override single settings.

- "reference": the released code's refiner (docs/method.md section 5): conjugate gradient, 10 iterations, on the
  13x13 Lab-colour graph with tau = 0.01, seeds = the scores as given. Linear in the scores, so its label
  map does not change when a constant is added to all scores or they are scaled by a positive factor.
- "tempered" (alias "best"): expects any class scores [C, H, W] where higher means more likely
  (cosines, logits, probabilities, patch fractions, PAMR outputs). It normalises inside:
  0. `smooth_steps` = 2 colour-weighted averages of the scores (`colour_average`, rows summing to 1, so
     shifts and scalings pass through) take the per-pixel noise out before anything multiplies it;
  1. class probabilities read from the scores as logits with a temperature,
     P_c = softmax_c((s_c - max_c s) / (temperature * m)), temperature = 0.25, m = the median over the
     image of the pixels' top-1 minus top-2 score margin. P, and so the label map, is unchanged by adding
     a constant to all scores or scaling them by a positive factor; a class one typical margin below the
     top gets exp(-4) of its weight however the scores are shifted or noised: no evidence from exact zeros;
  2. then colour relaxation (3 steps) and confidence-weighted propagation (5 CG iterations), below.
  Cost: 2 + 3 + 5 = 10 stencil products on one graph, as the reference's 10 CG iterations. Tuned on
  CamVid val subsets under the robustness transforms of benchmarks/robustness.py (issue 13): fewer
  relaxation steps and the averaging trade a little of the clean-map gain for gains under noise.
- "relaxed": the previous "best", the same two steps on the scores clipped at 0 and normalised per pixel.
  Fast and strong on clean non-negative maps, but it depends on exact zeros: a little per-pixel noise or a
  shift of the scores changes its evidence (issue 13, the robustness mode of benchmarks/refine.py).
- "pamr": PAMR (lposs/core/pamr.py), NACLIP's refiner: 10 iterations at dilations (8, 16) on the
  CLIP-normalised image; expects cosine logits (any scores work: it is linear and convex).
- "regions": region voting (lposs/core/regions.py): every mask region takes its mean scores; needs regions.

The two steps of "tempered" and "relaxed", on the graph with tau = 0.015:
  1. colour relaxation (`relax_steps`: 4 for "relaxed", 3 for "tempered"): each class is re-weighted by
     how well a pixel's colour matches that class's pixels around it, P_c <- P_c * (W P_c) / (B P_c), renormalised per pixel; W is
     the colour-weighted stencil, B the same stencil with unit weights, so (W P_c) / (B P_c) is the mean
     colour affinity of the pixel to class c in its window. A thin object that holds only a fraction of
     each coarse patch gets its pixels back when its colour is rare among the other class's pixels. The
     update is multiplicative, so it is run a fixed, small number of times (more steps start to amplify
     texture noise) and cleaned up by
  2. label propagation with per-pixel seed confidence (`seed_confidence` = 1): the fidelity of pixel i
     to its seed is scaled by c_i = (margin_i / max margin) ** seed_confidence (margin = top-1 minus
     top-2 probability), so undecided pixels take their labels from their confident neighbours.
     With c = 1 everywhere this is exactly the reference solve (see `confidence_propagate`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .graphs import PixelGraph
from .pamr import pamr
from .propagation import propagate
from .refiners import EVIDENCE, REFINERS  # noqa: F401 - the refiners' names and settings
from .regions import region_vote

SUPPORT_EPS = 1e-6  # damps the colour affinity of a class with (almost) no pixels in the window


def refine_pixels(image: Tensor, scores: Tensor, refiner: str = "reference", regions: Tensor | None = None,
                  boundary_beta: float = 1.0, **overrides: Any) -> Tensor:
    """Refine class scores [C, H, W] with the pixel graph of image [3, H, W] in [0, 1] -> [C, H, W].

    refiner: a name of `REFINERS`; overrides: single settings of it (for the LP refiners r, tau, alpha,
    maxiter, tol, evidence, temperature, relax_steps, seed_confidence; for "pamr" iterations, dilations).
    The label map (argmax) of "reference", "tempered"/"best" and "pamr" does not change when a constant
    is added to all scores or they are scaled by a positive factor; "relaxed" clips them at 0.
    regions: the image's mask regions [H, W] (`lposs.core.regions`): the "regions" refiner votes within them;
    with boundary_beta < 1 the LP refiners' pixel graph damps the edges across them.
    """
    settings = refiner_settings(refiner, overrides)
    check_inputs(image, scores)
    if settings["method"] == "pamr":
        return pamr(image, scores, settings["iterations"], settings["dilations"])
    if settings["method"] == "region_vote":
        if regions is None:
            raise ValueError("the 'regions' refiner needs the image's mask regions: compute features with a mask "
                             "model (params.yaml backbone.masks, e.g. demo) or pass regions=")
        return region_vote(scores, regions.to(scores.device))
    graph = PixelGraph(image.to(scores.dtype), r=settings["r"], tau=settings["tau"], regions=regions,
                       region_beta=boundary_beta)
    for _ in range(settings["smooth_steps"]):
        scores = colour_average(graph, scores)
    seeds = class_evidence(scores, settings["evidence"], settings["temperature"])
    if settings["relax_steps"] > 0:
        seeds = colour_relaxation(graph, seeds, settings["relax_steps"])
    alpha, maxiter, tol = settings["alpha"], settings["maxiter"], settings["tol"]
    if settings["seed_confidence"] > 0:
        confidence = margin_confidence(seeds).pow(settings["seed_confidence"])  # [H, W]
        return confidence_propagate(graph, seeds, confidence, alpha, maxiter, tol)
    return propagate_scores(graph, seeds, alpha, maxiter, tol)


def class_evidence(scores: Tensor, evidence: str, temperature: float) -> Tensor:
    """The seeds an LP refiner starts from, [C, H, W]: the "scores" as given, "clipped" probabilities
    (`class_probabilities`) or "tempered" ones (`tempered_probabilities`)."""
    if evidence == "scores":
        return scores
    if evidence == "clipped":
        return class_probabilities(scores)
    return tempered_probabilities(scores, temperature)


def propagate_scores(graph: Any, seeds: Tensor, alpha: float, maxiter: int, tol: float) -> Tensor:
    """Solve (I - alpha S) F = Y for seeds [C, H, W] -> F [C, H, W] by batched CG."""
    channels, height, width = seeds.shape
    Y = seeds.reshape(channels, height * width).T  # [H*W, C], a channel-first view (what the stencil wants)
    F = propagate(graph, Y, alpha=alpha, method="cg", maxiter=maxiter, tol=tol)
    return F.T.reshape(channels, height, width)


class _Rescaled:
    """The operator s * S(s * X) for a per-pixel scale s [H*W, 1]: a re-normalised graph."""

    def __init__(self, graph: Any, scale: Tensor) -> None:
        self.graph, self.scale = graph, scale

    def matmul(self, X: Tensor) -> Tensor:
        return self.scale * self.graph.matmul(self.scale * X)


def confidence_propagate(graph: Any, seeds: Tensor, confidence: Tensor, alpha: float, maxiter: int,
                         tol: float) -> Tensor:
    """Label propagation where pixel i holds to its seed with strength c_i in [0, 1] -> F [C, H, W].

    The reference solves (D - alpha W) G = D^1/2 Y, F = D^1/2 G: a smoothness term alpha * G'LG plus a
    fidelity (1 - alpha) d_i per pixel. Scaling that fidelity by c_i gives (M - alpha W) G = C D^1/2 Y
    with M = D (alpha + (1 - alpha) C). With s = (alpha + (1 - alpha) c)^-1/2 and H = D^1/2 G / s, this
    is (I - alpha s S s) H = s c Y, a symmetric system of the same form, and F = s H. c = 1 gives the
    reference exactly; c = 0 leaves a pixel to its neighbours.
    """
    channels, height, width = seeds.shape
    scale = (alpha + (1 - alpha) * confidence).rsqrt().reshape(height * width, 1)  # [H*W, 1]
    Y = seeds.reshape(channels, height * width).T  # [H*W, C]
    rhs = scale * confidence.reshape(height * width, 1) * Y
    rescaled = graph.with_node_scale(scale) if hasattr(graph, "with_node_scale") else _Rescaled(graph, scale)
    H = propagate(rescaled, rhs, alpha=alpha, method="cg", maxiter=maxiter, tol=tol)
    return (scale * H).T.reshape(channels, height, width)


def class_probabilities(scores: Tensor) -> Tensor:
    """Scores [C, H, W] as class evidence: negatives clipped to 0, each pixel normalised to sum 1 (or all 0)."""
    evidence = scores.clamp(min=0)
    return evidence / evidence.sum(0, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)


def tempered_probabilities(scores: Tensor, temperature: float) -> Tensor:
    """Scores [C, H, W] read as logits: softmax_c((s_c - max_c s) / (temperature * m)) -> [C, H, W].

    m = the median over the image of the per-pixel top-1 minus top-2 score margin (the mean where more
    than half of the pixels tie; 1 where all do): the typical gap of a decided pixel becomes 1 /
    temperature in logits. Unchanged (up to rounding) by adding a constant to all scores or scaling them
    by a positive factor; a class 1 typical gap below the top gets exp(-1 / temperature) of its weight.
    """
    if scores.shape[0] < 2:
        return torch.ones_like(scores)
    top = scores.topk(2, dim=0).values  # [2, H, W]
    margin = top[0] - top[1]  # [H, W]
    typical = margin.median()  # chosen with torch.where, not `if`: no wait for the GPU
    typical = torch.where(typical > 0, typical, margin.mean())
    typical = torch.where(typical > 0, typical, torch.ones_like(typical))  # every pixel ties: logits 0 or -inf
    return ((scores - top[0]) / (temperature * typical)).softmax(dim=0)


def colour_average(graph: PixelGraph, scores: Tensor) -> Tensor:
    """Each pixel's scores [C, H, W] averaged with its neighbours' by the colour weights, itself with
    weight 1: (Z + W Z) / (1 + d), d = W 1 the degree. Rows sum to 1, so constants and scalings pass through.

    d is read from the graph's normalisation (d = inv_sqrt_degree^-2, one stencil product saved per call);
    the graph stores d = 1 for a pixel whose colour weights all underflowed to 0, which then keeps half
    its scores: a per-pixel scale, which the per-pixel softmax of `tempered_probabilities` reads as a
    sharper or softer pixel, never as a different ranking.
    """
    degree = graph.inv_sqrt_degree.square().reciprocal()  # [H, W]
    return graph.weighted_sum(scores).add_(scores).div_(degree.add_(1))


def colour_relaxation(graph: PixelGraph, probs: Tensor, steps: int) -> Tensor:
    """`steps` times P_c <- P_c * (W P_c) / (B P_c + eps), renormalised per pixel; probs [C, H, W]."""
    tiny = torch.finfo(probs.dtype).tiny
    for _ in range(steps):  # in place on fresh tensors: these element-wise passes cost a fifth of a step
        affinity = graph.weighted_sum(probs).div_(graph.neighbour_sum(probs).add_(SUPPORT_EPS))  # [C, H, W]
        probs = affinity.mul_(probs)
        probs = probs.div_(probs.sum(0, keepdim=True).clamp_(min=tiny))
    return probs


def margin_confidence(probs: Tensor) -> Tensor:
    """(top-1 minus top-2 score) per pixel, divided by its image maximum -> [H, W] in [0, 1]."""
    if probs.shape[0] < 2:
        return torch.ones_like(probs[0])
    top = probs.topk(2, dim=0).values  # [2, H, W]
    margin = top[0] - top[1]
    return margin / margin.max().clamp(min=torch.finfo(probs.dtype).tiny)


def refiner_settings(refiner: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings of a named refiner with `overrides` applied; unknown names raise ValueError."""
    if refiner not in REFINERS:
        raise ValueError(f"unknown refiner {refiner!r}; choose one of {', '.join(REFINERS)}")
    settings = dict(REFINERS[refiner])
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"refiner {refiner!r} has no setting {sorted(unknown)}; "
                         f"its settings are {sorted(settings)}")
    settings.update(overrides)
    if settings["method"] in ("pamr", "region_vote"):
        return settings
    if settings["evidence"] not in EVIDENCE:
        raise ValueError(f"evidence must be one of {', '.join(EVIDENCE)}, got {settings['evidence']!r}")
    if not settings["temperature"] > 0:
        raise ValueError(f"the evidence temperature must be positive, got {settings['temperature']}")
    if settings["relax_steps"] > 0 and settings["evidence"] == "scores":
        raise ValueError("the colour relaxation needs class probabilities: with relax_steps > 0 set "
                         "evidence='tempered' or 'clipped'")
    for steps in ("smooth_steps", "relax_steps"):
        if int(settings[steps]) != settings[steps] or settings[steps] < 0:
            raise ValueError(f"{steps} must be a non-negative integer, got {settings[steps]}")
    if settings["seed_confidence"] < 0:
        raise ValueError(f"seed_confidence must be >= 0 (0 = off), got {settings['seed_confidence']}")
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
