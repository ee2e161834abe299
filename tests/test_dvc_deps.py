"""Every dvc.yaml stage lists, among its deps, each module of lposs its notebook imports (directly or through
other modules; a folder counts), and no lposs dep it does not need: edit any module a stage runs and
`dvc repro` re-runs that stage. The import closure is computed from the code (tests/import_graph.py)."""

from __future__ import annotations

import import_graph as graph
import pytest
import yaml

ALL_STAGES = yaml.safe_load((graph.REPO / "dvc.yaml").read_text())["stages"]
STAGES = {name: stage for name, stage in ALL_STAGES.items() if name != "fingerprint"}  # the notebook stages


def stage_deps(name: str) -> list[str]:
    stage = STAGES[name]
    return list((stage.get("do") or stage)["deps"])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_lists_exactly_the_modules_its_notebook_runs(name):
    problems = graph.dependency_problems(name, stage_deps(name))
    assert not problems, "\n".join(problems + ["python tests/import_graph.py notebooks/<stage>.ipynb prints the list"])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_removing_any_lposs_dep_is_caught(name):
    """The check cannot pass by accident: without any one of the stage's lposs deps it reports that dep."""
    deps = stage_deps(name)
    for dep in [d for d in deps if d.startswith("lposs")]:
        problems = graph.dependency_problems(name, [d for d in deps if d != dep])
        assert any(f" {dep.rstrip('/')}" in problem for problem in problems) or any(
            dep in problem for problem in problems), f"removing {dep} from {name} went unnoticed"


def test_the_closure_follows_lazy_imports_and_parent_packages():
    needed = graph.closure({"lposs.experiment.ablation"})
    assert {"lposs", "lposs.experiment", "lposs.core.propagation", "lposs.segmentation"} <= needed
    assert not any(name.startswith(("lposs.app", "lposs.experiment.results")) for name in needed)
    # `from lposs.datasets import get_dataset` goes through the package's lazy table to the registry
    assert "lposs.datasets.registry" in graph.targets("lposs.x", graph.import_statements(
        __import__("ast").parse("from lposs.datasets import get_dataset")))


def test_the_plots_stage_declares_the_params_it_reads():
    assert {"datasets", "backbone.heads", "backbone.vms", "ablate.sweeps"} <= set(STAGES["plots"]["params"])


def test_the_features_follow_the_fingerprint_stage_that_runs_every_time():
    """Plugins may live anywhere, so no folder dep covers them: the fingerprint stage (always run, a second) writes
    the code fingerprint, and the features stage depends on its file, so it re-runs exactly when that changes."""
    fingerprint = ALL_STAGES["fingerprint"]
    assert fingerprint["always_changed"] is True and "lposs.experiment.extraction" in fingerprint["cmd"]
    out = next(iter(fingerprint["outs"][0]))
    assert out in stage_deps("features") and out not in stage_deps("stage")
