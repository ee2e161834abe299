"""Where the 22 MESS datasets come from, and how ``fetch`` unpacks them before MESS's own script converts them.

Each entry mirrors the ``download_dataset`` function of ``mess/prepare_datasets/prepare_<name>.py``
(mess-benchmark 0.2): the same URLs (``wget``, Google Drive ids that MESS passes to ``gdown``, and the
GitHub repositories MESS ``git clone``s, fetched here as GitHub's zip of the repository) and the same
places to unpack to. ``fetch`` downloads them itself (resumable, ``LPOSS_DATA_MIRROR`` works) and then
runs MESS's ``main()`` for the conversion (lposs/datasets/mess_prepare.py), which never downloads because
the dataset folder then exists. The dataset root is MESS's folder (``$LPOSS_DATA/mess/<folder>``).

No MESS source publishes a checksum, so these downloads are not verified (fetch says so when it runs).
Registration-only data (BDD100K, ISPRS Potsdam, FloodNet, UAVid, CryoNuSeg), the two Google Drive
*folders* (iSAID, WorldFloods: gdown needs the folder listing, which fetch cannot resume) and DRAM's inner
.rar (needs ``unrar``) print exact steps and convert what was placed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .archives import Archive, Source
from .mess import MESS_DATASETS

DRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id={}"
DRIVE_FOLDER = "https://drive.google.com/drive/folders/{}"
CWFID_COMMIT = "36290d0912a032f0bd1a5678ed55457ddafde217"  # github.com/cwfid/dataset master
DEEPCRACK_COMMIT = "8202a60701068645c883ed68b95fd3f30914d90c"  # github.com/yhlleo/DeepCrack master


@dataclass(frozen=True)
class MessPreparation:
    """What happens between unpacking and MESS's script.

    ``nested``: (archive inside the root, folder to unpack it into) pairs, unpacked in order and then
    deleted, as MESS's download functions do. ``raw``: a path (relative to the root) MESS's conversion
    reads; when it is missing, fetch stops with the manual steps instead of letting MESS download.
    ``prepare``: whether MESS's script has a conversion to run (FoodSeg103 / ZeroWaste-f are used as released).
    """

    raw: str
    nested: tuple[tuple[str, str], ...] = ()
    prepare: bool = True


def _auto(*archives: Archive, notes: str = "") -> Source:
    return Source(archives, convert="mess", notes=notes)


def _manual(text: str, *archives: Archive) -> Source:
    return Source(archives, convert="mess", manual=text)


REGISTRATION = "{what}\nThen run `python -m lposs data fetch {name} --root {{root}}`: it unpacks what you placed and " \
               "converts it with MESS's script (mess/prepare_datasets/prepare_{script}.py)."


def _steps(name: str, script: str, what: str) -> str:
    return REGISTRATION.format(what=what, name=name, script=script)


MESS_SOURCES: dict[str, Source] = {
    "dark_zurich": _auto(Archive("Dark_Zurich_val_anon.zip",
                                 "https://data.vision.ee.ethz.ch/csakarid/shared/GCMA_UIoU/Dark_Zurich_val_anon.zip",
                                 None)),
    "mhp_v1": _auto(Archive("LV-MHP-v1.zip", DRIVE.format("1hTS8QJBuGdcppFAr_bvW2tsD9hW_ptr5"), None,
                            strip="LV-MHP-v1/")),
    "foodseg103": _auto(Archive("FoodSeg103.zip", "https://research.larc.smu.edu.sg/downloads/datarepo/FoodSeg103.zip",
                                None, strip="FoodSeg103/", password="LARCdataset9947"),
                        notes="the zip is encrypted; the password is the one in MESS's prepare_foodseg.py"),
    "atlantis": _auto(Archive("atlantis.zip", "https://github.com/smhassanerfani/atlantis/archive/HEAD.zip", None,
                              strip="*/atlantis/"), notes="MESS clones the repository's default branch"),
    "kvasir_instrument": _auto(Archive("kvasir-instrument.zip", "https://datasets.simula.no/downloads/kvasir-instrument.zip",
                                       None, strip="kvasir-instrument/")),
    "chase_db1": _auto(Archive("CHASEDB1.zip", "https://staffnet.kingston.ac.uk/~ku15565/CHASE_DB1/assets/CHASEDB1.zip",
                               None)),
    "paxray": _auto(Archive("paxray_dataset.zip", DRIVE.format("19HPPhKf9TDv4sO3UV-nI3Jhi4nCv_Zyc"), None)),
    "corrosion_cs": _auto(Archive("31729733", "https://figshare.com/ndownloader/files/31729733", None,
                                  strip="Corrosion Condition State Classification/")),
    "deepcrack": _auto(Archive("DeepCrack-repo.zip", f"https://github.com/yhlleo/DeepCrack/archive/{DEEPCRACK_COMMIT}.zip",
                               None, strip=f"DeepCrack-{DEEPCRACK_COMMIT}/dataset/")),
    "pst900": _auto(Archive("PST900_RGBT_Dataset.zip", DRIVE.format("1hZeM-MvdUC_Btyok7mdF00RV-InbAadm"), None,
                            strip="PST900_RGBT_Dataset/")),
    "zerowaste": _auto(Archive("zerowaste-f-final.zip", "https://zenodo.org/record/6412647/files/zerowaste-f-final.zip",
                               None)),
    "suim": _auto(Archive("TEST.zip", DRIVE.format("1diN3tNe2nR1eV3Px4gqlp6wp3XuLBwDy"), None)),
    "cub_200": _auto(Archive("CUB_200_2011.tgz", "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                             None, strip="CUB_200_2011/"),
                     Archive("segmentations.tgz", "https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz",
                             None)),
    "cwfid": _auto(Archive("cwfid-dataset.zip", f"https://github.com/cwfid/dataset/archive/{CWFID_COMMIT}.zip", None,
                           strip=f"dataset-{CWFID_COMMIT}/")),
    "dram": _auto(Archive("DRAM_processed.zip", "https://faculty.runi.ac.il/arik/site/artseg/DRAM_processed.zip", None,
                          creates="test"),
                  notes="the zip holds DRAM_processed.rar, which needs `unrar` (sudo apt install unrar)"),
    # ---------------------------------------------------------------------------------- registration / manual
    "bdd100k": _manual(_steps("bdd100k", "bdd100k", """\
