"""Dense CLIP heads of the training-free field, run through one door: `dense_clip_features`.

    feats = dense_clip_features(model.visual, windows, head="sclip")       # [B, h, w, D], unit norm
    feats = dense_clip_features(visual, windows, "proxyclip", proxy=dino_tokens)   # at the proxy grid

Every head is a record (lposs.models.records: its function, kind, defaults, inputs, protocol, published rows)
declared in its own module, lposs/models/heads_*/<name>.py; `HEADS` is the registry ({name: record},
lposs.models.head_registry), the one list the factory, the CLI, the web app, the tables and the benchmarks read.
A researcher's own head registers the same way (`lposs.register_head`) and runs here like the others.

All heads share CLIP's first blocks and differ in what replaces or follows the last one (docs/field.md section
2). With h = ln_1(x), [q; k; v] = h W_in^T + b_in split into heads of size d, s = d^-1/2 and
Attn(A) = W_o concat_h(A_h v_h) + b_o, the 2024 heads (lposs.models.heads_2024) are:

    maskclip   y = x + W_o v + b_o; z = y + MLP(ln_2 y)                 (LPOSS; residual and FFN kept)
    sclip      y = x + Attn(softmax(s q q^T) + softmax(s k k^T)); z = y + MLP(ln_2 y)
    clearclip  z = Attn(softmax(s q q^T))                                (residual and FFN dropped)
    naclip     z = Attn(softmax(s k k^T + Omega)), Omega_ij = exp(-|p_i - p_j|^2 / (2 sigma^2)) on patches
    proxyclip  z = Attn(A) at the proxy grid, A from the proxy's tokens (section 3), the same for all heads

then features = normalise(ln_post(z)[patches] @ proj). Off the native 14x14 grid the position embedding is
resized by each release's own rule (`interpolation`): "lposs" resizes bicubically to the grid size;
"sclip" (SCLIP, ClearCLIP, NACLIP, ProxyCLIP) passes scale_factor ((gh + 0.1) / 14, (gw + 0.1) / 14), which
samples other points; "gem" (GEM) resizes to the grid size with the antialiased bicubic kernel. GEM (a self-self
attention path beside the last six blocks, a traced head) and CLIP-DINOiser (MaskCLIP pooled by two trained
convolutions, its record's `trained` weights) are in lposs.models.heads_2024 too. Windows are CLIP-normalised; the
batch dimension comes first throughout. The 2025 heads (lposs.models.heads_2025) read intermediate blocks too and
run window by window; two heads that read a mask model (lposs.models.heads_masks) take its regions or SAM's
tensors as extra inputs, and LaVG's (SCLIP's head) leaves its Panoptic Cut masks to its own step.

Release quirks deliberately NOT reproduced (they only bite on grids the releases' protocols never use):
the SCLIP family adds the native embedding unresized when a non-native grid has exactly 196 patches (e.g.
7x28), and ProxyCLIP reshapes CLIP's values as (gw, gh) on non-square crops; both are read here as (gh, gw).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .head_registry import HEADS, head_record, heads_reading, records, register_head  # noqa: F401 - re-exported
from .heads_2025.common import WindowTrace
from .records import DEFAULT_HEAD, INPUTS, KINDS, HeadRecord, Published, unregister_head  # noqa: F401 - re-exported
from .vit import hidden_states_as_released, positional_embedding, proxy_affinity, qkv_per_head, tokens_before_last_block  # noqa: F401 - positional_embedding, tokens_before_last_block, qkv_per_head, proxy_affinity re-exported

# What each proxy feature a record may name is (lposs.models.backbones.VisionFeatures computes them)
PROXY_FEATURES = {"tokens": "the vision model's final patch tokens [B, h', w', Dv]",
                  "k_raw": "DINO's last-block keys [B, h', w', heads * 64] (CLS dropped, heads concatenated)",
                  "qk": "DINO's last-block q + k [B, h', w', heads * 64] (CLS dropped, heads concatenated)"}


def head_settings(head: str, head_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The head's default parameters updated by `head_params`; unknown names and values raise ValueError."""
    return head_record(head).settings(head_params)


# ----------------------------------------------------------------------------------------------------
# The runners, one per kind (records.KINDS): windows [B, 3, H, W] -> features [B, h, w, D] after proj
# ----------------------------------------------------------------------------------------------------


def _grid(visual: nn.Module, windows: Tensor) -> tuple[int, int]:
    patch = int(visual.patch_size[0])
    return windows.shape[2] // patch, windows.shape[3] // patch


def _projected(visual: nn.Module, tokens: Tensor, batch: int, grid: tuple[int, int]) -> Tensor:
    """Patch tokens [B, N, W] before ln_post -> features [B, gh, gw, D]."""
    return (visual.ln_post(tokens) @ visual.proj).reshape(batch, grid[0], grid[1], -1)


def _run_last_block(record: HeadRecord, visual: nn.Module, windows: Tensor, settings: dict, inputs: dict) -> Tensor:
    tokens = tokens_before_last_block(visual, windows, settings["interpolation"])  # [B, 1 + gh*gw, W]
    tokens, grid = record.function(visual.transformer.resblocks[-1], tokens, _grid(visual, windows), settings,
                                   inputs.get("proxy"))
    return _projected(visual, tokens, windows.shape[0], grid)


