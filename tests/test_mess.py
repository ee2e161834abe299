"""Tests of MESS's 22 datasets: registry facts against the mess-benchmark package itself, loaders on fixtures
in the prepared layout, fetch through a local server + MESS's own conversion scripts, manual steps, the MESS
metrics, domain means against the leaderboard, and an end-to-end run over two fixtures to the results table."""

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fixtures import mess_layouts as raw
from fixtures.dataset_layouts import SIZE, block_mask, make_tar, make_zip, save_mask
from test_fetch import server  # noqa: F401  (the 127.0.0.1 file server fixture)

from lposs.core.metrics import SegmentationMetrics
from lposs.datasets import DATASETS, fetch, get_dataset, main_data
from lposs.datasets.base import packaged_class_names
from lposs.datasets.mess import DOMAINS, MESS, MESS_DATASETS, evaluation_runs, mess_datasets
from lposs.datasets.mess_sources import MESS_SOURCES
from lposs.experiment.mess_leaderboard import reference_datasets, reference_domains
from lposs.experiment.mess_metrics import mess_scores
from lposs.experiment.mess_results import binary_table, mess_summary, mess_table, write_mess_report

ALL_SPLITS = [(spec.name, split) for spec in MESS for split in spec.splits]
# MESS's split names as registered: <name>_sem_seg_<split>
MESS_NAME = "{}_sem_seg_{}"


# ---------------------------------------------------------------------------------------------- registry
def test_the_22_datasets_domains_and_image_counts():
    domains = mess_datasets()
    assert len(domains) == 22 and set(domains) <= set(DATASETS)
    assert [sum(1 for d in domains.values() if d == domain) for domain in DOMAINS] == [6, 5, 4, 4, 3]
    assert sum(spec.images for spec in MESS) == 25069  # the paper's 25,069 test images
    assert len(evaluation_runs()) == 25 and ("paxray", "test_diaphragm") in evaluation_runs()
    assert DATASETS["isprs_potsdam"].default_split == "test_irrg" and DATASETS["bdd100k"].manual


def test_class_lists_of_the_main_splits():
    counts = {name: len(MESS_DATASETS[name].class_names()) for name in MESS_DATASETS}
    assert counts == {"bdd100k": 19, "dark_zurich": 20, "mhp_v1": 19, "foodseg103": 104, "atlantis": 56, "dram": 12,
                      "isaid": 16, "isprs_potsdam": 6, "worldfloods": 3, "floodnet": 10, "uavid": 8,
                      "kvasir_instrument": 2, "chase_db1": 2, "cryonuseg": 2, "paxray": 2, "corrosion_cs": 4,
                      "deepcrack": 2, "pst900": 5, "zerowaste": 5, "suim": 8, "cub_200": 201, "cwfid": 3}
    assert MESS_DATASETS["isprs_potsdam"].class_names("test_irrg_official")[0] == "imperious surface"  # sic, MESS
    assert MESS_DATASETS["pst900"].class_names()[-1] == "human"
    assert MESS_DATASETS["pst900"].class_names("test_official")[-1] == "rescue randy"
    assert packaged_class_names("mess_cub_200")[1] == "Black-footed Albatross"


def test_data_list_shows_the_mess_names(capsys):
    assert main_data(["list"]) == 0
    listing = capsys.readouterr().out
    for name in MESS_DATASETS:
        assert re.search(rf"^{name}\s", listing, re.M), name
    assert re.search(r"^bdd100k .*\[manual\]", listing, re.M) and re.search(r"^suim .*\[auto\]", listing, re.M)


@pytest.fixture(scope="module")
def mess_package():
    pytest.importorskip("mess", reason="mess-benchmark is not installed (pip install 'lposs[mess]')")
    from mess.utils import catalog

    return catalog


def registration_module(name: str):
    return importlib.import_module(f"mess.datasets.register_{name if name != 'foodseg103' else 'foodseg'}")


