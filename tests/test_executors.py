"""Scale-out: fixed shards, executors (inline, local processes, torchrun, SLURM through submitit's local
executor) give the same features and metrics as one process; killed workers cost only their shards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lposs import demo
from lposs.core.metrics import SegmentationMetrics
from lposs.experiment import ablation, evaluation, executors, records, staging
from lposs.experiment.ablation_shards import run_settings_sharded
from lposs.experiment.extraction import fill_dataset, make_manifest
from lposs.experiment.sharded import DatasetFeatures, fill_store_sharded
from lposs.experiment.store import FeatureStore
from lposs.models.factory import BackboneSpec, create_backbones
from lposs.settings import Setting, WindowSettings

TESTS = Path(__file__).resolve().parent
WINDOWS = WindowSettings(crop=224, stride=112, short_side=224, long_side=2048)
BACKBONE = BackboneSpec(vlm="demo", vlm_weights="none", head="demo", vm="demo", vm_weights="none", vm_features=("k", "v"))
BASE = Setting.from_flat(k=30, r=5)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run folders under tmp_path; no executor setting leaks in from the caller's environment."""
    for name in [n for n in os.environ if n.startswith("LPOSS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LPOSS_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A staged 6-image demo set: (staged_dir, dataset, index)."""
    root = tmp_path_factory.mktemp("lposs")
    demo.generate_demo(root / "data" / "demo", count=6, seed=3, size=(160, 224))
    records.write_json(root / "staged" / "demo" / "index.json",
                       staging.stage_index("demo", str(root / "data"), progress=False))
    ds, index = staging.open_staged(str(root / "staged"), "demo")
    return str(root / "staged"), ds, index


def open_store(folder, ds):
    vlm, vms, _ = create_backbones(BACKBONE)
    manifest = make_manifest("demo", ds.class_names, vlm.id, {f: m.id for f, m in vms.items()}, WINDOWS)
    return FeatureStore(folder, manifest, reset=True), vlm, vms


@pytest.fixture(scope="module")
def inline_store(staged, tmp_path_factory):
    """The reference: today's fill_dataset in this process, on one thread as every worker runs (a float sum
    over 2 threads may round differently, and the tests below ask for bit-identical features)."""
    _, ds, _ = staged
    store, vlm, vms = open_store(tmp_path_factory.mktemp("inline") / "store", ds)
    with one_thread():
        fill_dataset(store, ds, vlm, vms, WINDOWS, progress=False)
    return store


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside, as every worker runs: bit-identical features need the same float order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compute_for(staged_dir):
    return DatasetFeatures(staged_dir, "demo", BACKBONE, WINDOWS, device="cpu")


def assert_same_shards(store_a, store_b, ds):
    for item in ds.items:
        a, b = store_a.load(item.id), store_b.load(item.id)
        assert set(a) == set(b)
        for key in set(a) - {"seconds"}:
            if key == "vm":
                assert all(torch.equal(a["vm"][f], b["vm"][f]) for f in a["vm"]), item.id
            elif isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), (item.id, key)
            else:
                assert a[key] == b[key], (item.id, key)


# ------------------------------------------------------------------------------------------ shards, config

@pytest.mark.parametrize("n_items", [0, 1, 5, 6, 255, 256, 257, 1000])
@pytest.mark.parametrize("max_shards", [1, 4, 256])
def test_shards_cover_every_item_exactly_once(n_items, max_shards):
    shards = executors.split_shards(n_items, max_shards)
    covered = [i for s in shards for i in s.items]
    assert covered == list(range(n_items))
    assert len(shards) == min(n_items, max_shards)
    if shards:
        sizes = [len(s.items) for s in shards]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    for workers in (1, 2, 3, 7):
        plan = executors.assign(shards, workers)
        assert sorted(s.index for shards_of_worker in plan for s in shards_of_worker) == [s.index for s in shards]
        assert all(plan_w for plan_w in plan) or not shards


def test_executor_comes_from_the_environment_and_cluster_file(tmp_path, monkeypatch):
    assert executors.executor_config(environ={}).kind == "inline"
    config = executors.executor_config(environ={"LPOSS_EXECUTOR": "local", "LPOSS_WORKERS": "3"})
    assert (config.kind, config.workers) == ("local", 3)
    assert executors.executor_config("torchrun", 2, environ={"LPOSS_EXECUTOR": "local"}).kind == "torchrun"
    with pytest.raises(ValueError, match="LPOSS_EXECUTOR='mpi'"):
        executors.executor_config(environ={"LPOSS_EXECUTOR": "mpi"})
    with pytest.raises(ValueError, match="LPOSS_WORKERS='two'"):
        executors.executor_config(environ={"LPOSS_EXECUTOR": "local", "LPOSS_WORKERS": "two"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cluster.yaml").write_text("partition: gpu\ntime: 90\ngpus: 2\n")
    slurm = executors.executor_config(environ={"LPOSS_EXECUTOR": "slurm", "LPOSS_SLURM_TIME": "30"}).slurm
    assert (slurm["partition"], slurm["time"], slurm["gpus"], slurm["cluster"]) == ("gpu", 30, 2, "slurm")
    (tmp_path / "cluster.yaml").write_text("partiton: gpu\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['partiton'\]"):
        executors.executor_config(environ={"LPOSS_EXECUTOR": "slurm"})


def test_metrics_merged_over_any_split_equal_one_pass():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 4, (20, 30)), np.where(rng.random((20, 30)) < 0.1, 255, rng.integers(0, 4, (20, 30))))
             for _ in range(7)]
    whole = SegmentationMetrics(4)
    for pred, label in pairs:
        whole.update(pred, label)
    parts = [SegmentationMetrics(4) for _ in range(3)]
    for i, (pred, label) in enumerate(pairs):
        parts[i % 3].update(pred, label)
    merged = SegmentationMetrics(4)
    for part in parts:
        merged += part
    assert merged.summary() == whole.summary() and merged.images == 7
    with pytest.raises(ValueError, match="cannot merge"):
        merged.merge(SegmentationMetrics(5))


