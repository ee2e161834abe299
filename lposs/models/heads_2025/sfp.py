"""SFP (Kimsure/SFP, SFP_ICCV/clip/model.py:242-400 @2804f5b, pm 'SOM' and purify on), one window.

Outliers by SOM on block 11's attention softmax(s q k^T) (`salient_outliers`), then with S9 =
Thr(cosine(Fix(P(x_9))), 0.4) (thresholded, also inside C) and S4 = Thr(cosine(P(x_4)), 0.4):

    pt = Agg(S9, Fix(P(x_11)))
    pt = Agg(S4, ((softmax(s k k^T) + softmax(s q q^T) + C(S9)) / 3) . v + 0.3 CLS(x_11))    q, k, v of ln_1(pt)
    R = x_4 + ... + x_10;  ps = Agg(S4, C(S9) . v(ln_1 P(R)) + 0.3 CLS(R))
    output patch rows pt + ps   (before ln_post and proj)

The release also accumulates every block's attention (:267, 316-317) and never uses it; `self.thres` is unused.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..protocol_bases import WINDOWS_2025
from ..records import Published, register_head
from ..vit import attend, qkv_per_head, softmax_similarity
from .common import WindowTrace, aggregate, cosine, last_block, proxy_softmax, threshold
from .outliers import fix_outliers, salient_outliers
from .scclip import SC_DATASETS

# SCLIP's class files with `person` -> `people` on VOC21, VOC20, Cityscapes (lposs/models/protocol_classes/sfp)
PROTOCOL = {"base": {**WINDOWS_2025, "classes": "sfp", "source": "Kimsure/SFP 2804f5b SFP_ICCV/configs/cfg_*.py"},
            "datasets": {**SC_DATASETS, "ade20k": {"short_side": 384}}}


DEFAULTS: dict[str, Any] = {"interpolation": "sclip", "res_cls": 0.3, "res_scale": 5.0, "sim_thd": 0.4,
                            "n_outliers": 10}


def three_way_attention(block: nn.Module, u: Tensor, similarity: Tensor) -> Tensor:
    """((softmax(s k k^T) + softmax(s q q^T) + C(S)) / 3) . v on patch rows u [N, W] -> [N, W] (:358-378)."""
    q, k, v = qkv_per_head(block, u)  # [heads, N, d]
    weights = (softmax_similarity(k, k) + softmax_similarity(q, q) + proxy_softmax(similarity)) / 3
    return attend(block, weights, v)


@register_head(
    "sfp", title="SFP", kind="traced", defaults=DEFAULTS, protocol=PROTOCOL, release="Kimsure/SFP@2804f5b",
    year=2025,
    published=(Published("SFP (OpenAI CLIP, training-free, no extra model; PEARL's reproduction)",
                         (56.8, 32.3, 32.1, 83.4, 34.1, 36.0, 18.1, 24.0), 39.6,
                         "PEARL's results figure (PGSmall/PEARL c26062b assets/results.png)"),),
)
def sfp(visual: nn.Module, window: WindowTrace, settings: dict[str, Any]) -> Tensor:
    """One window's patch tokens [N, W] before ln_post."""
    hidden, grid = window.hidden, window.grid
    blocks, block = visual.transformer.resblocks, last_block(visual)
    thd, res_cls = float(settings["sim_thd"]), float(settings["res_cls"])
    q, k, _ = qkv_per_head(blocks[-2], hidden[-2])  # block 11 on x_10
    cls_gain = res_cls * float(settings["res_scale"])  # the release scales CLS->patch attention by 0.3 x 5
    outliers = salient_outliers(softmax_similarity(q, k), cls_gain, int(settings["n_outliers"]))
    x_last = hidden[-1]  # x_11 [1 + N, W]
    s_pre = threshold(cosine(fix_outliers(hidden[9][1:], grid, outliers)), thd)  # S9 [N, N], thresholded
    s_post = threshold(cosine(hidden[4][1:]), thd)  # S4
    pt = aggregate(s_pre, fix_outliers(x_last[1:], grid, outliers))
    pt = aggregate(s_post, three_way_attention(block, pt, s_pre) + res_cls * x_last[:1])
    multi = sum(hidden[4:11])  # R = x_4 + ... + x_10, [1 + N, W]
    _, _, v = qkv_per_head(block, multi[1:])
    ps = aggregate(s_post, attend(block, proxy_softmax(s_pre), v) + res_cls * multi[:1])
    return pt + ps