def fresh_registration(name, root, monkeypatch, catalog):
    """Run MESS's register function of ``name`` on ``root`` into fresh catalogs; returns (datasets, metadata)."""
    module = registration_module(name)
    datasets, metadata = catalog._DatasetCatalog(), type(catalog.MetadataCatalog)()
    monkeypatch.setattr(module, "DatasetCatalog", datasets)
    monkeypatch.setattr(module, "MetadataCatalog", metadata)
    register = next(getattr(module, f) for f in dir(module) if f.startswith("register_") and callable(getattr(module, f)))
    register(str(root))
    return datasets, metadata


@pytest.mark.parametrize("name", list(MESS_DATASETS))
def test_registry_matches_mess_registration(name, tmp_path, monkeypatch, mess_package):
    """Class names, ignore label, classes of interest, background, folders, and the image/label pairs MESS's
    own loader finds in a fixture: the same as ours, for every split MESS registers."""
    spec = MESS_DATASETS[name]
    datasets, metadata = fresh_registration(name, tmp_path, monkeypatch, mess_package)
    assert {full.split("_sem_seg_")[1] for full in datasets.list()} == set(spec.splits)
    for split in spec.splits:
        meta = metadata.get(MESS_NAME.format(name, split))
        ours = get_dataset_or_fixture(spec, split, tmp_path)
        assert list(meta.stuff_classes) == ours.class_names
        assert meta.ignore_label == ours.ignore_index == 255
        assert list(meta.classes_of_interest) == spec.interest(ours.num_classes)
        assert meta.background_class == spec.background_class
        assert Path(meta.image_root) == tmp_path / spec.folder / spec.split(split).image_dir
        assert Path(meta.sem_seg_root) == tmp_path / spec.folder / spec.split(split).label_dir
        pairs = [(Path(d["file_name"]), Path(d["sem_seg_file_name"]))
                 for d in datasets.get(MESS_NAME.format(name, split))]
        assert pairs == [(item.image, item.label) for item in ours.items]


def get_dataset_or_fixture(spec, split, root):
    """The fixture of ``split``, written unless an earlier split sharing its folders wrote it."""
    folders = [root / spec.folder / getattr(spec.split(split), d) for d in ("image_dir", "label_dir")]
    if not all(folder.is_dir() for folder in folders):
        raw.write_prepared(root, spec, split)
    return get_dataset(spec.name, root, split)


# ---------------------------------------------------------------------------------------------- loaders
@pytest.mark.parametrize("name, split", ALL_SPLITS)
def test_prepared_fixture_loads_with_classes_encoding_and_modality(name, split, tmp_path):
    spec = MESS_DATASETS[name]
    labels = raw.write_prepared(tmp_path, spec, split)
    for root in (tmp_path, tmp_path / spec.folder):  # the MESS dataset dir, or the dataset folder itself
        ds = get_dataset(name, root, split)
        assert len(ds) == 2 and ds.class_names == spec.class_names(split)
        assert ds.modality == spec.split(split).modality
        for sample in ds:
            np.testing.assert_array_equal(sample.label, labels[sample.id])
            assert sample.image.shape == (*SIZE, 3)
        assert ds.ignore_index == 255 and 255 in ds[0].label


def test_modalities_follow_mess():
    modality = {name: MESS_DATASETS[name].split(None).modality for name in MESS_DATASETS}
    assert modality["isprs_potsdam"].startswith("IRRG") and "tiles" in modality["isprs_potsdam"]
    assert modality["pst900"].startswith("thermal")
    assert all("1024x1024 tiles" in modality[n] for n in ("isaid", "isprs_potsdam", "floodnet", "uavid", "worldfloods"))
    assert MESS_DATASETS["isprs_potsdam"].split("test_rgb").image_dir.endswith("/rgb")


def test_a_label_beyond_the_classes_is_named(tmp_path):
    spec = MESS_DATASETS["chase_db1"]
    raw.write_prepared(tmp_path, spec, "test")
    bad = tmp_path / spec.folder / "annotations_detectron2/test/a0.png"
    save_mask(bad, block_mask([0, 1, 2, 255]))
    with pytest.raises(ValueError, match=r"a0.png holds values \[2\].*0..1"):
        get_dataset("chase_db1", tmp_path)[0]