# ------------------------------------------------------------------------------------------ features

def test_local_workers_write_bit_identical_features(staged, inline_store, tmp_path):
    staged_dir, ds, _ = staged
    store, *_ = open_store(tmp_path / "store", ds)
    compute = compute_for(staged_dir)
    stats = fill_store_sharded(store, compute.items(), compute, progress=False, executor="local", workers=2)
    assert (stats["computed"], stats["reused"], stats["workers"], stats["shards"]) == (6, 0, 2, 6)
    assert_same_shards(inline_store, store, ds)
    again = fill_store_sharded(store, compute.items(), compute, progress=False, executor="local", workers=2)
    assert (again["computed"], again["reused"]) == (0, 6)
    assert again["backbone_seconds"] == pytest.approx(stats["backbone_seconds"])
    assert not list((tmp_path / "runs").glob("*")), "the run folder is removed after a complete run"


def test_inline_is_todays_fill_dataset_with_the_notebooks_models(staged, inline_store, tmp_path):
    """The features notebook's wiring: DatasetFeatures(..., protocol).use(models it built) on the inline executor."""
    staged_dir, ds, _ = staged
    store, vlm, vms = open_store(tmp_path / "store", ds)
    compute = DatasetFeatures(staged_dir, "demo", BACKBONE, WINDOWS, device="cpu", protocol="lposs").use(vlm, vms)
    with one_thread():
        stats = fill_store_sharded(store, compute.items(), compute, progress=False)
    assert (stats["executor"], stats["computed"]) == ("inline", 6)
    assert_same_shards(inline_store, store, ds)


class KillOnce:
    """compute that kills its own worker process (SIGKILL, no traceback) on one image, once."""

    def __init__(self, inner, image_id, flag):
        self.inner, self.image_id, self.flag = inner, image_id, Path(flag)

    def __call__(self, image_id, image_path, class_names, md5):
        if image_id == self.image_id and self.flag.exists():
            self.flag.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(image_id, image_path, class_names, md5)


class Fail:
    def __init__(self, inner, image_id):
        self.inner, self.image_id = inner, image_id

    def __call__(self, image_id, image_path, class_names, md5):
        if image_id == self.image_id:
            raise ValueError(f"boom on {image_id}")
        return self.inner(image_id, image_path, class_names, md5)


@pytest.mark.slow  # ~15-30 s: two runs of two spawned workers on 2 busy cores
def test_killed_worker_costs_only_its_missing_images(staged, tmp_path):
    staged_dir, ds, _ = staged
    store, *_ = open_store(tmp_path / "store", ds)
    compute = compute_for(staged_dir)
    # worker 1 of 2 takes shards 2, 4, 6 (items 1, 3, 5): it dies on item 3 after writing item 1
    victim = ds.items[3].id
    (tmp_path / "armed").touch()
    with pytest.raises(executors.WorkerLost, match="signal SIGKILL"):
        fill_store_sharded(store, compute.items(), KillOnce(compute, victim, tmp_path / "armed"), progress=False,
                           executor="local", workers=2)
    present = {p.name: p.stat().st_mtime_ns for p in store.folder.glob("*.pt")}
    missing = {f"{item.id}.pt" for item in ds.items} - set(present)
    assert f"{victim}.pt" in missing and len(present) >= 1
    stats = fill_store_sharded(store, compute.items(), compute, progress=False, executor="local", workers=2)
    assert (stats["computed"], stats["reused"]) == (len(missing), len(present))
    assert {p.name: p.stat().st_mtime_ns for p in store.folder.glob("*.pt") if p.name in present} == present


def test_worker_traceback_names_its_shard(staged, tmp_path):
    staged_dir, ds, _ = staged
    store, *_ = open_store(tmp_path / "store", ds)
    compute = compute_for(staged_dir)
    with pytest.raises(executors.ShardFailed, match=r"(?s)failed on shard 5/6 \(items 4\.\.4\).*ValueError: boom"):
        fill_store_sharded(store, compute.items(), Fail(compute, ds.items[4].id), progress=False, executor="local",
                           workers=2)


