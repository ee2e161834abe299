"""ProxyCLIP (Lan et al., ECCV 2024; mc-lan/ProxyCLIP@e7b767f): the last block's attention from a vision model.

    z = Attn(A) at the proxy grid, A = softmax(gamma (S - beta mean S)) with entries < 0 -> -inf,
    S = F F^T of the proxy's L2-normalised final tokens (DINO B/8 as released; docs/field.md section 3)

The release runs one crop per forward, so its "mean over the batch" is a mean over one window; callers here batch
every window of an image, so they take that mean per window (`batched`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..protocol_bases import SOFTMAX
from ..records import Published, register_head
from ..vit import proxy_attention

AFFINITY_MEANS = ("batch", "window")
PROTOCOL = {
    "base": {**SOFTMAX, "logit_scale": 40.0, "crop": 336, "stride": 112, "short_side": 336, "classes": "proxyclip",
             "post": None, "source": "mc-lan/ProxyCLIP e7b767f configs/cfg_*.py"},
    "datasets": {"voc21": {"prob_thd": 0.2}, "context60": {"prob_thd": 0.15}, "coco_object": {"prob_thd": 0.25},
                 "cityscapes": {"crop": 224, "stride": 112, "short_side": 448}, "ade20k": {"short_side": 448}},
}


def check(settings: dict[str, Any]) -> None:
    if settings["affinity_mean"] not in AFFINITY_MEANS:
        raise ValueError(f"affinity_mean={settings['affinity_mean']!r}: use one of {AFFINITY_MEANS}")


@register_head(
    "proxyclip", title="ProxyCLIP", kind="last_block", check=check, protocol=PROTOCOL,
    defaults={"interpolation": "sclip", "beta": 1.2, "gamma": 3.0, "affinity_mean": "batch"},
    batched={"affinity_mean": "window"}, reads=("proxy",), proxy_feature="tokens", proxy="dino_vitb8",
    output_grid="proxy", paper_vm="dino_vitb8", release="mc-lan/ProxyCLIP@e7b767f", year=2024,
    published=(Published("ProxyCLIP (DINO B/8)", (61.3, 35.3, 37.5, 80.3, 38.1, 39.1, 20.2, 26.5), 42.3,
                         "the OV-Stitcher release's comparison table (assets/quantitative.png)"),),
)
def proxyclip(block, x: Tensor, grid, settings, proxy) -> tuple[Tensor, tuple[int, int]]:
    out = proxy_attention(block, x, grid, proxy, float(settings["beta"]), float(settings["gamma"]),
                          settings["affinity_mean"])  # [B, N', W]
    return out, (int(proxy.shape[1]), int(proxy.shape[2]))
