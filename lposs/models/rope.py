"""Rotary position embedding (RoPE) as timm applies it in DINOv3's attention, for q/k features read off a block.

timm 1.0.31 (timm/models/eva.py:272-276, `EvaAttention.forward`) rotates q and k of the patch tokens only
(the first `num_prefix_tokens` = CLS + 4 registers stay as they are); v is never rotated. The embedding
`model.rope.get_embed(shape=(gh, gw))` is [N, 2 d] = [sin, cos] per head dimension d, in the "rotate half"
layout (timm/layers/pos_embed_sincos.py:439-470, `apply_rot_embed(half=True)`):

    rope(x) = x cos + rotate_half(x) sin,    rotate_half([x1, x2]) = [-x2, x1] (halves of the d dimensions)

    q_rot = apply_rope(q, embed, prefix=5, heads=6)    # q [B, 5 + N, heads * d] -> same shape
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotate_half(x: Tensor) -> Tensor:
    """[..., d] -> [..., d]: (x1, x2) -> (-x2, x1), the halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, embed: Tensor, prefix: int, heads: int) -> Tensor:
    """q or k [B, prefix + N, heads * d] (heads concatenated head-major), embed [N, 2 d] = [sin, cos]
    -> the same with every head of the N patch tokens rotated; the prefix tokens unchanged."""
    batch, length, width = x.shape
    patches = x[:, prefix:].reshape(batch, length - prefix, heads, width // heads)  # [B, N, heads, d]
    sin, cos = embed.to(x.dtype).chunk(2, dim=-1)  # [N, d] each
    rotated = patches * cos[:, None] + rotate_half(patches) * sin[:, None]
    return torch.cat([x[:, :prefix], rotated.reshape(batch, length - prefix, width)], dim=1)
