"""ResCLIP (Yang et al., CVPR 2025; yvhangyang/ResCLIP clip/model.py:242-494 @0e085f7, arch 'wo_resi',
attention 'resclip', std 5), one window. Needs the text queries: its second pass reads the first pass's labels.

With q, k, v of ln_1(x_11) (CLS included), s = d^-1/2, Omega NACLIP's prior, mix_r(P) = tau_r((1 - lam_r) P +
lam_r A_rcs) and A_rcs = the mean over blocks 6-9 of their per-head softmax(s q k^T):

    pass 1: P1 = mix_r(softmax(s k k^T + Omega)); f1 = unit(ln_post(P1 . v) proj) on the patches;
            logits = f1 . text^T, bilinear to the window, PAMR (10 iterations, dilations 8, 16, on the
            CLIP-normalised window); softmax(logit_scale logits) over queries; pixel label = argmax, 0 where
            the top probability < temp_thd; patch label = the mode over its pixels
    SFR:    `sfr_matrix` of the patch labels, divided by its max and cast to float16
    pass 2: P2 = mix_r(softmax(tau_s((1 - lam_s) s k k^T + lam_s SFR) + Omega)); output P2 . v (rows sum to
            tau_r = 2, which matters because of the out-projection bias)

lam_s SFR is a float16 product, as released (:477-478; in float32 the features move by ~6e-5).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.pamr import neighbour_mean, neighbour_offsets, pamr_affinity
from ..protocol_bases import WHOLE_IMAGE, WINDOWS_2025
from ..records import Published, register_head
from ..vit import attend, neighbourhood_prior, qkv_per_head, softmax_similarity
from .common import WindowTrace, last_block
from .sfr import patch_labels, sfr_matrix


def _dataset(prob_thd: float | None, temp_thd: float, rcs: tuple[float, float], sfr: tuple[float, float]) -> dict:
    entry = {"head_params": {"temp_thd": temp_thd, "rcs_weights": rcs, "sfr_weights": sfr}}
    return entry | ({"prob_thd": prob_thd} if prob_thd is not None else {})


# temp_thd; attn_rcs_weights; attn_sfr_weights (configs/cfg_voc21.py:6-11 and the other cfg_*.py)
PROTOCOL = {
    "base": {**WINDOWS_2025, "source": "yvhangyang/ResCLIP 0e085f7 configs/cfg_*.py"},
    "datasets": {"voc21": {**_dataset(0.1, 0.5, (2.0, 0.3), (2.2, 0.7)), **WHOLE_IMAGE},
                 "context60": _dataset(0.1, 0.3, (2.0, 0.3), (1.8, 0.7)),
                 "coco_object": _dataset(0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),
                 "voc20": {**_dataset(None, 0.1, (2.0, 0.6), (2.1, 0.6)), **WHOLE_IMAGE},
                 "context59": _dataset(None, 0.25, (2.0, 0.4), (1.8, 0.7)),
                 "coco_stuff": _dataset(None, 0.11, (2.0, 0.4), (1.8, 0.7)),
                 "cityscapes": {**_dataset(None, 0.1, (2.0, 0.2), (2.1, 0.6)), "short_side": 560},
                 "ade20k": _dataset(None, 0.25, (2.0, 0.3), (2.1, 0.7))},
}
# temp_thd without a protocol: its VOC21 value, 0.5 (configs/cfg_voc21.py:8), the dataset whose rcs / sfr weights
# are also the head's defaults (cfg_voc21.py:10-11); COCO-Object uses 0.11 (cfg_coco_object.py:7)
CALLER_DEFAULTS = {"temp_thd": 0.5}


DEFAULTS: dict[str, Any] = {"interpolation": "sclip", "text": None, "temp_thd": None, "rcs_weights": (2.0, 0.3),
                            "sfr_weights": (2.2, 0.7), "logit_scale": 40.0, "sigma": 5.0, "delete_same_entity": True}
REQUIRED = ("text", "temp_thd")
PAMR_ITERATIONS, PAMR_DILATIONS = 10, (8, 16)  # fixed inside the release's first pass (:279-284)
RCS_BLOCKS = (6, 7, 8, 9)  # 1-based blocks whose attention RCS averages (:316-332)


def rcs_attention(visual: nn.Module, hidden: list[Tensor]) -> Tensor:
    """A_rcs [heads, L, L]: the mean of blocks 6-9's softmax(s q k^T), block l on its input x_{l-1}."""
    blocks = visual.transformer.resblocks
    maps = [softmax_similarity(*qkv_per_head(blocks[l - 1], hidden[l - 1])[:2]) for l in RCS_BLOCKS]
    return torch.stack(maps).mean(dim=0)