def test_missing_folder_and_unknown_split_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m lposs data fetch suim"):
        get_dataset("suim", tmp_path / "nothing")
    with pytest.raises(ValueError, match="no split 'val'.*test_irrg"):
        get_dataset("isprs_potsdam", tmp_path, "val")


# ---------------------------------------------------------------------------------------------- fetch (automatic)
def zip_with_password(source: Path, archive: Path, top: str, password: str) -> Path:
    """An encrypted (ZipCrypto) zip of ``source`` under folder ``top``, written by Info-ZIP's zip."""
    import shutil
    import subprocess

    if shutil.which("zip") is None:
        pytest.skip("the `zip` tool is needed to write an encrypted fixture zip")
    (source.parent / top).mkdir(exist_ok=True)
    for path in source.iterdir():
        path.rename(source.parent / top / path.name)
    subprocess.run(["zip", "-q", "-r", "-P", password, str(archive), top], cwd=source.parent, check=True)
    return archive


def build_release(name: str, stage: Path, served: Path) -> dict:
    """Write ``name``'s raw release under ``stage`` and its archive(s) into ``served``; returns the expected labels."""
    from lposs.datasets.mess_sources import CWFID_COMMIT, DEEPCRACK_COMMIT

    spec = MESS_DATASETS[name]
    if name == "dark_zurich":
        expected = raw.raw_dark_zurich(stage)
        make_zip(stage, served / "Dark_Zurich_val_anon.zip")
    elif name == "chase_db1":
        expected = raw.raw_chase_db1(stage)
        make_zip(stage, served / "CHASEDB1.zip")
    elif name == "kvasir_instrument":
        (stage / "ds").mkdir(parents=True)
        expected = raw.raw_kvasir(stage / "ds", stage / "parts")
        make_zip(stage / "ds", served / "kvasir-instrument.zip", prefix="kvasir-instrument/")
    elif name == "cub_200":
        expected = raw.raw_cub(stage / "top", stage / "seg" / "segmentations")
        (stage / "attributes.txt").write_text("1 has_bill_shape::curved\n")
        make_tar(stage / "top", served / "CUB_200_2011.tgz", prefix="CUB_200_2011/", mode="w:gz")
        make_tar(stage / "seg", served / "segmentations.tgz", mode="w:gz")
    elif name == "atlantis":
        expected = raw.raw_atlantis(stage)
        make_zip(stage, served / "atlantis.zip", prefix="atlantis-master/")
    elif name == "cwfid":
        expected = raw.raw_cwfid(stage)
        make_zip(stage, served / "cwfid-dataset.zip", prefix=f"dataset-{CWFID_COMMIT}/")
    elif name == "deepcrack":
        expected = raw.raw_deepcrack(stage / "inner")
        make_zip(stage / "inner", stage / "repo" / "dataset" / "DeepCrack.zip")
        make_zip(stage / "repo", served / "DeepCrack-repo.zip", prefix=f"DeepCrack-{DEEPCRACK_COMMIT}/")
    elif name == "foodseg103":
        expected = raw.write_prepared(stage / "release", spec, "test", ids=("00000001", "00000002"))
        zip_with_password(stage / "release" / spec.folder, served / "FoodSeg103.zip", "FoodSeg103", "LARCdataset9947")
    elif name == "zerowaste":
        expected = raw.write_prepared(stage, spec, "test", ids=("01_frame_000040",))
        make_zip(stage / spec.folder, served / "zerowaste-f-final.zip")
    elif name == "suim":
        expected = raw.raw_suim(stage)
        make_zip(stage, served / "TEST.zip")
    elif name == "corrosion_cs":
        expected = raw.raw_corrosion(stage)
        make_zip(stage, served / "31729733", prefix="Corrosion Condition State Classification/")
    elif name == "pst900":
        expected = raw.raw_pst900(stage)
        make_zip(stage, served / "PST900_RGBT_Dataset.zip", prefix="PST900_RGBT_Dataset/")
    elif name == "mhp_v1":
        expected = raw.raw_mhp(stage)
        make_zip(stage, served / "LV-MHP-v1.zip", prefix="LV-MHP-v1/")
    elif name == "paxray":
        expected = raw.raw_paxray(stage)
        make_zip(stage, served / "paxray_dataset.zip")
    return expected


