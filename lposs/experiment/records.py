"""What the stages write and read besides features: JSON records and their timings, label maps and their palette.

    with timed("timings/ablate-demo.json", "ablate", dataset="demo") as timing:   {stage, ...info, seconds}
        ...
    write_json(path, record) / read_json(path)                                 atomic, with clear errors
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..io import palette, read_json, read_label_map, safe_name, save_label_map, write_json

__all__ = ["palette", "read_json", "read_label_map", "safe_name", "save_label_map", "timed", "write_json"]


@contextmanager
def timed(path: str | os.PathLike, stage: str, **info: Any) -> Iterator[dict[str, Any]]:
    """Time a block; write {stage, ...info, seconds} to `path` as JSON when it completes."""
    record: dict[str, Any] = {"stage": stage, **info}
    start = time.perf_counter()
    yield record
    record["seconds"] = time.perf_counter() - start
    write_json(path, record)
