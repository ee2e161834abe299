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

from lposs.experiment import ablation, parameters, records, results, store, tables
from lposs.experiment.paper import PAPER_DATASETS, paper_overrides
from lposs.models.factory import BackboneSpec, create_backbones
from lposs.settings import MODES, Setting

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- helpers (fast)

def test_unknown_parameter_is_refused_by_name():
    values = {"params_file": "p", "dataset": "demo", "out_dir": "staged", "timings_dir": "timings", "datset": "x"}
    with pytest.raises(ValueError, match=r"unknown setting 'datset' \(did you mean 'dataset'\?\)"):
        parameters.check_parameters("stage", values)


def test_wrong_types_are_refused():
    good = {"params_file": "p", "staged_dir": "s", "ablations_dir": "a", "timings_dir": "t", "plots_dir": "p",
            "results_dir": "r"}
    parameters.check_parameters("plots", good)
    with pytest.raises(ValueError, match="should be str"):
        parameters.check_parameters("plots", {**good, "plots_dir": 3})
    with pytest.raises(ValueError, match="lacks"):
        parameters.check_parameters("plots", {k: v for k, v in good.items() if k != "plots_dir"})
    with pytest.raises(ValueError, match="should be int"):
        parameters.check_type("k", True, int)
    parameters.check_type("gamma", 3, float)  # an int is a fine float


def test_injected_parameters_are_the_new_public_names():
    before = {"parameters", "Path"}
    namespace = {"parameters": 1, "Path": 2, "dataset": "demo", "_hidden": 0}
    assert parameters.injected_parameters(namespace, before) == {"dataset": "demo"}


def test_sweep_points_replace_one_setting():
    base = Setting()
    points = ablation.sweep_points(base, "k", [25, 400], "lposs")
    assert [p.setting.graph.k for p in points] == [25, 400] and [p.label for p in points] == ["k=25", "k=400"]
    assert all(p.setting.mode == "lposs" and p.setting.graph.gamma == 3.0 for p in points)
    modes = ablation.sweep_points(base, "mode", ["maskclip", "lposs+"], "lposs")
    assert [p.setting.mode for p in modes] == ["maskclip", "lposs+"]
    with pytest.raises(ValueError, match="cannot sweep"):
        ablation.sweep_points(base, "beta", [1], "lposs")
    with pytest.raises(ValueError, match="non-empty"):
        ablation.sweep_points(base, "k", [], "lposs")
    with pytest.raises(ValueError, match="repeats"):
        ablation.sweep_points(base, "k", [5, 5], "lposs")
    with pytest.raises(ValueError, match="should be an int"):
        ablation.sweep_points(base, "k", ["many"], "lposs")


def test_named_refiners_keep_their_own_pixel_settings_unless_given():
    reference, other = ablation.sweep_points(Setting(), "refiner", ["reference", "best"], "lposs+")
    assert reference.setting.pixel.refiner_overrides(reference.setting.lp) == {"alpha": 0.95, "maxiter": 10,
                                                                               "tol": 1e-6}
    assert other.setting.pixel.refiner_overrides(other.setting.lp) == {}  # best keeps its own r, tau, CG
    assert (reference.setting.flat()["r"], reference.setting.flat()["tau"]) == (13, 0.01)  # recorded as run
    assert (other.setting.flat()["r"], other.setting.flat()["tau"]) == (13, 0.015)
    swept = ablation.sweep_points(Setting.from_flat(refiner="best"), "r", [5], "lposs+")[0].setting
    assert swept.pixel.refiner_overrides(swept.lp) == {"r": 5}


def test_backbone_spec_key_and_store_folder():
    demo = BackboneSpec(vlm="demo", vlm_weights="none", head="demo", vm="demo", vm_weights="none")
    assert demo.key() == "demo+demo+demo"
    spec = BackboneSpec(vlm="ViT-B-16", vlm_weights="laion2b_s34b_b88k", vm="dino_vitb16", bf16=True)
    assert spec.key() == "ViT-B-16.laion2b_s34b_b88k+maskclip+dino_vitb16+bf16"
    proxy = BackboneSpec(vlm_weights="openai", head="proxyclip", vm="clip", vm_weights="random")
    assert proxy.key() == "ViT-B-16.openai+proxyclip.dino_vitb8+clip" and proxy.vm_features == ("clip",)
    sclip = BackboneSpec(vlm_weights="openai", head="sclip", vm="clip")
    assert store.store_folder("f", "voc21", sclip) == Path("f/voc21/sclip+clip/ViT-B-16.openai+sclip+clip")
    for bad in ((), ("x",), ("v", "v")):
        with pytest.raises(ValueError, match="vm_features"):
            BackboneSpec(vm_features=bad)


