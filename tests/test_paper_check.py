"""`lposs paper --check` sizes the feature store before the run: the estimate per dataset (measured from the files
of a benchmark on disk, nominal from the registry otherwise) beside the free disk, a stop naming both numbers when
it does not fit, and the estimate against real saved shards."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import register_tiny_clip
from fixtures.dataset_layouts import write_voc
from PIL import Image

from lposs.experiment import paper, sizing
from lposs.experiment.sizing import FEATURES_DIR, StoreShape, shard_bytes

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP = "lposs-test-sizing-clip"
# torch.save aligns each tensor's zip record to 64 bytes; the estimate counts every other byte (5 records at most)
ALIGNMENT_SLACK = 5 * 64


def store_line(out: str, dataset: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(dataset + " "))


def test_check_on_one_small_benchmark_prints_its_measured_store_and_the_free_disk(tmp_path):
    write_voc(tmp_path / "data" / "voc")  # two 24 x 32 images: resized to 448 x 597, 15 windows of 224
    result = subprocess.run([sys.executable, "-m", "lposs", "paper", "--check", "--data-dir", str(tmp_path / "data")],
                            check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    voc21 = store_line(result.stdout, "voc21")
    assert "measured: 2 image files" in voc21 and " 15.0 " in voc21
    # 15 x 196 patches x (46 prompts' seeds in float32 + 768 values of DINO's v in float16), plus the small tensors
    assert " 5.07 MB " in voc21
    assert "nominal: 5000 images of 480 x 640" in store_line(result.stdout, "coco_stuff")
    free = re.search(r"free disk: ([\d.]+) GB at (\S+)", result.stdout)  # features/ is not there: its parent's
    assert free.group(2) == str(tmp_path) and abs(float(free.group(1)) - shutil.disk_usage(tmp_path).free / 1e9) < 1
    assert result.returncode == 1  # the other benchmarks are not there: named after the estimate
    assert "data: dataset 'context60'" in result.stderr and "data: dataset 'voc21'" not in result.stderr


@pytest.mark.parametrize("free_gb, fits", [(1.5, False), (1e6, True)])
def test_a_store_larger_than_the_free_disk_stops_naming_both_numbers(tmp_path, monkeypatch, capsys, free_gb, fits):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sizing.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, int(free_gb * 1e9)))
    monkeypatch.setattr(paper, "paper_problems", lambda *args: [])  # data and weights: tested in test_pipeline
    code = paper.main(["paper", "--check", "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    total = float(re.search(r"total\s+25606\s+([\d.]+) GB", out).group(1))  # the 8 benchmarks, nominal
    assert 100 < total < 200
    if fits:
        assert code == 0 and "would run: dvc exp run -n paper" in out and "disk:" not in err
    else:
        assert code == 1 and f"needs about {total:.1f} GB but 1.5 GB are free at {tmp_path}" in err
        assert "lposs stream DATASET --head maskclip --protocol lposs --vm dino_vitb16" in err


def test_a_resumed_run_needs_only_what_is_not_stored_yet(tmp_path, monkeypatch):
    shards = tmp_path / FEATURES_DIR / "voc21" / "maskclip+dino_vitb16" / "key"
    shards.mkdir(parents=True)
    (shards / "a.pt").write_bytes(b"0" * 1000)
    (shards / "manifest.json").write_text("{}")
    estimate = paper.paper_store(str(tmp_path / "data"), datasets=["voc21"])
    assert estimate.stored == 0  # relative to the working directory, not here
    monkeypatch.chdir(tmp_path)
    estimate = paper.paper_store(str(tmp_path / "data"), datasets=["voc21"])
    assert estimate.stored == 1000 and estimate.needed == estimate.total - 1000
    assert "already stored: 0.00 GB (reused)" in estimate.report()


def test_the_features_stage_writes_where_the_check_measures():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["features"]
    assert f"-r out_dir {FEATURES_DIR}" in stage["cmd"]
    assert any(str(out).startswith(f"{FEATURES_DIR}/") for entry in stage["outs"] for out in
               (entry if isinstance(entry, dict) else {entry: None}))


def test_an_unknown_image_size_is_said_not_guessed(tmp_path):
    estimate = sizing.estimate_store(["paxray"], str(tmp_path), StoreShape(vm_dtype="float16"))
    assert estimate.datasets[0].bytes is None and "no typical image size known" in estimate.datasets[0].source
    assert "(without 1 of 1 datasets: no image size known)" in estimate.report()


# --------------------------------------------------------------------------------------------------
# The estimate against real shards
# --------------------------------------------------------------------------------------------------

def saved_shard_size(tmp_path, image, names, vlm, vms, windows, vm_dtype) -> int:
    from lposs.experiment.extraction import extract_shard, make_manifest
    from lposs.experiment.store import FeatureStore

    shard = extract_shard("2007_000033", image, names, vlm, vms, windows, "0" * 32, vm_dtype=vm_dtype)
    manifest = make_manifest("voc21", names, vlm.id, {f: vm.id for f, vm in vms.items()}, windows, vm_dtype=vm_dtype)
    return FeatureStore(tmp_path / "store", manifest).save(shard).stat().st_size


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from lposs.models.backbones import MaskCLIP

    register_tiny_clip(tmp_path_factory.mktemp("clip_cfg"), TINY_CLIP)
    return MaskCLIP(TINY_CLIP, pretrained=None)


@pytest.mark.parametrize("vm_dtype, features", [("float16", ("v",)), ("float32", ("k", "v"))])
def test_the_estimate_equals_a_saved_shard_up_to_zip_alignment(tmp_path, tiny_vlm, vm_dtype, features):
    """A tiny CLIP (the seeds' width is the prompts', not the model's) and DINO ViT-S/16 with random weights, on a
    224 x 300 image at short side 224 (2 windows), 30 prompts (their text self-affinity is saved as a 30 x 30
    matrix: the estimate must count it)."""
    from lposs.models.backbones import VisionFeatures

    net = VisionFeatures("dino_vits16", pretrained=False, feature=features[0])
    vms = {f: net.with_feature(f) for f in features}
    names = [f"class {i}; synonym {i}" for i in range(15)]
    windows = {"crop": 224, "stride": 112, "short_side": 224, "long_side": 2048}
    image = np.random.RandomState(0).randint(0, 255, (224, 300, 3), dtype=np.uint8)
    real = saved_shard_size(tmp_path, image, names, tiny_vlm, vms, windows, vm_dtype)
    estimate, count = shard_bytes((224, 300), tuple(names), (224, 112, 224, 2048),
                                  StoreShape(vm="dino_vits16", features=features, vm_dtype=vm_dtype))
    assert count == 2 and abs(estimate - real) <= ALIGNMENT_SLACK, (estimate, real)


@pytest.mark.slow
def test_the_paper_settings_shard_of_a_voc_sized_image_is_as_estimated(tmp_path):
    """The paper setting (ViT-B-16 + DINO ViT-B/16, random weights; v in float16; the lposs protocol's windows and
    VOC21 prompts) on a 500 x 375 image: 15 windows, about 5.07 MB."""
    from lposs.datasets.base import packaged_class_names
    from lposs.models.factory import BackboneSpec, create_backbones
    from lposs.models.protocols import class_names, resolve

    backbones = create_backbones(BackboneSpec(vlm="ViT-B-16", vlm_weights="random", head="maskclip",
                                              vm="dino_vitb16", vm_weights="random"), "cpu")
    rule = resolve("lposs", "voc21")
    windows = {key: rule[key] for key in ("crop", "stride", "short_side", "long_side")}
    names = class_names("lposs", "voc21", packaged_class_names("voc21"))
    image = np.random.RandomState(0).randint(0, 255, (375, 500, 3), dtype=np.uint8)
    real = saved_shard_size(tmp_path, image, names, backbones.vlm, {"v": backbones.vm}, windows, "float16")
    estimate, count = shard_bytes((375, 500), tuple(names), tuple(windows.values()), StoreShape(vm_dtype="float16"))
    assert count == 15 and abs(estimate - real) <= ALIGNMENT_SLACK and 5.0e6 < real < 5.1e6, (estimate, real)


@pytest.mark.parametrize("name, fixture", [("camvid", "camvid_root"), ("davis2016", "davis_root")])
def test_the_registrys_typical_sizes_are_those_of_the_real_copies(name, fixture, request):
    from lposs.datasets.registry import dataset_spec, get_dataset

    dataset = get_dataset(name, request.getfixturevalue(fixture))
    sizes = Counter(Image.open(item.image).size[::-1] for item in dataset.items)
    assert sizes.most_common(1)[0][0] == dataset_spec(name).image_hw
