"""MaskCLIP (Zhou, Loy, Dai, ECCV 2022), LPOSS's seeds: the last block's attention replaced by its values.

    y = x + W_o v + b_o; z = y + MLP(ln_2 y)            (residual and FFN kept, as LPOSS's release runs it)

LPOSS (vladan-stojnic/LPOSS@e489a74) resizes the position embedding bicubically to the grid ("lposs").
"""

from __future__ import annotations

from torch import Tensor

from ..records import Published, register_head
from ..vit import keep_residual_and_ffn, qkv_per_head

_OV_STITCHER = "the OV-Stitcher release's comparison table (assets/quantitative.png)"


@register_head(
    "maskclip", title="MaskCLIP", kind="last_block", defaults={"interpolation": "lposs"},
    release="vladan-stojnic/LPOSS@e489a74", year=2022,
    published=(Published("MaskCLIP", (43.4, 23.2, 20.6, 74.9, 24.9, 26.4, 11.9, 16.7), 30.3, _OV_STITCHER),
               Published("LPOSS+ (OpenCLIP laion2b + DINO B/16)",
                         (61.1, 34.6, 33.4, 78.8, 37.3, 37.8, 21.8, 25.9), 41.3, "the LPOSS paper, arXiv 2503.19777")),
)
def maskclip(block, x: Tensor, grid, settings, proxy) -> tuple[Tensor, tuple[int, int]]:
    _, _, v = qkv_per_head(block, x)
    value_path = block.attn.out_proj(v.transpose(1, 2).flatten(2))  # attention replaced by identity
    return keep_residual_and_ffn(block, x, value_path)[:, 1:], grid
