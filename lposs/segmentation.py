"""One image, end to end: backbones -> seeds -> patch LP -> canvas -> pixel LP -> classes.

Split in two so the pipeline can cache the expensive half:
- `extract_features` runs the backbones once over the windows (`settings.WindowSettings`): the head's
  seeds, the vision model's graph features, the layout;
- `propagate_features` runs one propagation setting (`settings.Setting`) on those features.
`segment` chains both and returns the label map. The settings' defaults live in `lposs.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .core.graphs import patch_graph
from .core.propagation import propagate
from .core.refine import refine_pixels
from .core.scoring import class_scores, labels_from_scores, pool_synonyms  # noqa: F401 - pool_synonyms re-exported
from .core.windows import Window, crop_windows, merge_windows, patch_centers, resize_image, resized_size, window_layout
from .settings import MODES, Setting, WindowSettings  # noqa: F401 - MODES re-exported


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
    windows: WindowSettings | None = None,
    *,
    text: tuple[Tensor, Tensor] | None = None,
    keep_on_device: bool = False,
    **window_values: int,
) -> ImageFeatures:
    """Run both backbones over all windows of one image as one batch.

    windows: the window settings, or their values by name (crop=, stride=, short_side=, long_side=).
    text: precomputed `vlm.text_embeddings(class_names)` to reuse over a dataset.
    keep_on_device: leave seeds and graph features where the backbones ran (a GPU streaming pass that
    propagates at once); by default they come to the CPU, as a feature store keeps them.
    """
    win = window_settings(windows, window_values)
    image = as_image_tensor(image)
    original_hw = tuple(image.shape[1:])
    resized_hw = resized_size(*original_hw, short_side=win.short_side, long_side=win.long_side)
    resized = resize_image(image, resized_hw)  # [3, H', W']
    layout = window_layout(*resized_hw, crop=win.crop, stride=win.stride)
    crops = crop_windows(resized, layout, crop=win.crop)  # [B, 3, crop, crop]
    emb, owner = text if text is not None else vlm.text_embeddings(class_names)  # [C', D], [C']
    dense = vlm.dense_features(crops)  # [B, g, g, D]
    reuses_vlm = getattr(vm, "vlm", None) is vlm  # the VLM's own features as the graph (no second model)
    graph = dense if reuses_vlm else vm.dense_features(crops)  # [B, g', g', Dv]
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
        crop=win.crop,
        image_resized=resized,
    )


def window_settings(windows: WindowSettings | None, values: dict[str, Any]) -> WindowSettings:
    """The window settings given as an object or by name (not both)."""
    if windows is not None and values:
        raise ValueError(f"give the windows as a WindowSettings or by name, not both (got {sorted(values)})")
    return windows if windows is not None else WindowSettings.from_mapping(values, "the window settings")


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
    *,
    device: str | torch.device = "cpu",
    background: dict[str, Any] | None = None,
    setting: Setting | None = None,
    **values: Any,
) -> Tensor:
    """Class scores [K, H, W] at the original image size for one propagation setting.

    setting: a `settings.Setting`, or its values by name: mode ("maskclip" seeds only, "lposs" patch LP,
    "lposs+" patch LP then pixel LP), the graph's k, gamma, sigma, p, the propagation's alpha, maxiter,
    tol, solver ("cg" batched, "cg_reference" one column at a time as the released code), the pixel
    refiner (a name of `lposs.core.refine.REFINERS`) and its r, tau (`PixelSettings.refiner_overrides`
    says what the refiner takes from the setting). Unknown names raise ValueError.
    background: a rule of `lposs.core.scoring` (e.g. `lposs.models.protocols.resolve("sclip", "voc21")`);
    None or "synonyms" gives the max over synonyms (LPOSS); "softmax" gives class probabilities (SCLIP
    family), to be turned into labels by `scoring.labels_from_scores`.
    """
    setting = setting_from(setting, mode, values)
    # host -> device copies are non_blocking: a blocking one makes torch wait for the GPU's whole queue
    seeds = features.seeds.to(device, non_blocking=True)  # [N, C']
    cosine_scale = 1.0  # what brings the scores back to the size of cosines (see scoring.class_scores)
    if setting.mode == "maskclip":
        patch_scores = seeds
    else:
        patch_scores = propagate_patches(features, seeds, setting, device)  # [N, C']
        cosine_scale *= 1 - setting.lp.alpha
    g, n_windows = features.grid, len(features.layout)
    blocks = patch_scores.T.reshape(-1, n_windows, g, g).transpose(0, 1)  # [B, C', g, g]
    canvas = merge_windows(blocks, features.layout, *features.resized_hw, crop=features.crop)  # [C', H', W']
    if setting.mode == "lposs+":
        if features.image_resized is None:
            raise ValueError("LPOSS+ needs the resized image: features.image_resized is None")
        image = features.image_resized.to(device, non_blocking=True)
        canvas = refine_pixels(image, canvas, refiner=setting.pixel.refiner,
                               **setting.pixel.refiner_overrides(setting.lp))
        if setting.pixel.refiner == "reference":  # linear in the scores: (1 - alpha) brings them back to
            cosine_scale *= 1 - setting.lp.alpha  # cosine size; PAMR averages, best/relaxed give probabilities
    rule = background or {"background": "synonyms"}
    if rule.get("background") == "softmax":  # the releases resize the query logits, then softmax
        canvas = F.interpolate(canvas[None], size=features.original_hw, mode="bilinear", align_corners=False)[0]
        return class_scores(canvas, features.owner, rule, cosine_scale)  # [K, H, W]
    scores = class_scores(canvas, features.owner, rule)  # [K, H', W']
    return F.interpolate(scores[None], size=features.original_hw, mode="bilinear", align_corners=False)[0]


def setting_from(setting: Setting | None, mode: str, values: dict[str, Any]) -> Setting:
    """The setting given as an object or by name (mode and values; not both)."""
    if setting is None:
        return Setting.from_flat(mode=mode, **values)
    if values:
        raise ValueError(f"give the setting as a Setting or by name, not both (got {sorted(values)})")
    return setting


def propagate_patches(features: ImageFeatures, seeds: Tensor, setting: Setting, device: str | torch.device) -> Tensor:
    """LPOSS: the seeds [N, C'] propagated on the patch graph of all windows together -> [N, C']."""
    graph, lp = setting.graph, setting.lp
    centers = patch_centers(features.layout, grid=features.grid, patch=features.crop // features.grid)  # [N, 2]
    vm_feats = features.vm_feats.to(device, non_blocking=True)  # [N, D]
    S = patch_graph(vm_feats, centers.to(device, non_blocking=True), k=graph.k, gamma=graph.gamma,
                    sigma=graph.sigma, p=graph.p)
    return propagate(S, seeds, alpha=lp.alpha, method=lp.solver, maxiter=lp.maxiter, tol=lp.tol)


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
    background: dict[str, Any] | None = None,
    **values: Any,
) -> Tensor:
    """Label map [H, W] (class indices into class_names) for one image.

    vlm / vm default to the paper's backbones (`lposs.models.factory.BackboneSpec()`: OpenCLIP ViT-B-16
    laion2b_s34b_b88k with MaskCLIP, DINO ViT-B/16), which need their weights. values: the windows (crop,
    stride, short_side, long_side: `settings.WindowSettings`) and the propagation setting (k, gamma, sigma,
    p, alpha, ..., refiner, r, tau: `settings.Setting`) by name. background: a protocol's rule, e.g.
    `lposs.models.protocols.resolve("sclip", "voc21")`.
    """
    if not class_names:
        raise ValueError("class_names is empty: give at least one class, e.g. ['cow', 'grass', 'sky']")
    window_names = WindowSettings.names()
    windows = WindowSettings.from_mapping({k: v for k, v in values.items() if k in window_names}, "segment")
    setting = Setting.from_flat(where="segment", mode=mode,
                                **{k: v for k, v in values.items() if k not in window_names})
    if vlm is None or vm is None:
        from .models.factory import BackboneSpec, create_backbones

        default = create_backbones(BackboneSpec(), device=str(device))
        vlm, vm = vlm or default.vlm, vm or default.vm
    image = as_image_tensor(image).to(device)
    features = extract_features(image, class_names, vlm, vm, windows)
    return predict_labels(features, background=background, device=device, setting=setting)
