"""Evaluation protocols of the field: how each release turns scores into labels, and with which settings.

The two background rules (LPOSS's synonym max, the SCLIP family's softmax with thresholds) are in
`lposs.core.scoring`; a protocol names one of them and its constants.

A named protocol carries a release's per-dataset settings: logit scale, thresholds, window crop and stride,
short side, its class files (lposs/models/protocol_classes/<protocol>/, converted to our one-class-per-line,
';'-synonym format from the release's configs/cls_*.txt, see SOURCES.md there) and the CLIP weights its
numbers were published with. `resolve(name, dataset)` merges them once into a flat dict that the pipeline
writes next to every result, so no setting stays hidden.

The 2025 releases (scclip, sfp, resclip, cass, pearl; `PROTOCOLS_2025`; trident and corrclip, which read a mask
model, `PROTOCOLS_MASKS`) are declared the same way, with
three more kinds of record, merged key by key (a dataset's entry updates the base's, it does not replace it):

    head_params  what the release passes its head on that dataset (ResCLIP's temp_thd, rcs/sfr weights;
                 CASS's rescale_singular; PEARL's alpha_kk), in lposs.models.heads' parameter names
    text_params  CASS's text-side query adjustment (lposs.models.heads_2025.cass_text.TEXT_PARAMS; its global
                 embedding from the whole image, on Cityscapes from each window: global_from)
    post_params  PEARL's TLP post-step (lposs.core.tlp.tlp's names: grid); CorrCLIP's post is a label step
                 (region_mode, lposs.core.own_steps.run_label_step)
    whole_image  the release runs the whole resized image as one window (slide_crop=0, e.g. 21 x 28 patches)

Applied by the pipeline: background rule, logit scale, thresholds, windows, short side, class files, CLIP
weights, head (all through `resolve`); head_params and text_params when the head that runs is the protocol's own
(`lposs.experiment.parameters.PipelineParams.backbone_spec`); post / post_params as the head's own step, the
evaluation mode "own", for that head under any protocol (`own_step`). Recorded, not applied: whole_image: those
datasets keep crop/stride windows here, and say so in their `deviation`, as NACLIP's whole-image datasets do.
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

# ---------------------------------------------------------------------------------------------------
# The 2025 releases (logit_scale 40, prob_thd 0, windows 224/112, short side 336 unless a config says other)
# ---------------------------------------------------------------------------------------------------

_WHOLE = {"whole_image": True, "deviation": "release: whole-image inference (slide_crop=0); here 224/112 windows"}
_2025 = {**_SOFTMAX, "logit_scale": 40.0, "crop": 224, "stride": 112, "short_side": 336, "classes": "sclip",
         "post": None, "head_params": {}, "whole_image": False}
# SC-CLIP and SFP share their configs' values (SFP_ICCV/configs/cfg_voc21.py:6-8, cfg_coco_object.py:7)
_SC_DATASETS = {"voc21": {"logit_scale": 50.0, "prob_thd": 0.15, "area_thd": 0.1},
                "context60": {"prob_thd": 0.15}, "coco_object": {"logit_scale": 55.0, "prob_thd": 0.35},
                "cityscapes": {"short_side": 560}}


def _resclip(prob_thd: float | None, temp_thd: float, rcs: tuple[float, float], sfr: tuple[float, float]) -> dict:
    entry = {"head_params": {"temp_thd": temp_thd, "rcs_weights": rcs, "sfr_weights": sfr}}
    return entry | ({"prob_thd": prob_thd} if prob_thd is not None else {})


def _cass(gsw: float, mvw: float, h: float, global_from: str = "image", **more: Any) -> dict:
    text = {"global_semantics_weight": gsw, "mean_vector_weight": mvw, "h_threshold": h, "global_from": global_from}
    return {"text_params": text, **more}


PROTOCOLS_2025: dict[str, dict[str, Any]] = {
    "scclip": {
        "base": {**_2025, "head": "scclip", "source": "SuleBai/SC-CLIP 0417ba9 configs/cfg_*.py"},
        "datasets": _SC_DATASETS,
    },
    "sfp": {
        # SCLIP's class files with `person` -> `people` on VOC21, VOC20, Cityscapes (lposs/models/protocol_classes/sfp)
        "base": {**_2025, "head": "sfp", "classes": "sfp", "source": "Kimsure/SFP 2804f5b SFP_ICCV/configs/cfg_*.py"},
        "datasets": {**_SC_DATASETS, "ade20k": {"short_side": 384}},
    },
    "resclip": {
        # temp_thd; attn_rcs_weights; attn_sfr_weights (configs/cfg_voc21.py:6-11 and the other cfg_*.py)
        "base": {**_2025, "head": "resclip", "source": "yvhangyang/ResCLIP 0e085f7 configs/cfg_*.py"},
        "datasets": {"voc21": {**_resclip(0.1, 0.5, (2.0, 0.3), (2.2, 0.7)), **_WHOLE},
                     "context60": _resclip(0.1, 0.3, (2.0, 0.3), (1.8, 0.7)),
                     "coco_object": _resclip(0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),
                     "voc20": {**_resclip(None, 0.1, (2.0, 0.6), (2.1, 0.6)), **_WHOLE},
                     "context59": _resclip(None, 0.25, (2.0, 0.4), (1.8, 0.7)),
                     "coco_stuff": _resclip(None, 0.11, (2.0, 0.4), (1.8, 0.7)),
                     "cityscapes": {**_resclip(None, 0.1, (2.0, 0.2), (2.1, 0.6)), "short_side": 560},
                     "ade20k": _resclip(None, 0.25, (2.0, 0.3), (2.1, 0.7))},
    },
    "cass": {
        # text side: global semantic weight, mean vector weight, cluster cut h (cass_segmentor.py:98-212);
        # singular values not rescaled on voc20 and city_scapes (clip/model.py:465-473)
        "base": {**_2025, "head": "cass", "text_params": {}, "source": "MICV-yonsei/CASS 228ecdd configs/cfg_*.py"},
        "datasets": {"voc21": _cass(0.1, 0.03, 0.10, prob_thd=0.1, **_WHOLE),
                     "context60": _cass(0.25, 0.04, 0.09, prob_thd=0.1),
                     "coco_object": _cass(0.25, 0.01, 0.10, prob_thd=0.1),
                     "voc20": _cass(0.4, 0.02, 0.10, head_params={"rescale_singular": False}),
                     "context59": _cass(0.25, 0.04, 0.09), "coco_stuff": _cass(0.2, 0.02, 0.02),
                     "cityscapes": _cass(0.1, 0.03, 0.14, "window", short_side=560,  # its global: each window
                                         head_params={"rescale_singular": False}),
                     "ade20k": _cass(0.3, 0.05, 0.06)},
    },
    "pearl": {
        # TLP on (run.sh:4), pooled to round(H/80) x round(W/80), 224 on Cityscapes; alpha_kk 0.3 on ADE and City
        "base": {**_2025, "head": "pearl", "post": "tlp", "post_params": {"grid": 80},
                 "source": "PGSmall/PEARL c26062b configs/cfg_*.py, run.sh"},
        "datasets": {"voc21": {"prob_thd": 0.1, **_WHOLE}, "context60": {"prob_thd": 0.1},
                     "coco_object": {"prob_thd": 0.1}, "voc20": dict(_WHOLE),
                     "cityscapes": {"short_side": 560, "head_params": {"alpha_kk": 0.3}, "post_params": {"grid": 224}},
                     "ade20k": {"head_params": {"alpha_kk": 0.3}}},
    },
}

# ---------------------------------------------------------------------------------------------------
# The two releases that read a mask model (windows 336, short side 336 unless a config says other)
# ---------------------------------------------------------------------------------------------------


def _trident(coarse_thresh: float, prob_thd: float | None = None, short_side: int | None = None,
             **head_params: Any) -> dict:
    entry = {"prob_thd": prob_thd, "short_side": short_side}
    return {key: value for key, value in entry.items() if value is not None} | (
        {"head_params": head_params} if head_params else {}) | {"post_params": {"coarse_thresh": coarse_thresh}}


PROTOCOLS_MASKS: dict[str, dict[str, Any]] = {
    "trident": {
        # configs/base_config.py: windows 336 / 224 (the head's own slide_crop / slide_stride), cos_fac 1.2; its
        # SAM refinement (eval.py --sam_refine, the README's command) as the own step, coarse_thresh per dataset,
        # minimal_area 225, sam_iou_thresh 0.8 (base_config), sam_mask_coff 0.005 (trident.py:36)
        "base": {**_2025, "head": "trident", "crop": 336, "stride": 224, "classes": "proxyclip",
                 "head_params": {"slide_crop": 336, "slide_stride": 224}, "post": "sam_refine",
                 "post_params": {"coarse_thresh": 0.2, "minimal_area": 225, "sam_mask_coff": 0.005,
                                 "sam_iou_thresh": 0.8},
                 "deviation": "SAM sees the whole image (the release: Cityscapes as two halves)",
                 "source": "YuHengsss/Trident a93b346 configs/cfg_*.py, README (--sam_refine)"},
        "datasets": {"voc21": _trident(0.2, 0.2, 448), "context60": _trident(0.15, 0.15, 576),
                     "coco_object": _trident(0.25, 0.25, 448),
                     "voc20": {**_trident(0.2, short_side=336, cos_fac=0.0, slide_stride=112), "stride": 112},
                     "context59": _trident(0.15, short_side=576), "coco_stuff": _trident(0.05, short_side=448),
                     "cityscapes": _trident(0.10, short_side=688, cos_fac=3.0),
                     "ade20k": _trident(0.05, short_side=576)},
    },
    "corrclip": {
        # configs/base_config.py: MetaCLIP fullcc ViT-B/16 (QuickGELU), DINO B/8; windows 336 / 112; masks from
        # SAM 2 hiera-L (8 points, the 50.4 row); map correction after the labels (corrclip_segmentor.py:216-222)
        "base": {**_2025, "head": "corrclip", "crop": 336, "stride": 112, "classes": "corrclip",
                 "clip": "metaclip_fullcc", "post": "region_mode",
                 "source": "zdk258/CorrCLIP 103bc18 CorrCLIPv1/configs/cfg_*.py"},
        "datasets": {"voc21": {"prob_thd": 0.2}, "context60": {"prob_thd": 0.15}, "coco_object": {"prob_thd": 0.25},
                     "cityscapes": {"crop": 224, "stride": 112, "short_side": 448}, "ade20k": {"short_side": 448}},
    },
}
PROTOCOLS.update(PROTOCOLS_2025)
PROTOCOLS.update(PROTOCOLS_MASKS)
WINDOW_KEYS = ("crop", "stride", "short_side", "long_side")
MERGED_KEYS = ("head_params", "text_params", "post_params")  # dict settings: a dataset's entry updates the base's


def resolve(name: str, dataset: str, **overrides: Any) -> dict[str, Any]:
    """Every setting of protocol `name` on `dataset`, merged once: base <- dataset <- overrides (None = keep)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    unknown = set(overrides) - set(PROTOCOLS[name]["base"])
    if unknown:
        raise ValueError(f"protocol {name!r} has no setting {sorted(unknown)}; its settings are "
                         f"{sorted(PROTOCOLS[name]['base'])}")
    settings = {"protocol": name, **PROTOCOLS[name]["base"]}
    for layer in (PROTOCOLS[name]["datasets"].get(dataset, {}), {k: v for k, v in overrides.items() if v is not None}):
        settings.update({key: {**settings[key], **value} if key in MERGED_KEYS else value
                         for key, value in layer.items()})
    check_rule(settings)
    return settings


