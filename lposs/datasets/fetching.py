"""Fetch a benchmark: download (resumable, checksummed) -> extract -> convert -> load check.

``fetch(name, root)`` runs the steps for the files listed in lposs.datasets.sources. Every step can be
re-run: a finished download is verified instead of fetched again, a partial one (``<file>.part``) resumes
with an HTTP Range request, an extracted archive leaves a marker in ``ROOT/.lposs/``, and converters skip
outputs already written. A download whose checksum does not match is deleted. Without network, fetch
fails within seconds, naming the URL, the folder, and how to place the file by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .archives import Archive, Source, extract
from .convert import CONVERTERS
from .registry import dataset_spec, default_root, get_dataset
from .sources import MIRROR_ENV, SOURCES

TIMEOUT_ENV = "LPOSS_DOWNLOAD_TIMEOUT"
CHUNK = 1 << 20
STATE_DIR = ".lposs"


class DownloadError(RuntimeError):
    """A download that could not complete (network, HTTP status, truncated transfer)."""


class ChecksumError(ValueError):
    """A downloaded or placed file whose digest differs from the published one."""


# ---------------------------------------------------------------------------------------------- checksums
def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, checksum: str | None, origin: str) -> bool:
    """True if ``checksum`` ("algo:hex") matches; False if there is none to check; else ChecksumError."""
    if checksum is None:
        return False
    algorithm, expected = checksum.split(":", 1)
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        raise ChecksumError(f"{algorithm} checksum mismatch for {path.name} from {origin}: expected "
                            f"{expected}, got {actual}")
    return True


# ---------------------------------------------------------------------------------------------- download
def download(url: str, dest: Path, checksum: str | None = None, progress: bool = True, retries: int = 3,
             timeout: float | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range, then verify.

    A connection that breaks after data arrived is resumed up to ``retries`` times; a failure before any
    data arrived (no network, refused, HTTP error) raises DownloadError at once. On a checksum mismatch the
    partial file is deleted and ChecksumError is raised; ``dest`` only ever appears complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    timeout = timeout if timeout is not None else float(os.environ.get(TIMEOUT_ENV, "30"))
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, offset, progress, timeout)
            break
        except _Interrupted as err:
            if attempt == retries:
                raise DownloadError(f"download of {url} kept breaking off ({err}); {part} keeps what arrived, "
                                    "re-run to resume") from err
    try:
        verify_checksum(part, checksum, url)
    except ChecksumError as err:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{err}. The download was deleted; re-run to fetch it again, or check "
                            f"the mirror ({MIRROR_ENV})") from None
    os.replace(part, dest)
    return dest


class _Interrupted(Exception):
    """The connection dropped after some bytes arrived: resume."""


def _transfer(url: str, part: Path, offset: int, progress: bool, timeout: float) -> None:
    """One HTTP request appending to ``part`` from ``offset``; returns when the file is complete."""
    headers = {"User-Agent": "lposs-fetch"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the partial file is already complete
            return
        raise DownloadError(f"HTTP {err.code} {err.reason} for {url}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"cannot reach {url}: {getattr(err, 'reason', err)}") from err
    with response:
        if offset and response.status != 206:  # server ignored the Range header: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = int(length) + offset if length is not None else None
        received = 0
        with part.open("ab" if offset else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress
        ) as bar:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as err:
                raise _Interrupted(str(err) or type(err).__name__) from err
    if total is not None and offset + received < total:
        if received == 0:
            raise DownloadError(f"{url} sent no data (expected {total - offset} more bytes)")
        raise _Interrupted(f"got {offset + received} of {total} bytes")


# ---------------------------------------------------------------------------------------------- fetch
def archive_url(archive: Archive, mirror: str | None) -> str | None:
    if mirror:
        return f"{mirror.rstrip('/')}/{archive.filename}"
    return archive.url


def manual_message(name: str, source: Source, root: Path, missing: list[Archive]) -> str:
    files = ", ".join(a.filename for a in missing)
    text = f"dataset {name!r} needs files that cannot be downloaded automatically: {files} (into {root}).\n"
    return text + (source.manual or "").format(root=root)


def offline_message(name: str, archive: Archive, url: str, root: Path, err: Exception) -> str:
    return (f"fetch {name!r} into {root} failed: {err}.\n"
            f"Manual alternative: download that file yourself (browser, `wget -c {url}`) and place it at "
            f"{root / archive.filename}, then re-run `python -m lposs data fetch {name} --root {root}`: "
            f"files already there are verified and unpacked. A local copy of all files can also be served "
            f"with {MIRROR_ENV}=<base URL> (files at <base URL>/<filename>).")


def obtain(name: str, archive: Archive, root: Path, mirror: str | None, progress: bool) -> Path:
    """The archive file under ``root``: verified if already there, else downloaded."""
    path = root / archive.filename
    url = archive_url(archive, mirror)
    if path.exists():
        if not verify_checksum(path, archive.checksum, str(path)):
            print(f"{path.name}: already present; no published checksum, so it is not verified", file=sys.stderr)
        return path
    if archive.checksum is None:
        print(f"{archive.filename}: no published checksum, the download is not verified", file=sys.stderr)
    try:
        return download(url, path, archive.checksum, progress)
    except DownloadError as err:
        raise DownloadError(offline_message(name, archive, url, root, err)) from err


def fetch(name: str, root=None, progress: bool = True, mirror: str | None = None):
    """Download, verify, extract and convert dataset ``name`` into ``root``; returns the loaded dataset.

    ``root`` defaults to ``default_root(name)``; ``mirror`` (or $LPOSS_DATA_MIRROR) replaces every URL by
    MIRROR/<filename>. Raises DownloadError (network, naming URL, folder and the manual alternative),
    ChecksumError, or FileNotFoundError with the manual steps for registration-only files.
    """
    spec = dataset_spec(name)
    if name == "demo":
        raise ValueError("the demo dataset is generated, not downloaded: python -m lposs.demo --out DIR")
    root = Path(root) if root is not None else default_root(name)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    source = SOURCES[spec.folder]
    root.mkdir(parents=True, exist_ok=True)
    state = root / STATE_DIR
    pending = [a for a in source.archives if not _unpacked(a, root)]
    unreachable = [a for a in pending if archive_url(a, mirror) is None and not (root / a.filename).exists()]
    if unreachable:
        raise FileNotFoundError(manual_message(name, source, root, unreachable))
    for archive in pending:
        path = obtain(name, archive, root, mirror, progress)
        if archive.extract_to is not None:
            extract(path, root / archive.extract_to, archive.strip, progress, archive.password)
        state.mkdir(exist_ok=True)
        (state / f"{archive.filename}.extracted").touch()
    if source.convert == "mess":  # MESS's own preparation script (mess-benchmark, lposs[mess])
        from .mess_prepare import prepare_with_mess

        prepare_with_mess(name, root, progress=progress)
    elif source.convert:
        CONVERTERS[source.convert](root, progress=progress)
    dataset = get_dataset(name, root)
    if progress:
        print(f"{name}: {len(dataset)} images ready in {root}")
    return dataset


def _unpacked(archive: Archive, root: Path) -> bool:
    """Extracted by an earlier fetch (marker), or by hand (its folder exists and the file does not)."""
    if (root / STATE_DIR / f"{archive.filename}.extracted").exists():
        return True
    return (archive.creates is not None and (root / archive.creates).exists()
            and not (root / archive.filename).exists())
