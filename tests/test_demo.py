"""The embedded demo: deterministic scenes the dataset loader reads, and stand-in backbones under which
label propagation helps (the property the whole offline pipeline relies on)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from lposs import demo
from lposs.core.metrics import SegmentationMetrics
from lposs.datasets import get_dataset
from lposs.io import encode_png
from lposs.segmentation import extract_features, propagate_features

SIZE = (160, 224)
WINDOWS = dict(short_side=160, long_side=2048)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return demo.generate_demo(tmp_path_factory.mktemp("demo") / "demo", count=3, seed=5, size=SIZE)


def test_generation_is_byte_identical(demo_root, tmp_path):
    again = demo.generate_demo(tmp_path / "again", count=3, seed=5, size=SIZE)
    files = sorted(p.relative_to(demo_root) for p in demo_root.rglob("*") if p.is_file())
    assert len(files) == 3 * 2 + 1
    for rel in files:
        assert (again / rel).read_bytes() == (demo_root / rel).read_bytes(), rel
    other = demo.generate_demo(tmp_path / "other", count=1, seed=6, size=SIZE)
    assert (other / "images/scene_000.png").read_bytes() != (demo_root / "images/scene_000.png").read_bytes()


def test_regenerating_replaces_the_folder(demo_root, tmp_path):
    out = demo.generate_demo(tmp_path / "d", count=3, seed=5, size=SIZE)
    demo.generate_demo(out, count=2, seed=5, size=SIZE)  # fewer scenes: stale files must go
    assert sorted(p.name for p in (out / "images").iterdir()) == ["scene_000.png", "scene_001.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_loader_reads_the_demo(demo_root):
    ds = get_dataset("demo", demo_root)
    assert ds.class_names == list(demo.DEMO_CLASSES)
    assert len(ds) == 3
    sample = ds[0]
    assert sample.image.shape == SIZE + (3,) and sample.image.dtype == np.uint8
    values = set(np.unique(sample.label).tolist())
    assert values <= set(range(len(demo.DEMO_CLASSES))) | {255}
    assert len(values - {255}) >= 3  # a scene holds several classes


def test_png_encoder_round_trips():
    rng = np.random.RandomState(0)
    for array in (rng.randint(0, 256, (70, 50, 3)).astype(np.uint8), rng.randint(0, 256, (300, 250)).astype(np.uint8)):
        decoded = np.array(Image.open(io.BytesIO(encode_png(array))))
        assert np.array_equal(decoded, array)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), np.float32))


def test_backbone_shapes_and_text():
    vlm, vm = demo.DemoVLM(), demo.DemoVM("v")
    windows = torch.rand(2, 3, 224, 224)
    dense = vlm.dense_features(windows)
    assert dense.shape == (2, 14, 14, vlm.dim)
    assert torch.allclose(dense.norm(dim=-1), torch.ones(2, 14, 14), atol=1e-5)
    graph = vm.dense_features(windows)
    assert graph.shape == (2, 14, 14, vm.dim)
    assert torch.allclose(graph.norm(dim=-1), torch.ones(2, 14, 14), atol=1e-5)
    emb, owner = vlm.text_embeddings(["sky", "cow; cattle", "Water"])
    assert emb.shape == (4, vlm.dim) and owner.tolist() == [0, 1, 1, 2]
    assert torch.allclose(emb[1], emb[2])  # an alias means the same class


def test_backbones_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="demo vocabulary"):
        demo.DemoVLM().text_embeddings(["sky", "aeroplane"])
    with pytest.raises(ValueError, match="empty"):
        demo.DemoVLM().text_embeddings([])
    with pytest.raises(ValueError, match="feature"):
        demo.DemoVM("x")


def test_variants_have_distinct_ids():
    assert len({demo.DemoVM(f).id for f in "qkv"}) == 3


def test_label_propagation_helps_on_demo_scenes(demo_root):
    """MaskCLIP (seeds only) < LPOSS < LPOSS+ on mIoU, and LPOSS+ sharpens boundaries."""
    ds = get_dataset("demo", demo_root)
    vlm, vm = demo.DemoVLM(), demo.DemoVM("v")
    scores = {mode: SegmentationMetrics(ds.num_classes) for mode in ("maskclip", "lposs", "lposs+")}
    for sample in ds:
        feats = extract_features(sample.image, ds.class_names, vlm, vm, **WINDOWS)
        for mode, metric in scores.items():
            metric.update(propagate_features(feats, mode=mode).argmax(0).numpy(), sample.label)
    miou = {mode: m.miou() for mode, m in scores.items()}
    assert miou["maskclip"] + 2 < miou["lposs"] < miou["lposs+"], miou
    assert scores["lposs+"].boundary_iou() > scores["maskclip"].boundary_iou() + 5
