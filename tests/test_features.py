"""The feature store: atomic shards, resume after an interruption, corrupt shards recomputed, manifests."""

from __future__ import annotations

import json

import pytest
import torch

from lposs import demo
from lposs.datasets import get_dataset
from lposs.experiment.extraction import fill_dataset, fill_store, make_manifest, to_image_features
from lposs.experiment.store import CorruptShard, FeatureStore, ManifestMismatch, safe_name
from lposs.segmentation import propagate_features

WINDOWS = dict(crop=224, stride=112, short_side=224, long_side=2048)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = demo.generate_demo(tmp_path_factory.mktemp("data") / "demo", count=4, seed=1, size=(224, 288))
    return get_dataset("demo", root)


@pytest.fixture(scope="module")
def backbones():
    return demo.DemoVLM(), {f: demo.DemoVM(f) for f in ("k", "v")}


def manifest_for(dataset, backbones, **windows):
    vlm, vms = backbones
    return make_manifest(dataset.name, dataset.class_names, vlm.id, {f: vm.id for f, vm in vms.items()},
                         {**WINDOWS, **windows})


class CountingCompute:
    """fill_store's compute callback around the real extraction, counting calls; can stop after n."""

    def __init__(self, dataset, backbones, stop_after=None):
        self.dataset, self.vlm, self.vms = dataset, *backbones
        self.calls, self.stop_after = [], stop_after

    def __call__(self, image_id, image_path, class_names, md5):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt("simulated interruption")
        from lposs.experiment.extraction import extract_shard

        self.calls.append(image_id)
        index = [item.id for item in self.dataset.items].index(image_id)
        return extract_shard(image_id, self.dataset[index].image, class_names, self.vlm, self.vms, WINDOWS, md5)


def items_of(dataset):
    return [(item.id, item.image, dataset.class_names) for item in dataset.items]


def test_shards_hold_what_ablations_need(dataset, backbones, tmp_path):
    store = FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))
    stats = fill_dataset(store, dataset, *backbones, WINDOWS, progress=False)
    assert stats["computed"] == 4 and stats["reused"] == 0
    shard = store.load(dataset.items[0].id)
    assert shard["seeds"].shape == (2 * 14 * 14, len(dataset.class_names))  # 224x288 -> 1 x 2 windows
    assert set(shard["vm"]) == {"k", "v"} and shard["vm"]["v"].shape[0] == shard["seeds"].shape[0]
    sample = dataset[0]
    feats = to_image_features(shard, "v", sample.image)
    scores = propagate_features(feats, mode="lposs+", k=50)
    assert scores.shape == (len(dataset.class_names),) + sample.label.shape
    with pytest.raises(ValueError, match="not stored"):
        to_image_features(shard, "q")
    assert sorted(p.name for p in store.folder.iterdir()) == ["manifest.json"] + sorted(
        f"{item.id}.pt" for item in dataset.items)  # no temp files left behind


def test_interrupted_run_resumes_with_only_the_missing_images(dataset, backbones, tmp_path):
    store = FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))
    first = CountingCompute(dataset, backbones, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        fill_store(store, items_of(dataset), first, progress=False)
    assert len(first.calls) == 2 and len(list(store.folder.glob("*.pt"))) == 2
    second = CountingCompute(dataset, backbones)
    stats = fill_store(FeatureStore(tmp_path / "s", manifest_for(dataset, backbones)), items_of(dataset), second,
                       progress=False)
    assert second.calls == [item.id for item in dataset.items[2:]]
    assert stats["reused"] == 2 and stats["computed"] == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_keys", "wrong_shape"])
def test_corrupt_shard_is_detected_and_recomputed(dataset, backbones, tmp_path, damage):
    store = FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))
    fill_store(store, items_of(dataset), CountingCompute(dataset, backbones), progress=False)
    victim = dataset.items[1].id
    path = store.path(victim)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a shard")
    else:
        shard = torch.load(path, weights_only=True)
        if damage == "wrong_keys":
            del shard["owner"]
        else:
            shard["vm"]["v"] = shard["vm"]["v"][:-5]
        torch.save(shard, path)
    with pytest.raises(CorruptShard):
        store.load(victim)
    again = CountingCompute(dataset, backbones)
    stats = fill_store(store, items_of(dataset), again, progress=False)
    assert again.calls == [victim] and stats["recomputed_corrupt"] == 1
    assert store.load(victim)["seeds"].shape[1] == len(dataset.class_names)


def test_nan_values_are_caught_on_full_load(dataset, backbones, tmp_path):
    store = FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))
    fill_store(store, items_of(dataset)[:1], CountingCompute(dataset, backbones), progress=False)
    path = store.path(dataset.items[0].id)
    shard = torch.load(path, weights_only=True)
    shard["seeds"][0, 0] = float("nan")
    torch.save(shard, path)
    with pytest.raises(CorruptShard, match="NaN"):
        store.load(dataset.items[0].id)


def test_stale_shard_for_other_classes_or_image_is_recomputed(dataset, backbones, tmp_path):
    store = FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))
    fill_store(store, items_of(dataset)[:1], CountingCompute(dataset, backbones), progress=False)
    image_id = dataset.items[0].id
    with pytest.raises(CorruptShard, match="class names"):
        store.load(image_id, class_names=["sky", "cow"])
    with pytest.raises(CorruptShard, match="another version"):
        store.load(image_id, image_md5="0" * 32)


