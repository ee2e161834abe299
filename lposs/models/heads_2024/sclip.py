"""SCLIP (Wang, Mei, Yuille, ECCV 2024; wangf3014/SCLIP@b56bd30): correlative self-attention in the last block.

    y = x + Attn(softmax(s q q^T) + softmax(s k k^T)); z = y + MLP(ln_2 y)

Its protocol (configs/cfg_*.py) is the base of the family: softmax over the queries at logit scale 40, windows
224 / 112 at short side 336, the 26 stuff words of its class files as VOC21's and COCO-Object's background.
"""

from __future__ import annotations

from torch import Tensor

from ..protocol_bases import SOFTMAX
from ..records import Published, register_head
from ..vit import attend, keep_residual_and_ffn, qkv_per_head, softmax_similarity

PROTOCOL = {
    "base": {**SOFTMAX, "logit_scale": 40.0, "crop": 224, "stride": 112, "short_side": 336, "classes": "sclip",
             "post": None, "source": "wangf3014/SCLIP b56bd30 configs/cfg_*.py"},
    "datasets": {"voc21": {"logit_scale": 65.0, "prob_thd": 0.1, "area_thd": 0.1},
                 "context60": {"logit_scale": 50.0, "prob_thd": 0.1},
                 "coco_object": {"logit_scale": 50.0, "prob_thd": 0.1},
                 "cityscapes": {"short_side": 560}, "coco_stuff": {"short_side": 448}},
}


@register_head(
    "sclip", title="SCLIP", kind="last_block", defaults={"interpolation": "sclip"}, protocol=PROTOCOL,
    release="wangf3014/SCLIP@b56bd30", year=2024,
    published=(Published("SCLIP", (59.1, 30.4, 30.5, 80.4, 32.2, 34.2, 16.1, 22.4), 38.2,
                         "the OV-Stitcher release's comparison table (assets/quantitative.png)"),),
)
def sclip(block, x: Tensor, grid, settings, proxy) -> tuple[Tensor, tuple[int, int]]:
    q, k, v = qkv_per_head(block, x)
    weights = softmax_similarity(q, q) + softmax_similarity(k, k)  # rows sum to 2
    return keep_residual_and_ffn(block, x, attend(block, weights, v))[:, 1:], grid
