"""An open_clip VisionTransformer taken apart: the pieces every dense head is built from.

    tokens = tokens_before_last_block(visual, windows, "sclip")    # [B, 1 + N, W], what the last block sees
    hidden = hidden_states_as_released(visual, window, "sclip")    # one window [1, 3, H, W] -> [x_0, ..., x_{L-1}]
    q, k, v = qkv_per_head(block, tokens)                          # [B, heads, 1 + N, d] each

x_l is the output of block l (1-based), x_0 the embedded tokens (ln_pre(CLS + patches + position embedding)),
so x_{L-1} enters the last block. Windows are CLIP-normalised [B, 3, H, W]; the batch comes first throughout.

Position embeddings off the native grid follow one of three rules (`interpolation`): "lposs" resizes the patch
part bicubically to the grid size; "sclip" (SCLIP clip/model.py:263-281 @b56bd30, copied by NACLIP,
ClearCLIP, ProxyCLIP, SC-CLIP, SFP, ResCLIP, CASS, PEARL) passes scale_factor ((gh + 0.1) / 14, (gw + 0.1) / 14),
which samples other points; "gem" (GEM gem/gem_utils.py resample_abs_pos_embed @5fa677c) resizes to the grid size
with torch's antialiased bicubic, whose kernel (PIL's, a = -0.5) differs from the plain one (a = -0.75) even when
upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INTERPOLATIONS = ("lposs", "sclip", "gem")


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
    elif interpolation == "gem":  # GEM gem/gem_utils.py resample_abs_pos_embed: antialiased, to the target size
        patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", antialias=True, align_corners=False)
    else:
        raise ValueError(f"interpolation={interpolation!r}: use one of {INTERPOLATIONS}")
    assert tuple(patch_pos.shape[-2:]) == tuple(grid), (patch_pos.shape, grid)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)  # [gh*gw, W]
    return torch.cat([pos[:1], patch_pos], dim=0)


def embedded_tokens(visual: nn.Module, x: Tensor, interpolation: str = "lposs") -> Tensor:
    """CLIP-normalised images [B, 3, H, W] -> x_0 = ln_pre(CLS + patches + position embedding), [B, 1 + gh*gw, W]."""
    patches = visual.conv1(x)  # [B, W, gh, gw]
    grid = tuple(patches.shape[-2:])
    patches = patches.flatten(2).transpose(1, 2)  # [B, gh*gw, W]
    cls = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # [B, 1, W]
    pos = positional_embedding(visual, grid, interpolation).to(patches.dtype)
    return visual.ln_pre(torch.cat([cls, patches], dim=1) + pos)  # [B, L, W]


def tokens_before_last_block(visual: nn.Module, x: Tensor, interpolation: str = "lposs") -> Tensor:
    """CLIP-normalised images [B, 3, H, W] -> the tokens entering the last block, [B, 1 + gh*gw, W]."""
    tokens = embedded_tokens(visual, x, interpolation)  # [B, L, W]
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", blocks[-1].attn.batch_first)
    if not batch_first:  # older open_clip: blocks take [L, B, W]
        tokens = tokens.transpose(0, 1)
    for block in blocks[:-1]:
        tokens = block(tokens)
    return tokens if batch_first else tokens.transpose(0, 1)  # [B, L, W]


def block_as_released(block: nn.Module, x: Tensor) -> Tensor:
    """One residual block on sequence-first tokens [L, B, W], computed as the OpenAI `clip` copies run it.

    The same maths as block(x), through torch's unfused F.multi_head_attention_forward: under no_grad,
    open_clip's batch-first blocks take torch's fused fast path, which rounds differently (~1e-6). The
    releases' float rounding matters where a head makes discrete choices from near-ties (CASS's head pairing).
    """
    x = attention_as_released(block, x)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def attention_as_released(block: nn.Module, x: Tensor) -> Tensor:
    """The first half of `block_as_released`: y = x + Attn(ln_1 x) on sequence-first tokens [L, B, W] (what the
    block's ln_2 reads)."""
    attn, h = block.attn, block.ln_1(x)
    attended = F.multi_head_attention_forward(
        h, h, h, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, attn.bias_k, attn.bias_v,
        attn.add_zero_attn, attn.dropout, attn.out_proj.weight, attn.out_proj.bias, training=False,
        need_weights=False,
    )[0]
    return x + block.ls_1(attended)


def hidden_states_as_released(visual: nn.Module, x: Tensor, interpolation: str = "sclip") -> list[Tensor]:
    """Every block's output for ONE window [1, 3, H, W], computed as the releases do (one window per forward,
    sequence-first, unfused attention) -> [x_0, ..., x_{L-1}], each [1 + N, W]; x_{L-1} enters the last block."""
    if x.shape[0] != 1:
        raise ValueError(f"one window at a time, got a batch of {x.shape[0]}")
    tokens = embedded_tokens(visual, x, interpolation).transpose(0, 1)  # [L, 1, W]
    outputs = [tokens]
    for block in visual.transformer.resblocks[:-1]:
        outputs.append(block_as_released(block, outputs[-1]))
    return [out[:, 0] for out in outputs]


# ----------------------------------------------------------------------------------------------------
# Pieces of one block (any leading batch shape: [..., L, W])
# ----------------------------------------------------------------------------------------------------


def qkv_per_head(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x [..., L, W] -> q, k, v of the block's attention on ln_1(x), each [..., heads, L, d]."""
    attn = block.attn
    if attn.in_proj_weight is not None:
        weight = attn.in_proj_weight  # [3W, W]
    else:
        weight = torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight])
    qkv = F.linear(block.ln_1(x), weight, attn.in_proj_bias)  # [..., L, 3W]
    qkv = qkv.unflatten(-1, (3, attn.num_heads, -1)).movedim(-3, 0).transpose(-3, -2)  # [3, ..., heads, L, d]
    return qkv[0], qkv[1], qkv[2]


