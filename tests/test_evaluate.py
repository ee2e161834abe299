"""The streaming evaluator gives exactly the ablation's metrics (feature store + run_settings) on the demo."""

import json

import numpy as np
import pytest
import torch

from lposs.core.metrics import DeviceMetrics, SegmentationMetrics
from lposs.datasets import get_dataset
from lposs.datasets.mess import MESS_DATASETS
from lposs.demo import DemoVLM, DemoVM, generate_demo
from lposs.experiment import ablation, evaluation, parameters
from lposs.experiment.extraction import fill_dataset, make_manifest
from lposs.experiment.store import FeatureStore
from lposs.experiment.streaming import evaluate, main, open_protocol_entry
from lposs.models.protocols import resolve
from lposs.settings import Setting, WindowSettings

WINDOWS = WindowSettings(crop=64, stride=32, short_side=96, long_side=2048)  # small scenes, several windows
BASE = Setting.from_flat(k=20, r=5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("data") / "demo", count=4, seed=5, size=(72, 100))
    return get_dataset("demo", root)


def pipeline_records(ds, settings, folder):
    """The pipeline's path: every shard written to a feature store, then run_settings reads them back."""
    vlm, vm = DemoVLM(), DemoVM("v")
    manifest = make_manifest(ds.name, ds.class_names, vlm.id, {"v": vm.id}, WINDOWS)
    store = FeatureStore(folder, manifest)
    fill_dataset(store, ds, vlm, {"v": vm}, WINDOWS, progress=False)
    index = {"images": [{"image_md5": ""} for _ in range(len(ds))]}
    metrics, seconds = ablation.run_settings(ds, index, _NoMd5Check(store), settings, progress=False)
    return evaluation.records(settings, metrics, seconds, len(ds)), store


class _NoMd5Check:
    """The store, with run_settings' image md5 check left to the store test (the index here is not staged)."""

    def __init__(self, store):
        self.store = store

    def load(self, image_id, class_names=None, image_md5=None):
        return self.store.load(image_id, class_names=class_names)


@pytest.mark.parametrize("batch_images, workers", [(1, 0), (3, 2)])
def test_metrics_equal_the_pipeline_per_image_path(demo, tmp_path, batch_images, workers):
    settings = ablation.sweep_points(BASE, "mode", ["maskclip", "lposs", "lposs+"], "lposs+")
    expected, _ = pipeline_records(demo, settings, tmp_path / "store")
    ours = evaluate(demo, DemoVLM(), DemoVM("v"), settings, windows=WINDOWS, batch_images=batch_images,
                    workers=workers, progress=False)
    assert ours["images"] == len(demo) and ours["images_per_second"] > 0
    for mine, theirs in zip(ours["records"], expected, strict=True):
        assert mine["label"] == theirs["label"]
        assert mine["metrics"] == theirs["metrics"]  # exactly: the same counts
    by_mode = {r["setting"]["mode"]: r["metrics"]["miou"] for r in ours["records"]}
    assert len(set(by_mode.values())) == 3  # the three modes really differ


def test_written_shards_equal_the_feature_stage(demo, tmp_path):
    settings = ablation.sweep_points(BASE, "mode", ["lposs"], "lposs+")
    _, reference = pipeline_records(demo, settings, tmp_path / "pipeline")
    vlm, vm = DemoVLM(), DemoVM("v")
    store = FeatureStore(tmp_path / "streamed", reference.manifest)
    evaluate(demo, vlm, vm, settings, windows=WINDOWS, batch_images=2, workers=0, store=store, progress=False)
    for item in demo.items:
        ours, theirs = store.load(item.id), reference.load(item.id)
        assert ours["image_md5"] == theirs["image_md5"] != ""
        assert torch.equal(ours["seeds"], theirs["seeds"]) and torch.equal(ours["vm"]["v"], theirs["vm"]["v"])
        assert ours["layout"] == theirs["layout"] and ours["original_hw"] == theirs["original_hw"]


def test_one_vision_feature_per_pass(demo):
    settings = ablation.sweep_points(BASE, "vm_feature", ["v", "k"], "lposs")
    with pytest.raises(ValueError, match="one vision feature"):
        evaluate(demo, DemoVLM(), DemoVM("v"), settings, windows=WINDOWS, progress=False)


