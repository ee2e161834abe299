"""The package's import graph, read from its source (no import runs): what imports what, and what a notebook
pulls in. Used by tests/test_layout.py (no cycles, imports only downwards) and tests/test_dvc_deps.py (every
dvc.yaml stage lists the modules its notebook imports).

Every `import` / `from ... import` statement counts, at module level or inside a function (a lazy import
runs when the function does). `from pkg import name` counts as importing `pkg.name` when that is a
module; a package whose `__init__` maps names to submodules in a literal `_LAZY` dict (PEP 562 lazy
imports) counts as importing `pkg.<_LAZY[name]>`. Importing a module also runs its parent packages'
`__init__`, so closures include them. Data files the code reads are listed in `DATA`.

    python tests/import_graph.py notebooks/ablate.ipynb     # the lposs deps that notebook's stage needs
"""

from __future__ import annotations

import ast
import json
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lposs"
DATA = {  # module -> data folders it reads (importlib.resources)
    "lposs.models.protocols": ["lposs/models/protocol_classes"],
    "lposs.datasets.base": ["lposs/datasets/classes"],
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


@lru_cache(maxsize=None)
def lazy_names(package: str) -> dict[str, str]:
    """A package's `_LAZY = {name: submodule}` table (empty when it has none)."""
    tree = ast.parse(modules()[package].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return {k: f"{package}.{v}" for k, v in ast.literal_eval(node.value).items()}
    return {}


def resolve(importer: str, module: str | None, level: int) -> str:
    """The absolute name of `from <level dots><module> import ...` written in `importer`."""
    if level == 0:
        return module or ""
    base = importer if is_package(importer) else importer.rpartition(".")[0]
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{module}" if module else base


def targets(importer: str, statements: list[ast.AST]) -> set[str]:
    """The lposs modules a list of import statements (of module `importer`) imports."""
    found: set[str] = set()
    for node in statements:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = resolve(importer, node.module, node.level)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules():  # a submodule (its parents run: see `closure`)
                    found.add(f"{source}.{alias.name}")
                elif source in modules() and is_package(source) and alias.name in lazy_names(source):
                    found.add(lazy_names(source)[alias.name])
                else:  # a name the module itself defines
                    found.add(source)
    return {name for name in found if name in modules()}


def import_statements(tree: ast.AST) -> list[ast.AST]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


@lru_cache(maxsize=None)
def imports(name: str) -> frozenset[str]:
    """The modules `name`'s own statements import (no parents added)."""
    return frozenset(targets(name, import_statements(ast.parse(modules()[name].read_text()))) - {name})


def parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def closure(roots: set[str]) -> set[str]:
    """Every module that importing `roots` can run: their imports, transitively, and all parent packages."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [m for m in (set(imports(name)) | parents(name)) if m in modules() and m not in seen]
    return seen


def notebook_code(path: Path) -> str:
    """The code cells of a notebook, IPython magics left out."""
    cells = json.loads(path.read_text())["cells"]
    lines = [line for cell in cells if cell["cell_type"] == "code" for line in "".join(cell["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def notebook_imports(path: Path) -> set[str]:
    """The lposs modules a notebook imports directly."""
    return targets("__notebook__", import_statements(ast.parse(notebook_code(path))))


def files_needed(path: Path) -> set[str]:
    """The repository paths (lposs/... files and data folders) a notebook's imports pull in."""
    needed = closure(notebook_imports(path))
    files = {str(modules()[name].relative_to(REPO)) for name in needed}
    return files | {folder for name in needed for folder in DATA.get(name, [])}


def covered(path: str, deps: list[str]) -> bool:
    """Whether `path` is one of the deps or lies in a folder among them."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def dependency_problems(stage: str, deps: list[str]) -> list[str]:
    """What is wrong with one dvc.yaml stage's deps: lposs files its notebook needs that no dep covers, and
    lposs deps that cover nothing it needs."""
    notebooks = [dep for dep in deps if dep.startswith("notebooks/") and dep.endswith(".ipynb")]
    if len(notebooks) != 1:
        return [f"stage {stage}: expected one notebook among its deps, found {notebooks}"]
    needed = files_needed(REPO / notebooks[0])
    problems = [f"stage {stage}: {path} is imported by {notebooks[0]} (directly or through other modules) "
                f"but is not among its deps in dvc.yaml" for path in sorted(needed) if not covered(path, deps)]
    for dep in deps:
        if dep.startswith("lposs") and not any(covered(path, [dep]) for path in needed):
            problems.append(f"stage {stage}: dep {dep} holds nothing {notebooks[0]} imports: remove it from dvc.yaml")
    return problems


def suggested_deps(path: Path) -> list[str]:
    """The lposs deps of a notebook for dvc.yaml: a folder where all of it is needed, else its files."""
    needed = files_needed(path)
    deps: list[str] = []
    for folder in sorted({p.split("/")[1] for p in needed if p.count("/") >= 2}):
        root = PACKAGE / folder
        everything = {str(f.relative_to(REPO)) for f in root.rglob("*.py")}
        everything |= {folder_path for name, folders in DATA.items() for folder_path in folders
                       if folder_path.startswith(f"lposs/{folder}/")}
        inside = {p for p in needed if p.startswith(f"lposs/{folder}/")}
        deps += [f"lposs/{folder}"] if everything <= inside else sorted(inside)
    return deps + sorted(p for p in needed if p.count("/") == 1)


if __name__ == "__main__":
    for notebook in sys.argv[1:]:
        print(f"# {notebook}: lposs deps for dvc.yaml")
        print("\n".join(f"- {dep}" for dep in suggested_deps(Path(notebook).resolve())))
