"""The package's import graph, read from its source files (nothing is imported): what imports what.

    graph = ImportGraph()                       # this installed copy of lposs (or ImportGraph(folder) for another)
    graph.closure({"lposs.experiment.extraction"})   # every module importing it can run
    graph.files(names)                          # their source files

Used by the feature store's code fingerprint (`lposs.experiment.extraction.code_fingerprint`: the closure of what
computes a shard, so no module list is kept by hand) and by the tests that check dvc.yaml's dependencies
(tests/import_graph.py) and the package's layering (tests/test_layout.py).

Every `import` / `from ... import` statement counts, at module level or inside a function (a lazy import runs
when the function does). `from pkg import name` counts as importing `pkg.name` when that is a module; a package
whose `__init__` maps names to submodules in a literal `_LAZY` dict (PEP 562 lazy imports) counts as importing
`pkg.<_LAZY[name]>`; a module that declares `_DISCOVER = "<glob>"` (lposs.models.head_registry: the head packages)
imports every module of the packages matching that glob beside it. Importing a module also runs its parent
packages' `__init__`, so closures include them.
"""

from __future__ import annotations

import ast
from functools import cached_property, lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


class ImportGraph:
    """The import graph of the package whose top folder is `package_dir` (default: this one)."""

    def __init__(self, package_dir: str | Path = PACKAGE_DIR):
        self.package_dir = Path(package_dir).resolve()
        self.root = self.package_dir.parent
        self._imports = lru_cache(maxsize=None)(self._own_imports)

    @cached_property
    def modules(self) -> dict[str, Path]:
        """{dotted name: file} of every module of the package."""
        return {self.module_name(path): path for path in sorted(self.package_dir.rglob("*.py"))}

    def module_name(self, path: Path) -> str:
        parts = list(path.resolve().relative_to(self.root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def is_package(self, name: str) -> bool:
        return self.modules[name].name == "__init__.py"

    def _literal(self, name: str, variable: str) -> object:
        """The literal value a module assigns to `variable` at its top level (None when it assigns none)."""
        for node in self._tree(name).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == variable for t in node.targets):
                return ast.literal_eval(node.value)
        return None

    def _tree(self, name: str) -> ast.Module:
        return ast.parse(self.modules[name].read_text())

    def lazy_names(self, package: str) -> dict[str, str]:
        """A package's `_LAZY = {name: submodule}` table (empty when it has none)."""
        table = self._literal(package, "_LAZY") or {}
        return {key: f"{package}.{value}" for key, value in table.items()}

    def discovered(self, name: str) -> set[str]:
        """The modules `name` imports by discovery (`_DISCOVER = "<glob>"`: every module of the matching packages)."""
        pattern = self._literal(name, "_DISCOVER")
        if not pattern:
            return set()
        folder = self.modules[name].parent
        return {self.module_name(path) for package in folder.glob(str(pattern)) if (package / "__init__.py").is_file()
                for path in package.glob("*.py")}

    def resolve(self, importer: str, module: str | None, level: int) -> str:
        """The absolute name of `from <level dots><module> import ...` written in `importer`."""
        if level == 0:
            return module or ""
        base = importer if importer in self.modules and self.is_package(importer) else importer.rpartition(".")[0]
        for _ in range(level - 1):
            base = base.rpartition(".")[0]
        return f"{base}.{module}" if module else base

    def targets(self, importer: str, statements: list[ast.AST]) -> set[str]:
        """The package's modules a list of import statements (of module `importer`) imports."""
        found: set[str] = set()
        for node in statements:
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                source = self.resolve(importer, node.module, node.level)
                for alias in node.names:
                    if f"{source}.{alias.name}" in self.modules:  # a submodule (its parents run: see `closure`)
                        found.add(f"{source}.{alias.name}")
                    elif source in self.modules and self.is_package(source) and alias.name in self.lazy_names(source):
                        found.add(self.lazy_names(source)[alias.name])
                    else:  # a name the module itself defines
                        found.add(source)
        return {name for name in found if name in self.modules}

    def _own_imports(self, name: str) -> frozenset[str]:
        statements = import_statements(self._tree(name))
        return frozenset((self.targets(name, statements) | self.discovered(name)) - {name})

    def imports(self, name: str) -> frozenset[str]:
        """The modules `name`'s own statements (and discovery) import (no parents added)."""
        return self._imports(name)

    def closure(self, roots: set[str]) -> set[str]:
        """Every module that importing `roots` can run: their imports, transitively, and all parent packages."""
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo += [m for m in (set(self.imports(name)) | parents(name)) if m in self.modules and m not in seen]
        return seen

    def files(self, names: set[str]) -> dict[str, Path]:
        """{module: source file} of `names`, sorted by name."""
        return {name: self.modules[name] for name in sorted(names)}


def import_statements(tree: ast.AST) -> list[ast.AST]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}
