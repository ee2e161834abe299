"""Tests of lposs.datasets: registry, class lists, loaders on fixture layouts, converters, clear errors,
and the real CamVid / DAVIS-2016 copies (spot checks)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures.dataset_layouts import (
    block_mask,
    save_image,
    save_mask,
    write_ade,
    write_camvid,
    write_cityscapes_raw,
    write_coco_raw,
    write_context_converted,
    write_context_raw,
    write_davis,
    write_demo,
    write_lines,
    write_voc,
)
from PIL import Image

from lposs.core.metrics import SegmentationMetrics
from lposs.datasets import DATASETS, available_datasets, get_dataset, read_class_file
from lposs.datasets.base import packaged_class_names
from lposs.datasets.convert import convert_cityscapes, convert_coco, convert_pascal_context, write_davis_every10
from lposs.datasets.mess import mess_datasets

SPEC_CLASSES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "classes"
PAPER = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "coco_stuff": 171,
         "cityscapes": 19, "ade20k": 150}


# ---------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_benchmark():
    assert available_datasets() == list(DATASETS)
    assert set(available_datasets()) == {*PAPER, "camvid", "davis2016", "demo", *mess_datasets()}  # MESS: test_mess.py


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'vocc'.*voc21.*camvid.*demo"):
        get_dataset("vocc", tmp_path)


@pytest.mark.parametrize("name, count", PAPER.items())
def test_packaged_class_lists(name, count):
    names = packaged_class_names(name)
    assert len(names) == count
    if SPEC_CLASSES.is_dir():
        assert names == read_class_file(SPEC_CLASSES / f"{name}.txt")
        text = (SPEC_CLASSES / f"{name}.txt").read_text()
        assert "\n".join(names) + "\n" == text  # byte-exact, trailing spaces kept


def test_class_list_details_survive():
    assert "bed " in packaged_class_names("ade20k")  # trailing space as the reference spells it
    assert packaged_class_names("voc21")[-1] == "tvmonitor"
    assert len(packaged_class_names("voc21")[0].split(";")) == 26  # background synonyms
    assert len(packaged_class_names("coco_object")[0].split(";")) == 17
    assert len(packaged_class_names("camvid")) == 11


def test_read_class_file_rejects_empty_lists(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_class_file(tmp_path / "empty.txt")
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="empty lines"):
        read_class_file(tmp_path / "gap.txt")


# ---------------------------------------------------------------------------------------------- loaders
def test_voc21_and_voc20_read_the_same_files(tmp_path):
    labels = write_voc(tmp_path)
    voc21, voc20 = get_dataset("voc21", tmp_path), get_dataset("voc20", tmp_path)
    assert (len(voc21), voc21.num_classes, voc21.reduce_zero_label) == (2, 21, False)
    assert (len(voc20), voc20.num_classes, voc20.reduce_zero_label) == (2, 20, True)
    sample = voc21[1]
    assert sample.id == "2007_000042"
    assert sample.image.dtype == np.uint8 and sample.image.shape == (24, 32, 3)
    assert sample.label.dtype == np.int64
    np.testing.assert_array_equal(sample.label, labels["2007_000042"])  # palette indices, 255 kept
    np.testing.assert_array_equal(voc20[1].label, labels["2007_000042"])  # raw: metrics reduce it
    # the root may also be the VOC2012 folder itself
    assert len(get_dataset("voc21", tmp_path / "VOCdevkit" / "VOC2012")) == 2


def test_context_loaders(tmp_path):
    labels = write_context_converted(tmp_path)
    c60, c59 = get_dataset("context60", tmp_path), get_dataset("context59", tmp_path)
    assert (c60.num_classes, c59.num_classes, c59.reduce_zero_label) == (60, 59, True)
    np.testing.assert_array_equal(c60[0].label, labels["2008_000002"])


def test_coco_conversion_and_loaders(tmp_path):
    base = tmp_path / "coco_stuff164k"
    raw = write_coco_raw(base / "images" / "val2017", base / "annotations" / "val2017")
    assert convert_coco(tmp_path, progress=False) == 4
    assert convert_coco(tmp_path, progress=False) == 0  # resumable: nothing left to write
    stuff, things = get_dataset("coco_stuff", tmp_path), get_dataset("coco_object", tmp_path)
    assert (len(stuff), stuff.num_classes, things.num_classes) == (2, 171, 81)
    # raw stripes 0 person, 12 stop sign, 90 unused, 91 banner, 181 wood, 255 unlabeled
    np.testing.assert_array_equal(stuff[0].label, block_mask([0, 11, 255, 80, 170, 255]))
    np.testing.assert_array_equal(things[0].label, block_mask([1, 12, 0, 0, 0, 0]))
    assert stuff[0].id == sorted(raw)[0]
    assert get_dataset("coco_stuff", tmp_path, split="val2017")[0].id == stuff[0].id


def test_cityscapes_conversion_and_loader(tmp_path):
    write_cityscapes_raw(tmp_path / "cityscapes")
    assert convert_cityscapes(tmp_path, progress=False) == 1
    ds = get_dataset("cityscapes", tmp_path)
    assert (len(ds), ds.num_classes) == (1, 19)
    assert ds[0].id == "frankfurt/frankfurt_000000_000294"
    # road 7 -> 0, car 26 -> 13, bicycle 33 -> 18, unlabeled 0 and parking 9 -> 255
    np.testing.assert_array_equal(ds[0].label, block_mask([0, 13, 18, 255, 255]))


def test_pascal_context_conversion_from_mat_files(tmp_path):
    write_context_raw(tmp_path, tmp_path / "VOCdevkit" / "VOC2010")
    assert convert_pascal_context(tmp_path, progress=False) == 3
    ds = get_dataset("context60", tmp_path)
    assert [s.id for s in ds] == ["2008_000002", "2008_000003"]  # val list restricted to annotated ids
    expected = block_mask([0, 1, 59, 0])  # background, aeroplane (2), wood (458), accordion (1) -> 0
    expected[:4, :4] = 0  # category 100 is not among the 59
    np.testing.assert_array_equal(ds[0].label, expected)
    assert len(get_dataset("context60", tmp_path, split="train")) == 1


def test_ade20k_loader(tmp_path):
    labels = write_ade(tmp_path)
    ds = get_dataset("ade20k", tmp_path)
    assert (len(ds), ds.num_classes, ds.reduce_zero_label) == (2, 150, True)
    np.testing.assert_array_equal(ds[0].label, labels["ADE_val_00000001"])
    assert len(get_dataset("ade20k", tmp_path, split="validation")) == 2


def test_camvid_loader_maps_void_to_ignore(tmp_path):
    write_camvid(tmp_path / "CamVid")
    ds = get_dataset("camvid", tmp_path)
    assert [s.id for s in ds] == ["0016E5_07959", "0016E5_07961"]
    np.testing.assert_array_equal(ds[0].label, block_mask([0, 10, 255, 3]))
    with pytest.raises(FileNotFoundError, match="test.txt"):
        get_dataset("camvid", tmp_path, split="test")


def test_davis_loader_binary_labels_and_per_image_classes(tmp_path):
    write_davis(tmp_path / "DAVIS")
    write_davis_every10(tmp_path)
    ds = get_dataset("davis2016", tmp_path)
    assert [s for s in (item.id for item in ds.items)] == ["bear/00000", "bear/00010", "bmx-bumps/00000",
                                                          "bmx-bumps/00010"]
    np.testing.assert_array_equal(ds[0].label, block_mask([0, 1, 0]))
    assert ds.ignore_index not in np.unique(ds[0].label)
    assert ds.class_names == ["background", "object"]
    assert ds.class_names_for(2) == ["background", "bmx bumps"]  # no hint file: the sequence name
    (tmp_path / "sequence_categories.csv").write_text(
        "sequence,davis_set,num_frames_total,frames_copied,fg_category_hint,note\n"
        "bmx-bumps,training,90,9,person; bicycle,rider\n")
    ds = get_dataset("davis2016", tmp_path)
    assert ds.class_names_for(2) == ["background", "person; bicycle"]
    assert ds.class_names_for(0) == ["background", "bear"]


def test_demo_folder(tmp_path):
    labels = write_demo(tmp_path)
    ds = get_dataset("demo", tmp_path)
    assert ds.class_names == ["sky", "grass; lawn", "cow"] and ds.num_classes == 3
    assert [s.id for s in ds] == sorted(labels)
    np.testing.assert_array_equal(ds[2].label, labels["scene_002"])
    write_lines(tmp_path / "small.txt", ["scene_001"])
    assert [s.id for s in get_dataset("demo", tmp_path, split="small")] == ["scene_001"]


# ---------------------------------------------------------------------------------------------- errors
def test_missing_root_names_layout_and_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("voc21", tmp_path / "nowhere")
    message = str(err.value)
    assert "nowhere" in message and "VOCdevkit/VOC2012" in message and "JPEGImages" in message
    assert "python -m lposs data fetch voc21" in message


def test_missing_split_list(tmp_path):
    write_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match="ImageSets/Segmentation/train.txt"):
        get_dataset("voc21", tmp_path, split="train")


def test_missing_label_file_is_named(tmp_path):
    write_voc(tmp_path)
    missing = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="2007_000033.png"):
        get_dataset("voc21", tmp_path)


def test_corrupt_image_is_named(tmp_path):
    write_voc(tmp_path)
    image = tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000033.jpg"
    image.write_bytes(image.read_bytes()[:100])
    ds = get_dataset("voc21", tmp_path)
    with pytest.raises(ValueError, match="cannot read image .*2007_000033.jpg"):
        ds[0]
    assert ds[1].id == "2007_000042"  # the other images still load


def test_colour_mask_is_rejected_with_the_expected_encoding(tmp_path):
    write_voc(tmp_path)
    path = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(ValueError, match="2007_000033.png is a RGB image.*single-channel"):
        get_dataset("voc21", tmp_path)[0]


def test_values_outside_the_encoding_are_rejected(tmp_path):
    write_voc(tmp_path)
    path = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    save_mask(path, block_mask([0, 21, 40]))
    with pytest.raises(ValueError, match=r"2007_000033.png holds values \[21, 40\].*0..20"):
        get_dataset("voc21", tmp_path)[0]


def test_image_label_size_mismatch(tmp_path):
    write_demo(tmp_path)
    save_mask(tmp_path / "labels" / "scene_000.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="scene_000.png is 32x24 but its label .*scene_000.png is 10x10"):
        get_dataset("demo", tmp_path)[0]


def test_davis_index_mask_is_rejected(tmp_path):
    write_davis(tmp_path / "DAVIS", sequences=("bear",), frames=1)
    save_mask(tmp_path / "DAVIS" / "Annotations" / "480p" / "bear" / "00000.png", block_mask([0, 1]))
    with pytest.raises(ValueError, match="index mask.*255 = foreground"):
        get_dataset("davis2016", tmp_path, split="train")[0]


def test_demo_errors(tmp_path):
    write_demo(tmp_path)
    with pytest.raises(FileNotFoundError, match="nosuch.txt"):
        get_dataset("demo", tmp_path, split="nosuch")
    save_mask(tmp_path / "labels" / "scene_001.png", block_mask([0, 3]))  # only 3 classes
    with pytest.raises(ValueError, match=r"holds values \[3\]"):
        get_dataset("demo", tmp_path)[1]
    (tmp_path / "classes.txt").write_text("")
    with pytest.raises(ValueError, match="classes.txt is empty"):
        get_dataset("demo", tmp_path)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        get_dataset("demo", tmp_path)


def test_empty_image_folder(tmp_path):
    (tmp_path / "ADEChallengeData2016" / "images" / "validation").mkdir(parents=True)
    with pytest.raises(ValueError, match="found no images"):
        get_dataset("ade20k", tmp_path)


# ---------------------------------------------------------------------------------------------- real data
def test_camvid_real_val_and_test(camvid_root):
    ds = get_dataset("camvid", camvid_root)
    assert (len(ds), ds.num_classes, ds.ignore_index, ds.reduce_zero_label) == (101, 11, 255, False)
    for i in (0, 50, 100):
        sample = ds[i]
        assert sample.image.shape == (360, 480, 3) and sample.label.shape == (360, 480)
        values = set(np.unique(sample.label).tolist())
        assert values <= set(range(11)) | {255}
        assert 255 in values  # SOURCE.md: every val mask has void pixels, now ignored
    assert len(get_dataset("camvid", camvid_root, split="test")) == 233


def test_camvid_real_perfect_prediction_scores_100(camvid_root):
    ds = get_dataset("camvid", camvid_root)
    label = ds[3].label
    metrics = SegmentationMetrics(ds.num_classes, ds.ignore_index, ds.reduce_zero_label)
    metrics.update(np.where(label == 255, 0, label), label)
    assert metrics.miou() == pytest.approx(100.0) and metrics.boundary_iou() == pytest.approx(100.0)


def test_davis_real(davis_root):
    ds = get_dataset("davis2016", davis_root)
    assert (len(ds), ds.num_classes) == (215, 2)
    for i in (0, 107, 214):
        sample = ds[i]
        assert sample.image.shape == (480, 854, 3)
        assert set(np.unique(sample.label).tolist()) <= {0, 1}
    empty = [i for i, item in enumerate(ds.items) if item.id == "bmx-bumps/00060"][0]
    assert ds[empty].label.max() == 0  # the object has left the frame (SOURCE.md)
    assert ds.class_names_for(empty) == ["background", "person; bicycle"]
    horse = [i for i, item in enumerate(ds.items) if item.id.startswith("horsejump-low/")][0]
    assert ds.class_names_for(horse) == ["background", "horse; person"]


def test_davis_every10_rule_reproduces_the_shared_list(davis_root, tmp_path):
    lists = tmp_path / "DAVIS" / "ImageSets" / "480p"
    lists.mkdir(parents=True)
    shutil.copy(davis_root / "DAVIS" / "ImageSets" / "480p" / "train.txt", lists / "train.txt")
    write_davis_every10(tmp_path)
    ours = (lists / "train_every10.txt").read_text().split()
    shared = (davis_root / "DAVIS" / "ImageSets" / "480p" / "train_every10.txt").read_text().split()
    assert ours == shared and len(ours) == 2 * 215


def test_generated_demo_set_loads(tmp_path):
    demo = pytest.importorskip("lposs.demo")
    if not hasattr(demo, "generate_demo"):
        pytest.skip("lposs.demo has no generate_demo")
    demo.generate_demo(tmp_path / "demo", count=2)
    ds = get_dataset("demo", tmp_path / "demo")
    assert len(ds) == 2 and ds.class_names == list(demo.DEMO_CLASSES)
    sample = ds[1]
    assert sample.image.shape[:2] == sample.label.shape
    assert set(np.unique(sample.label).tolist()) <= set(range(ds.num_classes)) | {255}