BDD100K needs a (free) registration:
  1. Register and log in at https://bdd-data.berkeley.edu/
  2. Download `10K Images` (bdd100k_images_10k.zip) and `Segmentation` (bdd100k_sem_seg_labels_trainval.zip)
  3. Put both zip files in {root}/ (do not unpack them)"""),
        Archive("bdd100k_images_10k.zip", None, None, strip="bdd100k/", creates="images/10k/val"),
        Archive("bdd100k_sem_seg_labels_trainval.zip", None, None, strip="bdd100k/", creates="labels/sem_seg")),
    "isprs_potsdam": _manual(_steps("isprs_potsdam", "isprs_potsdam", """\
ISPRS Potsdam is given out on request by the ISPRS:
  1. Request and download Potsdam.zip from https://www.isprs.org/education/benchmarks/UrbanSemLab/default.aspx
  2. Put Potsdam.zip in {root}/ (do not unpack it; its inner 2_Ortho_RGB.zip, 3_Ortho_IRRG.zip and
     5_Labels_all.zip are unpacked by fetch as MESS does)"""),
        Archive("Potsdam.zip", None, None, creates="2_Ortho_RGB")),
    "floodnet": _manual(_steps("floodnet", "floodnet", """\
FloodNet is shared as a Google Drive folder:
  1. Open https://drive.google.com/drive/folders/1leN9eWVQcvWDVYwNb2GCo5ML_wBEycWD and download its `test` folder
  2. Place it so that {root}/test/test-org-img/*.jpg and {root}/test/test-label-img/*_lab.png exist""")),
    "uavid": _manual(_steps("uavid", "uavid", """\
UAVid needs a (free) registration:
  1. Register at https://uavid.nl and download `Semantic Labelling with Images Only`
     (uavid_v1.5_official_release_image.zip)
  2. Put the zip in {root}/ (do not unpack it)"""),
        Archive("uavid_v1.5_official_release_image.zip", None, None, strip="uavid_v1.5_official_release_image/",
                creates="uavid_val")),
    "cryonuseg": _manual(_steps("cryonuseg", "cryonuseg", """\
CryoNuSeg is on Kaggle (needs a Kaggle account):
  1. Download https://www.kaggle.com/datasets/ipateam/segmentation-of-nuclei-in-cryosectioned-he-images
  2. Unpack it (Kaggle names the folder `archive`) and move that folder's contents to {root}/, so that
     {root}/tissue images/*.tif exists""")),
    "isaid": _manual(_steps("isaid", "isaid", f"""\
iSAID's val split is shared as two Google Drive folders (MESS fetches them with gdown.download_folder):
  1. From {DRIVE_FOLDER.format('1RV7Z5MM4nJJJPUs6m9wsxDOJxX6HmQqZ')} download part1.zip (the val images)
  2. From {DRIVE_FOLDER.format('1jlVr4ClmeBA01IQYx7Aq3Scx2YS1Bmpb')} download images.zip (the val masks)
  3. Put both zip files in {{root}}/ (do not unpack them)"""),
        Archive("part1.zip", None, None, extract_to="val", creates="val/images"),
        Archive("images.zip", None, None, extract_to="raw_val", creates="raw_val/images")),
    "worldfloods": _manual(_steps("worldfloods", "worldfloods", f"""\
WorldFloods' test split is shared as a Google Drive folder (MESS fetches it with gdown.download_folder):
  1. Download the folder {DRIVE_FOLDER.format('1Bp1FXppikOpQrgth2lu5WjpYX7Lb2qOW')}
  2. Place it as {{root}}/test, so that {{root}}/test/S2/*.tif and {{root}}/test/gt/*.tif exist
     (the conversion reads the GeoTIFFs with rasterio, part of `pip install lposs[mess]`)""")),
}

DRAM_STEPS = """\
DRAM ships its images inside DRAM_processed.rar, which needs `unrar` (sudo apt install unrar), then:
  cd {root} && unrar x DRAM_processed.rar
so that {root}/test/<artist>/*.jpg and {root}/labels/<artist>/*.png exist, and run
`python -m lposs data fetch dram --root {root}` again (download page:
https://faculty.runi.ac.il/arik/site/artseg/Dram-Dataset.html)."""

# nested archives and the raw inputs MESS's conversion reads (prepare_<name>.py)
MESS_PREPARATION: dict[str, MessPreparation] = {
    "bdd100k": MessPreparation("labels/sem_seg/colormaps/val"),
    "dark_zurich": MessPreparation("gt/val/night/GOPR0356"),
    "mhp_v1": MessPreparation("test_list.txt"),
    "foodseg103": MessPreparation("Images/ann_dir/test", prepare=False),
    "atlantis": MessPreparation("images/test"),
    "dram": MessPreparation("test", nested=(("DRAM_processed.rar", "."),)),
    "isaid": MessPreparation("raw_val/images"),
    "isprs_potsdam": MessPreparation("2_Ortho_RGB", nested=(("Potsdam/2_Ortho_RGB.zip", "."),
                                                            ("Potsdam/3_Ortho_IRRG.zip", "."),
                                                            ("Potsdam/5_Labels_all.zip", "Labels"))),
    "worldfloods": MessPreparation("test/S2"),
    "floodnet": MessPreparation("test/test-org-img"),
    "uavid": MessPreparation("uavid_val"),
    "kvasir_instrument": MessPreparation("test.txt", nested=(("images.tar.gz", "."), ("masks.tar.gz", "."))),
    "chase_db1": MessPreparation("."),
    "cryonuseg": MessPreparation("tissue images"),
    "paxray": MessPreparation("paxray.json"),
    "corrosion_cs": MessPreparation("original/Test/masks"),
    "deepcrack": MessPreparation("test_lab", nested=(("DeepCrack.zip", "."),)),
    "pst900": MessPreparation("test/thermal"),
    "zerowaste": MessPreparation("splits_final_deblurred/test/sem_seg", prepare=False),
    "suim": MessPreparation("TEST/masks"),
    "cub_200": MessPreparation("segmentations"),
    "cwfid": MessPreparation("annotations"),
}

assert set(MESS_SOURCES) == set(MESS_PREPARATION) == set(MESS_DATASETS)


def mess_source_table() -> dict[str, Source]:
    """Sources keyed by the registry folder (``mess/<MESS folder>``), for lposs.datasets.sources.SOURCES."""
    return {f"mess/{MESS_DATASETS[name].folder}": source for name, source in MESS_SOURCES.items()}
