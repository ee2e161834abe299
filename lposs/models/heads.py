"""Dense CLIP heads of the training-free field: each one's last block, as pure functions of an open_clip ViT.

    feats = dense_clip_features(model.visual, windows, head="sclip")       # [B, h, w, D], unit norm
    feats = dense_clip_features(visual, windows, "proxyclip", proxy=dino_tokens)   # at the proxy grid

All heads share the first L-1 blocks of CLIP (tokens entering the last block: x, CLS + N patches) and differ
only in the last block (docs/field.md section 2, the releases' file:line cited there). With h = ln_1(x),
[q; k; v] = h W_in^T + b_in split into heads of size d, s = d^-1/2 and Attn(A) = W_o concat_h(A_h v_h) + b_o:

    maskclip   y = x + W_o v + b_o; z = y + MLP(ln_2 y)                 (LPOSS; residual and FFN kept)
    sclip      y = x + Attn(softmax(s q q^T) + softmax(s k k^T)); z = y + MLP(ln_2 y)
    clearclip  z = Attn(softmax(s q q^T))                                (residual and FFN dropped)
    naclip     z = Attn(softmax(s k k^T + Omega)), Omega_ij = exp(-|p_i - p_j|^2 / (2 sigma^2)) on patches
    proxyclip  z = Attn(A) at the proxy grid, A from the proxy's tokens (section 3), the same for all heads

then features = normalise(ln_post(z)[patches] @ proj). Off the native 14x14 grid the position embedding is
resized by each release's own rule (`interpolation`): "lposs" resizes bicubically to the grid size;
"sclip" (SCLIP, ClearCLIP, NACLIP, ProxyCLIP) passes scale_factor ((gh + 0.1) / 14, (gw + 0.1) / 14), which
samples other points. Windows are CLIP-normalised; the batch dimension comes first throughout.

The 2025 heads (scclip, sfp, pearl, resclip, cass: lposs.models.heads_2025) read intermediate blocks too; the
same `dense_clip_features` runs them window by window. `HEADS` is the one registry of all ten (what the
factory, the CLI, the web app and the benchmarks offer; `head_settings` validates against it);
`LAST_BLOCK_HEADS` holds the five above, `HEADS_2025` the 2025 ones, `HEADS_MASKS` the two that read a mask
model (trident, corrclip: lposs.models.heads_masks). `PROXY_HEADS` take a second vision model's
features (`PROXY_FEATURES` says which), `TEXT_HEADS` the class-list's query embeddings (`text=`).

Release quirks deliberately NOT reproduced (they only bite on grids the releases' protocols never use):
the SCLIP family adds the native embedding unresized when a non-native grid has exactly 196 patches (e.g.
7x28), and ProxyCLIP reshapes CLIP's values as (gw, gh) on non-square crops; both are read here as (gh, gw).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads_2025 import HEAD_FUNCTIONS_2025, HEADS_2025, REQUIRED_2025, WindowTrace
from .heads_masks import HEADS_MASKS, REGION_HEADS, WHOLE_IMAGE_HEADS  # noqa: F401 - the last two re-exported
from .heads_masks.corrclip import corrclip
from .heads_masks.trident import trident
from .vit import (  # noqa: F401 - positional_embedding, tokens_before_last_block, qkv_per_head, proxy_affinity re-exported
    INTERPOLATIONS,
    attend,
    hidden_states_as_released,
    keep_residual_and_ffn,
    neighbourhood_prior,
    positional_embedding,
    proxy_affinity,
    proxy_attention,
    qkv_per_head,
    softmax_similarity,
    tokens_before_last_block,
)

# Head name -> default parameters (including the position-embedding rule of its release).
LAST_BLOCK_HEADS: dict[str, dict[str, Any]] = {
    "maskclip": {"interpolation": "lposs"},
    "sclip": {"interpolation": "sclip"},
    "clearclip": {"interpolation": "sclip"},
    "naclip": {"interpolation": "sclip", "sigma": 5.0},
    "proxyclip": {"interpolation": "sclip", "beta": 1.2, "gamma": 3.0, "affinity_mean": "batch"},
}
AFFINITY_MEANS = ("batch", "window")
HEADS: dict[str, dict[str, Any]] = {**LAST_BLOCK_HEADS, **HEADS_2025, **HEADS_MASKS}  # the one registry: every head
# The feature of the proxy model each proxy head reads (lposs.models.backbones.VisionFeatures names them):
# ProxyCLIP and Trident the final normalised tokens, CASS the raw last-block keys on the window resized to a
# square, CorrCLIP the sum of the last block's q and k.
PROXY_FEATURES = {"proxyclip": "tokens", "cass": "k_raw", "trident": "tokens", "corrclip": "qk"}
PROXY_HEADS = tuple(PROXY_FEATURES)
# The vision model each release reads as its proxy (what proxy "release" means in a BackboneSpec).
RELEASE_PROXIES = {"proxyclip": "dino_vitb8", "cass": "dino_vitb8", "trident": "dino_vitb16", "corrclip": "dino_vitb8"}
PROXY_DESCRIPTIONS = {"tokens": "the vision model's final patch tokens [B, h', w', Dv]",
                      "k_raw": "DINO's last-block keys [B, h', w', heads * 64] (CLS dropped, heads concatenated)",
                      "qk": "DINO's last-block q + k [B, h', w', heads * 64] (CLS dropped, heads concatenated)"}
TEXT_HEADS = tuple(head for head, required in REQUIRED_2025.items() if "text" in required)  # ("resclip",)


def head_settings(head: str, head_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The head's default parameters updated by `head_params`; unknown names and values raise ValueError."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    settings = dict(HEADS[head])
    for name, value in (head_params or {}).items():
        if name not in settings:
            raise ValueError(f"head {head!r} has no parameter {name!r}; its parameters: {sorted(settings)}")
        settings[name] = value
    if settings["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"interpolation={settings['interpolation']!r}: use one of {INTERPOLATIONS}")
    if settings.get("affinity_mean", "batch") not in AFFINITY_MEANS:
        raise ValueError(f"affinity_mean={settings['affinity_mean']!r}: use one of {AFFINITY_MEANS}")
    return settings


# ----------------------------------------------------------------------------------------------------
# The heads: x [B, 1 + N, W] entering the last block -> (patch tokens [B, N_out, W] before ln_post, grid)
# ----------------------------------------------------------------------------------------------------

Grid = tuple[int, int]


def _maskclip(block, x, grid, settings, proxy) -> tuple[Tensor, Grid]:
    _, _, v = qkv_per_head(block, x)
    value_path = block.attn.out_proj(v.transpose(1, 2).flatten(2))  # attention replaced by identity
    return keep_residual_and_ffn(block, x, value_path)[:, 1:], grid


def _sclip(block, x, grid, settings, proxy) -> tuple[Tensor, Grid]:
    q, k, v = qkv_per_head(block, x)
    weights = softmax_similarity(q, q) + softmax_similarity(k, k)  # rows sum to 2
    return keep_residual_and_ffn(block, x, attend(block, weights, v))[:, 1:], grid


def _clearclip(block, x, grid, settings, proxy) -> tuple[Tensor, Grid]:
    q, _, v = qkv_per_head(block, x)
    return attend(block, softmax_similarity(q, q), v)[:, 1:], grid


def _naclip(block, x, grid, settings, proxy) -> tuple[Tensor, Grid]:
    _, k, v = qkv_per_head(block, x)
    omega = neighbourhood_prior(grid, float(settings["sigma"]), x.device, k.dtype)  # not scaled by s
    return attend(block, softmax_similarity(k, k, omega), v)[:, 1:], grid


def _proxyclip(block, x, grid, settings, proxy) -> tuple[Tensor, Grid]:
    out = proxy_attention(block, x, grid, proxy, float(settings["beta"]), float(settings["gamma"]),
                          settings["affinity_mean"])  # [B, N', W]
    return out, (int(proxy.shape[1]), int(proxy.shape[2]))


HEAD_FUNCTIONS: dict[str, Callable[..., tuple[Tensor, Grid]]] = {
    "maskclip": _maskclip,
    "sclip": _sclip,
    "clearclip": _clearclip,
    "naclip": _naclip,
    "proxyclip": _proxyclip,
}


def _check_inputs(visual: nn.Module, windows: Tensor, head: str, proxy: Tensor | None) -> None:
    patch = int(visual.patch_size[0])
    if windows.ndim != 4 or windows.shape[1] != 3:
        raise ValueError(f"windows must be CLIP-normalised [B, 3, H, W], got shape {tuple(windows.shape)}")
    if windows.shape[2] % patch or windows.shape[3] % patch:
        raise ValueError(f"window size {tuple(windows.shape[2:])} is not a multiple of the patch size {patch}")
    if head in PROXY_HEADS:
        if proxy is None or proxy.ndim != 4 or proxy.shape[0] != windows.shape[0]:
            got = None if proxy is None else tuple(proxy.shape)
            feature = PROXY_FEATURES[head]
            raise ValueError(f"head {head!r} needs proxy = {PROXY_DESCRIPTIONS[feature]} with B = {windows.shape[0]} "
                             f"windows (got {got}); e.g. VisionFeatures('dino_vitb8', feature={feature!r})"
                             ".dense_features(windows)")
    elif proxy is not None:
        raise ValueError(f"head {head!r} takes no proxy; only {' and '.join(map(repr, PROXY_HEADS))} do")


def _check_required(head: str, settings: dict[str, Any]) -> None:
    missing = [name for name in REQUIRED_2025.get(head, ()) if settings[name] is None]
    if missing:
        raise ValueError(f"head {head!r} needs {' and '.join(missing)} (e.g. text = [Q, D] unit query "
                         "embeddings, temp_thd = 0.5)")


def _window_by_window(visual: nn.Module, windows: Tensor, head: str, settings: dict[str, Any],
                      proxy: Tensor | None) -> Tensor:
    """A 2025 head on each window, one forward per window as released -> patch tokens [B, N, W] before ln_post."""
    patch = int(visual.patch_size[0])
    grid = (windows.shape[2] // patch, windows.shape[3] // patch)
    tokens = []
    for b in range(windows.shape[0]):
        hidden = hidden_states_as_released(visual, windows[b : b + 1], settings["interpolation"])  # [1 + N, W] each
        trace = WindowTrace(hidden, windows[b], grid, None if proxy is None else proxy[b])
        tokens.append(HEAD_FUNCTIONS_2025[head](visual, trace, settings))
    return torch.stack(tokens)


MASK_INPUTS = {"corrclip": ("regions",), "trident": ("cells", "canvas", "sam_attn", "sam_v")}


def _check_mask_inputs(head: str, inputs: dict[str, Any]) -> None:
    """Each mask head gets exactly its own extra inputs (MASK_INPUTS), the other heads none."""
    needed = MASK_INPUTS.get(head, ())
    given = {name for name, value in inputs.items() if value is not None}
    if given - set(needed):
        raise ValueError(f"head {head!r} takes no {' or '.join(sorted(given - set(needed)))}; "
                         + (f"it reads {', '.join(needed)}" if needed else "only trident and corrclip read mask inputs"))
    if set(needed) - given:
        what = ("regions = [B, h', w'] mask-region ids of each window at the proxy grid (corrclip.regions_at_grid)"
                if head == "corrclip" else "cells, canvas (trident.release_windows) and SAM's sam_attn, sam_v "
                "(lposs.models.sam_attention.SamAttention)")
        raise ValueError(f"head {head!r} needs {what}; missing: {', '.join(sorted(set(needed) - given))}")


def _mask_head(visual: nn.Module, windows: Tensor, head: str, settings: dict[str, Any], proxy: Tensor,
               inputs: dict[str, Any]) -> Tensor:
    """trident: the image's features [1, h_s, w_s, D]; corrclip: window by window, [B, h', w', D] (after proj)."""
    if head == "trident":
        return trident(visual, windows, proxy, inputs["cells"], tuple(inputs["canvas"]), inputs["sam_attn"],
                       inputs["sam_v"], settings)
    regions = inputs["regions"]
    if regions.shape != proxy.shape[:3]:
        raise ValueError(f"corrclip: regions {tuple(regions.shape)} must be [B, h', w'] at the proxy grid "
                         f"{tuple(proxy.shape[:3])}")
    return torch.stack([corrclip(visual, windows[b : b + 1], proxy[b], regions[b], settings)
                        for b in range(windows.shape[0])])


