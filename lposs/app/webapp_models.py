"""The web app's backbones: what the page offers (read from the registries when the app starts, so new
heads, vision models and refiners appear by themselves), loading them, and keeping them across clicks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

MAX_CACHED_MODELS = 2  # (vlm, vm) pairs kept in memory across clicks
DEMO_CHOICE = ("demo-weights", "demo-vlm", "demo-vm")  # the only choice with --demo-backbones


class ModelChoice(NamedTuple):
    """What the page's dropdowns select: CLIP weights, dense head, graph vision model."""

    clip_weights: str  # a name of lposs.models.backbones.CLIP_WEIGHTS
    head: str  # a name of lposs.models.heads.HEADS
    vision_model: str  # a short name of lposs.models.backbones.VISION_MODELS, or "clip" (the VLM's own features)


def clip_weight_choices(weights: str, first: str | None = None) -> list[str]:
    """CLIP weights of lposs.models.backbones.CLIP_WEIGHTS, `first` (the command line's choice) first."""
    if weights == "demo":
        return [DEMO_CHOICE[0]]
    from ..models.loading import CLIP_WEIGHTS

    return _first(list(CLIP_WEIGHTS), first)


def head_choices(weights: str) -> list[str]:
    """Dense CLIP heads of lposs.models.heads.HEADS (MaskCLIP, LPOSS's, first), but those whose release needs a mask
    model's output (corrclip's regions, lavg's masks for its vote): the page runs no mask model (the CLI does:
    `segment --masks`, and `segment --mode own` runs lavg's vote, as the pipeline does)."""
    if weights == "demo":
        return [DEMO_CHOICE[1]]
    from ..models.head_registry import HEADS
    from ..models.records import DEFAULT_HEAD

    needs_masks = {name for name, record in HEADS.items()
                   if "regions" in record.reads or record.mask_model is not None}
    return _first([name for name in HEADS if name not in needs_masks], DEFAULT_HEAD)


def vision_model_choices(weights: str) -> list[str]:
    """Graph models: lposs.models.backbones.VISION_MODELS (the paper's DINO ViT-B/16 first), then "clip"."""
    if weights == "demo":
        return [DEMO_CHOICE[2]]
    from ..models.backbones import DEFAULT_DINO_MODEL, VISION_MODELS

    paper = next((name for name, timm_name in VISION_MODELS.items() if timm_name == DEFAULT_DINO_MODEL), None)
    return _first(list(VISION_MODELS), paper) + ["clip"]


def refiner_choices() -> list[str]:
    """Pixel refiners of lposs.core.refine.REFINERS ("reference" first), aliases (same settings, second name) and
    the region refiners (no mask model here) left out."""
    from ..core.refiners import IMAGE_REFINERS, REFINERS

    names: list[str] = []
    for name in IMAGE_REFINERS:
        if all(REFINERS[seen] is not REFINERS[name] for seen in names):
            names.append(name)
    return _first(names, "reference")


# An upload has user-typed classes and no dataset, so a protocol's per-dataset values come from one dataset of
# lposs.models.protocols.PROTOCOLS: COCO-Object (80 everyday things + background), where, as on an upload, the named
# classes do not cover every pixel and the release's prob_thd decides what is left out. No release keeps a
# dataset-free default besides its segmentor's base (prob_thd 0, which its configs use only for datasets
# whose classes cover every pixel).
PROTOCOL_DATASET = "coco_object"
PROTOCOL_DATASET_TITLE = "COCO-Object"
RULE_KEYS = ("background", "logit_scale", "prob_thd", "area_thd")  # what the page takes from a protocol


def protocol_choices() -> list[str]:
    """Scoring protocols of lposs.models.protocols.PROTOCOLS, LPOSS's own ("lposs": max over synonyms, argmax) first."""
    from ..models.protocols import PROTOCOLS

    return _first(list(PROTOCOLS), "lposs")


def protocol_rule(name: str) -> dict[str, Any]:
    """Protocol `name`'s scoring rule on PROTOCOL_DATASET (ValueError naming the choices for an unknown one).

    Only the rule is taken (background, logit_scale, prob_thd, area_thd, and where it comes from): the page's
    head, CLIP weights and windows stay as chosen.
    """
    from ..models.protocols import resolve

    settings = resolve(name, PROTOCOL_DATASET)
    return {"protocol": name, "values_from": PROTOCOL_DATASET, **{key: settings[key] for key in RULE_KEYS},
            "source": settings["source"]}


def describe_rule(rule: dict[str, Any]) -> str:
    """One line of markdown: what protocol `rule` does to the scores."""
    if rule["background"] == "synonyms":
        return f"**{rule['protocol']}**: max over each class's synonyms, argmax (every pixel gets a class)"
    area = "none" if rule["area_thd"] is None else f"{rule['area_thd']:g}"
    return (f"**{rule['protocol']}**: softmax at logit scale {rule['logit_scale']:g}, max over synonyms, "
            f"prob_thd {rule['prob_thd']:g}, area_thd {area} ({PROTOCOL_DATASET_TITLE} values of "
            f"{rule['source'].split()[0]})")


def _first(names: list[str], first: str | None) -> list[str]:
    return ([first] if first in names else []) + [name for name in names if name != first]


def load_models(choice: ModelChoice, weights: str, device: str, bf16: bool = False,
                clip_checkpoint: str | None = None, dino_checkpoint: str | None = None) -> tuple[Any, Any]:
    """(vlm, vm): the lposs.demo stand-ins (weights "demo"), or real / random backbones of the choice."""
    from ..models.factory import BackboneSpec, create_backbones, spec_from_clip_choice

    if weights == "demo":
        spec = BackboneSpec(vlm="demo", vlm_weights="none", head="demo", vm="demo", vm_weights="none")
    else:
        spec = spec_from_clip_choice(choice.clip_weights, weights == "random", head=choice.head,
                                     vm=choice.vision_model, clip_checkpoint=clip_checkpoint,
                                     vm_checkpoint=dino_checkpoint, bf16=bf16)
    backbones = create_backbones(spec, device)
    return backbones.vlm, backbones.vm


class ModelCache:
    """The most recently used (vlm, vm) pairs, so that a second click loads nothing."""

    def __init__(self, loader: Callable[[ModelChoice], tuple[Any, Any]], capacity: int = MAX_CACHED_MODELS):
        self.loader = loader
        self.capacity = capacity
        self._models: OrderedDict[ModelChoice, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, choice: ModelChoice) -> tuple[tuple[Any, Any], bool]:
        """((vlm, vm), whether they were already loaded)."""
        with self._lock:
            if choice in self._models:
                self._models.move_to_end(choice)
                return self._models[choice], True
            while len(self._models) >= self.capacity:
                self._models.popitem(last=False)  # the least recently used pair
            self._models[choice] = self.loader(choice)
            return self._models[choice], False