def write_params(tmp_path, **changes):
    """The committed params.yaml with some sections changed (a dict updates the section's keys)."""
    values = yaml.safe_load(committed_params())
    for section, change in changes.items():
        values[section] = {**values[section], **change} if isinstance(change, dict) else change
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_protocol_settings_reach_the_stages(tmp_path):
    params = parameters.PipelineParams.load(write_params(tmp_path, protocol={"name": "sclip"},
                                                         backbone={"vlm": "ViT-B-16", "vlm_pretrained": "protocol"},
                                                         windows={"crop": "protocol", "stride": 56,
                                                                  "short_side": "protocol"}))
    assert params.clip_weights() == "openai"
    assert params.windows("cityscapes").as_dict() == {"crop": 224, "stride": 56, "short_side": 560, "long_side": 2048}
    assert params.windows("cityscapes:val") == params.windows("cityscapes")  # a split keeps its dataset's
    assert params.rule("voc21")["prob_thd"] == 0.1 and params.rule("voc21:val") == params.rule("voc21")
    assert params.rule("voc21")["short_side"] == 336  # the windows as run are what the record says
    lposs = parameters.PipelineParams.load(write_params(tmp_path, protocol={"background": "softmax"}))
    rule = lposs.rule("voc21")  # the switch, with the protocol's other settings and the windows as run
    assert rule["background"] == "softmax" and rule["short_side"] == 256 and lposs.clip_weights() == "none"


def test_a_mistyped_or_wrong_param_stops_with_its_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting 'alpah' \(did you mean 'alpha'\?\) in params.yaml `lp`"):
        parameters.PipelineParams.load(write_params(tmp_path, lp={"alpah": 0.9}))
    with pytest.raises(ValueError, match="positive int or 'protocol'"):
        parameters.PipelineParams.load(write_params(tmp_path, windows={"crop": "auto"}))
    with pytest.raises(ValueError, match="protocol.name='sclip2': choose one of"):
        parameters.PipelineParams.load(write_params(tmp_path, protocol={"name": "sclip2"}))
    with pytest.raises(ValueError, match=r"lp.alpha=1.5: alpha must lie in \(0, 1\)"):
        parameters.PipelineParams.load(write_params(tmp_path, lp={"alpha": 1.5}))
    with pytest.raises(ValueError, match="unknown setting 'graf'"):
        parameters.PipelineParams.load(write_params(tmp_path), overrides={"graf": {"k": 3}})
    merged = parameters.PipelineParams.load(write_params(tmp_path), overrides={"lp": {"alpha": 0.9}})
    assert merged.base_setting("demo").lp.alpha == 0.9 and merged.base_setting("demo").lp.maxiter == 10


def test_paper_overrides_name_head_protocol_and_graph():
    overrides = paper_overrides("proxyclip", "proxyclip")
    assert "backbone.heads=[proxyclip]" in overrides and "backbone.vms=[dino_vitb8]" in overrides
    assert "protocol.name=proxyclip" in overrides and "backbone.vlm_pretrained=protocol" in overrides
    assert "backbone.vms=[dino_vitb16]" in paper_overrides()
    with pytest.raises(ValueError, match="unknown protocol"):
        paper_overrides("sclip", "nope")
    assert "ablate.sweeps=[{param:mode,values:'[maskclip, lposs, lposs+]',mode:lposs+}]" in paper_overrides()
    pearl = paper_overrides("pearl", "pearl")  # PEARL's release has TLP: its paper run gets the "+ own step" row
    assert "ablate.sweeps=[{param:mode,values:'[maskclip, own, lposs, lposs+]',mode:lposs+}]" in pearl
    assert "backbone.heads=[cass]" in paper_overrides("cass", "cass")


def test_demo_backbones_must_go_together():
    with pytest.raises(ValueError, match="go together"):
        BackboneSpec(vlm="demo", vlm_weights="none", head="demo", vm="dino_vitb16")
    with pytest.raises(ValueError, match="go together"):
        BackboneSpec(vlm="ViT-B-16", vlm_weights="random", head="demo", vm="demo")


def test_write_json_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = records.write_json(tmp_path / "a" / "b.json", {"x": 1, "t": (1, 2)})
    assert json.loads(path.read_text()) == {"x": 1, "t": [1, 2]}
    with pytest.raises(TypeError):
        records.write_json(path, {"bad": object()})
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
    results.add_default_point(run, mode_run)
    assert [r["setting"]["k"] for r in run["records"]] == [25, 400, 1000]
    assert run["records"][1]["metrics"]["miou"] == 20.0 and run["records"][1]["from"] == "mode sweep"
    results.add_default_point(run, mode_run)  # already there: nothing added
    assert len(run["records"]) == 3
    other = {**run, "base": {**base, "alpha": 0.5}, "records": run["records"][:1]}
    results.add_default_point(other, mode_run)  # another base setting: not the same default, nothing borrowed
    assert len(other["records"]) == 1


