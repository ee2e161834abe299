"""SC-CLIP (Bai et al., IEEE TIP 2025; SuleBai/SC-CLIP clip/model.py:247-316 @0417ba9), one window.

With x_l the output of block l (x_11 enters the last block, 12), P(.) the patch rows, Fix the outlier repair
(LOF outliers of P(x_11)), S9 = cosine(Fix(P(x_9))) and S4 = Thr(cosine(P(x_4)), 0.4):

    Attn_sc(u) = ((C(S9) + softmax(s k k^T)) / 2) . v      q, k, v of ln_1(u); C on the UNthresholded S9
    y = Agg(S4, Attn_sc(Agg(Thr(S9), Fix(P(x_11)))) + 0.3 CLS(x_11))
    R = x_4 + ... + x_10;  r = Agg(S4, Attn_sc(P(R)) + 0.3 CLS(R))
    output patch rows y + r   (before ln_post and proj)

Indices follow the release: pre_adjust_idx 8 -> x_9, post_adjust_idx 3 -> x_4, multi_start_idx..multi_end_idx
3..10 -> x_4..x_10 (0-based positions in the list of block outputs x_1, x_2, ...).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..protocol_bases import WINDOWS_2025
from ..records import register_head
from ..vit import attend, qkv_per_head, softmax_similarity
from .common import WindowTrace, aggregate, cosine, last_block, proxy_softmax, threshold
from .outliers import fix_outliers, lof_outliers

# SC-CLIP's per-dataset config values (configs/cfg_voc21.py:6-8, cfg_coco_object.py:7); SFP's configs repeat them
SC_DATASETS = {"voc21": {"logit_scale": 50.0, "prob_thd": 0.15, "area_thd": 0.1},
               "context60": {"prob_thd": 0.15}, "coco_object": {"logit_scale": 55.0, "prob_thd": 0.35},
               "cityscapes": {"short_side": 560}}
PROTOCOL = {"base": {**WINDOWS_2025, "source": "SuleBai/SC-CLIP 0417ba9 configs/cfg_*.py"}, "datasets": SC_DATASETS}


DEFAULTS: dict[str, Any] = {"interpolation": "sclip", "beta": 0.4, "pre_adjust_idx": 8, "post_adjust_idx": 3,
                            "multi_start_idx": 3, "multi_end_idx": 10, "res_cls": 0.3, "lof_neighbors": 30,
                            "contamination": 0.05}


def sc_attention(block: nn.Module, u: Tensor, similarity: Tensor) -> Tensor:
    """((C(S) + softmax(s k k^T)) / 2) . v on patch rows u [N, W] -> [N, W] (clip/model.py:318-341)."""
    _, k, v = qkv_per_head(block, u)  # [heads, N, d]
    weights = (proxy_softmax(similarity) + softmax_similarity(k, k)) / 2  # C(S) shared by all heads
    return attend(block, weights, v)


# SC-CLIP's own per-dataset numbers are not in its release (its paper's average is 43.9): no published row yet
@register_head("scclip", title="SC-CLIP", kind="traced", defaults=DEFAULTS, protocol=PROTOCOL,
               release="SuleBai/SC-CLIP@0417ba9", year=2025)
def scclip(visual: nn.Module, window: WindowTrace, settings: dict[str, Any]) -> Tensor:
    """One window's patch tokens [N, W] before ln_post."""
    hidden, grid, block = window.hidden, window.grid, last_block(visual)
    beta, res_cls = float(settings["beta"]), float(settings["res_cls"])
    x_last = hidden[-1]  # x_11 [1 + N, W]
    outliers = lof_outliers(x_last[1:], int(settings["lof_neighbors"]), float(settings["contamination"]))
    s_pre = cosine(fix_outliers(hidden[settings["pre_adjust_idx"] + 1][1:], grid, outliers))  # S9 [N, N]
    s_post = threshold(cosine(hidden[settings["post_adjust_idx"] + 1][1:]), beta)  # S4, not outlier-fixed
    z = aggregate(threshold(s_pre, beta), fix_outliers(x_last[1:], grid, outliers))  # [N, W]
    y = aggregate(s_post, sc_attention(block, z, s_pre) + res_cls * x_last[:1])
    multi = sum(hidden[settings["multi_start_idx"] + 1 : settings["multi_end_idx"] + 1])  # R [1 + N, W]
    r = aggregate(s_post, sc_attention(block, multi[1:], s_pre) + res_cls * multi[:1])
    return y + r