def dense_clip_features(
    visual: nn.Module, windows: Tensor, head: str = "maskclip", proxy: Tensor | None = None, *,
    regions: Tensor | None = None, cells: Tensor | None = None, canvas: tuple[int, int] | None = None,
    sam_attn: Tensor | None = None, sam_v: Tensor | None = None, **head_params: Any
) -> Tensor:
    """CLIP-normalised windows [B, 3, H, W] -> the head's patch features [B, h, w, D], L2-normalised.

    visual: an open_clip VisionTransformer (`model.visual`). head: a name in `HEADS`;
    head_params override its defaults (sigma for naclip; beta, gamma, affinity_mean for proxyclip; those of
    lposs.models.heads_2025 and lposs.models.heads_masks for the others; interpolation "lposs" | "sclip" for
    all). proxy: proxyclip's and trident's vision-model tokens [B, h', w', Dv] (the output is then at the proxy
    grid), cass's DINO keys, corrclip's DINO q + k. The mask heads' inputs (MASK_INPUTS): corrclip's
    `regions` [B, h', w'] (each window's region ids at the proxy grid); trident's `cells` [B, 4] and `canvas`
    (the windows' patch cells on the whole image, `heads_masks.trident.release_windows`), `sam_attn`
    [heads, n, n] and `sam_v` [heads, h_s, w_s, d] (`lposs.models.sam_attention`): trident's windows are ALL
    windows of one image, and its output is that image's features at SAM's grid, [1, h_s, w_s, D].
    """
    settings = head_settings(head, head_params)
    _check_inputs(visual, windows, head, proxy)
    _check_required(head, settings)
    mask_inputs = {"regions": regions, "cells": cells, "canvas": canvas, "sam_attn": sam_attn, "sam_v": sam_v}
    _check_mask_inputs(head, mask_inputs)
    if head in HEADS_MASKS:
        return F.normalize(_mask_head(visual, windows, head, settings, proxy, mask_inputs).float(), dim=-1)
    patch = int(visual.patch_size[0])
    grid = (windows.shape[2] // patch, windows.shape[3] // patch)
    if head in HEAD_FUNCTIONS_2025:
        tokens = _window_by_window(visual, windows, head, settings, proxy)  # [B, N, W]
    else:
        tokens = tokens_before_last_block(visual, windows, settings["interpolation"])  # [B, 1 + gh*gw, W]
        tokens, grid = HEAD_FUNCTIONS[head](visual.transformer.resblocks[-1], tokens, grid, settings, proxy)
    feats = visual.ln_post(tokens) @ visual.proj  # [B, N, D]
    feats = F.normalize(feats.float(), dim=-1)
    return feats.reshape(windows.shape[0], grid[0], grid[1], -1)  # [B, h, w, D]
