"""NACLIP (Hajimiri, Ben Ayed, Dolz, WACV 2025; sinahmr/NACLIP@0cac3a6): k-k attention with a neighbourhood prior.

    z = Attn(softmax(s k k^T + Omega)), Omega_ij = exp(-|p_i - p_j|^2 / (2 sigma^2)) on patches (not scaled by s)

Its release refines the scores with PAMR by default (its own post-step here) and runs VOC21 / VOC20 on the whole
image (slide_crop=0): here those keep 224 / 112 windows, and every row names the deviation.
"""

from __future__ import annotations

from torch import Tensor

from ..protocol_bases import SOFTMAX
from ..records import Published, register_head
from ..vit import attend, neighbourhood_prior, qkv_per_head, softmax_similarity

_WHOLE = "release: whole-image inference (slide_crop=0)"
PROTOCOL = {
    "base": {**SOFTMAX, "logit_scale": 40.0, "crop": 224, "stride": 112, "short_side": 336, "classes": "naclip",
             "post": "pamr", "source": "sinahmr/NACLIP 0cac3a6 configs/cfg_*.py"},
    "datasets": {"voc21": {"prob_thd": 0.1, "deviation": _WHOLE}, "voc20": {"deviation": _WHOLE},
                 "context60": {"prob_thd": 0.1}, "coco_object": {"prob_thd": 0.1},
                 "cityscapes": {"short_side": 560}},
}


@register_head(
    "naclip", title="NACLIP", kind="last_block", defaults={"interpolation": "sclip", "sigma": 5.0},
    protocol=PROTOCOL, release="sinahmr/NACLIP@0cac3a6", year=2025,
    published=(Published("NACLIP (no PAMR)", (58.9, 32.2, 33.2, 79.7, 35.5, 35.2, 17.4, 23.3), 39.4,
                         "the OV-Stitcher release's comparison table (assets/quantitative.png)"),
               Published("NACLIP (repo default, PAMR)", (64.07, 34.99, 36.19, 83.03, 38.27, 38.35, 19.05, 25.69),
                         42.46, "the NACLIP README (sinahmr/NACLIP 0cac3a6)")),
)
def naclip(block, x: Tensor, grid, settings, proxy) -> tuple[Tensor, tuple[int, int]]:
    _, k, v = qkv_per_head(block, x)
    omega = neighbourhood_prior(grid, float(settings["sigma"]), x.device, k.dtype)  # not scaled by s
    return attend(block, softmax_similarity(k, k, omega), v)[:, 1:], grid