AUTOMATIC = ["dark_zurich", "chase_db1", "kvasir_instrument", "cub_200", "atlantis", "cwfid", "deepcrack",
             "foodseg103", "zerowaste", "suim", "corrosion_cs", "pst900", "mhp_v1", "paxray"]


def test_automatic_downloads_are_the_ones_mess_downloads():
    automatic = {name for name, spec in MESS_DATASETS.items() if spec.download == "auto"}
    assert automatic == set(AUTOMATIC)
    for name in AUTOMATIC:
        assert all(a.url and a.url.startswith("https://") for a in MESS_SOURCES[name].archives)


@pytest.mark.parametrize("name", AUTOMATIC)
def test_fetch_downloads_unpacks_and_runs_the_mess_script(name, tmp_path, server, mess_package):
    spec = MESS_DATASETS[name]
    expected = build_release(name, tmp_path / "stage", server.directory)
    # the MESS folder under a MESS dataset dir, or a folder of another name (MESS sees it through a symlink)
    root = tmp_path / "data" / "mess" / spec.folder if len(name) % 2 else tmp_path / "elsewhere"
    ds = fetch(name, root, progress=False, mirror=server.url)
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # MESS's mhp_v1 script sets it: it must not leak
    assert sorted(r[0] for r in server.requests) == sorted(a.filename for a in MESS_SOURCES[name].archives)
    splits = expected if name == "paxray" else {spec.main_split: expected}
    for split, labels in splits.items():
        ds = get_dataset(name, root, split)
        if name == "paxray":
            labels = {"p1": labels}
        assert sorted(item.id for item in ds.items) == sorted(labels)
        for sample in ds:
            np.testing.assert_array_equal(sample.label, labels[sample.id])
    again = fetch(name, root, progress=False, mirror=server.url)  # resumable: nothing downloaded or converted twice
    assert len(again) == len(ds) and len(server.requests) == len(MESS_SOURCES[name].archives)


def test_dram_downloads_then_asks_for_unrar(tmp_path, server):
    import shutil

    if shutil.which("unrar"):
        pytest.skip("unrar is installed here; the manual-steps branch is for machines without it")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "DRAM_processed.rar").write_bytes(b"Rar!\x1a\x07\x00 not a real rar")
    make_zip(stage, server.directory / "DRAM_processed.zip")
    root = tmp_path / "DRAM_processed"
    with pytest.raises(FileNotFoundError) as err:
        fetch("dram", root, progress=False, mirror=server.url)
    message = str(err.value)
    assert "unrar" in message and f"cd {root} && unrar x DRAM_processed.rar" in message
    assert (root / "DRAM_processed.rar").is_file()  # downloaded and unpacked, waiting for unrar


# ---------------------------------------------------------------------------------------------- fetch (manual)
MANUAL = {"bdd100k": "https://bdd-data.berkeley.edu/", "isprs_potsdam": "isprs.org/education/benchmarks",
          "floodnet": "1leN9eWVQcvWDVYwNb2GCo5ML_wBEycWD", "uavid": "https://uavid.nl",
          "cryonuseg": "kaggle.com/datasets/ipateam", "isaid": "1RV7Z5MM4nJJJPUs6m9wsxDOJxX6HmQqZ",
          "worldfloods": "1Bp1FXppikOpQrgth2lu5WjpYX7Lb2qOW"}


