"""ClearCLIP (Lan et al., ECCV 2024; mc-lan/ClearCLIP@ad68a40): q-q attention, residual and FFN dropped.

    z = Attn(softmax(s q q^T))

Its protocol (configs/cfg_*.py, model_type='ClearCLIP', their issue #12): windows 448 / 224 at short side 448,
logit scale 50.
"""

from __future__ import annotations

from torch import Tensor

from ..protocol_bases import SOFTMAX
from ..records import Published, register_head
from ..vit import attend, qkv_per_head, softmax_similarity

PROTOCOL = {
    "base": {**SOFTMAX, "logit_scale": 50.0, "crop": 448, "stride": 224, "short_side": 448, "classes": "clearclip",
             "post": None,
             "source": "mc-lan/ClearCLIP ad68a40 configs/cfg_*.py (model_type='ClearCLIP', their issue #12)"},
    "datasets": {"voc21": {"prob_thd": 0.5}, "context60": {"prob_thd": 0.15}, "coco_object": {"prob_thd": 0.4},
                 "cityscapes": {"crop": 224}},
}


@register_head(
    "clearclip", title="ClearCLIP", kind="last_block", defaults={"interpolation": "sclip"}, protocol=PROTOCOL,
    release="mc-lan/ClearCLIP@ad68a40", year=2024,
    published=(Published("ClearCLIP", (51.8, 32.6, 33.0, 80.9, 30.0, 35.9, 16.7, 23.9), 38.1,
                         "the OV-Stitcher release's comparison table (assets/quantitative.png)"),),
)
def clearclip(block, x: Tensor, grid, settings, proxy) -> tuple[Tensor, tuple[int, int]]:
    q, _, v = qkv_per_head(block, x)
    return attend(block, softmax_similarity(q, q), v)[:, 1:], grid