def test_results_table_sets_ours_beside_the_published_numbers():
    scores = {m: {"miou": v, "biou": v / 2} for m, v in zip(MODES, (20.0, 30.0, 40.0))}
    run = {"head": "sclip", "vm": "dino_vitb16", "protocol": "sclip", "modes": {"demo": scores, "voc21": scores},
           "deviations": ["voc21: something"]}
    table = tables.results_table([run], ["demo", "voc21"])
    assert "| sclip | dino_vitb16 | sclip | CLIP ?, training-free | seeds | 20.0 (10.0) | 20.0 (10.0) |" in table
    assert ("| sclip | dino_vitb16 | sclip | CLIP ?, training-free | + own step (none in its release) | - | - |"
            in table)  # SCLIP's release has no post-step, and the mode "own" did not run
    assert ("| sclip | dino_vitb16 | sclip | CLIP ? + dino_vitb16 graph, training-free | + LPOSS+ | 40.0 (20.0) "
            "| 40.0 (20.0) |") in table
    assert "| sclip | published | own | as its name says | SCLIP |  | 59.1 |" in table  # none on the demo
    assert "avg of 8" not in table and "synthetic scenes" in table and "Deviation (sclip+dino_vitb16" in table
    full = tables.results_table([{**run, "modes": {d: scores for d in PAPER_DATASETS}}], PAPER_DATASETS)
    assert "| + LPOSS | " + " | ".join(["30.0 (15.0)"] * 8) + " | 30.0 |" in full
    assert full.rstrip().splitlines()[1].count("---") == 5 + 9
    assert "| SCLIP | 59.1 | 30.4 | 30.5 | 80.4 | 34.2 | 22.4 | 32.2 | 16.1 | 38.2 |" in full  # pipeline order


def test_paper_check_names_what_is_missing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lposs.experiment", "paper", "--check", "--data-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO,
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


