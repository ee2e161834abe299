"""CorrCLIP's dense head (Zhang et al., ICCV 2025; zdk258/CorrCLIP @103bc18, CorrCLIPv1/open_clip/transformer.py
:506-634, called from CorrCLIPv1/corrclip_segmentor.py:92-121), one window. Reads a DINO proxy and a mask model.

Inputs, as the segmentor builds them (corrclip_segmentor.py:104-114): F = the L2-normalised q + k of DINO B/8's last
block (CLS dropped) on the DINO grid h' x w' (N' patches); M = the mask model's integer region ids, nearest-sampled
to the DINO grid (:545); the lowest id is "unsegmented". x_l = output of CLIP block l (x_11 enters block 12).

    merge (:544-562)  when M has > 2 ids: mean F per region, L2-normalised, the lowest id dropped;
                      sklearn DBSCAN(eps 0.2, min_samples 1, precomputed) on max(sim) - sim; each other region
                      becomes cluster + 10000 (noise, -1, keeps its id; min_samples 1 never gives noise)
    scope (:564-578)  S = F F^T; allowed: pairs inside one region, and pairs touching the lowest-id region
                      where S > mean(S) (mean over all N' x N'); A = softmax(4 S), the rest -inf; all heads
    values (:602-616) v of ln_1(x_11) (main) and ln_1(mean of x_6..x_10) (spatial), CLS dropped, bilinear
                      from the CLIP grid to the DINO grid; main, spatial = W_o (A v) + b_o (no residual, no FFN)
    tokens (:580-600) M nearest-sampled to the CLIP grid; one token per id there (the lowest too), a copy of
                      x_0's CLS, attending to x's CLS and its region's patches in every block (patches and CLS
                      never see the tokens, so they run the vanilla blocks 1-11); each token after the FULL
                      block 12 (residual and FFN kept) is the semantic feature of its region (:618-622)
    out (:626-632)    ln_post(main) + 1.0 ln_post(spatial) + 0.5 ln_post(semantic), @ proj   -> [h', w', D]

Release quirks kept:
  * the lowest id is "unsegmented" whatever it is: a window whose every pixel lies in real regions still has
    its lowest-id region excluded from merging and given the S > mean rule instead of its own block;
  * DBSCAN runs only when the window holds more than 2 ids (with 2 there is nothing to merge, and the ids are
    left as they are); the distance is measured from the global max of the similarity matrix, not from 1;
  * merged ids are cluster + 10000, the id the segmentor pads masks with (corrclip_segmentor.py:160): its
    padding is a region like any other (merged by its DINO features), and when the lowest id is >= 10000 a
    merged region can become the lowest id and so "unsegmented";
  * the spatial branch averages x_{L-1-n} .. x_{L-2} with n = 5, 12, 28 for 12, 24, 32 blocks, else L - 4
    (:529-537, :599: block indices L-2-n .. L-3 counted from 0), i.e. x_6..x_10 for ViT-B;
  * the semantic map goes DINO grid -> CLIP grid -> DINO grid by nearest sampling (:582, :620): a DINO patch
    takes the token of the region its CLIP cell's top-left DINO patch lies in, and regions that vanish at the
    CLIP grid get no token; the unsegmented region gets a token like any other;
  * the tokens never attend to themselves (only to CLS and their patches); A is one matrix for every head;
  * the release runs CLIP and DINO in float16 (corrclip_segmentor.py:57, 66); this runs in the inputs' dtype.

Not reproduced: the position embedding follows the package's "sclip" rule (vit.positional_embedding), which is
the release's interpolate_pos_encoding (:637-655, scale_factor ((gh + 0.1) / 14, (gw + 0.1) / 14), bicubic)
except on non-native grids of exactly 196 patches (e.g. 7x28), where the release adds the native embedding
unresized (:518); region ids are resampled in float64, not float32 (ids above 2^24 would be rounded there).
Padding: the release pads each crop to a multiple of 56 px, the image with zeros and the masks with id 10000
(corrclip_segmentor.py:148-160); a padded side that is not a multiple of 16 (168, 280) is then floored by CLIP's
patch conv (:508), its last rows unseen by CLIP while the values are stretched over the whole DINO grid. Here the
window is never padded and must be a multiple of the patch size (e.g. 224, or the release's 336 crop: both are
multiples of 56 too, so the release would not pad them either); the proxy grid is the caller's DINO grid (H / 8).
Batch 1 only, as released (:581).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..protocol_bases import WINDOWS_2025
from ..records import Published, register_head
from ..vit import attend, hidden_states_as_released, keep_residual_and_ffn, qkv_per_head, softmax_similarity

DEFAULTS: dict[str, Any] = {"interpolation": "sclip", "tau": 4.0, "dbscan_eps": 0.2, "dbscan_min_samples": 1,
                            "merged_offset": 10000, "spatial_weight": 1.0, "semantic_weight": 0.5,
                            "num_spatial": None}  # None: the release's rule by depth (spatial_layers)
RELEASE_NUM_SPATIAL = {12: 5, 24: 12, 32: 28}  # transformer.py:529-537; other depths L - 4


def spatial_layers(depth: int, num_spatial: int | None = None) -> slice:
    """Which of [x_0, ..., x_{L-1}] the spatial branch averages: x_{L-1-n} .. x_{L-2} (:599)."""
    n = RELEASE_NUM_SPATIAL.get(depth, depth - 4) if num_spatial is None else int(num_spatial)
    return slice(depth - 1 - n, depth - 1)


def regions_at_grid(regions: Tensor, grid: tuple[int, int]) -> Tensor:
    """Region ids [H, W] -> [h', w'] by F.interpolate 'nearest' (row floor(i H / h'), as :545 and :582)."""
    # the same rule as lposs.core.regions.resize_regions, kept here: importing lposs.core.regions would make
    # every stage that imports the heads registry (stage, plots) depend on that module in dvc.yaml
    sampled = F.interpolate(regions[None, None].to(torch.float64), size=tuple(grid), mode="nearest")
    return sampled[0, 0].to(torch.long)


def region_masks(regions: Tensor) -> tuple[Tensor, Tensor]:
    """[h, w] ids -> (sorted ids [R], masks [R, h*w] bool); masks[0] is the lowest id."""
    ids = torch.unique(regions)  # sorted
    return ids, ids[:, None] == regions.flatten()[None]


def merge_regions(regions: Tensor, feats: Tensor, eps: float, min_samples: int, offset: int = 10000) -> Tensor:
    """DBSCAN over the regions' mean features (:544-562). regions [h', w'], feats [h'*w', C] L2-normalised.

    -> [h', w']: each region but the lowest id relabelled cluster + offset (noise keeps its id)."""
    ids, masks = region_masks(regions)
    if len(ids) <= 2:
        return regions
    try:
        from sklearn.cluster import DBSCAN
    except ImportError as error:
        raise ImportError(f"the corrclip head merges regions with scikit-learn's DBSCAN: pip install -e .[masks] "
                          f"({error})") from error

    means = F.normalize(torch.stack([feats[mask].mean(dim=0) for mask in masks]), dim=1)[1:]  # [R-1, C]
    similarity = means @ means.T
    distance = (similarity.max() - similarity).detach().cpu().numpy()
    cluster = DBSCAN(metric="precomputed", eps=eps, min_samples=min_samples).fit_predict(distance)
    merged = regions.flatten().clone()
    for mask, label in zip(masks[1:], cluster.astype(np.int64)):
        if label != -1:
            merged[mask] = int(label) + offset
    return merged.reshape(regions.shape)


def scoped_affinity(feats: Tensor, regions: Tensor, tau: float) -> Tensor:
    """A [N', N'] = softmax(tau S) over allowed pairs (:564-578). feats [N', C] L2-normalised, regions [h', w']."""
    similarity = feats @ feats.T  # [N', N']
    _, rank = torch.unique(regions.flatten(), return_inverse=True)  # [N'], 0 = the lowest id
    same = (rank[:, None] == rank[None, :]) & (rank[:, None] > 0)  # inside one region (not the lowest id)
    lowest = rank == 0
    touching = (lowest[:, None] | lowest[None, :]) & (similarity > similarity.mean())
    logits = (similarity * tau).masked_fill(~(same | touching), float("-inf"))
    return logits.softmax(dim=-1)


def mask_class_tokens(visual: nn.Module, hidden: list[Tensor], token_regions: Tensor) -> tuple[Tensor, Tensor]:
    """One token per id of token_regions [gh, gw] through all blocks (:580-600, :619).

    hidden: [x_0, ..., x_{L-1}], each [1 + N, W]. Token r starts as x_0's CLS and in block l attends (queries
    from itself, keys and values of x_{l-1}) to CLS and the patches of region r only.
    -> (ids [R], tokens [R, W] after the full last block)."""
    ids, masks = region_masks(token_regions)  # [R], [R, N]
    allowed = torch.cat([torch.ones_like(masks[:, :1]), masks], dim=1)  # [R, 1 + N], CLS always
    bias = torch.zeros(allowed.shape, dtype=hidden[0].dtype, device=allowed.device)
    bias = bias.masked_fill(~allowed, float("-inf"))  # [R, 1 + N]
    tokens = hidden[0][:1].expand(len(ids), -1)  # [R, W]
    for block, x in zip(visual.transformer.resblocks, hidden):
        q, k, v = qkv_per_head(block, torch.cat([tokens, x]))  # [heads, R + 1 + N, d]
        q, k, v = q[:, : len(ids)], k[:, len(ids) :], v[:, len(ids) :]  # the tokens' queries, x's keys and values
        tokens = keep_residual_and_ffn(block, tokens, attend(block, softmax_similarity(q, k, bias), v))
    return ids, tokens


def values_at_grid(v: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """v [..., heads, 1 + N, d] -> patch values bilinearly resized from grid to size, [..., heads, h'*w', d]."""
    patches = v[..., 1:, :].unflatten(-2, grid).movedim(-1, -3)  # [..., heads, d, gh, gw]
    lead = patches.shape[:-3]
    resized = F.interpolate(patches.flatten(0, -4), size=size, mode="bilinear", align_corners=False)
    return resized.flatten(-2).transpose(-2, -1).reshape(*lead, size[0] * size[1], -1)


def main_and_spatial(block: nn.Module, x_last: Tensor, x_spatial: Tensor, affinity: Tensor,
                     grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """W_o (A v) + b_o of ln_1(x_last) and ln_1(x_spatial), each [1 + N, W] (:602-616) -> [2, h'*w', W]."""
    _, _, v = qkv_per_head(block, torch.stack([x_last, x_spatial]))  # [2, heads, 1 + N, d]
    return attend(block, affinity[None, None], values_at_grid(v, grid, size))


def _check(visual: nn.Module, window: Tensor, proxy: Tensor, regions: Tensor) -> None:
    patch = tuple(visual.conv1.kernel_size)
    if window.dim() != 4 or window.shape[0] != 1:
        raise ValueError(f"window: CorrCLIP takes one window [1, 3, H, W] (batch 1), got {tuple(window.shape)}")
    if window.shape[2] % patch[0] or window.shape[3] % patch[1]:
        raise ValueError(f"window: H, W = {tuple(window.shape[2:])} must be multiples of the patch size {patch}")
    if proxy.dim() != 3:
        raise ValueError(f"proxy: DINO q + k [h', w', C] expected, got {tuple(proxy.shape)}")
    if regions.shape != proxy.shape[:2]:
        raise ValueError(f"regions: shape {tuple(regions.shape)} must match the proxy grid {tuple(proxy.shape[:2])}")
    if regions.is_floating_point():
        raise ValueError(f"regions: integer region ids expected, got {regions.dtype}")


def corrclip(visual: nn.Module, window: Tensor, proxy: Tensor, regions: Tensor, settings: dict[str, Any]) -> Tensor:
    """One window [1, 3, H, W] -> CorrCLIP's features [h', w', D] at the proxy grid, after proj, not normalised.

    proxy [h', w', C]: DINO last-block q + k, CLS dropped, not normalised (normalised here, as the segmentor does);
    regions [h', w']: the window's pixel ids at that grid, regions_at_grid(ids [H, W], (h', w')) as released."""
    _check(visual, window, proxy, regions)
    size = tuple(proxy.shape[:2])
    grid = (window.shape[2] // visual.conv1.kernel_size[0], window.shape[3] // visual.conv1.kernel_size[1])
    feats = F.normalize(proxy.flatten(0, 1), dim=-1)  # [N', C]
    regions = merge_regions(regions.to(torch.long), feats, float(settings["dbscan_eps"]),
                            int(settings["dbscan_min_samples"]), int(settings["merged_offset"]))
    affinity = scoped_affinity(feats, regions, float(settings["tau"]))  # [N', N']
    hidden = hidden_states_as_released(visual, window, settings["interpolation"])  # [x_0 .. x_{L-1}]
    blocks = visual.transformer.resblocks
    x_spatial = torch.stack(hidden[spatial_layers(len(blocks), settings["num_spatial"])]).mean(dim=0)
    main, spatial = main_and_spatial(blocks[-1], hidden[-1], x_spatial, affinity, grid, size)  # [N', W] each
    token_regions = regions_at_grid(regions, grid)  # [gh, gw]
    ids, tokens = mask_class_tokens(visual, hidden, token_regions)
    index = torch.searchsorted(ids, regions_at_grid(token_regions, size))  # [h', w'] -> token row
    semantic = tokens[index.flatten()]  # [N', W]
    out = (visual.ln_post(main) + float(settings["spatial_weight"]) * visual.ln_post(spatial)
           + float(settings["semantic_weight"]) * visual.ln_post(semantic))
    return (out @ visual.proj).reshape(*size, -1)


# configs/base_config.py: MetaCLIP fullcc ViT-B/16 (QuickGELU), DINO B/8; windows 336 / 112; masks from SAM 2
# hiera-L (8 points, the 50.4 row); map correction after the labels (corrclip_segmentor.py:216-222)
PROTOCOL = {
    "base": {**WINDOWS_2025, "crop": 336, "stride": 112, "classes": "corrclip", "clip": "metaclip_fullcc",
             "post": "region_mode", "source": "zdk258/CorrCLIP 103bc18 CorrCLIPv1/configs/cfg_*.py"},
    "datasets": {"voc21": {"prob_thd": 0.2}, "context60": {"prob_thd": 0.15}, "coco_object": {"prob_thd": 0.25},
                 "cityscapes": {"crop": 224, "stride": 112, "short_side": 448}, "ade20k": {"short_side": 448}},
}


@register_head(
    "corrclip", title="CorrCLIP", defaults=DEFAULTS, reads=("proxy", "regions"), proxy_feature="qk",
    proxy="dino_vitb8", output_grid="proxy", masks="sam2_hiera_l", protocol=PROTOCOL,
    release="zdk258/CorrCLIP@103bc18", year=2025, paper_vm="dino_vitb16",
    published=(Published("CorrCLIP (MetaCLIP + DINO B/8 proxy + SAM 2 hiera-L masks of 32 points, training-free; with "
                         "its map correction)", (74.8, 44.2, 43.7, 88.8, 49.4, 48.8, 26.9, 31.6), 51.0,
                         "CorrCLIP's README (zdk258/CorrCLIP 103bc18 CorrCLIPv1/README.md)"),),
)
def corrclip_windows(visual: nn.Module, windows: Tensor, proxy: Tensor, regions: Tensor, **settings: Any) -> Tensor:
    """Windows [B, 3, H, W] one by one (batch 1, as released) -> [B, h', w', D] after proj. regions: each window's
    ids at the proxy grid [B, h', w'], or at its pixels [B, H, W] (then sampled to the proxy grid by
    `regions_at_grid`, as the segmentor does)."""
    if regions.shape[1:] == windows.shape[2:] and regions.shape[1:] != proxy.shape[1:3]:
        regions = torch.stack([regions_at_grid(r, tuple(proxy.shape[1:3])) for r in regions])
    if regions.shape != proxy.shape[:3]:
        raise ValueError(f"corrclip: regions {tuple(regions.shape)} must be [B, h', w'] at the proxy grid "
                         f"{tuple(proxy.shape[:3])} or [B, H, W] at the windows' pixels")
    return torch.stack([corrclip(visual, windows[b : b + 1], proxy[b], regions[b], settings)
                        for b in range(windows.shape[0])])