def own_head_params(settings: dict[str, Any], head: str) -> dict[str, tuple[tuple[str, Any], ...]]:
    """The release's head_params and text_params of resolved `settings`, as `BackboneSpec` takes them, when `head`
    is the protocol's own head; empty for any other head (a release's constants belong to its head)."""
    own = settings["head"] == head
    return {kind: tuple(settings.get(kind, {}).items()) if own else () for kind in ("head_params", "text_params")}


def own_step(head: str, dataset: str, sam: str | None = None) -> dict[str, Any] | None:
    """The post-step of `head`'s release on `dataset`, with that release's values there ({"name": "tlp", "grid":
    80}, {"name": "pamr"}), or None when the release runs none (LPOSS's own, LPOSS+, is a mode of its own).
    Found by head, not by the protocol in force: "head + own step" means the same under any protocol.
    sam: the SAM weights of a step that prompts SAM (Trident's sam_refine): "random", a file, None = cached."""
    releases = [name for name, protocol in PROTOCOLS.items()  # LPOSS's post, "lposs+", is an evaluation mode
                if protocol["base"]["head"] == head and protocol["base"]["post"] not in (None, "lposs+")]
    if not releases:
        return None
    settings = resolve(releases[0], dataset)
    step = {"name": settings["post"], **settings.get("post_params", {})}
    return step | ({"sam": sam} if step["name"] == "sam_refine" and sam is not None else {})


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