@pytest.mark.parametrize("name", MANUAL)
def test_manual_datasets_print_their_steps(name, tmp_path, capsys):
    root = tmp_path / "placed here"
    with pytest.raises(FileNotFoundError) as err:
        fetch(name, root, progress=False)
    message = str(err.value)
    assert MANUAL[name] in message and str(root) in message and f"data fetch {name} --root {root}" in message
    assert "{" not in message  # every placeholder filled
    assert main_data(["fetch", name, "--root", str(root)]) == 1
    assert MANUAL[name] in capsys.readouterr().err


def test_bdd100k_converts_the_placed_zips(tmp_path, mess_package):
    expected = raw.raw_bdd100k(tmp_path / "stage" / "images")
    (tmp_path / "stage" / "labels").mkdir()
    (tmp_path / "stage" / "images" / "labels").rename(tmp_path / "stage" / "labels" / "labels")
    root = tmp_path / "bdd100k"
    make_zip(tmp_path / "stage" / "images", root / "bdd100k_images_10k.zip", prefix="bdd100k/")
    make_zip(tmp_path / "stage" / "labels", root / "bdd100k_sem_seg_labels_trainval.zip", prefix="bdd100k/")
    ds = fetch("bdd100k", root, progress=False)
    np.testing.assert_array_equal(ds[0].label, expected[ds[0].id])


def test_isprs_potsdam_unpacks_the_nested_zips_and_tiles(tmp_path, mess_package):
    stage, root = tmp_path / "stage", tmp_path / "ISPRS_Potsdam"
    expected = raw.raw_potsdam(stage)
    make_zip(stage / "rgb", stage / "zips" / "Potsdam" / "2_Ortho_RGB.zip")
    make_zip(stage / "irrg", stage / "zips" / "Potsdam" / "3_Ortho_IRRG.zip")
    make_zip(stage / "labels", stage / "zips" / "Potsdam" / "5_Labels_all.zip")
    make_zip(stage / "zips", root / "Potsdam.zip")
    ds = fetch("isprs_potsdam", root, progress=False)
    sample = ds[0]
    assert sample.id == "top_potsdam_2_13_0" and sample.image.shape == (1024, 1024, 3)
    np.testing.assert_array_equal(sample.label, expected[sample.id])
    assert (sample.image[SIZE[0]:] == 0).all()  # zero padding around the small original
    rgb = get_dataset("isprs_potsdam", root, "test_rgb")[0]
    assert not np.array_equal(rgb.image, sample.image)  # IRRG and RGB are different pictures


def test_uavid_and_floodnet_and_cryonuseg_convert_what_was_placed(tmp_path, mess_package):
    stage = tmp_path / "uavid_stage"
    expected = raw.raw_uavid(stage)
    make_zip(stage, tmp_path / "uavid" / "uavid_v1.5_official_release_image.zip",
             prefix="uavid_v1.5_official_release_image/")
    ds = fetch("uavid", tmp_path / "uavid", progress=False)
    np.testing.assert_array_equal(ds[0].label, expected[ds[0].id])
    expected = raw.raw_floodnet(tmp_path / "FloodNet-Supervised_v1.0")
    ds = fetch("floodnet", tmp_path / "FloodNet-Supervised_v1.0", progress=False)
    np.testing.assert_array_equal(ds[0].label, expected[ds[0].id])
    expected = raw.raw_cryonuseg(tmp_path / "cryo")
    ds = fetch("cryonuseg", tmp_path / "cryo", progress=False)
    np.testing.assert_array_equal(ds[0].label, expected[ds[0].id])


def test_isaid_drive_folder_files_through_a_mirror(tmp_path, server, mess_package):
    stage = tmp_path / "stage"
    expected = raw.raw_isaid(stage / "part1", stage / "masks")
    make_zip(stage / "part1", server.directory / "part1.zip")
    make_zip(stage / "masks", server.directory / "images.zip")
    ds = fetch("isaid", tmp_path / "isaid", progress=False, mirror=server.url)
    np.testing.assert_array_equal(ds[0].label, expected[ds[0].id])
    assert get_dataset("isaid", tmp_path / "isaid", "val_official").class_names[1] == "ship"


