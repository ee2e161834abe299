"""The DVC pipeline: its helpers (fast) and the real `dvc repro` on a tiny demo in a temporary copy (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lposs import pipeline as pl

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- helpers (fast)

def test_unknown_parameter_is_refused_by_name():
    values = {"dataset": "demo", "data_dir": "data", "out_dir": "staged", "timings_dir": "timings", "datset": "x"}
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['datset'\]"):
        pl.check_parameters("stage", values)


def test_wrong_types_and_choices_are_refused():
    good = {"params_file": "p", "staged_dir": "s", "ablations_dir": "a", "timings_dir": "t", "plots_dir": "p",
            "results_dir": "r"}
    pl.check_parameters("plots", good)
    with pytest.raises(ValueError, match="should be str"):
        pl.check_parameters("plots", {**good, "plots_dir": 3})
    with pytest.raises(ValueError, match="lacks"):
        pl.check_parameters("plots", {k: v for k, v in good.items() if k != "plots_dir"})
    with pytest.raises(ValueError, match="choose one of"):
        pl.check_value("mode", "lposs++", str)
    with pytest.raises(ValueError, match="should be int"):
        pl.check_value("k", True, int)
    pl.check_value("gamma", 3, float)  # an int is a fine float


def test_injected_parameters_are_the_new_public_names():
    before = {"pl", "Path"}
    namespace = {"pl": 1, "Path": 2, "dataset": "demo", "_hidden": 0}
    assert pl.injected_parameters(namespace, before) == {"dataset": "demo"}


def test_sweep_settings_replace_one_parameter():
    base = {"k": 400, "gamma": 3.0, "sigma": 0.01, "p": 1.0, "vm_feature": "v", "alpha": 0.95, "maxiter": 10,
            "tol": 1e-6, "solver": "cg", "r": 13, "tau": 0.01, "refiner": "reference"}
    settings = pl.sweep_settings(base, "k", [25, 400], "lposs")
    assert [s["k"] for s in settings] == [25, 400] and [s["label"] for s in settings] == ["k=25", "k=400"]
    assert all(s["mode"] == "lposs" and s["gamma"] == 3.0 for s in settings)
    modes = pl.sweep_settings(base, "mode", ["maskclip", "lposs+"], "lposs")
    assert [s["mode"] for s in modes] == ["maskclip", "lposs+"]
    with pytest.raises(ValueError, match="cannot sweep"):
        pl.sweep_settings(base, "beta", [1], "lposs")
    with pytest.raises(ValueError, match="non-empty"):
        pl.sweep_settings(base, "k", [], "lposs")
    with pytest.raises(ValueError, match="repeats"):
        pl.sweep_settings(base, "k", [5, 5], "lposs")
    with pytest.raises(ValueError, match="should be int"):
        pl.sweep_settings(base, "k", ["many"], "lposs")


def test_named_refiners_keep_their_own_pixel_settings():
    base = {"k": 400, "gamma": 3.0, "sigma": 0.01, "p": 1.0, "vm_feature": "v", "alpha": 0.95, "maxiter": 10,
            "tol": 1e-6, "solver": "cg", "r": 13, "tau": 0.01, "refiner": "reference"}
    reference, other = pl.sweep_settings(base, "refiner", ["reference", "fast"], "lposs+")
    assert pl.propagation_kwargs(reference)["r"] == 13 and pl.propagation_kwargs(reference)["tau"] == 0.01
    assert "r" not in pl.propagation_kwargs(other) and pl.propagation_kwargs(other)["refiner"] == "fast"
    swept = pl.sweep_settings({**base, "refiner": "fast"}, "r", [5], "lposs+")[0]
    assert pl.propagation_kwargs(swept)["r"] == 5 and "tau" not in pl.propagation_kwargs(swept)
    assert "refiner" not in pl.propagation_kwargs(pl.sweep_settings(base, "k", [5], "lposs")[0])


def test_backbone_key_and_feature_list():
    assert pl.backbone_key("demo", "none", "demo", "none", False) == "demo+demo"
    key = pl.backbone_key("ViT-B-16", "laion2b_s34b_b88k", "vit_base_patch16_224.dino", "pretrained", True)
    assert key == "ViT-B-16.laion2b_s34b_b88k+vit_base_patch16_224.dino+bf16"
    assert pl.parse_features("q, k,v") == ["q", "k", "v"]
    for bad in ("", "x", "v,v"):
        with pytest.raises(ValueError, match="vm_features"):
            pl.parse_features(bad)


def test_demo_backbones_must_go_together():
    with pytest.raises(ValueError, match="go together"):
        pl.build_backbones("demo", "none", "vit_base_patch16_224.dino", "pretrained", ["v"], "cpu")


def test_write_json_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = pl.write_json(tmp_path / "a" / "b.json", {"x": 1, "t": (1, 2)})
    assert json.loads(path.read_text()) == {"x": 1, "t": [1, 2]}
    with pytest.raises(TypeError):
        pl.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"x": 1, "t": [1, 2]}  # the old file survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_default_point_comes_from_the_mode_sweep():
    base = {"k": 400, "alpha": 0.95}
    record = lambda mode, k, miou: {"setting": {**base, "mode": mode, "k": k}, "label": f"x={k}",
                                    "metrics": {"miou": miou}}
    mode_run = {"sweep_param": "mode", "base": base, "sweep_mode": "lposs+",
                "records": [record("maskclip", 400, 10.0), record("lposs", 400, 20.0)]}
    run = {"sweep_param": "k", "base": base, "sweep_mode": "lposs",
           "records": [record("lposs", 25, 5.0), record("lposs", 1000, 7.0)]}
    pl.add_default_point(run, mode_run)
    assert [r["setting"]["k"] for r in run["records"]] == [25, 400, 1000]
    assert run["records"][1]["metrics"]["miou"] == 20.0 and run["records"][1]["from"] == "mode sweep"
    pl.add_default_point(run, mode_run)  # already there: nothing added
    assert len(run["records"]) == 3
    other = {**run, "base": {**base, "alpha": 0.5}, "records": run["records"][:1]}
    pl.add_default_point(other, mode_run)  # another base setting: not the same default, nothing borrowed
    assert len(other["records"]) == 1


def test_results_table_sets_ours_beside_the_published_numbers():
    scores = {m: {"miou": v, "biou": v / 2} for m, v in zip(pl.MODES, (20.0, 30.0, 40.0))}
    table = pl.results_table({"demo": scores, "voc21": scores})
    assert "| demo | 20.0 (10.0) | 30.0 (15.0) | 40.0 (20.0) | synthetic demo: none |" in table
    assert "| voc21 | 20.0 (10.0) | 30.0 (15.0) | 40.0 (20.0) | 61.1 |" in table
    assert "average of the 8" not in table and "synthetic scenes" in table
    full = pl.results_table({d: scores for d in pl.PUBLISHED_LPOSS_PLUS})
    assert "| average of the 8 | 20.0 | 30.0 | 40.0 | 41.3 (talk: 27.0 -> 38.3 -> 41.3) |" in full


def test_paper_check_names_what_is_missing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lposs.pipeline", "paper", "--check", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode == 0:
        pytest.skip("the paper's data and weights are all present here")
    assert "data: dataset 'voc21'" in result.stderr and "python -m lposs data fetch voc21" in result.stderr
    assert "cityscapes" in result.stderr and "ade20k" in result.stderr


# ----------------------------------------------------------------------------------------- dvc repro (slow)

TINY_SWEEPS = [
    {"param": "mode", "values": "[maskclip, lposs, lposs+]", "mode": "lposs+"},
    {"param": "alpha", "values": "[0.5]", "mode": "lposs"},  # the default 0.95 comes from the mode sweep
]


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "TQDM_MININTERVAL": "30", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory):
    """The real dvc.yaml, notebooks and package in a fresh git + DVC repo, on a 3-image demo with a tiny grid."""
    from lposs.demo import generate_demo

    root = tmp_path_factory.mktemp("pipeline")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "lposs", root / "lposs", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "notebooks").mkdir()
    for stage in pl.STAGE_PARAMETERS:
        shutil.copy(REPO / "notebooks" / f"{stage}.ipynb", root / "notebooks")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ablate"].update(sweeps=TINY_SWEEPS, predictions=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    generate_demo(root / "data" / "demo", count=3, seed=3)
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "pipeline"], root)
    log = run(["dvc", "repro"], root)
    return root, log


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_meaningful_outputs(pipeline_copy):
    root, log = pipeline_copy
    assert stages_run(log) == {"stage@demo", "features@demo", "ablate@demo-sweep0", "ablate@demo-sweep1", "plots"}
    metrics = json.loads((root / "results/metrics.json").read_text())["demo"]
    assert set(metrics) == {"maskclip", "lposs", "lposs+"}
    assert all(0 < m["miou"] <= 100 and 0 < m["biou"] <= 100 for m in metrics.values())
    assert metrics["maskclip"]["miou"] < metrics["lposs+"]["miou"]  # propagation helps on the demo
    table = (root / "results/table.md").read_text()
    assert "| demo |" in table and "synthetic" in table
    for figure in ("methods.png", "ablation-demo.png", "qualitative-demo.png", "timing.png"):
        assert (root / "plots/figures" / figure).stat().st_size > 10_000, figure
    sweep = (root / "plots/sweeps/demo-alpha.csv").read_text().splitlines()
    assert sweep[0] == "value,miou,biou" and [line.split(",")[0] for line in sweep[1:]] == ["0.5", "0.95"]
    assert float(sweep[2].split(",")[1]) == pytest.approx(metrics["lposs"]["miou"], abs=0.01)
    alpha = json.loads((root / "ablations/demo/alpha/results.json").read_text())
    assert [r["setting"]["alpha"] for r in alpha["records"]] == [0.5]
    assert len(list((root / "ablations/demo/mode/predictions/mode=lposs+").glob("*.png"))) == 2
    for executed in ("stage/demo", "features/demo", "ablate/demo-mode", "ablate/demo-alpha"):
        notebook = json.loads((root / f"executed/{executed}.ipynb").read_text())
        assert notebook["metadata"]["papermill"]["exception"] is None
        assert any(c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code")
    assert (root / "executed/plots.ipynb").exists()
    assert "up to date" in run(["dvc", "status"], root)
    shown = run(["dvc", "metrics", "show"], root)
    assert "demo.lposs+.miou" in shown
    run(["dvc", "plots", "show", "-o", "dvc_plots"], root)
    assert (root / "dvc_plots/index.html").exists()


@pytest.mark.slow
def test_second_repro_runs_nothing_and_alpha_reruns_only_ablate_and_plots(pipeline_copy):
    root, _ = pipeline_copy
    assert stages_run(run(["dvc", "repro"], root)) == set()
    log = run(["dvc", "exp", "run", "-S", "lp.alpha=0.9"], root)
    assert stages_run(log) == {"ablate@demo-sweep0", "ablate@demo-sweep1", "plots"}
    results = json.loads((root / "ablations/demo/mode/results.json").read_text())
    assert results["base"]["alpha"] == 0.9
    assert "up to date" in run(["dvc", "status"], root)


@pytest.mark.slow
def test_a_typo_in_a_parameter_stops_the_notebook(pipeline_copy, tmp_path):
    root, _ = pipeline_copy
    cmd = ["papermill", "-k", "python3", "--language", "python", "notebooks/stage.ipynb", str(tmp_path / "out.ipynb"),
           "-r", "datset", "demo"]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "unknown parameter(s) ['datset']" in result.stdout + result.stderr


@pytest.mark.slow
def test_real_backbone_path_with_random_weights(tmp_path):
    """The non-demo branch of the features stage (open_clip MaskCLIP + timm DINO), offline: seeded random weights."""
    from lposs.demo import generate_demo
    from lposs.datasets import get_dataset
    from lposs.features import FeatureStore, fill_dataset, make_manifest, to_image_features
    from lposs.segment import propagate_features

    ds = get_dataset("demo", generate_demo(tmp_path / "demo", count=1, seed=2, size=(224, 240)))
    vlm, vms = pl.build_backbones("ViT-B-16", "random", "vit_base_patch16_224.dino", "random", ["k", "v"], "cpu")
    assert vlm.id != vms["v"].id and vms["k"].id != vms["v"].id
    windows = dict(crop=224, stride=112, short_side=224, long_side=2048)
    store = FeatureStore(tmp_path / "f", make_manifest("demo", ds.class_names, vlm.id,
                                                       {f: m.id for f, m in vms.items()}, windows, "float16"))
    stats = fill_dataset(store, ds, vlm, vms, windows, progress=False)
    assert stats["computed"] == 1
    shard = store.load(ds.items[0].id)
    assert shard["seeds"].shape == (2 * 196, len(ds.class_names)) and shard["vm"]["v"].shape == (2 * 196, 768)
    scores = propagate_features(to_image_features(shard, "v"), mode="lposs", k=50)
    assert scores.shape == (len(ds.class_names), 224, 240)
