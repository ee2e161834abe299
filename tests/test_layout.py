"""The package's rooms import only downwards, with no cycle; `import lposs.<room>` runs only what it needs;
the pipeline's notebooks import the experiment layer only. Read from the code (tests/import_graph.py)."""

from __future__ import annotations

import subprocess
import sys

import import_graph as graph
import pytest

# Rooms from the bottom up: a module may import its own room and the rooms of lower rank only.
RANKS = {"lposs.io": 0, "lposs.kernels": 0, "lposs.hardware": 0, "lposs.import_graph": 0, "lposs.plugins": 0,
         "lposs.core": 1, "lposs.settings": 2, "lposs.datasets": 2,
         "lposs.demo": 2, "lposs.models": 3, "lposs.image_features": 4, "lposs.segmentation": 5,
         "lposs.experiment": 6, "lposs.app": 7, "lposs.__main__": 8, "lposs": 8}


def room(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def test_every_module_has_a_room():
    assert {room(name) for name in graph.modules()} <= set(RANKS)


def test_imports_point_down():
    wrong = [f"{name} imports {target} ({room(target)} is not below {room(name)})"
             for name in graph.modules() for target in graph.imports(name)
             if room(target) != room(name) and RANKS[room(target)] >= RANKS[room(name)]]
    assert not wrong, "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle():
    cycle = find_cycle({name: set(graph.imports(name)) for name in graph.modules()})
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_notebooks_import_the_experiment_layer_only():
    for path in sorted((graph.REPO / "notebooks").glob("*.ipynb")):
        if path.name == "teach_label_propagation.ipynb":
            continue  # the course walks through the maths itself
        outside = {m for m in graph.notebook_imports(path) if m != "lposs.experiment" and room(m) != "lposs.experiment"}
        assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("module, forbidden", [
    ("lposs.core.propagation", ("lposs.models", "lposs.experiment", "lposs.app", "lposs.datasets")),
    ("lposs.experiment.ablation", ("lposs.app", "gradio")),
    ("lposs.app.cli", ("lposs.experiment", "lposs.app.webapp_backend", "gradio")),
])
def test_importing_a_room_runs_only_what_it_needs(module, forbidden):
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in loaded if m.startswith(forbidden)], [m for m in loaded if m.startswith(forbidden)]


def test_the_public_names_are_still_there():
    import lposs

    for name in ("propagate", "patch_graph", "refine_pixels", "segment", "dense_clip_features", "extract_features",
                 "propagate_features", "PixelGraph", "SegmentationMetrics", "mean_iou", "window_layout"):
        assert callable(getattr(lposs, name)), name
    import lposs.segmentation  # noqa: F401 - a submodule of the same name would shadow the function

    assert callable(lposs.segment) and lposs.segment.__module__ == "lposs.segmentation"