def test_manifest_mismatch_names_the_difference_or_resets(dataset, backbones, tmp_path):
    store = FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))
    fill_store(store, items_of(dataset)[:2], CountingCompute(dataset, backbones), progress=False)
    other = manifest_for(dataset, backbones, short_side=256)
    with pytest.raises(ManifestMismatch, match="windows.short_side: stored 224 != requested 256"):
        FeatureStore(tmp_path / "s", other)
    assert len(list((tmp_path / "s").glob("*.pt"))) == 2  # refusing leaves the store alone
    fresh = FeatureStore(tmp_path / "s", other, reset=True)
    assert not list(fresh.folder.glob("*.pt"))
    assert json.loads((fresh.folder / "manifest.json").read_text())["windows"]["short_side"] == 256
    FeatureStore(tmp_path / "s", other)  # the same manifest opens without complaint


def test_a_store_of_older_extraction_code_says_why_it_is_recomputed(dataset, backbones, tmp_path):
    stored = {**manifest_for(dataset, backbones), "code": "0" * 32}  # as a store made before a code change
    FeatureStore(tmp_path / "s", stored)
    with pytest.raises(ManifestMismatch, match=r"code: stored 0{32} != requested [0-9a-f]{32} \(the code that "
                                               r"computes features changed"):
        FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))


def test_unreadable_manifest_is_a_mismatch(dataset, backbones, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text("{truncated")
    with pytest.raises(ManifestMismatch, match="unreadable"):
        FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))


def test_image_ids_become_safe_file_names():
    assert safe_name("frankfurt/frankfurt_000000_000294") == "frankfurt__frankfurt_000000_000294"
    with pytest.raises(ValueError):
        safe_name("..")


def test_float16_storage_halves_vision_features_and_is_checked(dataset, backbones, tmp_path):
    vlm, vms = backbones
    manifest = make_manifest(dataset.name, dataset.class_names, vlm.id, {f: vm.id for f, vm in vms.items()},
                             WINDOWS, vm_dtype="float16")
    store = FeatureStore(tmp_path / "s", manifest)
    fill_dataset(store, dataset, vlm, vms, WINDOWS, progress=False)
    shard = store.load(dataset.items[0].id)
    assert shard["vm"]["v"].dtype == torch.float16 and shard["seeds"].dtype == torch.float32
    assert to_image_features(shard, "v").vm_feats.dtype == torch.float32
    with pytest.raises(CorruptShard, match="manifest says"):
        FeatureStore(tmp_path / "t", manifest_for(dataset, backbones)).check(shard, shard["id"])
    with pytest.raises(ValueError, match="vm_dtype"):
        make_manifest("demo", ["sky"], "a", {"v": "b"}, WINDOWS, vm_dtype="int8")


def test_q_k_v_of_one_network_come_from_one_forward():
    """Stored variants of one timm model: one forward per image, the same features as one model per variant."""
    import numpy as np

    from lposs.demo import DemoVLM
    from lposs.experiment.extraction import extract_shard
    from lposs.models.backbones import VisionFeatures

    net = VisionFeatures("dino_vits16", pretrained=False, feature="v")
    vms = {f: net.with_feature(f) for f in ("v", "q", "tokens")}
    calls = []
    hook = net.model.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    image = (np.random.RandomState(0).rand(224, 240, 3) * 255).astype(np.uint8)
    windows = dict(crop=224, stride=112, short_side=224, long_side=2048)
    try:
        shard = extract_shard("x", image, ["sky", "grass"], DemoVLM(), vms, windows)
    finally:
        hook.remove()
    assert len(calls) == 1
    for name in ("v", "q", "tokens"):
        alone = extract_shard("x", image, ["sky", "grass"], DemoVLM(), {name: vms[name]}, windows)
        torch.testing.assert_close(shard["vm"][name], alone["vm"][name])


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_shards_manifest_and_label_maps_get_the_umasks_mode(dataset, backbones, tmp_path, umask):
    """Files a lab shares (a run folder, a DVC remote) get the mode a plain open() gives: 0o666 & ~umask,
    not the 0o600 of the temp file they are written through."""
    import os
    import stat

    import numpy as np

    from lposs.app.label_maps import write_outputs
    from lposs.io import current_umask

    before = os.umask(umask)
    try:
        assert current_umask() == umask
        store = FeatureStore(tmp_path / "s", manifest_for(dataset, backbones))
        fill_store(store, items_of(dataset)[:1], CountingCompute(dataset, backbones), progress=False)
        overlay = write_outputs(dataset[0].image, np.zeros(dataset[0].label.shape, np.int64), ["a", "b"],
                                tmp_path / "out" / "seg.png", warning=None)
    finally:
        os.umask(before)
    written = [store.folder / f"{dataset.items[0].id}.pt", store.folder / "manifest.json", tmp_path / "out" / "seg.png",
               overlay]
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in written} == {
        path.name: oct(0o666 & ~umask) for path in written}
