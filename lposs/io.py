"""Files: atomic writes with the usual file mode, JSON, md5, file names from image ids, PNG label maps.

Every file the package writes goes through `atomic_write`: a temp file in the target's folder, flushed
and fsynced, given the mode a plain `open()` would give it (0o666 minus the process's umask, so a lab's
shared run folder or DVC remote stays readable by the group), then `os.replace`d over the target. An
interrupted write leaves the old file or none, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

_UMASK_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------

def current_umask() -> int:
    """The process's umask (read from /proc where it can be, else set and restored under a lock)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, fill: Callable[[BinaryIO], Any]) -> Path:
    """Write `path` through `fill(handle)` on a temp file in the same folder, then os.replace; -> path.

    The file gets the mode `open()` would give a new file (0o666 & ~umask), not mkstemp's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o666 & ~current_umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """`data` written to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda out: out.write(data))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (indented, keys in their order) written atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n").encode())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------------
# Names and digests
# --------------------------------------------------------------------------------------------------

def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_name(image_id: str) -> str:
    """An image id as a file name: path separators become '__' (Cityscapes ids hold a city folder)."""
    name = re.sub(r"[\\/]", "__", image_id)
    if not name or name in {".", ".."} or name.startswith("."):
        raise ValueError(f"image id {image_id!r} cannot be used as a file name")
    return name


# --------------------------------------------------------------------------------------------------
# PNG: a deterministic encoder, label maps, a class palette
# --------------------------------------------------------------------------------------------------

def encode_png(array: np.ndarray) -> bytes:
    """uint8 [H, W] (grey) or [H, W, 3] (RGB) -> PNG bytes with stored deflate blocks (no zlib-version dependence)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"encode_png needs uint8 [H, W] or [H, W, 3], got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    colour_type = 0 if array.ndim == 2 else 2
    rows = np.ascontiguousarray(array).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every scanline
    blocks = []
    for start in range(0, len(raw), 65535):
        piece = raw[start:start + 65535]
        final = 1 if start + 65535 >= len(raw) else 0
        blocks.append(struct.pack("<BHH", final, len(piece), len(piece) ^ 0xFFFF) + piece)
    stream = b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(raw))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def save_label_map(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Class-index map [H, W] as a grey PNG, atomically."""
    if labels.max(initial=0) > 255:
        raise ValueError(f"{path}: more than 256 classes do not fit a PNG label map")
    return atomic_write_bytes(path, encode_png(labels.astype(np.uint8)))


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path))


def save_image_png(image: Any, path: str | os.PathLike) -> Path:
    """A PIL image as PNG, atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


# Kelly's 22 colours of maximum contrast (K. L. Kelly, "Twenty-two colors of maximum contrast", Color
# Engineering 3(6), 1965) without white and black, in his order: neighbours in the list differ most.
KELLY_COLOURS = ("F3C300", "875692", "F38400", "A1CAF1", "BE0032", "C2B280", "848482", "008856", "E68FAC", "0067A5",
                 "F99379", "604E97", "F6A600", "B3446C", "DCD300", "882D17", "8DB600", "654522", "E25822", "2B3D26")


def palette(count: int) -> np.ndarray:
    """A fixed, readable colour per class: [count, 3] uint8. Kelly's 20 contrasting colours first, then hues
    a golden angle apart at three saturation / value levels (each distinct from all before it)."""
    import colorsys

    colours = [tuple(int(code[i:i + 2], 16) for i in (0, 2, 4)) for code in KELLY_COLOURS[:count]]
    extra = count - len(colours)
    for i in range(max(extra, 0)):
        level = i % 3
        hue = (i * 0.381966) % 1.0  # the golden angle, as a fraction of the hue circle
        rgb = colorsys.hsv_to_rgb(hue, (0.85, 0.55, 0.95)[level], (0.90, 0.75, 0.55)[level])
        colours.append(tuple(int(round(255 * c)) for c in rgb))
    return np.array(colours, dtype=np.uint8).reshape(count, 3)
