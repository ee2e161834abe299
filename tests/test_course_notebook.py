"""The teaching notebook: committed clean, and it runs end to end headless (papermill, fast sizes)."""

import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "teach_label_propagation.ipynb"
EXPECTED_FIGURES = 15  # one plt.show() per figure cell; update when a figure is added or removed


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    cells = code_cells(nb)
    assert all(cell.outputs == [] for cell in cells), "strip the outputs before committing"
    assert all(cell.execution_count is None for cell in cells), "clear the execution counts before committing"
    parameters = [cell for cell in cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1, "exactly one cell must be tagged `parameters`"
    for statement in ast.parse(parameters[0].source).body:  # literals only: papermill does not re-derive values
        assert isinstance(statement, ast.Assign), ast.unparse(statement)
        ast.literal_eval(statement.value)  # raises on anything but a plain literal
    assert any("solution" in cell.metadata.get("tags", []) for cell in cells), "exercises need solution cells"
    assert "fast" in parameters[0].source


@pytest.mark.slow
def test_notebook_runs_headless(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    # Two cores shared by several processes: oversubscribed OpenMP threads spin, so run the kernel on one.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        kernel_name="python3",
        language="python",
        parameters={"fast": True},
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    outputs = [output for cell in code_cells(nb) for output in cell.outputs]
    errors = [output for output in outputs if output.output_type == "error"]
    assert not errors, f"{errors[0].ename}: {errors[0].evalue}" if errors else ""
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == EXPECTED_FIGURES
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "fast=True" in printed  # the injected parameter reached the notebook
    assert not re.search(r"\bnan\b", printed), "a printed result is nan"
