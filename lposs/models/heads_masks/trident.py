"""Trident (YuHengsss/Trident@a93b346): ProxyCLIP's last block over all windows, spliced, then SAM's attention.

    feats = trident(visual, windows, proxy, cells, canvas, sam_attn, sam_v, settings)   # [1, h_s, w_s, D]

The release (`open_clip/transformer.py:502-659`, `trident.py:131-225`) runs in three steps:
1. every window of the image, as ONE batch, through CLIP's first 11 blocks; the last block is ProxyCLIP's
   attention from DINO ViT-B/16's final normalised tokens: S = F F^T, gamma (S - beta mean S), entries < 0 ->
   -inf, row softmax, applied to the last block's v resized to the DINO grid, then W_o. The mean runs over
   ALL windows of the batch (`torch.mean(similarity)` on [B, N', N']), not window by window (`:525-584`);
2. the windows' outputs are spliced onto the whole image's patch canvas at their patch cells, overlaps
   averaged (`:586-606`), and the canvas is resized bilinearly to SAM's grid (h_s, w_s);
3. SAM's affinity (`get_sam_sim`, `:640-659`): per SAM head, S = cos of SAM's last-block values; the head's
   attention is kept where S > t, t = cos_fac x (mean of S over heads, then over keys) per query, capped
   at 0.9 (negative t -> 0.6 when refine_neg_cos is False); the kept attention is averaged over heads and
   row-normalised; it multiplies the canvas. Then ln_post and proj (no residual, no FFN).

The output is the whole image's features at SAM's grid, not per window: `lposs.image_features` samples each
window's patch cells from it. SAM's inputs come from `lposs.models.sam_attention` (segment-anything has no
hook for them). The release runs in fp16; this runs in the caller's precision.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..protocol_bases import WINDOWS_2025
from ..records import Published, register_head
from ..vit import proxy_attention, tokens_before_last_block

# cos_fac 1.2 and refine_neg_cos True are trident.py's defaults (`:96-97`); the per-dataset configs change
# cos_fac (VOC20 0, Cityscapes 3). slide_crop / slide_stride are the release's windows (336 / 224).
DEFAULTS: dict[str, Any] = {"interpolation": "sclip", "beta": 1.2, "gamma": 3.0, "cos_fac": 1.2,
                            "refine_neg_cos": True, "slide_crop": 336, "slide_stride": 224}
SIM_CAP, NEGATIVE_THRESHOLD = 0.9, 0.6


def _dataset(coarse_thresh: float, prob_thd: float | None = None, short_side: int | None = None,
             **head_params: Any) -> dict:
    entry = {"prob_thd": prob_thd, "short_side": short_side}
    return {key: value for key, value in entry.items() if value is not None} | (
        {"head_params": head_params} if head_params else {}) | {"post_params": {"coarse_thresh": coarse_thresh}}


# configs/base_config.py: windows 336 / 224 (the head's own slide_crop / slide_stride), cos_fac 1.2; its SAM
# refinement (eval.py --sam_refine, the README's command) as the own step, coarse_thresh per dataset, minimal_area
# 225, sam_iou_thresh 0.8 (base_config), sam_mask_coff 0.005 (trident.py:36); ProxyCLIP's class files
PROTOCOL = {
    "base": {**WINDOWS_2025, "crop": 336, "stride": 224, "classes": "proxyclip",
             "head_params": {"slide_crop": 336, "slide_stride": 224}, "post": "sam_refine",
             "post_params": {"coarse_thresh": 0.2, "minimal_area": 225, "sam_mask_coff": 0.005, "sam_iou_thresh": 0.8},
             "deviation": "SAM sees the whole image (the release: Cityscapes as two halves)",
             "source": "YuHengsss/Trident a93b346 configs/cfg_*.py, README (--sam_refine)"},
    "datasets": {"voc21": _dataset(0.2, 0.2, 448), "context60": _dataset(0.15, 0.15, 576),
                 "coco_object": _dataset(0.25, 0.25, 448),
                 "voc20": {**_dataset(0.2, short_side=336, cos_fac=0.0, slide_stride=112), "stride": 112},
                 "context59": _dataset(0.15, short_side=576), "coco_stuff": _dataset(0.05, short_side=448),
                 "cityscapes": _dataset(0.10, short_side=688, cos_fac=3.0), "ade20k": _dataset(0.05, short_side=576)},
}


def proxy_block(visual: nn.Module, windows: Tensor, proxy: Tensor, settings: dict[str, Any]) -> Tensor:
    """Step 1: windows [B, 3, s, s] (CLIP-normalised), DINO tokens [B, h', w', Dv] -> [B, h', w', W]."""
    block = visual.transformer.resblocks[-1]
    patch = int(visual.patch_size[0])
    grid = (windows.shape[2] // patch, windows.shape[3] // patch)
    tokens = tokens_before_last_block(visual, windows, settings["interpolation"])  # [B, 1 + N, W]
    out = proxy_attention(block, tokens, grid, proxy, float(settings["beta"]), float(settings["gamma"]),
                          "batch")  # [B, N', W]: the mean over all windows of the image
    return out.reshape(windows.shape[0], int(proxy.shape[1]), int(proxy.shape[2]), -1)


def splice(outputs: Tensor, cells: Tensor, canvas: tuple[int, int], clip_grid: tuple[int, int]) -> Tensor:
    """Step 2a: window outputs [B, h', w', W] -> the averaged canvas [W, gh r, gw r], r = proxy / CLIP grid.

    cells [B, 4]: each window's (y1, x1, y2, x2) in CLIP patches of the whole image; canvas (gh, gw) in CLIP
    patches. As the release, outputs whose width is not a multiple of the CLIP grid are first resized to
    grid x round(h' / gh_window) (`:590-594`)."""
    maps = outputs.permute(0, 3, 1, 2)  # [B, W, h', w']
    if maps.shape[-1] % clip_grid[1]:
        ratio = round(maps.shape[-2] / clip_grid[0])
        maps = F.interpolate(maps, size=(clip_grid[0] * ratio, clip_grid[1] * ratio), mode="bilinear",
                             align_corners=False)
    else:
        ratio = maps.shape[-1] // clip_grid[1]
    total = maps.new_zeros(maps.shape[1], canvas[0] * ratio, canvas[1] * ratio)  # [W, H_c, W_c]
    count = maps.new_zeros(1, canvas[0] * ratio, canvas[1] * ratio)
    for window, (y1, x1, y2, x2) in zip(maps, cells.tolist()):
        total[:, y1 * ratio : y2 * ratio, x1 * ratio : x2 * ratio] += window
        count[:, y1 * ratio : y2 * ratio, x1 * ratio : x2 * ratio] += 1
    return total / count


def sam_affinity(sam_attn: Tensor, sam_v: Tensor, cos_fac: float, refine_neg_cos: bool) -> Tensor:
    """Step 3's weights: SAM's last-block attention [heads, n, n] and values [heads, h_s, w_s, d] -> [n, n]."""
    values = F.normalize(sam_v.flatten(1, 2), dim=-1)  # [heads, n, d]
    similarity = values @ values.transpose(1, 2)  # [heads, n, n]
    threshold = cos_fac * similarity.mean(dim=0, keepdim=True).mean(dim=-1, keepdim=True)  # [1, n, 1]
    if not refine_neg_cos:
        threshold = torch.where(threshold < 0.0, NEGATIVE_THRESHOLD, threshold)
    threshold = threshold.clamp(max=SIM_CAP)
    kept = torch.where(similarity > threshold, sam_attn, torch.zeros_like(sam_attn)).mean(dim=0)  # [n, n]
    return kept / kept.sum(dim=-1, keepdim=True)


def image_windows(image: Tensor, settings: dict[str, Any], patch: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """The windows the head reads of a resized image [3, H, W]: `release_windows` at slide_crop / slide_stride."""
    return release_windows(image, int(settings["slide_crop"]), int(settings["slide_stride"]), patch)


@register_head(
    "trident", title="Trident", kind="whole_image", defaults=DEFAULTS, image_windows=image_windows,
    reads=("proxy", "cells", "canvas", "sam_attn", "sam_v"), proxy_feature="tokens", proxy="dino_vitb16",
    output_grid="proxy", masks="sam_vit_b", protocol=PROTOCOL, release="YuHengsss/Trident@a93b346", year=2025,
    published=(Published("Trident (OpenAI CLIP + DINO B/16 proxy + SAM ViT-B, training-free)",
                         (67.1, 38.6, 41.1, 84.5, 42.9, 42.2, 21.9, 28.3), 45.8,
                         "Trident's results figure (YuHengsss/Trident a93b346 assets/data_result.png)"),),
)
def trident(visual: nn.Module, windows: Tensor, proxy: Tensor, cells: Tensor, canvas: tuple[int, int],
            sam_attn: Tensor, sam_v: Tensor, **settings: Any) -> Tensor:
    """All windows of one image -> the image's features at SAM's grid [1, h_s, w_s, D] after proj (not normalised).

    windows [B, 3, s, s] CLIP-normalised; proxy [B, h', w', Dv] DINO B/16 final tokens of the same windows;
    cells, canvas: see `splice`; sam_attn [heads, n, n] softmaxed, sam_v [heads, h_s, w_s, d], n = h_s w_s."""
    patch = int(visual.patch_size[0])
    clip_grid = (windows.shape[2] // patch, windows.shape[3] // patch)
    spliced = splice(proxy_block(visual, windows, proxy, settings), cells, canvas, clip_grid)  # [W, H_c, W_c]
    sam_grid = tuple(sam_v.shape[1:3])
    spliced = F.interpolate(spliced[None], size=sam_grid, mode="bilinear", align_corners=False)[0]  # [W, h_s, w_s]
    weights = sam_affinity(sam_attn, sam_v, float(settings["cos_fac"]), bool(settings["refine_neg_cos"]))
    out = weights.to(spliced.dtype) @ spliced.flatten(1).T  # [n, W]
    feats = visual.ln_post(out) @ visual.proj  # [n, D]
    return feats.reshape(1, *sam_grid, -1)


def release_windows(image: Tensor, crop: int, stride: int, patch: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """The release's windows of a whole image [3, H, W] -> (windows [B, 3, h_c, w_c], cells [B, 4], canvas).

    `seg_utils/utils.py:9-25`: unless both sides are multiples of the patch, the image is resized bilinearly
    so that they are (the long side rounded up, the short side scaled with it and rounded up, neither below
    crop); `trident.py:197-225`: windows of `crop` every `stride`, the last one flush with the border. A side
    shorter than crop gives windows of that side (the release then zero-pads them to a multiple of 56 and can
    no longer splice them; here they are run as they are). cells: each window's (y1, x1, y2, x2) in patches;
    canvas: the image's (rows, cols) of patches."""
    height, width = image.shape[1:]
    if height % patch or width % patch:
        longer = max(height, width)
        target = -(-longer // patch) * patch
        height, width = (max(-(-int(side * target / longer) // patch) * patch, crop) for side in (height, width))
        image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    sizes = (min(crop, height), min(crop, width))
    starts = [[max(min(i * stride + size, side) - size, 0) for i in range(max(side - size + stride - 1, 0) // stride + 1)]
              for side, size in zip((height, width), sizes)]
    cells = torch.tensor([[y // patch, x // patch, (y + sizes[0]) // patch, (x + sizes[1]) // patch]
                          for y in starts[0] for x in starts[1]])  # [B, 4]
    windows = torch.stack([image[:, y : y + sizes[0], x : x + sizes[1]] for y in starts[0] for x in starts[1]])
    return windows, cells, (height // patch, width // patch)
