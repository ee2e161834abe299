"""Evaluation protocols of the field: how each release turns scores into labels, and with which settings.

Two background rules (shared/spec/heads.md section 5):

- "synonyms" (LPOSS): raw scores, one column per synonym, max-pooled per class; background is a class of
  stuff words like any other; argmax.
- "softmax" (SCLIP, ClearCLIP, NACLIP, ProxyCLIP): the cosine scores times `logit_scale`, softmax over all
  queries (synonym columns), max within each class; with `area_thd`, foreground classes whose argmax area is
  at most area_thd x the foreground-predicted pixel count lose their probabilities; then pixels whose top
  probability is below `prob_thd` go to class 0 (SCLIP `clip_segmentor.py:148-170`).

A named protocol carries a release's per-dataset settings: logit scale, thresholds, window crop and stride,
short side, its class files (lposs/protocol_classes/<protocol>/, converted to our one-class-per-line,
';'-synonym format from the release's configs/cls_*.txt, see SOURCES.md there) and the CLIP weights its
numbers were published with. `resolve(name, dataset)` merges them once into a flat dict that the pipeline
writes next to every result, so no setting stays hidden.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import torch
from torch import Tensor

BACKGROUND_RULES = ("synonyms", "softmax")

# Defaults of every protocol, then per-dataset overrides. Sources: each release's configs/cfg_*.py (lines
# 5-17) and the defaults of its segmentor's __init__ (SCLIP clip_segmentor.py:19-21, ClearCLIP
# clearclip_segmentor.py:22-23, NACLIP naclip.py:20-22, ProxyCLIP proxyclip_segmentor.py:30-31).
_SOFTMAX = {"background": "softmax", "prob_thd": 0.0, "area_thd": None, "long_side": 2048, "clip": "openai"}
PROTOCOLS: dict[str, dict[str, Any]] = {
    "lposs": {
        # logit_scale is LPOSS's "none": it is used only when the background switch says softmax (SCLIP's 40)
        "base": {"background": "synonyms", "logit_scale": 40.0, "prob_thd": 0.0, "area_thd": None, "crop": 224,
                 "stride": 112, "short_side": 448, "long_side": 2048, "classes": "lposs",
                 "clip": "laion2b_s34b_b88k", "head": "maskclip", "post": "lposs+",
                 "source": "vladan-stojnic/LPOSS e489a74 configs/*.yaml"},
        "datasets": {},
    },
    "sclip": {
        "base": {**_SOFTMAX, "logit_scale": 40.0, "crop": 224, "stride": 112, "short_side": 336, "classes": "sclip",
                 "head": "sclip", "post": None, "source": "wangf3014/SCLIP b56bd30 configs/cfg_*.py"},
        "datasets": {"voc21": {"logit_scale": 65.0, "prob_thd": 0.1, "area_thd": 0.1},
                     "context60": {"logit_scale": 50.0, "prob_thd": 0.1},
                     "coco_object": {"logit_scale": 50.0, "prob_thd": 0.1},
                     "cityscapes": {"short_side": 560}, "coco_stuff": {"short_side": 448}},
    },
    "clearclip": {
        "base": {**_SOFTMAX, "logit_scale": 50.0, "crop": 448, "stride": 224, "short_side": 448,
                 "classes": "clearclip", "head": "clearclip", "post": None,
                 "source": "mc-lan/ClearCLIP ad68a40 configs/cfg_*.py (model_type='ClearCLIP', their issue #12)"},
        "datasets": {"voc21": {"prob_thd": 0.5}, "context60": {"prob_thd": 0.15}, "coco_object": {"prob_thd": 0.4},
                     "cityscapes": {"crop": 224}},
    },
    "naclip": {
        "base": {**_SOFTMAX, "logit_scale": 40.0, "crop": 224, "stride": 112, "short_side": 336, "classes": "naclip",
                 "head": "naclip", "post": "pamr", "source": "sinahmr/NACLIP 0cac3a6 configs/cfg_*.py"},
        # NACLIP evaluates VOC21/VOC20 on the whole image (slide_crop=0); we keep 224/112 windows there and
        # record the deviation (every row of the table names it).
        "datasets": {"voc21": {"prob_thd": 0.1, "deviation": "release: whole-image inference (slide_crop=0)"},
                     "voc20": {"deviation": "release: whole-image inference (slide_crop=0)"},
                     "context60": {"prob_thd": 0.1}, "coco_object": {"prob_thd": 0.1},
                     "cityscapes": {"short_side": 560}},
    },
    "proxyclip": {
        "base": {**_SOFTMAX, "logit_scale": 40.0, "crop": 336, "stride": 112, "short_side": 336,
                 "classes": "proxyclip", "head": "proxyclip", "post": None,
                 "source": "mc-lan/ProxyCLIP e7b767f configs/cfg_*.py"},
        "datasets": {"voc21": {"prob_thd": 0.2}, "context60": {"prob_thd": 0.15}, "coco_object": {"prob_thd": 0.25},
                     "cityscapes": {"crop": 224, "stride": 112, "short_side": 448}, "ade20k": {"short_side": 448}},
    },
}
WINDOW_KEYS = ("crop", "stride", "short_side", "long_side")


def resolve(name: str, dataset: str, **overrides: Any) -> dict[str, Any]:
    """Every setting of protocol `name` on `dataset`, merged once: base <- dataset <- overrides (None = keep)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    unknown = set(overrides) - set(PROTOCOLS[name]["base"])
    if unknown:
        raise ValueError(f"protocol {name!r} has no setting {sorted(unknown)}; its settings are "
                         f"{sorted(PROTOCOLS[name]['base'])}")
    settings = {"protocol": name, **PROTOCOLS[name]["base"], **PROTOCOLS[name]["datasets"].get(dataset, {})}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    check_rule(settings)
    return settings


def check_rule(settings: dict[str, Any]) -> None:
    """Clear errors for a background rule that cannot work."""
    rule = settings.get("background")
    if rule not in BACKGROUND_RULES:
        raise ValueError(f"background rule {rule!r}: choose one of {', '.join(BACKGROUND_RULES)}")
    if rule == "softmax" and not (settings.get("logit_scale") or 0) > 0:
        raise ValueError(f"the softmax background rule needs a positive logit_scale, got {settings.get('logit_scale')!r}")
    if not 0 <= settings.get("prob_thd", 0) < 1:
        raise ValueError(f"prob_thd must be in [0, 1), got {settings.get('prob_thd')!r}")


def class_names(protocol: str, dataset: str, default: list[str]) -> list[str]:
    """The class prompts protocol `protocol` uses on `dataset` (its release's class file), else `default`.

    The release's file must list as many classes as the dataset has: a mismatch raises ValueError.
    """
    folder = PROTOCOLS[protocol]["base"]["classes"] if protocol in PROTOCOLS else None
    resource = resources.files("lposs").joinpath("protocol_classes", str(folder), f"{dataset}.txt")
    if folder in (None, "lposs") or not resource.is_file():
        return list(default)
    names = [line for line in resource.read_text().split("\n") if line.strip()]
    if len(names) != len(default):
        raise ValueError(f"protocol {protocol!r} lists {len(names)} classes for {dataset}, the dataset has "
                         f"{len(default)}: the class file lposs/protocol_classes/{folder}/{dataset}.txt is wrong")
    return names


# --------------------------------------------------------------------------------------------------
# Scores -> labels
# --------------------------------------------------------------------------------------------------

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
    (I - alpha S)^-1 Y, which is 1 / (1 - alpha) times a weighted mean of cosines (spec section 4).
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
