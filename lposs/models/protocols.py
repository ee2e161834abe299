"""Evaluation protocols of the field: how each release turns scores into labels, and with which settings.

The two background rules (LPOSS's synonym max, the SCLIP family's softmax with thresholds) are in
`lposs.core.scoring`; a protocol names one of them and its constants.

A named protocol carries a release's per-dataset settings: logit scale, thresholds, window crop and stride,
short side, its class files (lposs/models/protocol_classes/<protocol>/, converted to our one-class-per-line,
';'-synonym format from the release's configs/cls_*.txt, see SOURCES.md there) and the CLIP weights its
numbers were published with. `resolve(name, dataset)` merges them once into a flat dict that the pipeline
writes next to every result, so no setting stays hidden.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from ..core.defaults import CROP, LONG_SIDE, SHORT_SIDE, STRIDE
from ..core.scoring import BACKGROUND_RULES, check_rule  # noqa: F401 - part of a protocol's interface

# Defaults of every protocol, then per-dataset overrides. Sources: each release's configs/cfg_*.py (lines
# 5-17) and the defaults of its segmentor's __init__ (SCLIP clip_segmentor.py:19-21, ClearCLIP
# clearclip_segmentor.py:22-23, NACLIP naclip.py:20-22, ProxyCLIP proxyclip_segmentor.py:30-31).
_SOFTMAX = {"background": "softmax", "prob_thd": 0.0, "area_thd": None, "long_side": 2048, "clip": "openai"}
PROTOCOLS: dict[str, dict[str, Any]] = {
    "lposs": {
        # logit_scale is LPOSS's "none": it is used only when the background switch says softmax (SCLIP's 40)
        "base": {"background": "synonyms", "logit_scale": 40.0, "prob_thd": 0.0, "area_thd": None, "crop": CROP,
                 "stride": STRIDE, "short_side": SHORT_SIDE, "long_side": LONG_SIDE, "classes": "lposs",
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


def class_names(protocol: str, dataset: str, default: list[str]) -> list[str]:
    """The class prompts protocol `protocol` uses on `dataset` (its release's class file), else `default`.

    The release's file must list as many classes as the dataset has: a mismatch raises ValueError.
    """
    folder = PROTOCOLS[protocol]["base"]["classes"] if protocol in PROTOCOLS else None
    resource = resources.files("lposs.models").joinpath("protocol_classes", str(folder), f"{dataset}.txt")
    if folder in (None, "lposs") or not resource.is_file():
        return list(default)
    names = [line for line in resource.read_text().split("\n") if line.strip()]
    if len(names) != len(default):
        raise ValueError(f"protocol {protocol!r} lists {len(names)} classes for {dataset}, the dataset has "
                         f"{len(default)}: the class file lposs/models/protocol_classes/{folder}/{dataset}.txt is wrong")
    return names
