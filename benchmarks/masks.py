"""Mask models on a CPU: seconds per image of each model's region map at the features stage's size, and the bytes
its run-length code takes in a feature store.

    python -m benchmarks.masks [--images 2] [--models demo,sam_vit_b,sam2_hiera_l,panoptic_cut] [--threads N]
                               [--json OUT.json]

Images: the first CamVid test frames (960 x 720) of the shared data folder (`LPOSS_SHARED_DATA`, else
../shared/data), resized as the features stage resizes them (448 short side: 448 x 597); without CamVid the
benchmark says so and stops. Models (`lposs.models.masks.create_mask_model`): `demo` (colour segments), `sam_vit_b`
(SAM ViT-B, segment-anything) and `sam2_hiera_l` (SAM 2 hiera-L, sam2), both SAMs with CorrCLIP's 8 x 8 points and
0.4 thresholds and RANDOM weights (`checkpoint="random"`: no download; the same FLOPs as the real ones, but other
masks: a random model finds few or none, the real ones tens, so the region counts and code sizes of the SAMs here
are not those of real weights). Both SAMs resize every image to their 1024 x 1024 input whatever its size.
`panoptic_cut` (LaVG's: DINO ViT-B/8 keys of a 640 x 640 square, normalized cuts, a dense CRF per mask; random
DINO weights too, so its masks follow colour and texture, and many are emptied by its CRF check) and
`panoptic_cut_demo` (the same with the demo's stand-in keys) read the ORIGINAL frame, as the features stage gives
them, and their overlapping masks are stored too: `encode_masks`' bytes at the original size are added to the
region code's.
Per model: the build seconds, then per image the wall seconds and the process CPU seconds (all threads together)
of the features stage's call (`image_features.mask_regions`: `masks.regions(resized)`, or Panoptic Cut's masks of
the original), the regions found and the stored code size in bytes (int32). The first image is not repeated: a
model's one-time costs fall on it, and the median over images is reported.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from lposs.core.regions import encode_masks, encode_regions
from lposs.core.windows import resize_image, resized_size
from lposs.datasets.registry import shared_data_dir
from lposs.image_features import mask_regions
from lposs.io import write_json
from lposs.models.masks import PACKAGES, create_mask_model

CAMVID_TEST = "camvid_segnet/CamVid/test"
SHORT_SIDE, LONG_SIDE = 448, 2048  # the features stage's resize (lposs.settings.WindowSettings' defaults)
MODELS = ("demo", "sam_vit_b", "sam2_hiera_l", "panoptic_cut")
RANDOM_NOTE = ("sam_vit_b, sam2_hiera_l and panoptic_cut run with random weights (no download): the same FLOPs as the "
               "real ones, but other mask counts and code sizes than real weights give")


def camvid_images(count: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The first `count` CamVid test frames: (file, [3, H, W] in [0, 1], the same at the features stage's size);
    [] without CamVid."""
    folder = shared_data_dir() / CAMVID_TEST
    paths = sorted(folder.glob("*.png"))[:count] if folder.is_dir() else []
    images = []
    for path in paths:
        image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
        images.append((path.name, image, resize_image(image, resized_size(*image.shape[1:], SHORT_SIDE, LONG_SIDE))))
    return images


def time_model(name: str, images: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Build `name` (random weights for the SAMs and Panoptic Cut's DINO), then time its region map on each image."""
    start = time.perf_counter()
    masks = create_mask_model(name, "cpu", None if name in ("demo", "panoptic_cut_demo") else "random")
    out: dict[str, Any] = {"id": masks.id, "build_seconds": time.perf_counter() - start, "images": []}
    for file, original, image in images:
        wall, cpu = time.perf_counter(), time.process_time()
        regions, overlapping = mask_regions(masks, original, image)  # [H', W'], [M, H, W] or None
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        code = encode_regions(regions)
        if overlapping is not None:
            code = torch.cat([code, encode_masks(overlapping)])  # both are stored
        out["images"].append({"file": file, "size": list(regions.shape), "seconds": wall, "cpu_seconds": cpu,
                              "regions": int(regions.unique().gt(0).sum()),
                              "covered": float(regions.gt(0).float().mean()),
                              "code_bytes": code.numel() * code.element_size()})
    for key in ("seconds", "cpu_seconds", "regions", "code_bytes"):
        out[f"median_{key}"] = float(np.median([i[key] for i in out["images"]]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.masks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="CamVid test frames (default 2)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default: all cores)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = camvid_images(args.images)
    if not images:
        print(f"no CamVid test frames under {shared_data_dir() / CAMVID_TEST}: nothing to time "
              f"(set LPOSS_SHARED_DATA to the folder holding {CAMVID_TEST.split('/')[0]})")
        return {}
    print(f"{len(images)} CamVid frame(s) at {tuple(images[0][2].shape[1:])} (original {tuple(images[0][1].shape[1:])}), "
          f"{torch.get_num_threads()} thread(s); "
          f"note: {RANDOM_NOTE}")
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        try:
            results[name] = time_model(name, images)
        except ImportError as error:
            print(f"{name}: skipped, {PACKAGES.get(name, name)} is not installed ({error})")
    print(f"{'model':>17} {'build s':>8} {'s/image':>8} {'cpu s/image':>11} {'regions':>7} {'code bytes':>10}")
    for name, r in results.items():
        print(f"{name:>17} {r['build_seconds']:8.2f} {r['median_seconds']:8.2f} {r['median_cpu_seconds']:11.2f} "
              f"{r['median_regions']:7.0f} {r['median_code_bytes']:10.0f}")
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__},
           "short_side": SHORT_SIDE, "weights_note": RANDOM_NOTE, "models": results}
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