# ------------------------------------------------------------------------------------------ ablation metrics

def settings():
    return (ablation.sweep_points(BASE, "mode", ["maskclip", "lposs", "lposs+"], "lposs+")
            + ablation.sweep_points(BASE, "alpha", [0.5], "lposs"))


@pytest.fixture(scope="module")
def reference_records(staged, inline_store, tmp_path_factory):
    _, ds, index = staged
    out = tmp_path_factory.mktemp("reference")
    metrics, seconds = ablation.run_settings(ds, index, inline_store, settings(), "cpu", 2, out, progress=False)
    return evaluation.records(settings(), metrics, seconds, len(ds)), out


def strip_seconds(records):
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in records]


def pngs(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*.png"))}


@pytest.mark.parametrize("executor", ["inline", pytest.param("local", marks=pytest.mark.slow)])
def test_sharded_metrics_equal_run_settings(staged, inline_store, reference_records, executor, tmp_path):
    _, ds, index = staged
    expected, expected_dir = reference_records
    rows = run_settings_sharded(ds, index, inline_store, settings(), "cpu", 2, tmp_path / "pred", progress=False,
                                   executor=executor, workers=2)
    assert strip_seconds(rows) == strip_seconds(expected)
    assert pngs(tmp_path / "pred") == pngs(expected_dir) and len(pngs(expected_dir)) == 2 * len(settings())


@pytest.mark.slow
def test_slurm_path_through_submitit_local_executor(staged, inline_store, reference_records, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    _, ds, index = staged
    monkeypatch.setenv("LPOSS_SLURM_CLUSTER", "local")
    monkeypatch.setenv("LPOSS_SLURM_GPUS", "0")
    monkeypatch.setenv("LPOSS_SLURM_CPUS", "1")
    rows = run_settings_sharded(ds, index, inline_store, settings(), "cpu", 0, None, progress=False,
                                   executor="slurm", workers=2)
    assert strip_seconds(rows) == strip_seconds(reference_records[0])


class RecordRank:
    """compute that notes which process computed each image (a file per image and process)."""

    def __init__(self, inner, log_dir):
        self.inner, self.log_dir = inner, Path(log_dir)

    def __call__(self, image_id, image_path, class_names, md5):
        (self.log_dir / f"{image_id}.{os.environ.get('RANK', '?')}.{os.getpid()}").touch()
        return self.inner(image_id, image_path, class_names, md5)


@pytest.mark.slow
def test_torchrun_ranks_write_disjoint_shards_and_reduce_equals_inline(staged, inline_store, reference_records,
                                                                      tmp_path):
    staged_dir, ds, index = staged
    store, *_ = open_store(tmp_path / "store", ds)
    (tmp_path / "log").mkdir()
    compute = compute_for(staged_dir)
    stats = fill_store_sharded(store, compute.items(), RecordRank(compute, tmp_path / "log"), progress=False,
                               executor="torchrun", workers=2)
    logs = [p.name.rsplit(".", 2) for p in (tmp_path / "log").iterdir()]
    assert sorted(image for image, _, _ in logs) == sorted(item.id for item in ds.items)  # each image once
    assert {rank for _, rank, _ in logs} == {"0", "1"} and stats["computed"] == 6
    assert_same_shards(inline_store, store, ds)
    rows = run_settings_sharded(ds, index, store, settings(), "cpu", 0, None, progress=False,
                                   executor="torchrun", workers=2)
    assert strip_seconds(rows) == strip_seconds(reference_records[0])


@pytest.mark.slow
def test_inside_torchrun_every_rank_takes_its_shards(staged, inline_store, reference_records, tmp_path):
    """The script itself under `torchrun --standalone --nproc-per-node 2`: ranks from the environment, gloo."""
    staged_dir, ds, index = staged
    script = tmp_path / "ablate.py"
    script.write_text(
        "import json, sys\n"
        "from lposs.experiment import executors, records, staging\n"
        "from lposs.experiment.store import FeatureStore\n"
        "from lposs.experiment.ablation_shards import run_settings_sharded\n"
        "from test_executors import settings\n"
        "ds, index = staging.open_staged(sys.argv[1], 'demo')\n"
        "store = FeatureStore(sys.argv[2], records.read_json(sys.argv[2] + '/manifest.json'))\n"
        "rows = run_settings_sharded(ds, index, store, settings(), 'cpu', 0, None, progress=False)\n"
        "if executors.is_main_process():\n"
        "    records.write_json(sys.argv[3], rows)\n")
    env = {**os.environ, "LPOSS_EXECUTOR": "torchrun", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), staged_dir, str(inline_store.folder), str(tmp_path / "records.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert strip_seconds(records.read_json(tmp_path / "records.json")) == strip_seconds(reference_records[0])
