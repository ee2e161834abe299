"""The settings of LPOSS, declared once: one frozen, validated object per concern, with its defaults here.

    GraphSettings        the patch graph (params.yaml `graph`):  k, gamma, sigma, p, vm_feature
    PropagationSettings  label propagation on both graphs (`lp`): alpha, maxiter, tol, solver
    PixelSettings        LPOSS+'s pixel refiner (`pixel`):      refiner, r, tau
    WindowSettings       the sliding windows (`windows`):       crop, stride, short_side, long_side
    Setting              one propagation setting: a mode and the first three

Everything that runs LPOSS builds these from its own inputs: `segment` and `propagate_features` from
keyword arguments (`Setting.from_flat`), the DVC notebooks from params.yaml (`lposs.experiment.parameters`),
the CLI, the web app and the streaming evaluator from their options. An unknown or mistyped name stops
with a message naming it, the closest valid name and all valid names; a value of the wrong type or out
of range stops naming the value. Which settings a pixel refiner takes from the patch graph's propagation
is decided in one place: `PixelSettings.refiner_overrides`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .core import defaults
from .core.refiners import REFINERS

MODES = ("maskclip", "lposs", "lposs+")  # seeds only | + patch LP | + patch LP, then pixel refinement
OWN_STEP = "own"  # seeds, then the head's release's own post-step (PEARL's TLP, NACLIP's PAMR; lposs.core.own_steps)
EVALUATED_MODES = MODES + (OWN_STEP,)  # what an evaluation and `lposs segment --mode` can run; the demo page runs MODES
SOLVERS = ("cg", "cg_reference")  # batched CG | one column at a time, as the released code
GRAPH_FEATURES = ("q", "k", "v", "tokens", "clip")  # last-block q/k/v, final tokens, or the VLM's own


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


def _in_unit_interval(value: Any) -> bool:
    return 0 < value < 1


def _beta(value: Any) -> bool:
    return 0 < value <= 1


def _odd_at_least_3(value: Any) -> bool:
    return value >= 3 and value % 2 == 1


def _check(condition: Any, why: str) -> dict[str, Any]:
    return {"check": condition, "why": why}


class _Validated:
    """Type, choice and range checks from each field's annotation and metadata; unknown names refused."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check_value(f"{self.SECTION}.{item.name}" if self.SECTION else item.name, getattr(self, item.name),
                        item.type, item.metadata)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str | None = None) -> Any:
        """Build from a mapping (a params.yaml section, keyword arguments); unknown keys raise ValueError."""
        refuse_unknown(values, cls.names(), where or (f"params.yaml `{cls.SECTION}`" if cls.SECTION else cls.__name__))
        return cls(**dict(values))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def refuse_unknown(values: Mapping[str, Any], valid: tuple[str, ...], where: str) -> None:
    """ValueError naming every unknown key of `values`, its closest valid name, and the valid names."""
    unknown = [key for key in values if key not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"unknown setting {', '.join(hints)} in {where}; valid settings: {', '.join(valid)}")


def check_value(name: str, value: Any, kind: Any, metadata: Mapping[str, Any]) -> None:
    """ValueError when `value` is not of the annotated kind, not among the choices, or out of range."""
    kinds = {"int": int, "float": float, "str": str, "bool": bool, "int | None": int, "float | None": float}
    if value is None and str(kind).endswith("| None"):
        return
    expected = kinds.get(str(kind))
    ok = expected is None or isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ValueError(f"setting {name}={value!r} should be {'a' if expected is not int else 'an'} "
                         f"{expected.__name__}" + (" or null" if str(kind).endswith("| None") else ""))
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"setting {name}={value!r}: choose one of {', '.join(map(str, choices))}")
    if "check" in metadata and not metadata["check"](value):
        raise ValueError(f"setting {name}={value!r}: {metadata['why']}")


@dataclass(frozen=True)
class GraphSettings(_Validated):
    """The patch graph: kNN (k) on graph-feature cosines to the power gamma, times a spatial Gaussian
    (sigma) over patch-centre distances; p: power of the degree normalisation; vm_feature: which stored
    graph feature (q, k, v of the last block, final tokens, or clip = the VLM's own); region_beta: the weight
    between patches of different mask regions (`lposs.core.regions`; 1 = regions ignored, the paper's graph)."""

    SECTION: ClassVar[str] = "graph"
    k: int = field(default=defaults.K, metadata=_check(_positive, "k must be a positive number of neighbours"))
    gamma: float = field(default=defaults.GAMMA, metadata=_check(_non_negative, "gamma must be >= 0"))
    sigma: float = field(default=defaults.SIGMA, metadata=_check(_non_negative, "sigma must be >= 0 (0: no spatial term)"))
    p: float = field(default=defaults.P, metadata=_check(_non_negative, "p must be >= 0"))
    vm_feature: str = field(default="v", metadata={"choices": GRAPH_FEATURES})
    region_beta: float = field(default=1.0, metadata=_check(_beta, "region_beta must lie in (0, 1] (1: no regions)"))


