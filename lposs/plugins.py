"""Heads from outside the package: a plugin is a Python file or module that registers heads when imported.

    load_plugins(["my_heads.py", "labmates.heads"], root=".")   # each imported once; errors name the file
    sources()                                                  # the files of every head registered from outside

A plugin is given as a file path (ending in .py, or containing a path separator; relative paths are read from
`root`) or as the name of an importable module. Importing it runs its `lposs.register_head(...)` calls
(lposs.models.records), after which its heads run everywhere the package's do: `lposs segment --plugin FILE`,
`lposs demo --plugin FILE`, and the pipeline (params.yaml `plugins:`, imported first by every stage). The file of
every head registered from outside the package is part of the feature store's code fingerprint
(`lposs.experiment.extraction.code_fingerprint`), so editing it recomputes the features; modules the plugin
itself imports are not followed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

_SOURCES: list[Path] = []  # files of heads registered from outside the package, in registration order
_LOADED: dict[str, ModuleType] = {}  # resolved file path or module name -> the imported plugin


class PluginError(RuntimeError):
    """A plugin could not be loaded: the message names the file (and line) and what to do."""


def is_path(spec: str) -> bool:
    """Whether a plugin is given as a file path (else as a module name)."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def plugin_file(spec: str, root: str | Path | None = None) -> Path:
    """The file of a plugin given as a path (relative to `root`) or module name; FileNotFoundError / PluginError
    naming the plugin when there is none."""
    if is_path(spec):
        path = (Path(root or ".") / spec).expanduser().resolve()
        if not path.is_file():
            where = f" (relative to {Path(root).resolve()})" if root and not Path(spec).is_absolute() else ""
            raise FileNotFoundError(f"plugin file {path} does not exist (given as {spec!r}{where}): check the path "
                                    "in --plugin or in params.yaml `plugins:`")
        return path
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError) as error:
        found, reason = None, str(error)
    else:
        reason = "no such module"
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise PluginError(f"plugin module {spec!r} cannot be found ({reason}): give a file path ending in .py, or the "
                          "name of a module on the Python path")
    return Path(found.origin).resolve()


def load_plugin(spec: str, root: str | Path | None = None) -> ModuleType:
    """Import one plugin (once: a second call returns the same module). Errors name the file and the line."""
    path = plugin_file(spec, root)
    key = str(path) if is_path(spec) else spec
    if key in _LOADED:
        return _LOADED[key]
    try:
        if is_path(spec):
            name = f"lposs_plugin_{path.stem}_{hashlib.md5(str(path).encode()).hexdigest()[:8]}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
    except Exception as error:
        sys.modules.pop(locals().get("name", ""), None)
        lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
                 if Path(frame.filename).resolve() == path]
        at = f" at line {lines[-1]}" if lines else ""
        raise PluginError(f"plugin {path}{at} raised {type(error).__name__}: {error}") from error
    note_source(path)
    _LOADED[key] = module
    return module


def load_plugins(specs: list[str] | tuple[str, ...], root: str | Path | None = None) -> list[ModuleType]:
    """Import every plugin of `specs` in order (see `load_plugin`)."""
    if isinstance(specs, str):
        raise TypeError(f"plugins is a list of files or modules, got the string {specs!r}")
    return [load_plugin(spec, root) for spec in specs]


def note_source(path: str | Path) -> None:
    """Record a file whose heads were registered from outside the package (lposs.models.records calls it)."""
    path = Path(path).resolve()
    if path.is_file() and path not in _SOURCES:
        _SOURCES.append(path)


def sources() -> list[Path]:
    """The files of every head registered from outside the package, and of every plugin loaded."""
    return list(_SOURCES)