# ---------------------------------------------------------------------------------------------- metrics
def mess_evaluator_reference(confusion: np.ndarray, interest: list[int]) -> dict:
    """MESSSemSegEvaluator.evaluate's arithmetic (mess/evaluation/sem_seg_evaluation.py), on detectron2's
    (C+1) x (C+1) matrix [pred, gt] whose last column holds ignored pixels; copied to check ours against."""
    n = confusion.shape[0]
    conf = np.zeros((n + 1, n + 1), np.int64)
    conf[:n, :n] = confusion.T
    conf[:n, n] = 7  # ignored ground truth predicted as anything: never counted
    acc, iou = np.full(n, np.nan), np.full(n, np.nan)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = np.sum(conf, axis=0).astype(float)[:-1]
    pos_pred = np.sum(conf[:-1, :-1], axis=1).astype(float)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou_valid = (pos_gt + pos_pred) > 0
    union = pos_gt + pos_pred - tp
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    coi = np.bincount(interest, minlength=n).astype(bool)
    res = {"mIoU": 100 * np.sum(iou[iou_valid]) / np.sum(iou_valid),
           "CoI-mIoU": 100 * np.sum(iou[coi & acc_valid]) / np.sum(coi & iou_valid),
           "mACC": 100 * np.sum(acc[acc_valid]) / np.sum(acc_valid), "pACC": 100 * np.sum(tp) / np.sum(pos_gt)}
    if n == 2:
        res["Specificity"], res["Sensitivity"] = 100 * acc[0], 100 * acc[1]
    return res


def test_binary_scores_by_hand():
    scores = mess_scores(np.array([[50, 10], [5, 35]]), "chase_db1")  # rows: ground truth
    assert scores["mIoU"] == pytest.approx((50 / 65 + 35 / 50) / 2 * 100)
    assert scores["CoI-mIoU"] == pytest.approx(70.0)  # blood vessels only
    assert (scores["Specificity"], scores["Sensitivity"]) == (pytest.approx(250 / 3), pytest.approx(87.5))
    assert scores["pACC"] == pytest.approx(85.0)


@pytest.mark.parametrize("name", ["isprs_potsdam", "dram", "floodnet", "bdd100k", "kvasir_instrument", "suim"])
def test_scores_equal_mess_evaluator_arithmetic(name):
    spec = MESS_DATASETS[name]
    n = len(spec.class_names())
    rng = np.random.default_rng(n)
    confusion = rng.integers(0, 50, (n, n)) * (rng.random((n, n)) < 0.5)
    confusion[n - 1] = 0  # a class absent from the ground truth (predicted or not)
    ours, reference = mess_scores(confusion, name), mess_evaluator_reference(confusion, spec.interest(n))
    for key, value in reference.items():
        assert ours[key] == (None if np.isnan(value) else pytest.approx(value)), key  # None where MESS has NaN
    assert ("Sensitivity" in ours) == (n == 2)


def test_scores_from_segmentation_metrics_and_from_a_summary():
    label = block_mask([0, 1, 255, 1]).astype(np.int64)
    pred = block_mask([0, 1, 1, 0]).astype(np.int64)
    metrics = SegmentationMetrics(2)
    metrics.update(pred, label)
    direct = mess_scores(metrics, "deepcrack")
    assert direct["mIoU"] == pytest.approx(metrics.miou())
    from_summary = mess_scores(metrics.summary(), "deepcrack")
    assert from_summary["mIoU"] == pytest.approx(direct["mIoU"])
    assert from_summary["CoI-mIoU"] == pytest.approx(direct["CoI-mIoU"]) and "Sensitivity" not in from_summary
    with pytest.raises(ValueError, match="confusion matrix of shape"):
        mess_scores(np.eye(3), "deepcrack")