@dataclass(frozen=True)
class PropagationSettings(_Validated):
    """Label propagation (I - alpha S) F = Y on both graphs: alpha, CG iterations and tolerance, solver."""

    SECTION: ClassVar[str] = "lp"
    alpha: float = field(default=defaults.ALPHA, metadata=_check(_in_unit_interval, "alpha must lie in (0, 1)"))
    maxiter: int = field(default=defaults.MAXITER, metadata=_check(_positive, "maxiter must be a positive iteration count"))
    tol: float = field(default=defaults.TOL, metadata=_check(_non_negative, "tol must be >= 0"))
    solver: str = field(default="cg", metadata={"choices": SOLVERS})


@dataclass(frozen=True)
class PixelSettings(_Validated):
    """LPOSS+'s pixel refiner (a name of `lposs.core.refiners.REFINERS`); r, tau: the pixel graph's window and
    colour temperature, null = the refiner's own (reference: 13 and 0.01, as released); boundary_beta: the
    weight of pixel edges across a mask-region boundary (`lposs.core.regions`; 1 = regions ignored)."""

    SECTION: ClassVar[str] = "pixel"
    refiner: str = field(default="reference", metadata={"choices": tuple(REFINERS)})
    r: int | None = field(default=None, metadata=_check(_odd_at_least_3, "r must be an odd window size >= 3"))
    tau: float | None = field(default=None, metadata=_check(_positive, "tau must be > 0"))
    boundary_beta: float = field(default=1.0, metadata=_check(_beta, "boundary_beta must lie in (0, 1] (1: no regions)"))

    def refiner_overrides(self, lp: PropagationSettings) -> dict[str, Any]:
        """What the refiner takes from the setting, the one rule: the reference refiner (the released
        LPOSS+) solves with the patch graph's alpha, maxiter and tol; every refiner takes r and tau when
        they are set; anything else stays as the refiner declares it (`REFINERS`)."""
        shared = {"alpha": lp.alpha, "maxiter": lp.maxiter, "tol": lp.tol} if self.refiner == "reference" else {}
        return {**shared, **{name: value for name, value in (("r", self.r), ("tau", self.tau)) if value is not None}}

    def resolved(self) -> "PixelSettings":
        """r and tau as the refiner will use them (its own where null; a refiner without them keeps null)."""
        own = REFINERS[self.refiner]
        return dataclasses.replace(self, r=self.r if self.r is not None else own.get("r"),
                                   tau=self.tau if self.tau is not None else own.get("tau"))


@dataclass(frozen=True)
class WindowSettings(_Validated):
    """The image resized so that its short side is short_side (long side at most long_side), then cut
    into crop x crop windows every stride pixels (the last window of a row or column pushed inside)."""

    SECTION: ClassVar[str] = "windows"
    crop: int = field(default=defaults.CROP, metadata=_check(_positive, "crop must be a positive window size"))
    stride: int = field(default=defaults.STRIDE, metadata=_check(_positive, "stride must be positive"))
    short_side: int = field(default=defaults.SHORT_SIDE, metadata=_check(_positive, "short_side must be positive"))
    long_side: int = field(default=defaults.LONG_SIDE, metadata=_check(_positive, "long_side must be positive"))


SECTIONS = {"graph": GraphSettings, "lp": PropagationSettings, "pixel": PixelSettings}


@dataclass(frozen=True)
class Setting:
    """One propagation setting: the mode and the graph, propagation and pixel settings it runs with."""

    mode: str = "lposs+"
    graph: GraphSettings = field(default_factory=GraphSettings)
    lp: PropagationSettings = field(default_factory=PropagationSettings)
    pixel: PixelSettings = field(default_factory=PixelSettings)

    def __post_init__(self) -> None:
        check_value("mode", self.mode, "str", {"choices": EVALUATED_MODES})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The flat names: mode, then every field of the three sections (k, gamma, ..., alpha, ..., r, tau)."""
        return ("mode",) + tuple(name for section in SECTIONS.values() for name in section.names())

    @classmethod
    def from_flat(cls, where: str = "the propagation settings", **values: Any) -> "Setting":
        """From flat names as `propagate_features` takes them (mode, k, alpha, refiner, r, ...)."""
        refuse_unknown(values, cls.names(), where)
        parts = {section: kind(**{n: values[n] for n in kind.names() if n in values})
                 for section, kind in SECTIONS.items()}
        return cls(mode=values.get("mode", "lposs+"), **parts)

    @classmethod
    def from_sections(cls, mode: str, sections: Mapping[str, Mapping[str, Any]]) -> "Setting":
        """From params.yaml-like sections {"graph": {...}, "lp": {...}, "pixel": {...}}."""
        refuse_unknown(sections, tuple(SECTIONS), "the propagation sections")
        return cls(mode=mode, **{name: kind.from_mapping(sections.get(name, {})) for name, kind in SECTIONS.items()})

    def flat(self) -> dict[str, Any]:
        """Every value by its flat name (what a record writes beside its numbers); r and tau as in force."""
        pixel = self.pixel.resolved()
        return {**self.graph.as_dict(), **self.lp.as_dict(), **pixel.as_dict(), "mode": self.mode}

    def replace(self, **values: Any) -> "Setting":
        """A copy with some flat values replaced (a sweep point): `setting.replace(alpha=0.9)`."""
        return Setting.from_flat(where="the replaced settings", **{**self.flat_given(), **values})

    def flat_given(self) -> dict[str, Any]:
        """The flat values as given (r and tau null where the refiner's own)."""
        return {"mode": self.mode, **self.graph.as_dict(), **self.lp.as_dict(), **self.pixel.as_dict()}
