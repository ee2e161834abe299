"""Evaluation protocols of the field: how each release turns scores into labels, and with which settings.

The two background rules (LPOSS's synonym max, the SCLIP family's softmax with thresholds) are in
`lposs.core.scoring`; a protocol names one of them and its constants.

A named protocol carries a release's per-dataset settings: logit scale, thresholds, window crop and stride,
short side, its class files (lposs/models/protocol_classes/<protocol>/, converted to our one-class-per-line,
';'-synonym format from the release's configs/cls_*.txt, see SOURCES.md there) and the CLIP weights its
numbers were published with. `resolve(name, dataset)` merges them once into a flat dict that the pipeline
writes next to every result, so no setting stays hidden.

Each release's protocol is declared in its head's record (lposs.models.records, `protocol`: the head's module,
lposs/models/heads_*/<name>.py) and named after the head; LPOSS's own is here. Besides windows and scoring, a
protocol has three more kinds of setting, merged key by key (a dataset's entry updates the base's, it does not
replace it):

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

from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.defaults import CROP, LONG_SIDE, SHORT_SIDE, STRIDE
from ..core.scoring import BACKGROUND_RULES, check_rule  # noqa: F401 - part of a protocol's interface
from .head_registry import records
from .records import DEFAULT_HEAD

# LPOSS's own protocol (vladan-stojnic/LPOSS e489a74 configs/*.yaml); every other is its release's record's
LPOSS = {
    # logit_scale is LPOSS's "none": it is used only when the background switch says softmax (SCLIP's 40)
    "base": {"background": "synonyms", "logit_scale": 40.0, "prob_thd": 0.0, "area_thd": None, "crop": CROP,
             "stride": STRIDE, "short_side": SHORT_SIDE, "long_side": LONG_SIDE, "classes": "lposs",
             "clip": "laion2b_s34b_b88k", "head": DEFAULT_HEAD, "post": "lposs+",
             "source": "vladan-stojnic/LPOSS e489a74 configs/*.yaml"},
    "datasets": {},
}


class _Protocols(Mapping):
    """{name: {"base", "datasets"}}: LPOSS's, then each head record's protocol under the head's name (its "head"
    is that head). A live view of the registry: a plugin's protocol appears once the plugin is loaded. Each
    protocol is built once per record, so the same dicts come back every time."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[Any, dict[str, Any]]] = {}

    def _protocol(self, name: str, record: Any) -> dict[str, Any]:
        if name not in self._built or self._built[name][0] is not record:
            protocol = {"base": {**record.protocol["base"], "head": name},
                        "datasets": record.protocol.setdefault("datasets", {})}
            self._built[name] = (record, protocol)
        return self._built[name][1]

    def _all(self) -> dict[str, dict[str, Any]]:
        return {"lposs": LPOSS, **{name: self._protocol(name, record) for name, record in records().items()
                                   if record.protocol is not None}}

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


PROTOCOLS: Mapping[str, dict[str, Any]] = _Protocols()
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
    Read from the head's record, not the protocol in force: "head + own step" means the same under any protocol.
    sam: the SAM weights of a step that prompts SAM (Trident's sam_refine): "random", a file, None = cached."""
    record = records().get(head)  # the demo stand-in has none
    protocol = None if record is None else record.protocol
    if protocol is None or protocol["base"].get("post") in (None, "lposs+"):
        return None
    settings = resolve(head, dataset)
    step = {"name": settings["post"], **settings.get("post_params", {})}
    return step | ({"sam": sam} if step["name"] == "sam_refine" and sam is not None else {})


def class_names(protocol: str, dataset: str, default: list[str]) -> list[str]:
    """The class prompts protocol `protocol` uses on `dataset` (its release's class file), else `default`.

    The protocol's "classes" names a folder of lposs/models/protocol_classes/, or is the path of a folder of
    <dataset>.txt files (a plugin's). The release's file must list as many classes as the dataset has: a mismatch
    raises ValueError.
    """
    folder = PROTOCOLS[protocol]["base"]["classes"] if protocol in PROTOCOLS else None
    if folder is not None and ("/" in str(folder) or Path(str(folder)).is_absolute()):
        resource, shown = Path(folder) / f"{dataset}.txt", Path(folder) / f"{dataset}.txt"
    else:
        resource = resources.files("lposs.models").joinpath("protocol_classes", str(folder), f"{dataset}.txt")
        shown = f"lposs/models/protocol_classes/{folder}/{dataset}.txt"
    if folder in (None, "lposs") or not resource.is_file():
        return list(default)
    names = [line for line in resource.read_text().split("\n") if line.strip()]
    if len(names) != len(default):
        raise ValueError(f"protocol {protocol!r} lists {len(names)} classes for {dataset}, the dataset has "
                         f"{len(default)}: the class file {shown} is wrong")
    return names
