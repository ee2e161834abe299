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

Release quirks deliberately NOT reproduced (they only bite on grids the releases' protocols never use):
the SCLIP family adds the native embedding unresized when a non-native grid has exactly 196 patches (e.g.
7x28), and ProxyCLIP reshapes CLIP's values as (gw, gh) on non-square crops; both are read here as (gh, gw).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INTERPOLATIONS = ("lposs", "sclip")

# Head name -> default parameters (including the position-embedding rule of its release).
HEADS: dict[str, dict[str, Any]] = {
    "maskclip": {"interpolation": "lposs"},
    "sclip": {"interpolation": "sclip"},
    "clearclip": {"interpolation": "sclip"},
    "naclip": {"interpolation": "sclip", "sigma": 5.0},
    "proxyclip": {"interpolation": "sclip", "beta": 1.2, "gamma": 3.0, "affinity_mean": "batch"},
}
AFFINITY_MEANS = ("batch", "window")


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
# Up to the last block
# ----------------------------------------------------------------------------------------------------


def positional_embedding(visual: nn.Module, grid: tuple[int, int], interpolation: str = "lposs") -> Tensor:
    """[1 + gh*gw, W]: the native embedding, or its patch part resized bicubically by the release's rule."""
    pos = visual.positional_embedding  # [1 + g0*g1, W]
    native = tuple(int(g) for g in visual.grid_size)
    if tuple(grid) == native:
        return pos
    patch_pos = pos[1:].reshape(1, native[0], native[1], -1).permute(0, 3, 1, 2)  # [1, W, g0, g1]
    if interpolation == "lposs":  # LPOSS / mmseg resize to the target size
        patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", align_corners=False)
    elif interpolation == "sclip":  # SCLIP clip/model.py:263-281; the scale itself maps the coordinates
        scale = ((grid[0] + 0.1) / native[0], (grid[1] + 0.1) / native[1])
        patch_pos = F.interpolate(
            patch_pos, scale_factor=scale, mode="bicubic", align_corners=False, recompute_scale_factor=False
        )
    else:
        raise ValueError(f"interpolation={interpolation!r}: use one of {INTERPOLATIONS}")
    assert tuple(patch_pos.shape[-2:]) == tuple(grid), (patch_pos.shape, grid)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)  # [gh*gw, W]
    return torch.cat([pos[:1], patch_pos], dim=0)


def tokens_before_last_block(visual: nn.Module, x: Tensor, interpolation: str = "lposs") -> Tensor:
    """CLIP-normalised images [B, 3, H, W] -> the tokens entering the last block, [B, 1 + gh*gw, W]."""
    patches = visual.conv1(x)  # [B, W, gh, gw]
    grid = tuple(patches.shape[-2:])
    patches = patches.flatten(2).transpose(1, 2)  # [B, gh*gw, W]
    cls = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # [B, 1, W]
    pos = positional_embedding(visual, grid, interpolation).to(patches.dtype)
    tokens = visual.ln_pre(torch.cat([cls, patches], dim=1) + pos)  # [B, L, W]
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", blocks[-1].attn.batch_first)
    if not batch_first:  # older open_clip: blocks take [L, B, W]
        tokens = tokens.transpose(0, 1)
    for block in blocks[:-1]:
        tokens = block(tokens)
    return tokens if batch_first else tokens.transpose(0, 1)  # [B, L, W]


# ----------------------------------------------------------------------------------------------------
# Pieces of the last block
# ----------------------------------------------------------------------------------------------------


def qkv_per_head(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x [B, L, W] -> q, k, v of the block's attention on ln_1(x), each [B, heads, L, d]."""
    attn = block.attn
    if attn.in_proj_weight is not None:
        weight = attn.in_proj_weight  # [3W, W]
    else:
        weight = torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight])
    qkv = F.linear(block.ln_1(x), weight, attn.in_proj_bias)  # [B, L, 3W]
    batch, length, _ = qkv.shape
    qkv = qkv.reshape(batch, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, heads, L, d]
    return qkv[0], qkv[1], qkv[2]


def attend(block: nn.Module, weights: Tensor, v: Tensor) -> Tensor:
    """Attn(A) = W_o concat_heads(A_h v_h) + b_o. weights [B or 1, heads or 1, L, L'], v [B, heads, L', d]."""
    out = weights @ v  # [B, heads, L, d]
    return block.attn.out_proj(out.transpose(1, 2).flatten(2))  # [B, L, W]


def keep_residual_and_ffn(block: nn.Module, x: Tensor, attended: Tensor) -> Tensor:
    """y = x + attended; z = y + MLP(ln_2 y) (open_clip's layer scales, identity for ViT-B/16, included)."""
    y = x + block.ls_1(attended)
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def softmax_similarity(a: Tensor, b: Tensor, bias: Tensor | float = 0.0) -> Tensor:
    """softmax(s a b^T + bias) per head, s = d^-1/2. a, b: [B, heads, L, d] -> [B, heads, L, L]."""
    scale = a.shape[-1] ** -0.5
    return torch.softmax(a @ b.transpose(-2, -1) * scale + bias, dim=-1)


