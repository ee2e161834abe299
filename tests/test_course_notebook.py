"""The course notebook: committed clean; run as a student runs it (a copy of the clone, no CamVid, no folder
outside the clone) in fast mode; its exercises check answers; its slider panel falls back to a figure without a
widget front end; the full mode once (slow); and `make course` installs the `course` extra only."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "teach_label_propagation.ipynb"
SECTIONS = 6  # "## 1." .. "## 6.": each closes with an exercise


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def tags(cell):
    return cell.metadata.get("tags", [])


def is_check(cell):
    return cell.cell_type == "code" and "check_answer(" in cell.source and "def check_answer" not in cell.source


def read():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_is_clean():
    nb = read()
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    cells = code_cells(nb)
    assert all(cell.outputs == [] for cell in cells), "strip the outputs before committing"
    assert all(cell.execution_count is None for cell in cells), "clear the execution counts before committing"
    parameters = [cell for cell in cells if "parameters" in tags(cell)]
    assert len(parameters) == 1, "exactly one cell must be tagged `parameters`"
    for statement in ast.parse(parameters[0].source).body:  # literals only: papermill does not re-derive values
        assert isinstance(statement, ast.Assign), ast.unparse(statement)
        ast.literal_eval(statement.value)  # raises on anything but a plain literal
    assert {"fast", "camvid_root", "widgets"} <= {s.targets[0].id for s in ast.parse(parameters[0].source).body}


def test_no_folder_outside_the_clone_is_named():
    """Students have no ../shared: the notebook neither names it nor asks lposs for it."""
    text = "".join(cell.source for cell in read().cells)
    for forbidden in ("../shared", "shared_data_dir", "LPOSS_SHARED_DATA", "find_dataset"):
        assert forbidden not in text, forbidden


def test_every_section_closes_with_an_exercise_its_next_cell_checks():
    cells = read().cells
    starts = [i for i, cell in enumerate(cells) if cell.cell_type == "markdown" and re.match(r"## \d\.", cell.source)]
    assert len(starts) == SECTIONS
    for number, (begin, end) in enumerate(zip(starts, starts[1:] + [len(cells)]), start=1):
        section = cells[begin:end]
        solutions = [i for i, cell in enumerate(section) if "solution" in tags(cell)]
        assert solutions, f"section {number} has no exercise"
        for i in solutions:
            assert i + 1 < len(section) and is_check(section[i + 1]), f"section {number}: no check after the solution"
            asked = re.findall(r'check_answer\("(\w+)"', section[i + 1].source)
            assert asked and all(re.search(rf"^{name} = ", section[i].source, re.M) for name in asked), asked


def stored_and_loaded(source):
    stored, loaded = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            (stored if isinstance(node.ctx, ast.Store) else loaded).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stored.add(node.name)
    return stored, loaded


def test_a_copy_without_solutions_needs_them_only_in_the_checks():
    """Handing out the notebook without its `solution` cells leaves every other cell runnable: no cell but the
    exercise checks reads a name that only a solution defines."""
    cells = code_cells(read())
    from_solutions = set().union(*(stored_and_loaded(c.source)[0] for c in cells if "solution" in tags(c)))
    elsewhere = set().union(*(stored_and_loaded(c.source)[0] for c in cells if "solution" not in tags(c)))
    for cell in cells:
        if "solution" in tags(cell) or is_check(cell):
            continue
        needs = stored_and_loaded(cell.source)[1] & (from_solutions - elsewhere)
        assert not needs, f"{sorted(needs)} come only from solution cells:\n{cell.source[:200]}"


def notebook_function(name):
    """A function defined in one of the notebook's code cells, executed on its own."""
    for cell in code_cells(read()):
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                namespace = {"os": os, "sys": sys}
                exec(compile(ast.Module([node], []), str(NOTEBOOK), "exec"), namespace)
                return namespace[name]
    raise AssertionError(f"the notebook defines no function {name}")


def test_the_sliders_show_only_where_a_front_end_renders_them():
    pytest.importorskip("ipywidgets")
    front_end = notebook_function("widget_front_end")
    kernel = type("ZMQInteractiveShell", (), {})()  # ipykernel's shell class name
    terminal = type("TerminalInteractiveShell", (), {})()
    assert front_end("auto", environ={"JPY_SESSION_NAME": "/lab/course.ipynb"}, modules={}, shell=kernel)
    assert front_end("auto", environ={"VSCODE_PID": "1"}, modules={}, shell=kernel)
    assert front_end("auto", environ={}, modules={"google.colab": object()}, shell=kernel)
    assert not front_end("auto", environ={}, modules={}, shell=kernel)  # papermill, nbconvert: a kernel, no front end
    assert not front_end("auto", environ={"JPY_SESSION_NAME": "x"}, modules={}, shell=terminal)
    assert front_end("on", environ={}, modules={}, shell=None)
    assert not front_end("off", environ={"JPY_SESSION_NAME": "x"})
    with pytest.raises(ValueError, match="widgets must be"):
        front_end("sometimes")


