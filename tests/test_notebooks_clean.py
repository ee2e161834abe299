"""Source notebooks are committed without outputs (DVC hashes them: outputs would re-run stages), and the
pipeline notebooks' parameters cells hold literals only and match what lposs.experiment.parameters validates."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from lposs.experiment.parameters import STAGE_PARAMETERS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_pipeline_notebooks_exist():
    assert {f"{stage}.ipynb" for stage in STAGE_PARAMETERS} <= {p.name for p in ALL}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_no_outputs_and_no_execution_counts(path):
    notebook = load(path)
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} carries outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    assert notebook["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be python3"
    assert "papermill" not in notebook["metadata"], f"{path.name} is an executed copy, not a source notebook"


def parameters_cell(notebook: dict) -> str:
    cells = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
    return "".join(cells[0]["source"])


@pytest.mark.parametrize("stage", sorted(STAGE_PARAMETERS))
def test_parameters_cell_is_literals_matching_the_validator(stage):
    source = parameters_cell(load(NOTEBOOKS / f"{stage}.ipynb"))
    values = {}
    for statement in ast.parse(source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.unparse(statement)
        target = statement.targets[0]
        assert isinstance(target, ast.Name), ast.unparse(statement)
        values[target.id] = ast.literal_eval(statement.value)  # raises on anything but a literal
    assert set(values) == set(STAGE_PARAMETERS[stage])
    from lposs.experiment.parameters import check_parameters

    check_parameters(stage, values)  # the defaults themselves pass validation