def neighbourhood_prior(grid: tuple[int, int], sigma: float, device=None, dtype=None) -> Tensor:
    """NACLIP's Omega [1 + N, 1 + N]: exp(-|p_i - p_j|^2 / (2 sigma^2)) between patch positions, 0 on CLS."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=1).to(torch.float64)  # [N, 2]
    omega = torch.exp(-torch.cdist(positions, positions).square() / (2 * sigma**2))  # [N, N]
    omega = F.pad(omega, (1, 0, 1, 0))  # CLS row and column: no prior
    return omega.to(device=device, dtype=dtype or torch.float32)


def proxy_affinity(proxy: Tensor, beta: float, gamma: float, mean_over: str = "batch") -> Tensor:
    """ProxyCLIP's A [B, N', N'] from proxy tokens [B, h', w', Dv] (docs/field.md section 3).

    S = F F^T of the L2-normalised tokens; gamma (S - beta mean(S)), entries < 0 -> -inf; row softmax.
    mean_over "batch": the mean over every entry of the batch tensor (the release, which runs one crop per
    batch); "window": each window's own mean (independent of how windows are batched).
    """
    feats = F.normalize(proxy.flatten(1, 2), dim=-1)  # [B, N', Dv]
    similarity = feats @ feats.transpose(1, 2)  # [B, N', N']
    mean = similarity.mean() if mean_over == "batch" else similarity.mean(dim=(1, 2), keepdim=True)
    logits = gamma * (similarity - beta * mean)
    logits = logits.masked_fill(logits < 0, float("-inf"))
    return torch.softmax(logits, dim=-1)


def resize_patch_values(v: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """v [B, heads, 1 + gh*gw, d] -> patch values bilinearly resized to `size`, [B, heads, h'*w', d]."""
    batch, heads, _, dim = v.shape
    patches = v[:, :, 1:].reshape(batch * heads, grid[0], grid[1], dim).permute(0, 3, 1, 2)  # [B*heads, d, gh, gw]
    patches = F.interpolate(patches, size=size, mode="bilinear", align_corners=False)  # [B*heads, d, h', w']
    return patches.flatten(2).transpose(1, 2).reshape(batch, heads, size[0] * size[1], dim)


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
    proxy_grid = (int(proxy.shape[1]), int(proxy.shape[2]))
    _, _, v = qkv_per_head(block, x)
    values = resize_patch_values(v, grid, proxy_grid)  # [B, heads, N', d]
    affinity = proxy_affinity(proxy, float(settings["beta"]), float(settings["gamma"]), settings["affinity_mean"])
    return attend(block, affinity[:, None].to(values.dtype), values), proxy_grid  # same A for every head


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
    if head == "proxyclip":
        if proxy is None or proxy.ndim != 4 or proxy.shape[0] != windows.shape[0]:
            got = None if proxy is None else tuple(proxy.shape)
            raise ValueError(
                f"head 'proxyclip' needs proxy = the vision model's final patch tokens [B, h', w', Dv] with "
                f"B = {windows.shape[0]} windows (got {got}); e.g. VisionFeatures('dino_vitb8', "
                "feature='tokens').dense_features(windows)"
            )
    elif proxy is not None:
        raise ValueError(f"head {head!r} takes no proxy; only 'proxyclip' does")


def dense_clip_features(
    visual: nn.Module, windows: Tensor, head: str = "maskclip", proxy: Tensor | None = None, **head_params: Any
) -> Tensor:
    """CLIP-normalised windows [B, 3, H, W] -> the head's patch features [B, h, w, D], L2-normalised.

    visual: an open_clip VisionTransformer (`model.visual`). head: a name in `HEADS`; head_params override its
    defaults (sigma for naclip; beta, gamma, affinity_mean for proxyclip; interpolation "lposs" | "sclip" for
    all). proxy: proxyclip's vision-model tokens [B, h', w', Dv]; its output is then at the proxy grid.
    """
    settings = head_settings(head, head_params)
    _check_inputs(visual, windows, head, proxy)
    tokens = tokens_before_last_block(visual, windows, settings["interpolation"])  # [B, 1 + gh*gw, W]
    patch = int(visual.patch_size[0])
    grid = (windows.shape[2] // patch, windows.shape[3] // patch)
    tokens, grid = HEAD_FUNCTIONS[head](visual.transformer.resblocks[-1], tokens, grid, settings, proxy)
    feats = visual.ln_post(tokens) @ visual.proj  # [B, N, D]
    feats = F.normalize(feats.float(), dim=-1)
    return feats.reshape(windows.shape[0], grid[0], grid[1], -1)  # [B, h, w, D]
