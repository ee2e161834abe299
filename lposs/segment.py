"""One image, end to end: backbones -> seeds -> patch LP -> canvas -> pixel LP -> classes.

Split in two so the pipeline can cache the expensive half:
- `extract_features` runs the backbones once (MaskCLIP seeds, vision-model graph features, layout);
- `propagate_features` runs every graph / propagation setting on those features.
`segment` chains both and returns the label map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .graphs import patch_graph
from .propagation import propagate
from .protocols import class_scores, labels_from_scores, pool_synonyms
from .refine import refine_pixels
from .windows import Window, crop_windows, merge_windows, patch_centers, resize_image, resized_size, window_layout

MODES = ("maskclip", "lposs", "lposs+")


@dataclass
class ImageFeatures:
    """What the backbones give for one image; enough to run any propagation setting."""

    seeds: Tensor  # [N, C'] raw cosine similarities, N = windows * g * g, one column per synonym
    vm_feats: Tensor  # [N, D] L2-normalised vision-model features (graph appearance)
    owner: Tensor  # [C'] class index of each synonym column
    layout: list[Window]  # windows (y1, y2, x1, x2) in resized-image pixels
    resized_hw: tuple[int, int]
    original_hw: tuple[int, int]
    grid: int  # patches per window side (14 for 224 / 16)
    crop: int = 224
    image_resized: Tensor | None = field(default=None, repr=False)  # [3, H', W'] in [0, 1], for LPOSS+


def as_image_tensor(image: Any) -> Tensor:
    """uint8 [H, W, 3] array / PIL image, or float [3, H, W] in [0, 1] -> float32 [3, H, W] in [0, 1]."""
    if isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] == 3 and image.is_floating_point():
        return image.float()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"image must be an RGB uint8 array [H, W, 3] or a float tensor [3, H, W] in [0, 1], "
            f"got {array.dtype} with shape {array.shape}"
        )
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


@torch.no_grad()
def extract_features(
    image: Any,
    class_names: list[str],
    vlm: Any,
    vm: Any,
    crop: int = 224,
    stride: int = 112,
    short_side: int = 448,
    long_side: int = 2048,
    text: tuple[Tensor, Tensor] | None = None,
    keep_on_device: bool = False,
) -> ImageFeatures:
    """Run both backbones over all windows of one image as one batch.

    text: precomputed `vlm.text_embeddings(class_names)` to reuse over a dataset.
    keep_on_device: leave seeds and graph features where the backbones ran (a GPU streaming pass that
    propagates at once); by default they come to the CPU, as a feature store keeps them.
    """
    image = as_image_tensor(image)
    original_hw = tuple(image.shape[1:])
    resized_hw = resized_size(*original_hw, short_side=short_side, long_side=long_side)
    resized = resize_image(image, resized_hw)  # [3, H', W']
    layout = window_layout(*resized_hw, crop=crop, stride=stride)
    windows = crop_windows(resized, layout, crop=crop)  # [B, 3, crop, crop]
    emb, owner = text if text is not None else vlm.text_embeddings(class_names)  # [C', D], [C']
    dense = vlm.dense_features(windows)  # [B, g, g, D]
    reuses_vlm = getattr(vm, "vlm", None) is vlm  # the VLM's own features as the graph (no second model)
    graph = dense if reuses_vlm else vm.dense_features(windows)  # [B, g', g', Dv]
    dense = to_graph_grid(dense, graph.shape[1:3])  # [B, g', g', D]
    grid = graph.shape[1]
    seeds = dense.reshape(-1, dense.shape[-1]).float() @ emb.float().to(dense.device).T  # [N, C']
    vm_feats = graph.reshape(-1, graph.shape[-1]).float()  # [N, Dv]
    if not keep_on_device:
        seeds, vm_feats = seeds.cpu(), vm_feats.cpu()
    return ImageFeatures(
        seeds=seeds,
        vm_feats=vm_feats,
        owner=owner.cpu(),
        layout=layout,
        resized_hw=resized_hw,
        original_hw=original_hw,
        grid=grid,
        crop=crop,
        image_resized=resized,
    )


def to_graph_grid(dense: Tensor, grid: tuple[int, int]) -> Tensor:
    """VLM patch features [B, g, g, D] at the vision model's grid [B, g', g', D], unit norm.

    As the released LPOSS does when the two grids differ (e.g. CLIP /16 with DINO /8 or DINOv2 /14):
    bilinear resize of the features (align_corners False), then L2 normalisation.
    """
    if tuple(dense.shape[1:3]) == tuple(grid):
        return dense
    resized = F.interpolate(dense.permute(0, 3, 1, 2).float(), size=tuple(grid), mode="bilinear", align_corners=False)
    return F.normalize(resized.permute(0, 2, 3, 1), dim=-1)


def propagate_features(
    features: ImageFeatures,
    mode: str = "lposs+",
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    p: float = 1.0,
    alpha: float = 0.95,
    maxiter: int = 10,
    tol: float = 1e-6,
    r: int | None = None,
    tau: float | None = None,
    solver: str = "cg",
    device: str | torch.device = "cpu",
    refiner: str = "reference",
    background: dict[str, Any] | None = None,
) -> Tensor:
    """Class scores [K, H, W] at the original image size for one propagation setting.

    mode: "maskclip" (seeds only), "lposs" (patch LP), "lposs+" (patch LP then pixel LP).
    solver: "cg" (batched) or "cg_reference" (column loop, as the released code).
    refiner: a named pixel refiner of `lposs.refine.REFINERS`. The "reference" one uses r, tau
    (default 13, 0.01) and the same alpha, maxiter and tol as the patch graph, as the released code;
    another refiner keeps its own settings, except r and tau when they are given.
    background: a rule of `lposs.protocols` (e.g. `protocols.resolve("sclip", "voc21")`); None or
    "synonyms" gives the max over synonyms (LPOSS); "softmax" gives class probabilities (SCLIP family),
    to be turned into labels by `protocols.labels_from_scores`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    # host -> device copies are non_blocking: a blocking one makes torch wait for the GPU's whole queue
    seeds = features.seeds.to(device, non_blocking=True)  # [N, C']
    cosine_scale = 1.0  # what brings the scores back to the size of cosines (see protocols.class_scores)
    if mode == "maskclip":
        patch_scores = seeds
    else:
        centers = patch_centers(features.layout, grid=features.grid, patch=features.crop // features.grid)
        vm_feats = features.vm_feats.to(device, non_blocking=True)  # [N, D]
        S = patch_graph(vm_feats, centers.to(device, non_blocking=True), k=k, gamma=gamma, sigma=sigma, p=p)
        patch_scores = propagate(S, seeds, alpha=alpha, method=solver, maxiter=maxiter, tol=tol)
        cosine_scale *= 1 - alpha
    g, n_windows = features.grid, len(features.layout)
    blocks = patch_scores.T.reshape(-1, n_windows, g, g).transpose(0, 1)  # [B, C', g, g]
    canvas = merge_windows(blocks, features.layout, *features.resized_hw, crop=features.crop)  # [C', H', W']
    if mode == "lposs+":
        if features.image_resized is None:
            raise ValueError("LPOSS+ needs the resized image: features.image_resized is None")
        image = features.image_resized.to(device, non_blocking=True)
        overrides = {"alpha": alpha, "maxiter": maxiter, "tol": tol} if refiner == "reference" else {}
        overrides.update({name: v for name, v in (("r", r), ("tau", tau)) if v is not None})
        canvas = refine_pixels(image, canvas, refiner=refiner, **overrides)
        if refiner == "reference":  # linear in the scores: (1 - alpha) brings them back to cosine size;
            cosine_scale *= 1 - alpha  # PAMR averages (keeps the size), best/relaxed return probabilities
    rule = background or {"background": "synonyms"}
    if rule.get("background") == "softmax":  # the releases resize the query logits, then softmax
        canvas = F.interpolate(canvas[None], size=features.original_hw, mode="bilinear", align_corners=False)[0]
        return class_scores(canvas, features.owner, rule, cosine_scale)  # [K, H, W]
    scores = class_scores(canvas, features.owner, rule)  # [K, H', W']
    return F.interpolate(scores[None], size=features.original_hw, mode="bilinear", align_corners=False)[0]


def predict_labels(features: ImageFeatures, background: dict[str, Any] | None = None, **params: Any) -> Tensor:
    """Label map [H, W] of one propagation setting under a background rule (`propagate_features` params)."""
    scores = propagate_features(features, background=background, **params)
    return labels_from_scores(scores, background or {"background": "synonyms"})


def segment(
    image: Any,
    class_names: list[str],
    mode: str = "lposs+",
    vlm: Any = None,
    vm: Any = None,
    device: str | torch.device = "cpu",
    crop: int = 224,
    stride: int = 112,
    short_side: int = 448,
    long_side: int = 2048,
    **params: Any,
) -> Tensor:
    """Label map [H, W] (class indices into class_names) for one image.

    vlm / vm default to the paper's backbones (OpenCLIP ViT-B-16 laion2b_s34b_b88k, DINO ViT-B/16),
    which need their weights (see lposs.backbones). crop, stride, short_side, long_side: the windows
    (spec section 1). params: any argument of `propagate_features` (k, gamma, sigma, p, alpha, ...,
    background: a protocol rule such as `lposs.protocols.resolve("sclip", "voc21")`).
    """
    if not class_names:
        raise ValueError("class_names is empty: give at least one class, e.g. ['cow', 'grass', 'sky']")
    if vlm is None or vm is None:
        from .backbones import load_backbones

        default_vlm, default_vm = load_backbones(device=str(device))
        vlm, vm = vlm or default_vlm, vm or default_vm
    image = as_image_tensor(image).to(device)
    features = extract_features(image, class_names, vlm, vm, crop, stride, short_side, long_side)
    return predict_labels(features, mode=mode, device=device, **params)
