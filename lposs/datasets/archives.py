"""Archives: what a dataset is downloaded as (`Archive`, `Source`) and how an archive is unpacked (`extract`)."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One downloadable file and how to unpack it under the dataset root.

    ``extract_to``: folder (relative to the root) to unpack into; ``None`` = keep the file as it is.
    ``strip``: only members under this prefix are extracted, with the prefix removed (a leading ``*/``
    stands for any top folder, as in GitHub's ``<repo>-<ref>/`` zips).
    ``creates``: a path (relative to the root) the unpacked archive provides; when it exists and the
    archive file does not, the archive counts as unpacked by hand and is not downloaded.
    """

    filename: str
    url: str | None
    checksum: str | None
    extract_to: str | None = "."
    strip: str | None = None
    size: str = ""
    creates: str | None = None
    password: str | None = None  # an encrypted (ZipCrypto) zip's published password


@dataclass(frozen=True)
class Source:
    """How to obtain one dataset folder: archives, then an optional converter (lposs.datasets.convert)."""

    archives: tuple[Archive, ...]
    convert: str | None = None
    manual: str | None = None
    notes: str = ""



def _target(dest: Path, name: str, strip: str | None) -> Path | None:
    """Where archive member ``name`` goes (None = skip); refuses paths that escape ``dest``."""
    if strip is not None:
        if strip.startswith("*/"):  # any top folder
            _, _, rest = name.partition("/")
            name, strip = rest, strip[2:]
        if not name.startswith(strip) or name == strip:
            return None
        name = name[len(strip):]
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise ValueError(f"archive member {name!r} would be written outside {dest}")
    return target


def extract(archive: Path, dest: Path, strip: str | None = None, progress: bool = True,
            password: str | None = None) -> None:
    """Unpack a .zip or tar archive into ``dest`` (only members under ``strip``, without it)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, strip, progress, password)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest, strip, progress)
        else:
            raise ValueError(f"{archive} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise ValueError(f"cannot extract {archive}: {err}; delete it and re-run the fetch") from err


def _extract_zip(archive: Path, dest: Path, strip: str | None, progress: bool, password: str | None) -> None:
    with zipfile.ZipFile(archive) as zf:
        if password is not None:
            zf.setpassword(password.encode())
        for info in tqdm(zf.infolist(), desc=f"extract {archive.name}", unit="file", disable=not progress):
            target = _target(dest, info.filename, strip)
            if target is None:
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, CHUNK)


def _extract_tar(archive: Path, dest: Path, strip: str | None, progress: bool) -> None:
    with tarfile.open(archive) as tf:
        members = []
        for member in tf.getmembers():
            target = _target(dest, member.name, strip)
            if target is not None:
                member.name = str(target.relative_to(dest.resolve()))
                members.append(member)
        for member in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
            tf.extract(member, dest, filter="data")
