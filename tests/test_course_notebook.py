"""The teaching notebook: committed clean, and it runs end to end headless (papermill, fast sizes)."""

import ast
import os
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "teach_label_propagation.ipynb"
EXPECTED_FIGURES = 16  # one plt.show() per figure cell; update when a figure is added or removed


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


def notebook_camvid_places(camvid_root: str = "") -> list:
    """The places the notebook's section 6 looks in, as its code cell spells them (checked below)."""
    from lposs.datasets import shared_data_dir

    return [camvid_root] if camvid_root else [shared_data_dir() / "camvid_segnet"]


def test_the_notebook_looks_for_camvid_as_this_test_does():
    source = "".join(cell.source for cell in code_cells(nbformat.read(NOTEBOOK, as_version=4)))
    assert 'camvid_places = [camvid_root] if camvid_root else [shared_data_dir() / "camvid_segnet"]' in source
    assert 'camvid_path = find_dataset("camvid", camvid_places)' in source
    assert "../../shared" not in source  # no path that holds only from one working directory


@pytest.mark.parametrize("where", [".", "notebooks"])
def test_camvid_is_found_from_the_root_and_from_notebooks(where, camvid_root, monkeypatch):
    """Whatever the working directory, the notebook's lookup finds the same CamVid: by default, and when the
    folder is given relative to the repository (../shared/data/... is relative to the clone, not to cwd)."""
    from lposs.datasets import find_dataset

    monkeypatch.chdir(REPO / where)
    assert find_dataset("camvid", notebook_camvid_places()) == camvid_root.resolve()
    monkeypatch.delenv("LPOSS_SHARED_DATA", raising=False)
    relative = os.path.relpath(camvid_root.resolve(), REPO)  # e.g. ../shared/data/camvid_segnet
    assert find_dataset("camvid", notebook_camvid_places(str(relative))) == camvid_root.resolve()
    assert find_dataset("camvid", notebook_camvid_places("no/such/folder")) in (None, (REPO / "data/camvid").resolve())


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
        cwd=str(REPO),  # from the repository root: section 6 must find the same CamVid as from notebooks/
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
    from lposs.datasets import find_dataset

    if find_dataset("camvid", notebook_camvid_places()) is not None:  # real photos where they are present
        assert "CamVid val (" in printed and "demo scenes (no CamVid" not in printed
    # the claims of the text are asserted in the notebook's cells: they ran (an error would be listed above)
    asserting = [cell.source for cell in code_cells(nb) if re.search(r"^assert ", cell.source, re.MULTILINE)]
    assert len(asserting) >= 5