def attend(block: nn.Module, weights: Tensor, v: Tensor) -> Tensor:
    """Attn(A) = W_o concat_heads(A_h v_h) + b_o. weights [..., heads or 1, L, L'], v [..., heads, L', d].

    Returns [..., L, W]."""
    out = weights @ v  # [..., heads, L, d]
    return block.attn.out_proj(out.transpose(-3, -2).flatten(-2))


def keep_residual_and_ffn(block: nn.Module, x: Tensor, attended: Tensor) -> Tensor:
    """y = x + attended; z = y + MLP(ln_2 y) (open_clip's layer scales, identity for ViT-B/16, included)."""
    y = x + block.ls_1(attended)
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def softmax_similarity(a: Tensor, b: Tensor, bias: Tensor | float = 0.0) -> Tensor:
    """softmax(s a b^T + bias) per head, s = d^-1/2. a, b: [..., L, d] -> [..., L, L]."""
    scale = a.shape[-1] ** -0.5
    return torch.softmax(a @ b.transpose(-2, -1) * scale + bias, dim=-1)


def neighbourhood_prior(grid: tuple[int, int], sigma: float, device=None, dtype=None) -> Tensor:
    """NACLIP's Omega [1 + N, 1 + N]: exp(-|p_i - p_j|^2 / (2 sigma^2)) between patch positions, 0 on CLS."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=1).to(torch.float64)  # [N, 2]
    omega = torch.exp(-torch.cdist(positions, positions).square() / (2 * sigma**2))  # [N, N]
    omega = F.pad(omega, (1, 0, 1, 0))  # CLS row and column: no prior
    return omega.to(device=device, dtype=dtype or torch.float32)


# ----------------------------------------------------------------------------------------------------
# ProxyCLIP's pieces (its head and Trident's first half)
# ----------------------------------------------------------------------------------------------------


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


def proxy_attention(block: nn.Module, x: Tensor, grid: tuple[int, int], proxy: Tensor, beta: float, gamma: float,
                    mean_over: str = "batch") -> Tensor:
    """ProxyCLIP's last block: tokens x [B, 1 + gh*gw, W] entering it, proxy tokens [B, h', w', Dv] ->
    Attn(A) over the block's values resized to the proxy grid, [B, h'*w', W] (the same A for every head)."""
    _, _, v = qkv_per_head(block, x)  # [B, heads, 1 + N, d]
    values = resize_patch_values(v, grid, (int(proxy.shape[1]), int(proxy.shape[2])))  # [B, heads, N', d]
    affinity = proxy_affinity(proxy, beta, gamma, mean_over)  # [B, N', N']
    return attend(block, affinity[:, None].to(values.dtype), values)
