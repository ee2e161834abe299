"""What a notebook pulls in of the package, from the package's own import graph (lposs/import_graph.py, which the
feature store's code fingerprint reads too; no import of lposs's modules runs). Used by tests/test_layout.py (no
cycles, imports only downwards) and tests/test_dvc_deps.py (every dvc.yaml stage lists the modules its notebook
imports). Data files the code reads are listed in `DATA`.

    python tests/import_graph.py notebooks/ablate.ipynb     # the lposs deps that notebook's stage needs
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lposs, whichever is installed
from lposs.import_graph import ImportGraph, import_statements  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lposs"
DATA = {  # module -> data folders it reads (importlib.resources)
    "lposs.models.protocols": ["lposs/models/protocol_classes"],
    "lposs.datasets.base": ["lposs/datasets/classes"],
}
GRAPH = ImportGraph(PACKAGE)  # the package's own reading of its imports (lposs/import_graph.py)


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package."""
    return GRAPH.modules


def imports(name: str) -> frozenset[str]:
    return GRAPH.imports(name)


def targets(importer: str, statements: list[ast.AST]) -> set[str]:
    return GRAPH.targets(importer, statements)


def closure(roots: set[str]) -> set[str]:
    return GRAPH.closure(roots)


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