def pamr_on_normalised(image: Tensor, scores: Tensor) -> Tensor:
    """PAMR (lposs.core.pamr) of scores [Q, H, W] on an image [3, H, W] that is already CLIP-normalised."""
    offsets = neighbour_offsets(PAMR_DILATIONS)
    affinity = pamr_affinity(image.to(scores.dtype), PAMR_DILATIONS)  # [P, H, W]
    for _ in range(PAMR_ITERATIONS):
        scores = neighbour_mean(scores, affinity, offsets)
    return scores


def first_pass_labels(visual: nn.Module, tokens: Tensor, window: WindowTrace, settings: dict[str, Any]) -> Tensor:
    """Pass-1 tokens [1 + N, W] -> patch labels [gh, gw] (query indices; 0 where unsure) (:106-126, 242-290)."""
    feats = visual.ln_post(tokens[1:]) @ visual.proj  # [N, D]
    feats = feats / feats.norm(dim=-1, keepdim=True)
    text = settings["text"].to(feats)
    logits = (feats @ text.T).T.reshape(1, -1, *window.grid)  # [1, Q, gh, gw]
    logits = F.interpolate(logits, size=window.image.shape[-2:], mode="bilinear", align_corners=False)[0]
    probs = torch.softmax(pamr_on_normalised(window.image, logits) * float(settings["logit_scale"]), dim=0)
    labels = probs.argmax(dim=0)  # [H, W] query indices
    labels[probs.max(dim=0).values < float(settings["temp_thd"])] = 0
    return patch_labels(labels, window.image.shape[-1] // window.grid[1])


@register_head(
    "resclip", title="ResCLIP", kind="traced", defaults=DEFAULTS, required=REQUIRED, reads=("text",),
    caller_defaults=CALLER_DEFAULTS, protocol=PROTOCOL, release="yvhangyang/ResCLIP@0e085f7", year=2025,
    published=(Published("ResCLIP (OpenAI CLIP, on NACLIP; training-free, no extra model)",
                         (61.1, 33.5, 35.0, 86.0, 35.9, 36.8, 18.0, 24.7), 41.4,
                         "ResCLIP's results figures (yvhangyang/ResCLIP 0e085f7 figs/main_results_w*.png)"),),
)
def resclip(visual: nn.Module, window: WindowTrace, settings: dict[str, Any]) -> Tensor:
    """One window's patch tokens [N, W] before ln_post."""
    block, sigma = last_block(visual), float(settings["sigma"])
    (tau_r, lam_r), (tau_s, lam_s) = settings["rcs_weights"], settings["sfr_weights"]
    rcs = rcs_attention(visual, window.hidden)  # [heads, L, L]
    _, k, v = qkv_per_head(block, window.hidden[-1])  # [heads, L, d]
    omega = neighbourhood_prior(window.grid, sigma, k.device, k.dtype)  # [L, L]
    key_logits = (k @ k.transpose(-2, -1)) * k.shape[-1] ** -0.5  # s k k^T

    def mix(weights: Tensor) -> Tensor:
        return tau_r * ((1 - lam_r) * weights + lam_r * rcs)

    first = mix(torch.softmax(key_logits + omega, dim=-1))
    labels = first_pass_labels(visual, attend(block, first, v), window, settings)
    sfr = sfr_matrix(labels, sigma, bool(settings["delete_same_entity"]))
    sfr16 = (sfr / sfr.max()).to(torch.float16)
    logits = tau_s * ((1 - lam_s) * key_logits + lam_s * sfr16)  # lam_s x SFR in float16, the sum in float32
    second = mix(torch.softmax(logits + omega, dim=-1))
    return attend(block, second, v)[1:]
