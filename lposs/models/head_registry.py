"""The registry of dense heads: every record, found and looked up.

    HEADS                 {name: HeadRecord}: the package's heads (year, then name), then those registered from outside
    head_record("sclip")  one record; ValueError naming the choices for an unknown name
    register_head(...)    lposs.register_head: a head of your own (lposs.models.records.register_head documents it)

Every module of the `heads_*` packages beside this file is imported on first use (`_DISCOVER`, which
lposs.import_graph reads too, so the feature store's fingerprint and the DVC dependencies follow): each registers
its head's record, so a new head is one new file and nothing lists it.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from . import records as _records
from .records import REGISTRY, HeadRecord

_DISCOVER = "heads_*"  # the packages beside this file whose every module registers heads (lposs.import_graph reads it)
_state = {"loaded": False, "loading": False}


def _load_package_heads() -> None:
    """Import every module of the `heads_*` packages beside this file, once; each registers its head's record."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        here = Path(__file__).parent
        for package in sorted(p.name for p in here.glob(_DISCOVER) if (p / "__init__.py").is_file()):
            module = importlib.import_module(f"{__package__}.{package}")
            for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name):
                importlib.import_module(f"{module.__name__}.{info.name}")
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def records() -> dict[str, HeadRecord]:
    """{name: record} of every head: the package's (ordered by year, then name), then those registered from outside
    it. The same dict every time (`HEADS`), so it stays current as plugins register."""
    _load_package_heads()
    return REGISTRY


def head_record(name: str) -> HeadRecord:
    """The record of head `name`; ValueError naming the choices when there is none."""
    found = records().get(name)
    if found is None:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(records())} "
                         "(or register your own: lposs.register_head, --plugin FILE)")
    return found


def register_head(name: str | HeadRecord, **fields: Any) -> Any:
    """`lposs.register_head`: register a head of your own (lposs.models.records.register_head, documented there),
    after the package's heads are loaded, so that a name already taken by one of them is refused."""
    _load_package_heads()
    return _records.register_head(name, **fields)


HEADS: dict[str, HeadRecord] = records()  # the one registry: every head, by name (a live view: plugins join it)


def heads_reading(*inputs: str) -> tuple[str, ...]:
    """The heads that read any of `inputs` (names of `records.INPUTS`), in registry order."""
    return tuple(name for name, record in HEADS.items() if set(inputs) & set(record.reads))
