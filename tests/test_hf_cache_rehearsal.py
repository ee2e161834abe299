"""The paper's download path, rehearsed offline.

Random weights go into a Hugging Face cache laid out exactly as the real downloads leave it
(models--org--name/{blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> ../../blobs/<sha256>}), for the
file each library really fetches: open_clip's ViT-B-16 `laion2b_s34b_b88k` and timm's
`vit_base_patch16_224.dino`. Then, with HF_HUB_OFFLINE=1 and no checkpoint flags, the libraries' own
download calls, `python -m lposs segment` and the features stage's extraction load them from there with the
default pretrained tags, so a user's first real download is not the first time that path runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMIT = "5f8e6c1a0b9d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"  # any 40-hex revision: what refs/main points to
CLIP_FILE = ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "open_clip_model.safetensors")
DINO_FILE = ("timm/vit_base_patch16_224.dino", "model.safetensors")


def hub_files() -> tuple[tuple[str, str], tuple[str, str]]:
    """(repo, file) that open_clip and timm download for the paper's default tags, asked of the libraries."""
    import open_clip
    import timm
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives

    repo, name = os.path.split(open_clip.get_pretrained_cfg("ViT-B-16", "laion2b_s34b_b88k")["hf_hub"])
    clip = (repo, next(iter(_get_safe_alternatives(name or HF_WEIGHTS_NAME))))
    cfg = timm.models.get_pretrained_cfg("vit_base_patch16_224.dino")
    dino = (cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors")  # timm: safetensors twin of pytorch_model.bin
    return clip, dino


def place_in_hf_cache(hub: Path, repo_id: str, filename: str, payload: bytes, commit: str = COMMIT) -> Path:
    """Write payload where huggingface_hub's download puts `filename` of `repo_id` at revision main."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    digest = hashlib.sha256(payload).hexdigest()  # an LFS file's blob is named by its sha256 (the etag)
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "blobs" / digest).write_bytes(payload)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)  # no trailing newline, as the hub client writes it
    link = folder / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("..") / ".." / "blobs" / digest)
    return link


def random_weights_file(model) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """A HF_HOME whose hub cache holds random weights for the paper's two backbones."""
    import open_clip
    import timm
    import torch

    home = tmp_path_factory.mktemp("hf_home")
    torch.manual_seed(123)
    clip = open_clip.create_model("ViT-B-16", pretrained=None)
    dino = timm.create_model("vit_base_patch16_224.dino", pretrained=False)
    place_in_hf_cache(home / "hub", *CLIP_FILE, random_weights_file(clip))
    place_in_hf_cache(home / "hub", *DINO_FILE, random_weights_file(dino))
    probes = {"clip": float(clip.visual.conv1.weight.detach().flatten()[:100].sum()),
              "dino": float(dino.patch_embed.proj.weight.detach().flatten()[:100].sum())}
    (home / "probes.json").write_text(json.dumps(probes))
    return home


def offline_env(hf_home: Path) -> dict[str, str]:
    """Only the fake cache: offline hub, an unreachable endpoint, fresh torch/XDG caches and HOME."""
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
            "TORCH_HOME": str(hf_home / "torch"), "XDG_CACHE_HOME": str(hf_home / "xdg"), "HOME": str(hf_home),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def test_the_libraries_ask_for_the_files_we_place():
    assert hub_files() == (CLIP_FILE, DINO_FILE)


@pytest.mark.slow  # building and writing ~0.9 GB of random weights takes ~20 s on 2 busy cores
def test_the_cache_reads_as_huggingface_hub_wrote_it(hf_home):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    repos = {r.repo_id: r for r in scan_cache_dir(hf_home / "hub").repos}
    assert set(repos) == {CLIP_FILE[0], DINO_FILE[0]}
    for repo_id, filename in (CLIP_FILE, DINO_FILE):
        (revision,) = repos[repo_id].revisions
        assert revision.commit_hash == COMMIT and revision.refs == frozenset({"main"})
        assert [f.file_name for f in revision.files] == [filename]
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=hf_home / "hub")
        assert cached == str(hf_home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT / filename)


REHEARSAL = """
import json, sys
import open_clip, timm, torch
from huggingface_hub import constants
assert constants.HF_HUB_OFFLINE
probes = json.load(open(sys.argv[1]))
# 1. the libraries' own download calls with the default tags (what a first real download runs)
clip = open_clip.create_model("ViT-B-16", pretrained="laion2b_s34b_b88k")
dino = timm.create_model("vit_base_patch16_224.dino", pretrained=True)
# 2. lposs's loaders: the cache lookup, no checkpoint flags
from lposs.models.factory import BackboneSpec, create_backbones
backbones = create_backbones(BackboneSpec())
vlm, vm = backbones.vlm, backbones.vm
got = {"clip": [float(m.visual.conv1.weight.flatten()[:100].sum()) for m in (clip, vlm.model)],
       "dino": [float(m.patch_embed.proj.weight.flatten()[:100].sum()) for m in (dino, vm.model)]}
# 3. the features stage's extraction of one image with these backbones
from lposs import demo
from lposs.datasets import get_dataset
from lposs.experiment.extraction import fill_dataset, make_manifest
from lposs.experiment.store import FeatureStore
ds = get_dataset("demo", demo.generate_demo(sys.argv[2] + "/demo", count=1, seed=0, size=(224, 224)))
windows = dict(crop=224, stride=112, short_side=224, long_side=2048)
store = FeatureStore(sys.argv[2] + "/store", make_manifest("demo", ds.class_names, vlm.id, {"v": vm.id}, windows))
stats = fill_dataset(store, ds, vlm, {"v": vm}, windows, progress=False)
shard = store.load(ds.items[0].id)
print(json.dumps({"probes": probes, "got": got, "computed": stats["computed"], "vlm": vlm.id, "vm": vm.id,
                  "seeds": list(shard["seeds"].shape)}))
"""


@pytest.mark.slow
def test_default_tags_load_from_the_cache_offline(hf_home, tmp_path):
    script = tmp_path / "rehearse.py"
    script.write_text(REHEARSAL)
    out = run([str(script), str(hf_home / "probes.json"), str(tmp_path)], offline_env(hf_home), tmp_path)
    result = json.loads([line for line in out.splitlines() if line.startswith('{"probes"')][-1])
    for name in ("clip", "dino"):  # every loader got the cached random weights, not a seeded init of its own
        assert result["got"][name] == pytest.approx([result["probes"][name]] * 2, abs=1e-6)
    assert result["computed"] == 1 and result["seeds"][0] == 14 * 14  # one 224 window
    assert "laion2b_s34b_b88k" in result["vlm"] and "random" not in result["vlm"] + result["vm"]


@pytest.mark.slow
def test_segment_cli_with_default_tags_offline(hf_home, tmp_path):
    from lposs.demo.scenes import render_scene
    from lposs.io import encode_png

    image = tmp_path / "scene.png"
    scene, _ = render_scene(__import__("numpy").random.RandomState(0), (224, 288))
    image.write_bytes(encode_png(scene))
    out = run(["-m", "lposs", "segment", str(image), "--classes", "sky; grass; cow", "--out", str(tmp_path / "seg.png"),
               "--mode", "lposs"], offline_env(hf_home), tmp_path)
    assert "RANDOM WEIGHTS" not in out and (tmp_path / "seg.png").is_file()
    assert (tmp_path / "seg_overlay.png").is_file()