def student_clone(tmp_path):
    """A copy of the clone's tracked files: no data/, nothing beside it (tmp_path/shared is not there)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    clone = tmp_path / "lposs"
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    shutil.copy2(NOTEBOOK, clone / "notebooks" / NOTEBOOK.name)  # the working copy, committed or not
    return clone


def execute(notebook, out, cwd, parameters, monkeypatch):
    papermill = pytest.importorskip("papermill")
    # Two cores shared by several processes: oversubscribed OpenMP threads spin, so run the kernel on one.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for name in ("JPY_SESSION_NAME", "VSCODE_PID", "LPOSS_DATA"):  # no front end, no data folder given
        monkeypatch.delenv(name, raising=False)
    papermill.execute_notebook(str(notebook), str(out), kernel_name="python3", language="python",
                               parameters=parameters, cwd=str(cwd), progress_bar=False)
    return nbformat.read(out, as_version=4)


def printed_text(nb):
    return "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs if o.output_type == "stream")


def check_run(nb, static_panel=True):
    """What every run must show: no error, one figure per figure cell, the parameters arrived, no nan, the
    solvers written in the notebook agree with lposs and scikit-learn to 1e-6."""
    outputs = [output for cell in code_cells(nb) for output in cell.outputs]
    errors = [output for output in outputs if output.output_type == "error"]
    assert not errors, f"{errors[0].ename}: {errors[0].evalue}" if errors else ""
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    figure_cells = [cell for cell in code_cells(nb) if "plt.show()" in cell.source]
    assert len(images) == len(figure_cells) - (0 if static_panel else 1)  # the slider panel draws in its widget
    printed = printed_text(nb)
    assert not re.search(r"\bnan\b", printed), "a printed result is nan"
    for solver in ("fixed point", "conjugate gradient"):
        line = re.search(rf"{solver}\s*: from scratch vs closed form (\S+), vs lposs run to convergence (\S+);",
                         printed)
        assert line and max(float(line[1]), float(line[2])) <= 1e-6, line
    sklearn_gap = re.search(r"LabelSpreading .* largest difference (\S+);", printed)
    assert sklearn_gap and float(sklearn_gap[1]) <= 1e-6
    assert re.search(r"^total\s+[\d.]+ s$", printed, re.M), "the running time is printed"
    assert sum(": right" in line for line in printed.splitlines()) == SECTIONS  # every exercise checked
    return printed


def test_a_student_runs_it_from_a_fresh_clone(tmp_path, monkeypatch):
    """The student's case: a clone without data/camvid and without ../shared, run from notebooks/ in fast mode.
    A CamVid outside the clone (LPOSS_SHARED_DATA, a shared folder beside it) must not be picked up."""
    clone = student_clone(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(clone))  # the kernel imports the clone's lposs
    imported = subprocess.run([sys.executable, "-c", "import lposs; print(lposs.__file__)"], cwd=clone / "notebooks",
                              capture_output=True, text=True, check=True).stdout.strip()
    assert Path(imported).is_relative_to(clone), imported
    decoy = REPO.parent / "shared" / "data"  # real data where this repository's tests keep it, if present
    monkeypatch.setenv("LPOSS_SHARED_DATA", str(decoy if decoy.is_dir() else tmp_path / "elsewhere"))
    nb = execute(clone / "notebooks" / NOTEBOOK.name, tmp_path / "student.ipynb", clone / "notebooks",
                 {"fast": True}, monkeypatch)
    printed = check_run(nb)
    assert "fast=True" in printed
    assert f"6b images: generated demo scenes 100..100 (no CamVid at {clone / 'data' / 'camvid'}" in printed
    assert "static figure (widgets='auto', no widget front end found)" in printed
    assert "Section 5 images: generated demo scenes" in printed and "6a images: generated demo scenes" in printed


def test_a_copy_without_solutions_stops_at_the_first_check(tmp_path, monkeypatch):
    """The documented hand-out command removes the solutions; the first exercise check then names what to define."""
    pytest.importorskip("nbconvert")
    from nbconvert.preprocessors import TagRemovePreprocessor
    from papermill.exceptions import PapermillExecutionError

    nb = read()
    remover = TagRemovePreprocessor(enabled=True, remove_cell_tags={"solution"})
    student, _ = remover.preprocess(nb, {})
    assert not any("solution" in tags(cell) for cell in student.cells)
    path = tmp_path / "student_copy.ipynb"
    nbformat.write(student, path)
    with pytest.raises(PapermillExecutionError, match="define `hop_factor_08`"):
        execute(path, tmp_path / "out.ipynb", REPO, {"fast": True}, monkeypatch)


@pytest.mark.slow
def test_the_full_mode_with_sliders_and_the_lecturers_photos(tmp_path, monkeypatch):
    """The full sizes once, as in JupyterLab's kernel (widgets on) and with CamVid given by its folder where this
    repository's tests keep it (else generated scenes)."""
    pytest.importorskip("ipywidgets")
    from lposs.datasets.registry import shared_data_dir

    camvid = shared_data_dir() / "camvid_segnet"
    camvid_root = str(camvid) if camvid.is_dir() else ""
    nb = execute(NOTEBOOK, tmp_path / "full.ipynb", REPO, {"widgets": "on", "camvid_root": camvid_root},
                 monkeypatch)
    printed = check_run(nb, static_panel=False)
    assert "fast=False" in printed and "sliders shown (widgets front end)" in printed
    widget = "application/vnd.jupyter.widget-view+json"
    views = [output for cell in code_cells(nb) for output in cell.outputs if widget in output.get("data", {})]
    assert len(views) == 1
    if camvid_root:
        assert f"6b images: CamVid val (3 images, short side 180 px) from {camvid.resolve()}" in printed


def test_make_course_installs_the_course_extra_only(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    plan = subprocess.run([make, "-n", "course", f"COURSE_VENV={venv}"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout
    installs = re.findall(r"pip install (?!--upgrade pip)(.*)", plan)
    assert installs == ['-e ".[course]"'], installs
    assert f"-m venv --system-site-packages {venv}" in plan
    assert re.search(rf"{venv}/bin/jupyter lab notebooks/teach_label_propagation.ipynb$", plan, re.M)
    lab = subprocess.run([make, "-n", "lab", f"COURSE_VENV={venv}"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert lab == plan  # make lab is the same lab
    html = subprocess.run([make, "-n", "course-html", f"COURSE_VENV={venv}"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    assert "nbconvert --to html --execute" in html and "executed/course/teach_label_propagation.html" in html
