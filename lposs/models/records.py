"""A release is one record: everything the package needs to know of a dense head, declared once, beside its code.

    @register_head("sclip", title="SCLIP", kind="last_block", defaults={"interpolation": "sclip"},
                   protocol=..., published=(...), release="wangf3014/SCLIP@b56bd30", year=2024)
    def sclip(block, x, grid, settings, proxy): ...

A head module (lposs/models/heads_*/<name>.py) registers its record when it is imported; the registry,
`lposs.models.head_registry` (`records()`, `head_record(name)`, `HEADS`), imports every module of those packages
once, so a new head is one new file. A researcher's own head registers the same way from any file or module
(`lposs.register_head`, `lposs.plugins`), after the package's heads, and may not take a name already taken (the
error names both places).

The calling conventions (`KINDS`) are data: `lposs.models.heads.dense_clip_features` runs every head through the
runner of its kind, and the extra inputs a head reads (`INPUTS`) are what the backbones provide, by input name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

# How a head function is called (lposs.models.heads runs each kind):
KINDS = {
    "last_block": "fn(block, x [B, 1 + N, W], grid, settings, proxy) -> (patch tokens [B, N', W] before ln_post, "
                  "grid'): the last block of CLIP replaced, all windows in one batch",
    "traced": "fn(visual, trace: WindowTrace, settings) -> one window's patch tokens [N, W] before ln_post: one "
              "window per forward, with every block's output (lposs.models.heads_2025.common.WindowTrace)",
    "window": "fn(visual, windows [B, 3, H, W] CLIP-normalised, **settings, **inputs) -> features [B, h, w, D] "
              "after proj (normalised by the caller)",
    "whole_image": "fn(visual, windows (ALL windows of one image, cut by the record's image_windows), **settings, "
                   "**inputs) -> that image's features [1, h, w, D] after proj",
}
# The extra inputs a head may read (`HeadRecord.reads`), each provided by the backbones (lposs.models.backbones):
INPUTS = {
    "proxy": "the proxy vision model's `proxy_feature` on the same windows [B, h', w', Dv]",
    "text": "the class list's query embeddings [C', D] (every synonym, unit norm)",
    "regions": "each window's mask-region ids [B, H, W] at its pixels, or [B, h', w'] at the proxy grid (0 = none)",
    "cells": "each window's patch cells on the whole image [B, 4] (whole_image heads)",
    "canvas": "the whole image's (rows, cols) of patches (whole_image heads)",
    "sam_attn": "SAM ViT-B's last-block attention [heads, n, n] (lposs.models.sam_attention)",
    "sam_v": "SAM ViT-B's last-block values [heads, h_s, w_s, d]",
}
SAM_INPUTS = ("sam_attn", "sam_v")
# The 8 benchmarks in the order of the published lists (Published.miou)
PUBLISHED_ORDER = ("voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade20k", "coco_stuff")
TRAINING_FREE = "training-free"
DEFAULT_HEAD = "maskclip"  # LPOSS's seeds: the head everything uses unless told otherwise
_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Published:
    """One published row: its name (what it is built on), mIoU per benchmark of `PUBLISHED_ORDER`, the average
    of the 8, and where the numbers come from."""

    name: str
    miou: tuple[float, ...]
    average: float
    source: str

    def __post_init__(self) -> None:
        if len(self.miou) != len(PUBLISHED_ORDER):
            raise ValueError(f"published row {self.name!r}: give {len(PUBLISHED_ORDER)} numbers in the order "
                             f"{', '.join(PUBLISHED_ORDER)} (got {len(self.miou)})")

    def on(self, dataset: str) -> float | None:
        return self.miou[PUBLISHED_ORDER.index(dataset)] if dataset in PUBLISHED_ORDER else None


@dataclass(frozen=True)
class TextStep:
    """A text-side step that adjusts the queries to each image (CASS's): `check(params)` raises ValueError on bad
    parameters; `scores(visual, features, text, windows, image, params, interpolation)` -> [B, h, w, C']."""

    check: Callable[[dict[str, Any]], None]
    scores: Callable[..., Any]


@dataclass(frozen=True)
class TrainedWeights:
    """A head's own trained weights (what makes it not training-free: CLIP-DINOiser's two convolutions).

    The head parameter `parameter` names them: None = the release's published file (torch hub's cached copy,
    downloaded when the network answers), a local file, or "random" (seeded random weights of the same shapes; what
    the backbones pass whenever the CLIP weights are random). `load(value)` returns them, cached, and raises
    lposs.models.loading.BackboneUnavailable naming the file when it cannot be had or is not the release's (a wrong
    key or shape); the backbones call it once when they are built, so a missing file is named with the others."""

    load: Callable[[Any], Any]
    parameter: str = "checkpoint"


@dataclass(frozen=True)
class HeadRecord:
    """Everything the package needs of one release's dense head (see the module docstring).

    name, title         registry name ("sclip") and display name ("SCLIP")
    function, kind      the head and how it is called (`KINDS`)
    defaults            its parameters and their defaults (interpolation: the position-embedding rule, if any)
    check               check(settings) raises ValueError on a bad value (beyond unknown names, checked for all)
    required            parameters without a default that every call must give (ResCLIP's text, temp_thd)
    caller_defaults     what the backbones fill in for `required` ones when a caller gives none
    batched             parameters when all windows of an image run as one batch (ProxyCLIP's per-window mean)
    reads               the extra inputs it reads (`INPUTS`)
    proxy_feature       the proxy model's feature it reads ("tokens", "k_raw", "qk"); proxy: the release's proxy
    output_grid         "clip" or "proxy": the grid of its features (so of the seeds)
    masks               the release's mask model (lposs.models.masks) for heads that read regions or whose own
                        step reads the stored masks (LaVG's), or SAM's
    image_windows       whole_image heads: fn(image [3, H, W], settings, patch) -> (windows, cells, canvas)
    text_step           a text-side query adjustment (`TextStep`), fed by the protocol's text_params
    protocol            the release's evaluation protocol {"base": {...}, "datasets": {...}} (lposs.models.protocols)
    published           its published rows (`Published`)
    training            "training-free", or what was trained (a table row's "built on" says it)
    trained             the head's own trained weights (`TrainedWeights`), for a head that is not training-free
    release             the release it reproduces, "owner/repo@commit"
    year                publication year (the registry's order: year, then name)
    paper_vm            the graph model of its paper run (`python -m lposs.experiment paper`)
    origin              where it was registered (file:line), filled in by `register_head`
    """

    name: str
    title: str
    function: Callable[..., Any]
    kind: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None
    required: tuple[str, ...] = ()
    caller_defaults: Mapping[str, Any] = field(default_factory=dict)
    batched: Mapping[str, Any] = field(default_factory=dict)
    reads: tuple[str, ...] = ()
    proxy_feature: str | None = None
    proxy: str | None = None
    output_grid: str = "clip"
    masks: str | None = None
    image_windows: Callable[..., Any] | None = None
    text_step: TextStep | None = None
    protocol: Mapping[str, Any] | None = None
    published: tuple[Published, ...] = ()
    training: str = TRAINING_FREE
    trained: TrainedWeights | None = None
    release: str = ""
    year: int = 0
    paper_vm: str = "dino_vitb16"
    origin: str = ""

    def __post_init__(self) -> None:
        problems = [f"kind {self.kind!r} is none of {', '.join(KINDS)}"] if self.kind not in KINDS else []
        problems += [f"reads {name!r}, none of {', '.join(INPUTS)}" for name in self.reads if name not in INPUTS]
        if ("proxy" in self.reads) != (self.proxy_feature is not None):
            problems.append("a head that reads 'proxy' names its proxy_feature, and only such a head")
        if self.output_grid not in ("clip", "proxy") or (self.output_grid == "proxy" and "proxy" not in self.reads):
            problems.append(f"output_grid {self.output_grid!r}: 'clip', or 'proxy' for a head that reads one")
        if (self.kind == "whole_image") != (self.image_windows is not None):
            problems.append("a whole_image head gives image_windows, and only such a head")
        problems += [f"required {name!r} is not among its defaults" for name in self.required
                     if name not in self.defaults]
        problems += [f"parameter {name!r} is the name of an input" for name in self.defaults
                     if name in INPUTS and name != "text"]
        if self.trained is not None and (self.trained.parameter not in self.defaults or self.training == TRAINING_FREE):
            problems.append(f"a head with trained weights names them by a parameter among its defaults (not "
                            f"{self.trained.parameter!r}) and says what was trained (training=)")
        if self.protocol is not None:
            from .protocol_bases import PROTOCOL_KEYS

            missing = [key for key in PROTOCOL_KEYS if key not in self.protocol.get("base", {})]
            if set(self.protocol) - {"base", "datasets"} or missing:
                problems.append("protocol is {'base': {...}, 'datasets': {dataset: {...}}} and its base names "
                                f"{', '.join(PROTOCOL_KEYS)} (missing: {', '.join(missing) or 'none'}; e.g. "
                                "{**lposs.models.protocol_bases.WINDOWS_2025, 'source': ...})")
        if not self.name.isidentifier():
            problems.append("its name must be an identifier (letters, digits, underscores)")
        if problems:
            raise ValueError(f"head record {self.name!r}: " + "; ".join(problems))

    @property
    def reads_sam(self) -> bool:
        return any(name in self.reads for name in SAM_INPUTS)

    @property
    def mask_model(self) -> str | None:
        """The mask model whose masks the features stage computes for this head (`masks: release`): its release's
        (CorrCLIP's SAM 2 regions, LaVG's Panoptic Cut), or None (a head that reads SAM's tensors itself, Trident,
        computes them in its own forward)."""
        return None if self.reads_sam else self.masks

    def random_trained(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`params` for random CLIP weights: the head's own trained weights (`trained`) random too, unless named."""
        params = dict(params or {})
        if self.trained is not None:
            params.setdefault(self.trained.parameter, "random")
        return params

    def settings(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated by `params`, checked: an unknown name or a bad value raises ValueError."""
        settings = dict(self.defaults)
        for name, value in (params or {}).items():
            if name not in settings:
                raise ValueError(f"head {self.name!r} has no parameter {name!r}; its parameters: {sorted(settings)}")
            settings[name] = value
        if "interpolation" in settings:
            from .vit import INTERPOLATIONS

            if settings["interpolation"] not in INTERPOLATIONS:
                raise ValueError(f"interpolation={settings['interpolation']!r}: use one of {INTERPOLATIONS}")
        if self.check is not None:
            self.check(settings)
        return settings


# ----------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------

REGISTRY: dict[str, HeadRecord] = {}  # every head registered so far (lposs.models.head_registry loads the package's)


def register_head(name: str | HeadRecord, **fields: Any) -> Any:
    """Register a head: as a decorator on its function, `@register_head("mine", title=..., kind="window", ...)`,
    or with a whole record, `register_head(HeadRecord(...))`. Returns the function (decorator) or the record.

    Every field of `HeadRecord` but `function` and `origin` may be given; kind defaults to "window" and title to
    the name. A name already taken raises ValueError naming where both were registered. (From outside the package
    use `lposs.register_head`, which loads the package's heads first, so that a clash with one is seen.)"""
    if isinstance(name, HeadRecord):
        if fields:
            raise TypeError("register_head(record) takes no other arguments")
        return _add(name, _caller())

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        where = f"{inspect.getsourcefile(function)}:{function.__code__.co_firstlineno}"
        record = HeadRecord(name=name, title=fields.pop("title", name), function=function,
                            kind=fields.pop("kind", "window"), **fields)
        _add(record, where)
        return function

    return decorate


def _caller() -> str:
    frame = inspect.currentframe().f_back.f_back  # the caller of register_head
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _add(record: HeadRecord, where: str) -> HeadRecord:
    if record.name in REGISTRY:
        raise ValueError(f"head {record.name!r} is registered twice: at {REGISTRY[record.name].origin} and at {where}; "
                         "give the new head another name")
    record = replace(record, origin=where)
    REGISTRY[record.name] = record
    if is_package_head(record):
        _reorder()
    else:
        from .. import plugins

        plugins.note_source(where.rpartition(":")[0])  # its source is part of the feature store's fingerprint
    return record


def is_package_head(record: HeadRecord) -> bool:
    """Whether the head was registered by a module of this package (not a plugin)."""
    return Path(record.origin.rpartition(":")[0]).resolve().is_relative_to(_HERE)


def _reorder() -> None:
    """The package's heads by year, then name; heads registered from outside after them, in their order."""
    ordered = sorted((r for r in REGISTRY.values() if is_package_head(r)), key=lambda r: (r.year, r.name))
    ordered += [r for r in REGISTRY.values() if not is_package_head(r)]
    REGISTRY.clear()
    REGISTRY.update({r.name: r for r in ordered})


def unregister_head(name: str) -> None:
    """Remove a head registered from outside the package (tests and notebooks that load a plugin twice)."""
    record = REGISTRY.get(name)
    if record is None or is_package_head(record):
        raise ValueError(f"head {name!r} is not a plugin's: only heads registered from outside the package can be "
                         "removed")
    del REGISTRY[name]
