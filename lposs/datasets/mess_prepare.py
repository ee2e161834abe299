"""Run MESS's own preparation script on a fetched dataset folder (``mess-benchmark``, ``pip install lposs[mess]``).

After ``fetch`` has unpacked the archives, ``prepare_with_mess(name, root)`` unpacks the nested archives
MESS's download function would unpack, checks that the raw files MESS's conversion reads are there
(otherwise it raises FileNotFoundError with the manual steps, so MESS never starts a download of its own),
and calls ``mess.prepare_datasets.prepare_<name>.main()`` with ``DETECTRON2_DATASETS`` pointing at a
temporary folder in which ``<MESS folder>`` is a symlink to ``root``. A marker in
``ROOT/.lposs/`` records a finished conversion, so a second fetch does not run it again (MESS deletes
some raw files once converted, e.g. PAXRay's labels).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .archives import extract
from .mess import mess_spec
from .mess_sources import DRAM_STEPS, MESS_PREPARATION, MESS_SOURCES

MARKER = "mess_prepared"
# registry name -> module of mess.prepare_datasets (the same name, except FoodSeg103's)
SCRIPTS = {"foodseg103": "prepare_foodseg"}
LOADS_TRUNCATED = {"mhp_v1"}  # MESS scripts that read truncated images on purpose (they set PIL's flag)


def prepare_with_mess(name: str, root, progress: bool = True) -> bool:
    """Unpack nested archives and run MESS's conversion for ``name`` in ``root``; False if already done."""
    root = Path(root)
    marker = root / ".lposs" / MARKER
    if marker.exists():
        return False
    preparation = MESS_PREPARATION[name]
    for inner, dest in preparation.nested:
        unpack_nested(name, root / inner, root / dest, progress)
    if not (root / preparation.raw).exists():
        raise FileNotFoundError(missing_message(name, root, preparation.raw))
    if preparation.prepare:
        run_mess_script(name, root)
    marker.parent.mkdir(exist_ok=True)
    marker.touch()
    return True


def missing_message(name: str, root: Path, raw: str) -> str:
    manual = MESS_SOURCES[name].manual
    steps = manual.format(root=root) if manual else (
        f"Re-run `python -m lposs data fetch {name} --root {root}` to download it again, or unpack the "
        f"release there by hand (see mess/prepare_datasets/prepare_{name}.py).")
    return f"dataset {name!r}: {root / raw} is missing, so MESS's conversion cannot run.\n{steps}"


def unpack_nested(name: str, archive: Path, dest: Path, progress: bool) -> None:
    """Unpack an archive that came inside another one, then delete it (as MESS does); absent = done."""
    if not archive.exists():
        return
    if archive.suffix == ".rar":
        unrar(archive, dest)
    else:
        extract(archive, dest, progress=progress)
    archive.unlink()


def unrar(archive: Path, dest: Path) -> None:
    """``unrar x`` as MESS's prepare_dram.py runs it; without unrar, the manual steps."""
    tool = shutil.which("unrar")
    if tool is None:
        raise FileNotFoundError(f"{archive} needs `unrar`, which is not installed.\n" +
                                DRAM_STEPS.format(root=dest))
    done = subprocess.run([tool, "x", "-o+", str(archive), f"{dest}{os.sep}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"unrar could not unpack {archive}: {done.stderr.strip() or done.stdout.strip()}")


def run_mess_script(name: str, root: Path) -> None:
    """``mess.prepare_datasets.prepare_<name>.main()`` on ``root``."""
    module_name = f"mess.prepare_datasets.{SCRIPTS.get(name, 'prepare_' + name)}"
    with truncated_images(name in LOADS_TRUNCATED):
        try:
            script = importlib.import_module(module_name)
        except ImportError as err:
            raise ImportError(f"converting {name!r} runs MESS's own script {module_name}, which needs the "
                              f"mess-benchmark package: pip install 'lposs[mess]' ({err})") from err
        _run_in_dataset_dir(script, name, root)


@contextmanager
def truncated_images(allowed: bool):
    """PIL's process-wide LOAD_TRUNCATED_IMAGES as `allowed` inside, restored after.

    MESS's prepare_mhp_v1.py:10 sets it to True when imported; left so, every later image read in the process
    (our loaders, the web app) would decode truncated files silently instead of naming them.
    """
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allowed
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _run_in_dataset_dir(script, name: str, root: Path) -> None:
    with mess_dataset_dir(root, mess_spec(name).folder) as dataset_dir:
        previous = os.environ.get("DETECTRON2_DATASETS")
        os.environ["DETECTRON2_DATASETS"] = str(dataset_dir)
        try:
            script.main()
        finally:
            if previous is None:
                os.environ.pop("DETECTRON2_DATASETS", None)
            else:
                os.environ["DETECTRON2_DATASETS"] = previous


@contextmanager
def mess_dataset_dir(root: Path, folder: str):
    """A temporary MESS dataset directory whose ``folder`` is a symlink to ``root``.

    Always a fresh short path: some MESS scripts find a label by string replacement on the whole image path
    ('test' -> 'labels' in prepare_dram.py, 'images' -> 'masks' in prepare_atlantis.py), which breaks when
    the user's folders contain those words.
    """
    root = root.resolve()
    with tempfile.TemporaryDirectory(prefix="lposs-mess-") as tmp:
        (Path(tmp) / folder).symlink_to(root, target_is_directory=True)
        yield Path(tmp)