# ---------------------------------------------------------------------------------------------- summaries, table
def test_domain_means_reproduce_the_leaderboard():
    """Our aggregation of the leaderboard's per-dataset numbers gives its domain table and its mean."""
    for model, per_dataset in reference_datasets().items():
        summary = mess_summary({name: {"mIoU": value} for name, value in per_dataset.items() if name != "Mean"})
        assert summary["missing"] == []
        for domain, value in reference_domains()[model].items():
            ours = summary["mean"]["mIoU"] if domain == "Mean" else summary["domains"][domain]["mIoU"]
            assert ours == pytest.approx(value, abs=0.02), (model, domain)
        assert summary["mean"]["mIoU"] == pytest.approx(per_dataset["Mean"], abs=0.01)


def test_paxray_is_the_mean_of_its_four_binary_tasks():
    splits = {"test_lungs": 80.0, "test_bones": 40.0, "test_mediastinum": 60.0, "test_diaphragm": 20.0}
    runs = {"paxray": {s: {"mIoU": v, "Sensitivity": v / 2} for s, v in splits.items()}}
    summary = mess_summary(runs)
    assert summary["datasets"]["paxray"]["mIoU"] == 50.0 and summary["datasets"]["paxray"]["Sensitivity"] == 25.0
    assert summary["domains"]["Medical Sciences"]["mIoU"] == 50.0 and len(summary["missing"]) == 21
    del runs["paxray"]["test_bones"]
    assert "paxray" in mess_summary(runs)["missing"]
    with pytest.raises(ValueError, match="not MESS datasets"):
        mess_summary({"voc21": {"mIoU": 1.0}})


def test_table_sets_our_rows_beside_the_reference_rows():
    ours = mess_summary({"chase_db1": {"mIoU": 12.345, "Sensitivity": 50.0, "Specificity": 90.0},
                         "suim": {"mIoU": 40.0}})
    table = mess_table({"LPOSS+ (ours)": ours})
    lines = table.splitlines()
    assert lines[0] == "| Domain | Dataset | Random | ZSSeg-B | SAN-B | CAT-Seg-B | CAT-Seg-L | LPOSS+ (ours) |"
    assert "| Medical Sciences | CHASE DB1 | 27.25 | 37.00 | 17.85 | 25.38 | 24.99 | 12.35 |" in lines
    assert "| Engineering | PST900 | 4.52 | 18.76 | 19.67 | 21.32 | 25.26 | - |" in lines
    assert any(line.startswith("| **MESS** | **mean of 22** | **10.27** |") and "**26.17**" in line for line in lines)
    assert sum(line.startswith("| **") and "**mean**" in line for line in lines) == 5
    assert "blumenstiel/mess-benchmark" in table and "no result for bdd100k" in table
    binary = binary_table({"ours": ours})
    assert "| CHASE DB1 | 50.00 | 90.00 |" in binary and "PAXRay-4" in binary and "SUIM" not in binary


# ---------------------------------------------------------------------------------------------- end to end
TINY_CLIP = "lposs-test-mess-tiny-clip"


@pytest.fixture(scope="module")
def tiny_random_clip(tmp_path_factory):
    """A tiny open_clip config (width 64) with seeded random weights, MaskCLIP head: runs offline in a second."""
    from conftest import register_tiny_clip

    from lposs.models.backbones import ClipGraphFeatures, MaskCLIP

    register_tiny_clip(tmp_path_factory.mktemp("open_clip_cfg"), TINY_CLIP, vision_layers=2)
    clip = MaskCLIP(TINY_CLIP, pretrained=None)
    return clip, ClipGraphFeatures(clip)


