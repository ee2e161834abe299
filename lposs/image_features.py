"""The features of one image: both backbones over all its windows -> seeds, graph features, layout.

    features = extract_features(image, ["cow", "grass"], vlm, vm, WindowSettings(short_side=448))
    features.seeds      [N, C']  raw cosines of the head's patch features against the class texts
    features.vm_feats   [N, D]   the graph model's features (N = windows x g x g patches)

This is the expensive half of `lposs.segmentation` (the backbones), kept apart from the propagation so
that what the feature store holds depends on this module, not on the propagation code. `merge_patches`
is the window -> canvas step both halves share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .core.regions import masks_to_regions, resize_regions
from .core.tlp import text_self_affinity
from .core.windows import Window, crop_windows, merge_windows, resize_image, resized_size, window_layout
from .settings import WindowSettings


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
    text_affinity: Tensor | None = field(default=None, repr=False)  # [C'] what PEARL's TLP reads of the text
    regions: Tensor | None = field(default=None, repr=False)  # [H', W'] mask-region ids (lposs.core.regions)
    masks: Tensor | None = field(default=None, repr=False)  # [M, H, W] bool: a mask model's overlapping masks at
    # the ORIGINAL size, as its release keeps them (Panoptic Cut's; LaVG's vote reads them), else None


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
    masks: Any = None,
    **window_values: int,
) -> ImageFeatures:
    """Run both backbones over all windows of one image as one batch.

    windows: the window settings, or their values by name (crop=, stride=, short_side=, long_side=).
    text: precomputed `vlm.text_embeddings(class_names)` to reuse over a dataset.
    keep_on_device: leave seeds and graph features where the backbones ran (a GPU streaming pass that
    propagates at once); by default they come to the CPU, as a feature store keeps them.
    masks: a mask model (`lposs.models.masks`): the resized image's regions, computed once, go to `.regions`
    (and to a head that reads them, corrclip). A head that needs them (`vlm.reads_regions`) refuses None. A mask
    model of overlapping masks (`overlapping`, Panoptic Cut) reads the original image: its masks go to `.masks`,
    and `.regions` is their id map (the first mask covering a pixel) nearest-resized to the resized image.
    """
    win = window_settings(windows, window_values)
    image = as_image_tensor(image)
    original_hw = tuple(image.shape[1:])
    resized_hw = resized_size(*original_hw, short_side=win.short_side, long_side=win.long_side)
    resized = resize_image(image, resized_hw)  # [3, H', W']
    layout = window_layout(*resized_hw, crop=win.crop, stride=win.stride)
    crops = crop_windows(resized, layout, crop=win.crop)  # [B, 3, crop, crop]
    emb, owner = text if text is not None else vlm.text_embeddings(class_names)  # [C', D], [C']
    regions, overlapping = mask_regions(masks, image, resized)  # [H', W'] ids (0 = no mask), [M, H, W] or None
    dense = _head_features(vlm, image, resized, crops, layout, emb, regions)  # [B, g, g, D]
    reuses_vlm = getattr(vm, "vlm", None) is vlm  # the VLM's own features as the graph (no second model)
    graph = dense if reuses_vlm else vm.dense_features(crops)  # [B, g', g', Dv]
    grid = graph.shape[1]
    if getattr(vlm, "adjusts_queries", False):  # CASS's text step: queries adjusted to this image
        scores = vlm.query_scores(dense, emb, crops, resized)  # [B, g, g, C'] at the CLIP grid
        seeds = resize_grid(scores, graph.shape[1:3]).reshape(-1, scores.shape[-1]).float()  # [N, C']
    else:
        dense = to_graph_grid(dense, graph.shape[1:3])  # [B, g', g', D]
        seeds = dense.reshape(-1, dense.shape[-1]).float() @ emb.float().to(dense.device).T  # [N, C']
    vm_feats = graph.reshape(-1, graph.shape[-1]).float()  # [N, Dv]
    text_affinity = text_self_affinity(emb.float())  # [C'], for PEARL's TLP
    if not keep_on_device:
        seeds, vm_feats, text_affinity = seeds.cpu(), vm_feats.cpu(), text_affinity.cpu()
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
        text_affinity=text_affinity,
        regions=regions,
        masks=overlapping,
    )


def mask_regions(masks: Any, image: Tensor, resized: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """A mask model's output for one image: (region ids [H', W'] at the resized size, or None without a model;
    the overlapping masks [M, H, W] bool at the original size of a model that makes them, else None)."""
    if masks is None:
        return None, None
    if not getattr(masks, "overlapping", False):
        return masks.regions(resized).cpu(), None
    overlapping = masks.masks(image).cpu()  # [M, H, W]: the release's masks, from the original image
    return resize_regions(masks_to_regions(overlapping), tuple(resized.shape[1:])), overlapping


def _head_features(vlm: Any, image: Tensor, resized: Tensor, crops: Tensor, layout: list[Window], emb: Tensor,
                   regions: Tensor | None) -> Tensor:
    """The VLM's dense features of each window [B, g, g, D], whatever its head reads besides the windows:
    ResCLIP the class list's queries, CorrCLIP each window's regions, Trident the whole image (its features
    at SAM's grid, sampled back into the windows by `window_cells`)."""
    if getattr(vlm, "whole_image", False):
        whole = vlm.whole_image_features(image, resized)  # [1, h_s, w_s, D]
        return window_cells(whole, layout, tuple(resized.shape[1:]), crops.shape[-1], crops.shape[-1] // vlm.patch_size)
    if getattr(vlm, "reads_regions", False):
        if regions is None:
            raise ValueError(f"head {vlm.head!r} reads mask regions: compute the features with a mask model "
                             "(params.yaml backbone.masks, e.g. sam2_hiera_l as CorrCLIP, or demo offline)")
        window_regions = crop_windows(regions[None].float(), layout, crop=crops.shape[-1])[:, 0].long()  # [B, s, s]
        return vlm.dense_features(crops, regions=window_regions)
    if getattr(vlm, "needs_text", False):  # a head that reads the class list (ResCLIP)
        return vlm.dense_features(crops, text=emb)
    return vlm.dense_features(crops)


def window_cells(whole: Tensor, layout: list[Window], resized_hw: tuple[int, int], crop: int, grid: int) -> Tensor:
    """Features of the whole image [1, h_s, w_s, D] -> each window's grid x grid cells [B, grid, grid, D].

    Each window's crop x crop box (resized-image pixels; a padded window reaches past the image) is mapped onto the map's grid and averaged over grid x grid cells
    (torchvision's roi_align, 2 x 2 bilinear samples per cell), then renormalised: how Trident's whole-image
    features become per-window seeds for LPOSS's graph."""
    from torchvision.ops import roi_align

    scale_y, scale_x = whole.shape[1] / resized_hw[0], whole.shape[2] / resized_hw[1]
    boxes = torch.tensor([[0, x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y] for y1, _, x1, _ in layout
                          for y2, x2 in [(y1 + crop, x1 + crop)]],
                         dtype=whole.dtype, device=whole.device)  # [B, 5]: batch index, x1, y1, x2, y2
    cells = roi_align(whole.permute(0, 3, 1, 2), boxes, output_size=grid, sampling_ratio=2, aligned=True)
    return F.normalize(cells.permute(0, 2, 3, 1), dim=-1)  # [B, grid, grid, D]


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
    return F.normalize(resize_grid(dense, grid), dim=-1)


def resize_grid(scores: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch values [B, g, g, C] -> [B, g', g', C] in float32, bilinear (align_corners False); scores use it as is,
    features through `to_graph_grid`, which renormalises."""
    if tuple(scores.shape[1:3]) == tuple(grid):
        return scores
    resized = F.interpolate(scores.permute(0, 3, 1, 2).float(), size=tuple(grid), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1)


def merge_patches(features: ImageFeatures, patch_scores: Tensor) -> Tensor:
    """Scores of every patch [N, C'] -> the canvas [C', H', W'] of the resized image (windows averaged)."""
    g, n_windows = features.grid, len(features.layout)
    blocks = patch_scores.T.reshape(-1, n_windows, g, g).transpose(0, 1)  # [B, C', g, g]
    return merge_windows(blocks, features.layout, *features.resized_hw, crop=features.crop)  # [C', H', W']
