"""Scores -> labels: the field's two background rules.

- "synonyms" (LPOSS): raw scores, one column per synonym, max-pooled per class; background is a class of
  stuff words like any other; argmax.
- "softmax" (SCLIP, ClearCLIP, NACLIP, ProxyCLIP): the cosine scores times `logit_scale`, softmax over all
  queries (synonym columns), max within each class; with `area_thd`, foreground classes whose argmax area is
  at most area_thd x the foreground-predicted pixel count lose their probabilities; then pixels whose top
  probability is below `prob_thd` go to class 0 (SCLIP's segmentor, `clip_segmentor.py` lines 148-170).

A rule is a dict ({"background": ..., "logit_scale", "prob_thd", "area_thd"}); `lposs.models.protocols.resolve`
gives the one of each release on each dataset.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

BACKGROUND_RULES = ("synonyms", "softmax")


def check_rule(settings: dict[str, Any]) -> None:
    """Clear errors for a background rule that cannot work."""
    rule = settings.get("background")
    if rule not in BACKGROUND_RULES:
        raise ValueError(f"background rule {rule!r}: choose one of {', '.join(BACKGROUND_RULES)}")
    if rule == "softmax" and not (settings.get("logit_scale") or 0) > 0:
        raise ValueError(f"the softmax background rule needs a positive logit_scale, got {settings.get('logit_scale')!r}")
    if not 0 <= settings.get("prob_thd", 0) < 1:
        raise ValueError(f"prob_thd must be in [0, 1), got {settings.get('prob_thd')!r}")



def pool_synonyms(scores: Tensor, owner: Tensor) -> Tensor:
    """Max over the synonym columns of each class: [C', H, W] -> [K, H, W] (one scatter, no GPU wait)."""
    classes = int(owner.max()) + 1  # owner lives on the CPU (features keep it there)
    owner = owner.to(scores.device, non_blocking=True)  # no stream sync (a blocking copy waits for the GPU)
    index = owner.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)  # [C', H, W]
    pooled = scores.new_full((classes, *scores.shape[1:]), float("-inf"))
    return pooled.scatter_reduce_(0, index, scores, reduce="amax")


def class_scores(scores: Tensor, owner: Tensor, rule: dict[str, Any], cosine_scale: float = 1.0) -> Tensor:
    """Per-synonym scores [C', H, W] -> per-class scores [K, H, W] under the background rule.

    synonyms: the max over each class's synonyms. softmax: softmax over all C' queries of
    logit_scale * cosine_scale * scores, then the max within each class (probabilities).
    cosine_scale brings propagated scores back to cosine size: label propagation returns
    (I - alpha S)^-1 Y, which is 1 / (1 - alpha) times a weighted mean of cosines (docs/method.md section 4).
    """
    if rule.get("background", "synonyms") == "synonyms":
        return pool_synonyms(scores, owner)
    check_rule(rule)
    probs = (scores * (rule["logit_scale"] * cosine_scale)).softmax(0)  # [C', H, W]
    return pool_synonyms(probs, owner)


def labels_from_scores(scores: Tensor, rule: dict[str, Any]) -> Tensor:
    """Class scores [K, H, W] -> labels [H, W]: argmax, with the softmax rule's area and probability thresholds."""
    if rule.get("background", "synonyms") == "synonyms":
        return scores.argmax(0)
    scores = scores.clone()
    if rule.get("area_thd") is not None and scores.shape[0] > 1:
        winners = scores.argmax(0).flatten()  # [H*W]; a scatter, not bincount: its size would wait for the GPU
        area = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device).scatter_add_(
            0, winners, torch.ones_like(winners))[1:]  # [K-1] pixels won by each foreground class
        keep = (area > rule["area_thd"] * area.sum()).to(scores.dtype)
        scores[1:] *= keep[:, None, None]
    labels = scores.argmax(0)
    labels[scores.amax(0) < rule.get("prob_thd", 0.0)] = 0
    return labels