def test_two_mess_fixtures_end_to_end_to_the_table(tmp_path, tiny_random_clip):
    """Prepared fixtures of two MESS datasets -> LPOSS (random weights) -> MESS scores -> per-dataset and
    per-domain rows beside the leaderboard's reference rows."""
    from lposs.segmentation import extract_features, propagate_features

    vlm, vm = tiny_random_clip
    runs, mious = {}, {}
    for name in ("chase_db1", "suim"):
        spec = MESS_DATASETS[name]
        raw.write_prepared(tmp_path, spec, spec.main_split, ids=("x0", "x1", "x2"))
        ds = get_dataset(name, tmp_path)
        metrics = SegmentationMetrics(ds.num_classes, ds.ignore_index)
        for sample in ds:
            feats = extract_features(sample.image, ds.class_names, vlm, vm, short_side=224)
            scores = propagate_features(feats, mode="lposs", k=20)  # [K, H, W]
            assert scores.shape == (ds.num_classes, *sample.label.shape)
            metrics.update(scores.argmax(0).numpy(), sample.label)
        runs[name] = mess_scores(metrics, name)
        mious[name] = metrics.miou()
    summary = mess_summary(runs)
    assert summary["datasets"]["chase_db1"]["mIoU"] == pytest.approx(mious["chase_db1"])
    assert "Sensitivity" in summary["datasets"]["chase_db1"] and "Sensitivity" not in summary["datasets"]["suim"]
    assert summary["domains"]["Medical Sciences"]["mIoU"] == pytest.approx(mious["chase_db1"])
    assert summary["domains"]["Agriculture and Biology"]["mIoU"] == pytest.approx(mious["suim"])
    assert summary["domains"]["General"]["mIoU"] is None
    assert summary["mean"]["mIoU"] == pytest.approx((mious["chase_db1"] + mious["suim"]) / 2)
    table = mess_table({"LPOSS (random weights)": summary})
    assert f"| Medical Sciences | CHASE DB1 | 27.25 | 37.00 | 17.85 | 25.38 | 24.99 | {mious['chase_db1']:.2f} |" in table
    assert f"| Agriculture and Biology | SUIM | 5.30 | 30.16 | 22.64 | 39.10 | 53.94 | {mious['suim']:.2f} |" in table
    mean_row = next(line for line in table.splitlines() if "**mean of 22**" in line)
    assert mean_row.endswith(f"| **{(mious['chase_db1'] + mious['suim']) / 2:.2f}** |")
    paths = write_mess_report({"LPOSS (random weights)": summary}, tmp_path / "results")
    report = Path(paths["table"]).read_text()
    assert table in report and "class-of-interest" in report and "| CHASE DB1 |" in report.split("two-class")[1]
    assert json.loads(Path(paths["metrics"]).read_text())["LPOSS (random weights)"]["missing"] == summary["missing"]


@pytest.mark.filterwarnings("ignore:Dataset has no geotransform")
def test_worldfloods_geotiffs_placed_by_hand_become_irrg_and_rgb_tiles(tmp_path, mess_package):
    rasterio = pytest.importorskip("rasterio")
    root = tmp_path / "WorldFloods"
    (root / "test" / "S2").mkdir(parents=True)
    bands = np.random.default_rng(19).integers(0, 6000, (13, *SIZE)).astype(np.uint16)  # Sentinel-2, 13 bands
    with rasterio.open(root / "test/S2/EMSR333_02.tif", "w", driver="GTiff", height=SIZE[0], width=SIZE[1],
                       count=13, dtype="uint16") as dst:
        dst.write(bands)
    save_mask(root / "test/gt/EMSR333_02.tif", block_mask([0, 1, 2, 3]))  # 0 invalid, 1 land, 2 water, 3 cloud
    ds = fetch("worldfloods", root, progress=False)
    sample = ds[0]
    assert sample.id == "EMSR333_02_0" and ds.class_names == ["land", "water and flood", "cloud"]
    np.testing.assert_array_equal(sample.label, raw.padded_tile(block_mask([255, 0, 1, 2])))
    rgb = get_dataset("worldfloods", root, "test_rgb")[0]
    assert rgb.image.shape == sample.image.shape == (1024, 1024, 3)
    assert np.array_equal(rgb.image[..., 0], sample.image[..., 1])  # both hold band B4 (red): RGB's R, IRRG's 2nd


def test_dram_converts_what_unrar_left(tmp_path, mess_package):
    root = tmp_path / "test_dram" / "DRAM_processed"  # 'test' in the path: MESS's script must not see it
    expected = raw.raw_dram(root)
    ds = fetch("dram", root, progress=False)
    np.testing.assert_array_equal(ds[0].label, expected[ds[0].id])