def committed_params() -> str:
    """params.yaml as committed: the tests check the defaults, not a workspace changed by `dvc exp run -S`."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else (REPO / "params.yaml").read_text()


def copy_pipeline(root: Path) -> None:
    """The real dvc.yaml, notebooks, package and the committed params.yaml into `root`."""
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(committed_params())
    shutil.copytree(REPO / "lposs", root / "lposs", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "notebooks").mkdir()
    for stage in parameters.STAGE_PARAMETERS:
        shutil.copy(REPO / "notebooks" / f"{stage}.ipynb", root / "notebooks")


def git_dvc_init(root: Path) -> None:
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):
        run(cmd, root)


def run(cmd: list[str], cwd: Path, timeout: int = 600, env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "TQDM_MININTERVAL": "30", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def only_the_fingerprint_changes(status: str) -> bool:
    """`dvc status` of an up-to-date pipeline: only the fingerprint stage, which always runs, is listed."""
    return [line.strip() for line in status.splitlines() if line.strip()] == ["fingerprint:", "always changed"]


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory):
    """The real dvc.yaml, notebooks and package in a fresh git + DVC repo, on a 3-image demo with a tiny grid."""
    root = demo_pipeline(tmp_path_factory.mktemp("pipeline"), count=3)
    log = run(["dvc", "repro"], root)
    return root, log + run([sys.executable, "-m", "lposs.experiment.dvc_views"], root)  # what make repro ends with


def demo_pipeline(root: Path, count: int) -> Path:
    """The committed pipeline on a `count`-image demo with the tiny grid, as a fresh git + DVC repo."""
    from lposs.demo import generate_demo

    copy_pipeline(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ablate"].update(sweeps=TINY_SWEEPS, predictions=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    generate_demo(root / "data" / "demo", count=count, seed=3)
    git_dvc_init(root)
    return root


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_meaningful_outputs(pipeline_copy):
    root, log = pipeline_copy
    assert stages_run(log) == {"fingerprint", "stage@demo", "features@demo-demo-demo", "ablate@demo-demo-demo-sweep0",
                               "ablate@demo-demo-demo-sweep1", "plots"}
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager

    if zmq.has("curve") and "curve" in (KernelSpecManager().get_kernel_spec("python3").metadata or {}).get(
            "supported_encryption", []):
        assert "without encryption" not in log  # the stages' kernels talk over encrypted sockets (run_notebook)
    metrics = json.loads((root / "results/metrics.json").read_text())["demo"]["demo+demo"]
    assert set(metrics) == {"maskclip", "lposs", "lposs+"}
    assert all(0 < m["miou"] <= 100 and 0 < m["biou"] <= 100 for m in metrics.values())
    assert metrics["maskclip"]["miou"] < metrics["lposs+"]["miou"]  # propagation helps on the demo
    table = (root / "results/table.md").read_text()
    assert table_row(table, "demo", "demo", "lposs", "+ LPOSS+") and "synthetic" in table
    for figure in ("methods.png", "ablation-demo-demo+demo.png", "qualitative-demo-demo+demo.png", "timing.png"):
        assert (root / "plots/figures" / figure).stat().st_size > 10_000, figure
    sweep = (root / "plots/sweeps/demo-demo+demo-alpha.csv").read_text().splitlines()
    assert sweep[0] == "value,miou,biou" and [line.split(",")[0] for line in sweep[1:]] == ["0.5", "0.95"]
    assert float(sweep[2].split(",")[1]) == pytest.approx(metrics["lposs"]["miou"], abs=0.01)
    alpha = json.loads((root / "ablations/demo/demo+demo/alpha/results.json").read_text())
    assert [r["setting"]["alpha"] for r in alpha["records"]] == [0.5]
    assert alpha["protocol"]["protocol"] == "lposs" and alpha["protocol"]["background"] == "synonyms"
    # the record tells the settings that ran: params.yaml's short side (256), not the protocol's 448
    used = yaml.safe_load((root / "params.yaml").read_text())["windows"]["short_side"]
    manifest = json.loads(next((root / "features/demo/demo+demo").glob("*/manifest.json")).read_text())
    assert used == 256 and manifest["windows"]["short_side"] == used
    assert alpha["protocol"]["short_side"] == alpha["windows"]["short_side"] == used
    printed = json.loads((root / "executed/ablate/demo-demo+demo-alpha.ipynb").read_text())
    assert "'short_side': 256" in "".join("".join(o.get("text", "")) for c in printed["cells"]
                                          for o in c.get("outputs", []))
    assert len(list((root / "ablations/demo/demo+demo/mode/predictions/mode=lposs+").glob("*.png"))) == 2
    for executed in ("stage/demo", "features/demo-demo+demo", "ablate/demo-demo+demo-mode",
                     "ablate/demo-demo+demo-alpha"):
        notebook = json.loads((root / f"executed/{executed}.ipynb").read_text())
        assert notebook["metadata"]["papermill"]["exception"] is None
        assert any(c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code")
    assert (root / "executed/plots.ipynb").exists()
    assert only_the_fingerprint_changes(run(["dvc", "status"], root))
    shown = run(["dvc", "metrics", "show"], root)
    assert "demo.demo+demo.lposs+.miou" in shown
    run(["dvc", "plots", "show", "-o", "dvc_plots"], root)
    assert (root / "dvc_plots/index.html").exists()


@pytest.mark.slow
def test_second_repro_runs_nothing_and_alpha_reruns_only_ablate_and_plots(pipeline_copy):
    root, log = pipeline_copy
    assert stages_run(run(["dvc", "repro"], root)) == {"fingerprint"}  # a second: the code is unchanged
    # make repro's last words: the exact command that makes this run the baseline; a user follows it
    command = 'git add dvc.lock && git commit -m "Pipeline run: dvc.lock"'
    assert "no baseline row" in log and command in log
    run(["bash", "-c", command], root)
    before = json.loads((root / "results/metrics.json").read_text())["demo"]["demo+demo"]["lposs"]["miou"]
    log = run(["dvc", "exp", "run", "-S", "lp.alpha=0.9"], root)
    assert stages_run(log) == {"fingerprint", "ablate@demo-demo-demo-sweep0", "ablate@demo-demo-demo-sweep1", "plots"}
    results = json.loads((root / "ablations/demo/demo+demo/mode/results.json").read_text())
    assert results["base"]["alpha"] == 0.9
    assert only_the_fingerprint_changes(run(["dvc", "status"], root))
    # DVC's own views now show both runs: the baseline and the experiment, each with its metrics
    table = [[cell.strip() for cell in line.strip().strip("|").split("|")]
             for line in run(["dvc", "exp", "show", "--md", "--no-pager"], root).splitlines()
             if line.startswith("|") and not line.startswith("|--")]
    rows = [dict(zip(table[0], row)) for row in table[1:]]
    baseline, experiment = rows[1], rows[2]  # workspace, the commit (the baseline), the experiment under it
    assert len(rows) == 3 and (baseline["lp.alpha"], experiment["lp.alpha"]) == ("0.95", "0.9")
    key = "demo.demo+demo.lposs.miou"
    after = json.loads((root / "results/metrics.json").read_text())["demo"]["demo+demo"]["lposs"]["miou"]
    assert float(baseline[key]) == pytest.approx(before, abs=0.01)
    assert float(experiment[key]) == pytest.approx(after, abs=0.01) and float(rows[0][key]) == float(experiment[key])
    diff = run(["dvc", "metrics", "diff", "--md"], root)
    assert "demo.demo+demo.lposs.miou" in diff and "HEAD" in diff and "workspace" in diff
    run(["dvc", "plots", "diff", "-o", "dvc_plots"], root)
    page = (root / "dvc_plots/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "window.vegaEmbed" in page  # the offline page: no CDN
    assert page.count("vegaEmbed('#") == 1 and '"rev": "HEAD"' in page and '"rev": "workspace"' in page  # alpha sweep
    assert "static/HEAD_plots_figures_methods.png" in page and "static/workspace_plots_figures_methods.png" in page


@pytest.mark.slow
def test_a_typo_in_a_parameter_stops_the_notebook(pipeline_copy, tmp_path):
    root, _ = pipeline_copy
    cmd = ["papermill", "-k", "python3", "--language", "python", "notebooks/stage.ipynb", str(tmp_path / "out.ipynb"),
           "-r", "datset", "demo"]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "unknown setting 'datset' (did you mean 'dataset'?)" in result.stdout + result.stderr


@pytest.mark.slow
def test_real_backbone_path_with_random_weights(tmp_path):
    """The non-demo branch of the features stage (open_clip MaskCLIP + timm DINO), offline: seeded random weights."""
    from lposs.datasets import get_dataset
    from lposs.demo import generate_demo
    from lposs.experiment.extraction import fill_dataset, make_manifest, to_image_features
    from lposs.experiment.store import FeatureStore
    from lposs.segmentation import propagate_features

    ds = get_dataset("demo", generate_demo(tmp_path / "demo", count=1, seed=2, size=(224, 240)))
    vlm, vms, _ = create_backbones(BackboneSpec(vlm_weights="random", vm="vit_base_patch16_224.dino", vm_weights="random",
                                             vm_features=("k", "v")))
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


# ------------------------------------- the field's grid with random weights, on two MESS fixtures (slow)

@pytest.fixture(scope="module")
def grid_copy(tmp_path_factory):
    """Two dense heads x two graphs (DINOv2 /14 beside CLIP /16, and CLIP's own features), random weights,
    on two MESS datasets (2 and 3 classes: few prompts to encode) in their prepared layouts."""
    return mess_grid(tmp_path_factory.mktemp("grid"), ["chase_db1", "cwfid"], ["maskclip", "sclip"],
                     ["dinov2_vitb14_reg", "clip"], "sclip", TINY_SWEEPS[:1])


def mess_grid(root: Path, datasets: list[str], heads: list[str], vms: list[str], protocol: str,
              sweeps: list[dict], plugins: tuple[str, ...] = (), masks: str | None = None) -> tuple[Path, str]:
    """The pipeline on MESS fixtures (2 images each) with random ViT-B/16 weights at 224: (root, dvc repro's log).
    plugins: params.yaml's (files already written under root); masks: backbone.masks (None: params.yaml's)."""
    from fixtures.mess_layouts import write_prepared

    from lposs.datasets.mess import MESS_DATASETS

    copy_pipeline(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["datasets"], params["plugins"] = datasets, list(plugins)
    params["backbone"].update(vlm="ViT-B-16", vlm_pretrained="random", heads=heads, vms=vms, vm_pretrained="random",
                              vm_features="v", **({"masks": masks} if masks else {}))
    params["protocol"]["name"] = protocol
    params["windows"]["short_side"] = 224
    params["ablate"].update(sweeps=sweeps, predictions=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in datasets:
        spec = MESS_DATASETS[name]
        write_prepared(root / "data" / "mess", spec, spec.main_split, ids=("x0", "x1"))
    git_dvc_init(root)
    return root, run(["dvc", "repro"], root, timeout=1800)


@pytest.mark.slow
def test_grid_of_heads_and_graphs_runs_end_to_end(grid_copy):
    root, log = grid_copy
    combos = ["maskclip-dinov2_vitb14_reg", "maskclip-clip", "sclip-dinov2_vitb14_reg", "sclip-clip"]
    expected = {f"{stage}@{d}-{c}{tail}" for d in ("chase_db1", "cwfid") for c in combos
                for stage, tail in (("features", ""), ("ablate", "-sweep0"))}
    assert expected <= stages_run(log)
    table = (root / "results/table.md").read_text()
    for head in ("maskclip", "sclip"):
        for vm in ("dinov2_vitb14_reg", "clip"):
            for method in ("seeds", "+ LPOSS", "+ LPOSS+"):
                assert table_row(table, head, vm, "sclip", method), (head, vm, method)
    assert "| sclip | published | own | as its name says | SCLIP |" in table
    assert "| maskclip | published | own | as its name says | MaskCLIP |" in table
    # MESS's tables: a row per dataset and per domain, our columns beside the leaderboard's
    assert "| Medical Sciences | CHASE DB1 | 27.25 | 37.00 | 17.85 | 25.38 | 24.99 |" in table
    assert "| Agriculture and Biology | CWFID |" in table and "| **Medical Sciences** | **mean** |" in table
    assert "sclip+clip + LPOSS+" in table and "### Two-class datasets" in table
    results = json.loads((root / "ablations/cwfid/sclip+dinov2_vitb14_reg/mode/results.json").read_text())
    assert results["protocol"]["background"] == "softmax" and results["protocol"]["logit_scale"] == 40.0
    assert "sclip" in results["vlm"] and "vit_base_patch14_reg4_dinov2" in results["vm"]["v"]
    assert results["windows"] == {"crop": 224, "long_side": 2048, "short_side": 224, "stride": 112}
    import torch

    for combo, grid in (("sclip+dinov2_vitb14_reg", 16), ("sclip+clip", 14)):  # seeds at the graph's grid
        shard = torch.load(next((root / "features/cwfid" / combo).glob("*/*.pt")), weights_only=True)
        assert shard["grid"] == grid and shard["seeds"].shape[0] == len(shard["layout"]) * grid * grid


def table_row(table: str, head: str, vm: str, protocol: str, method: str) -> list[str] | None:
    """The cells of results/table.md's row for head x graph x protocol x method (None when absent)."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[:3] == [head, vm, protocol] and len(cells) > 4 and cells[4] == method:
            return cells
    return None


def four_rows(table: str, head: str, vm: str, protocol: str, own_step: str) -> dict[str, list[str]]:
    """The rows seeds, + own step, + LPOSS, + LPOSS+ of head x graph x protocol, each present and filled in."""
    methods = ("seeds", f"+ own step ({own_step})", "+ LPOSS", "+ LPOSS+")
    rows = {method: table_row(table, head, vm, protocol, method) for method in methods}
    assert all(rows.values()), table
    assert all(cell != "-" for row in rows.values() for cell in row[5:]), rows  # every mode ran
    return rows


@pytest.mark.slow
def test_grid_propagation_change_reruns_no_features(grid_copy):
    root, _ = grid_copy
    log = run(["dvc", "exp", "run", "-S", "lp.alpha=0.9"], root, timeout=1800)
    assert stages_run(log) and not any(name.startswith("features@") for name in stages_run(log))


# ------------------------- the 2025 heads on a DINOv3 graph, each with its own step, random weights (slow)

MODE_SWEEP = [{"param": "mode", "values": "[maskclip, own, lposs, lposs+]", "mode": "lposs+"}]  # the four rows


@pytest.fixture(scope="module")
def grid_2025(tmp_path_factory):
    """SC-CLIP and PEARL seeds on a DINOv3 S/16 graph under PEARL's protocol, the four rows of each, on one
    3-class MESS fixture: random weights at 224."""
    return mess_grid(tmp_path_factory.mktemp("grid2025"), ["cwfid"], ["scclip", "pearl"], ["dinov3_vits16"], "pearl",
                     MODE_SWEEP)


@pytest.mark.slow
def test_the_2025_grid_gives_each_head_its_four_rows(grid_2025):
    root, log = grid_2025
    assert {"features@cwfid-scclip-dinov3_vits16", "features@cwfid-pearl-dinov3_vits16"} <= stages_run(log)
    table = (root / "results/table.md").read_text()
    rows = four_rows(table, "pearl", "dinov3_vits16", "pearl", "PEARL's TLP")
    assert rows["seeds"][3] == "CLIP ViT-B-16 random, training-free"
    assert rows["+ LPOSS"][3] == "CLIP ViT-B-16 random + dinov3_vits16 graph, training-free"
    assert table_row(table, "scclip", "dinov3_vits16", "pearl", "+ own step (none in its release)")
    assert "| pearl | published | own | as its name says | PEARL (" in table
    results = json.loads((root / "ablations/cwfid/pearl+dinov3_vits16/mode/results.json").read_text())
    assert results["own_step"] == {"name": "tlp", "grid": 80} and results["built_on"]["proxy"] is None
    assert "vit_small_patch16_dinov3" in results["vm"]["v"]
    labels = {r["label"]: r["metrics"]["miou"] for r in results["records"]}
    assert set(labels) == {"mode=maskclip", "mode=own", "mode=lposs", "mode=lposs+"}
    scclip = json.loads((root / "ablations/cwfid/scclip+dinov3_vits16/mode/results.json").read_text())
    own = {r["label"]: r["metrics"] for r in scclip["records"]}
    assert own["mode=own"] == own["mode=maskclip"]  # no step in SC-CLIP's release: its seeds


@pytest.mark.slow
def test_the_2025_grid_reruns_no_features_for_a_propagation_change(grid_2025):
    root, _ = grid_2025
    log = run(["dvc", "exp", "run", "-S", "lp.alpha=0.9"], root, timeout=1800)
    assert stages_run(log) and not any(name.startswith("features@") for name in stages_run(log))


# ----------------- the two mask-model heads, each with its own step, on the demo's stand-in regions (slow)

@pytest.fixture(scope="module")
def grid_masks(tmp_path_factory):
    """Trident (SAM ViT-B, DINO B/16) and CorrCLIP (DINO B/8, the demo's regions) seeds on a DINO S/16 graph under
    CorrCLIP's protocol, the four rows of each, on one 3-class MESS fixture: random weights at 224."""
    return mess_grid(tmp_path_factory.mktemp("gridmasks"), ["cwfid"], ["trident", "corrclip"], ["dino_vits16"],
                     "corrclip", MODE_SWEEP)


@pytest.mark.slow
def test_the_mask_heads_grid_gives_each_head_its_four_rows(grid_masks):
    root, log = grid_masks
    assert {"features@cwfid-trident-dino_vits16", "features@cwfid-corrclip-dino_vits16"} <= stages_run(log)
    table = (root / "results/table.md").read_text()
    rows = four_rows(table, "corrclip", "dino_vits16", "corrclip", "CorrCLIP's map correction")
    assert rows["seeds"][3] == "CLIP ViT-B-16 random + dino_vitb8 proxy + demo masks, training-free"
    trident = four_rows(table, "trident", "dino_vits16", "corrclip", "Trident's SAM refinement")
    assert trident["+ LPOSS"][3] == ("CLIP ViT-B-16 random + dino_vitb16 proxy + sam_vit_b masks + dino_vits16 "
                                     "graph, training-free")
    results = json.loads((root / "ablations/cwfid/corrclip+dino_vits16/mode/results.json").read_text())
    assert results["own_step"] == {"name": "region_mode"} and results["built_on"]["masks"] == "demo"
    manifest = json.loads(next((root / "features/cwfid/corrclip+dino_vits16").glob("*/manifest.json")).read_text())
    assert manifest["masks"].startswith("demo") and "corrclip" in manifest["vlm"]
    trident_manifest = json.loads(next((root / "features/cwfid/trident+dino_vits16").glob("*/manifest.json")).read_text())
    assert "sam_sam_vit_b-random" in trident_manifest["vlm"]
    trident_results = json.loads((root / "ablations/cwfid/trident+dino_vits16/mode/results.json").read_text())
    assert trident_results["own_step"]["name"] == "sam_refine" and trident_results["own_step"]["sam"] == "random"


@pytest.mark.slow
def test_the_mask_heads_grid_reruns_neither_features_nor_masks_for_a_propagation_change(grid_masks):
    root, _ = grid_masks
    log = run(["dvc", "exp", "run", "-S", "graph.region_beta=0.5"], root, timeout=1800)
    assert stages_run(log) and not any(name.startswith("features@") for name in stages_run(log))


# ------------------------------- a researcher's own head from params.yaml's plugins: the docs' example (slow)

@pytest.fixture(scope="module")
def grid_plugin(tmp_path_factory):
    """docs/heads.md's plugin file, named in params.yaml's plugins, under its own protocol, CLIP's own features as
    the graph, on one MESS fixture: random ViT-B/16 weights at 224."""
    from test_plugins import docs_plugin

    root = tmp_path_factory.mktemp("gridplugin")
    (root / "my_head.py").write_text(docs_plugin())
    return mess_grid(root, ["cwfid"], ["vvclip"], ["clip"], "vvclip", TINY_SWEEPS[:1], plugins=("my_head.py",))


@pytest.mark.slow
def test_a_plugin_head_gets_its_rows_and_editing_it_reruns_the_features_but_a_solver_does_not(grid_plugin):
    from test_plugins import DOCS

    root, log = grid_plugin
    assert {"fingerprint", "features@cwfid-vvclip-clip", "plots"} <= stages_run(log)
    table = (root / "results/table.md").read_text()
    seeds = table_row(table, "vvclip", "clip", "vvclip", "seeds")
    assert seeds and seeds[3] == "CLIP ViT-B-16 random, training-free"
    shown = re.search(r"\| vvclip \| clip \| vvclip \| [^|]+ \| seeds \|", DOCS.read_text()).group(0)
    assert shown in table  # the row docs/heads.md shows
    assert "plugin:my_head.py" in json.loads((root / "features/code.json").read_text())["modules"]
    with open(root / "my_head.py", "a") as plugin:
        plugin.write("# an edit of the plugin\n")
    assert "features@cwfid-vvclip-clip" in stages_run(run(["dvc", "repro"], root, timeout=1800))
    with open(root / "lposs/core/propagation.py", "a") as solver:
        solver.write("# an edit of a solver\n")
    rerun = stages_run(run(["dvc", "repro"], root, timeout=1800))
    assert "ablate@cwfid-vvclip-clip-sweep0" in rerun and not any(name.startswith("features@") for name in rerun)


# ------------------ LaVG: SCLIP's seeds, its per-window vote on Panoptic Cut's masks, and LPOSS on top (slow)

@pytest.fixture(scope="module")
def grid_lavg(tmp_path_factory):
    """LaVG's four rows on a DINO S/16 graph under its protocol, on one 3-class MESS fixture, random weights at 224;
    Panoptic Cut with the demo's stand-in keys (the cut, the CRF, the complement; no DINO B/8 forward at 640)."""
    return mess_grid(tmp_path_factory.mktemp("gridlavg"), ["cwfid"], ["lavg"], ["dino_vits16"], "lavg", MODE_SWEEP,
                     masks="panoptic_cut_demo")


@pytest.mark.slow
def test_lavg_gives_its_four_rows_with_panoptic_cuts_masks_in_the_shards(grid_lavg):
    import torch

    from lposs.core.regions import decode_masks, decode_regions, masks_to_regions, resize_masks

    root, log = grid_lavg
    assert "features@cwfid-lavg-dino_vits16" in stages_run(log)
    table = (root / "results/table.md").read_text()
    rows = four_rows(table, "lavg", "dino_vits16", "lavg", "LaVG's per-window mask vote")
    assert rows["seeds"][3] == "CLIP ViT-B-16 random, training-free"  # SCLIP's head reads no masks
    assert rows["+ own step (LaVG's per-window mask vote)"][3] == ("CLIP ViT-B-16 random + panoptic_cut_demo masks, "
                                                                   "training-free")
    assert "| lavg | published | own | as its name says | LaVG (" in table
    results = json.loads((root / "ablations/cwfid/lavg+dino_vits16/mode/results.json").read_text())
    assert results["own_step"] == {"name": "lavg_vote", "complement_to_background": False}
    miou = {r["label"]: r["metrics"]["miou"] for r in results["records"]}
    assert set(miou) == {"mode=maskclip", "mode=own", "mode=lposs", "mode=lposs+"}
    folder = next((root / "features/cwfid/lavg+dino_vits16").glob("*/manifest.json")).parent
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["masks"].startswith("panoptic_cut-demo-vm-1-k") and manifest["masks_overlap"] is True
    for path in sorted(folder.glob("*.pt")):
        shard = torch.load(path, weights_only=True)
        masks = decode_masks(shard["masks"])  # [M + 1, H, W] at the original size
        assert masks.shape[1:] == tuple(shard["original_hw"]) and 2 <= len(masks) <= 9
        assert torch.equal(masks[-1], ~masks[:-1].any(0))  # the complement last
        assert torch.equal(decode_regions(shard["regions"]),
                           masks_to_regions(resize_masks(masks, tuple(shard["resized_hw"]))))


# --------------------------------------------------- the same pipeline on 2 local workers (slow, issue 11)

def lock_hashes(root: Path) -> dict[str, str]:
    """{output path: md5} of every stage output in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


@pytest.mark.slow
def test_two_local_workers_give_the_same_outputs_as_inline(tmp_path):
    """dvc repro inline and with LPOSS_EXECUTOR=local LPOSS_WORKERS=2: the same dvc.lock hashes for every output
    whose content is results (timings/, executed/ and the timing figure in plots/ hold wall times and
    papermill's stamps; the feature shards hold each image's backbone seconds: compared tensor by tensor)."""
    import torch

    roots = {}
    for executor in ("inline", "local"):
        (tmp_path / executor).mkdir()
        roots[executor] = demo_pipeline(tmp_path / executor, count=4)
        run(["dvc", "repro"], roots[executor], timeout=1200, env={"LPOSS_EXECUTOR": executor, "LPOSS_WORKERS": "2"})
    inline, local = (lock_hashes(roots[e]) for e in ("inline", "local"))
    results = {p for p in inline if not p.startswith(("timings/", "executed/", "features/", "plots"))}
    assert {"results/metrics.json", "results/table.md", "ablations/demo/demo+demo/mode"} <= results
    assert {p: inline[p] for p in results} == {p: local[p] for p in results}
    shards = sorted((roots["inline"] / "features").rglob("*.pt"))
    assert len(shards) == 4
    for path in shards:
        a = torch.load(path, weights_only=True)
        b = torch.load(roots["local"] / path.relative_to(roots["inline"]), weights_only=True)
        torch.testing.assert_close(a["seeds"], b["seeds"], rtol=1e-5, atol=1e-6)  # 1 thread vs 2: float order
        for feature in a["vm"]:
            torch.testing.assert_close(a["vm"][feature], b["vm"][feature], rtol=1e-5, atol=1e-6)