@pytest.mark.parametrize("reduce_zero_label", [False, True])
def test_device_metrics_equal_segmentation_metrics(reduce_zero_label):
    rng = np.random.RandomState(0)
    reference = SegmentationMetrics(5, 255, reduce_zero_label)
    device = DeviceMetrics(SegmentationMetrics(5, 255, reduce_zero_label), "cpu")
    for height, width in [(31, 40), (57, 23), (8, 9)]:
        blocks = rng.randint(0, 6 if reduce_zero_label else 5, size=(height // 4 + 1, width // 4 + 1))
        label = np.kron(blocks, np.ones((4, 4), dtype=np.int64))[:height, :width]  # regions with boundaries
        label[rng.rand(height, width) < 0.05] = 255
        pred = np.kron(rng.randint(0, 5, size=blocks.shape), np.ones((4, 4), dtype=np.int64))[:height, :width]
        reference.update(pred, label)
        prepared = reference.prepare_label(label)
        device.update(torch.from_numpy(pred), torch.from_numpy(prepared))
    summary = device.to_metrics().summary()
    assert summary == reference.summary() and summary["images"] == 3
    assert 0 < summary["biou"] < 100


def test_command_line_on_the_demo(demo, tmp_path):
    out = tmp_path / "result.json"
    result = main(["demo", "--data-dir", str(demo.root.parent), "--vlm", "demo", "--modes", "maskclip,lposs",
                   "--device", "cpu", "--workers", "0", "--limit", "2", "--json", str(out)])
    assert out.is_file() and result["images"] == 2 and (result["dataset"], result["split"]) == ("demo", "all")
    assert [r["label"] for r in result["records"]] == ["mode=maskclip", "mode=lposs"]


# ------------------------------------------------- dataset entries that name a split ('paxray:test_bones')

@pytest.fixture(scope="module")
def paxray_data(tmp_path_factory):
    """DATA_DIR with MESS PAXRay-4 prepared for two of its binary splits: lungs on 3 images, bones on 2."""
    from fixtures.mess_layouts import write_prepared

    data = tmp_path_factory.mktemp("data")
    write_prepared(data / "mess", MESS_DATASETS["paxray"], "test_lungs", ids=("p0", "p1", "p2"))
    write_prepared(data / "mess", MESS_DATASETS["paxray"], "test_bones", ids=("p0", "p1"))
    return data


@pytest.mark.parametrize("entry, split, count", [("paxray:test_bones", "test_bones", 2), ("paxray", "test_lungs", 3)])
def test_an_entry_opens_the_split_it_names(paxray_data, entry, split, count):
    ds, _, _ = open_protocol_entry(entry, str(paxray_data))
    assert (ds.name, ds.split, len(ds)) == ("paxray", split, count)
    other = "test_bones" if split == "test_lungs" else "test_lungs"
    assert ds.class_names == MESS_DATASETS["paxray"].class_names(split)  # the split's own binary task
    assert ds.class_names != MESS_DATASETS["paxray"].class_names(other)


def test_an_unknown_split_names_the_splits_there_are(paxray_data):
    with pytest.raises(ValueError, match="'paxray' has no split 'test_ribs'; its splits: test_lungs, test_mediastinum, "
                                         "test_bones, test_diaphragm"):
        main(["paxray:test_ribs", "--data-dir", str(paxray_data), "--vlm", "demo", "--device", "cpu"])


def test_a_split_keeps_the_protocol_settings_of_its_dataset(tmp_path):
    from fixtures.dataset_layouts import write_voc

    write_voc(tmp_path / "voc")
    ds, rule, windows = open_protocol_entry("voc21:val", str(tmp_path), "sclip")
    assert (ds.name, ds.split, len(ds)) == ("voc21", "val", 2)
    assert rule == parameters.background_rule("sclip", "voc21") and rule["prob_thd"] == 0.1  # voc21's, not 0.0
    assert windows == WindowSettings(**{k: resolve("sclip", "voc21")[k] for k in WindowSettings.names()})


def test_command_line_evaluates_the_split_an_entry_names(tmp_path):
    root = generate_demo(tmp_path / "data" / "demo", count=3, seed=6, size=(64, 80))
    (root / "pair.txt").write_text("scene_002\nscene_000\n")
    out = tmp_path / "result.json"
    result = main(["demo:pair", "--data-dir", str(tmp_path / "data"), "--vlm", "demo", "--modes", "lposs",
                   "--device", "cpu", "--workers", "0", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert (saved["dataset"], saved["split"], saved["images"]) == ("demo", "pair", 2)
    assert saved["records"][0]["metrics"]["images"] == len(get_dataset("demo", root, "pair")) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_evaluation_equals_cpu_reference(demo):
    """LPOSS+ on CUDA (fused stencil, no-sync CG, device metrics) against CPU reference mode (cg_reference)."""
    settings = ablation.sweep_points(BASE, "mode", ["lposs+"], "lposs+")
    reference = ablation.sweep_points(BASE.replace(solver="cg_reference"), "mode", ["lposs+"], "lposs+")
    cpu = evaluate(demo, DemoVLM(), DemoVM("v"), reference, windows=WINDOWS, workers=0, progress=False)
    cuda = evaluate(demo, DemoVLM(device="cuda"), DemoVM("v", device="cuda"), settings, device="cuda",
                    windows=WINDOWS, workers=0, progress=False)
    a, b = cuda["records"][0]["metrics"], cpu["records"][0]["metrics"]
    assert abs(a["miou"] - b["miou"]) <= 1e-4 * max(abs(b["miou"]), 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("refiner", ["reference", "best"])
def test_lposs_plus_scores_on_cuda_equal_cpu_reference_mode(demo, refiner):
    from lposs.segmentation import extract_features, propagate_features

    for i in range(len(demo)):
        sample = demo[i]
        feats = extract_features(sample.image, demo.class_names, DemoVLM(), DemoVM("v"), WINDOWS)
        cpu = propagate_features(feats, setting=BASE.replace(mode="lposs+", solver="cg_reference", refiner=refiner))
        cuda = propagate_features(feats, device="cuda", setting=BASE.replace(mode="lposs+", refiner=refiner)).cpu()
        assert float((cuda - cpu).abs().max() / cpu.abs().max()) <= 1e-4