def _run_traced(record: HeadRecord, visual: nn.Module, windows: Tensor, settings: dict, inputs: dict) -> Tensor:
    """One forward per window as released, every block's output kept -> [B, gh, gw, D]."""
    grid, proxy = _grid(visual, windows), inputs.get("proxy")
    tokens = []
    for b in range(windows.shape[0]):
        hidden = hidden_states_as_released(visual, windows[b : b + 1], settings["interpolation"])  # [1 + N, W] each
        trace = WindowTrace(hidden, windows[b], grid, None if proxy is None else proxy[b])
        tokens.append(record.function(visual, trace, settings))  # [N, W]
    return _projected(visual, torch.stack(tokens), windows.shape[0], grid)


def _run_window(record: HeadRecord, visual: nn.Module, windows: Tensor, settings: dict, inputs: dict) -> Tensor:
    return record.function(visual, windows, **inputs, **settings)


RUNNERS: dict[str, Callable[..., Tensor]] = {"last_block": _run_last_block, "traced": _run_traced,
                                              "window": _run_window, "whole_image": _run_window}
assert set(RUNNERS) == set(KINDS)


# ----------------------------------------------------------------------------------------------------
# The one door
# ----------------------------------------------------------------------------------------------------


def _check_windows(visual: nn.Module, windows: Tensor) -> None:
    patch = int(visual.patch_size[0])
    if windows.ndim != 4 or windows.shape[1] != 3:
        raise ValueError(f"windows must be CLIP-normalised [B, 3, H, W], got shape {tuple(windows.shape)}")
    if windows.shape[2] % patch or windows.shape[3] % patch:
        raise ValueError(f"window size {tuple(windows.shape[2:])} is not a multiple of the patch size {patch}")


def _check_inputs(record: HeadRecord, windows: Tensor, inputs: dict[str, Any]) -> None:
    """The head gets exactly the inputs it reads (record.reads; the query embeddings come as the parameter `text`);
    the proxy has one row per window."""
    given = {name for name, value in inputs.items() if value is not None}
    extra, missing = given - set(record.reads), set(record.reads) - given - {"text"}
    readers = heads_reading(*sorted(extra)) if extra else ()
    if extra:
        raise ValueError(f"head {record.name!r} takes no {' or '.join(sorted(extra))}; "
                         + (f"it reads {', '.join(record.reads)}" if record.reads else "it reads only the windows")
                         + (f" (heads that do: {', '.join(readers)})" if readers else ""))
    if missing:
        described = {**INPUTS, "proxy": PROXY_FEATURES.get(record.proxy_feature, INPUTS["proxy"])}
        needs = "; ".join(f"{name} = {described[name]}" for name in sorted(missing))
        hint = (f" (e.g. VisionFeatures('{record.proxy or 'dino_vitb8'}', feature={record.proxy_feature!r})"
                ".dense_features(windows))" if "proxy" in missing else "")
        raise ValueError(f"head {record.name!r} needs {needs}{hint}")
    proxy = inputs.get("proxy")
    if proxy is not None and (proxy.ndim != 4 or proxy.shape[0] != windows.shape[0]):
        raise ValueError(f"head {record.name!r} needs proxy = {INPUTS['proxy']} with B = {windows.shape[0]} windows "
                         f"(got {tuple(proxy.shape)})")


def _check_required(record: HeadRecord, settings: dict[str, Any]) -> None:
    missing = [name for name in record.required if settings[name] is None]
    if missing:
        raise ValueError(f"head {record.name!r} needs {' and '.join(missing)}"
                         + "".join(f"; {name} = {INPUTS[name]}" for name in missing if name in INPUTS)
                         + (f" (e.g. {', '.join(f'{k} = {v}' for k, v in record.caller_defaults.items())})"
                            if record.caller_defaults else ""))


def dense_clip_features(
    visual: nn.Module, windows: Tensor, head: str = DEFAULT_HEAD, proxy: Tensor | None = None, *,
    regions: Tensor | None = None, cells: Tensor | None = None, canvas: tuple[int, int] | None = None,
    sam_attn: Tensor | None = None, sam_v: Tensor | None = None, **head_params: Any
) -> Tensor:
    """CLIP-normalised windows [B, 3, H, W] -> the head's patch features [B, h, w, D], L2-normalised.

    visual: an open_clip VisionTransformer (`model.visual`). head: a name in `HEADS`; head_params override its
    defaults (sigma for naclip; beta, gamma, affinity_mean for proxyclip; the records' defaults for the others;
    interpolation "lposs" | "sclip" | "gem" for the CLIP heads; text for resclip and clipdinoiser). The extra inputs (records.INPUTS), each
    only for a head that reads it: proxy (proxyclip's and trident's vision-model tokens [B, h', w', Dv], the output
    is then at the proxy grid; cass's DINO keys; corrclip's DINO q + k), corrclip's `regions` [B, h', w'] (each
    window's region ids at the proxy grid), trident's `cells` [B, 4] and `canvas` (the windows' patch cells on the
    whole image, `heads_masks.trident.release_windows`), `sam_attn` [heads, n, n] and `sam_v` [heads, h_s, w_s, d]
    (`lposs.models.sam_attention`): trident's windows are ALL windows of one image, and its output is that image's
    features at SAM's grid, [1, h_s, w_s, D].
    """
    record = head_record(head)
    settings = record.settings(head_params)
    _check_windows(visual, windows)
    inputs = {"proxy": proxy, "regions": regions, "cells": cells, "canvas": canvas, "sam_attn": sam_attn,
              "sam_v": sam_v}
    _check_inputs(record, windows, inputs)
    _check_required(record, settings)
    inputs = {name: value for name, value in inputs.items() if value is not None}
    feats = RUNNERS[record.kind](record, visual, windows, settings, inputs)  # [B, h, w, D]
    return F.normalize(feats.float(), dim=-1)
