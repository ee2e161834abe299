"""The three region settings of LPOSS's graphs on a mask model's regions, on the demo scenes (not a test).

    python -m benchmarks.region_settings [--masks demo,panoptic_cut_demo] [--scenes 16] [--json OUT.json]

The offline demo: its generated scenes (lposs.demo, 256 x 352, the pipeline's demo set), its stand-in backbones
(DemoVLM, DemoVM "v") at short side 256 as params.yaml runs them, and each mask model's regions computed once per
scene and kept in the shard, as the features stage keeps them. Mask models: `demo` (colour segments), and
`panoptic_cut_demo`, LaVG's Panoptic Cut (normalized cuts, dense CRF, complement) with the demo's stand-in for
DINO's keys (DemoVM's colour features of 16-pixel patches of the 640 x 640 square), whose id map (1 + the first
mask covering a pixel, the complement last) is what the graphs read. Per model, mIoU (Boundary IoU) of:
LPOSS, LPOSS with graph.region_beta 0.3 / 0.05, LPOSS+, LPOSS+ with pixel.boundary_beta 0.3 / 0.05, and LPOSS
followed by the `regions` refiner (each region takes its mean scores); plus how many regions the maps have and
how many pixels their largest region holds. The stand-ins say what the settings do with such regions, not what
real DINO or SAM regions would give on real photos.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lposs.core.regions import decode_regions
from lposs.datasets.registry import get_dataset
from lposs.demo import DemoVLM, DemoVM
from lposs.demo.scenes import generate_demo
from lposs.experiment.evaluation import SettingsRun, SweepPoint
from lposs.experiment.extraction import extract_shard
from lposs.io import write_json
from lposs.models.masks import create_mask_model
from lposs.settings import Setting

WINDOWS = {"crop": 224, "stride": 112, "short_side": 256, "long_side": 2048}
POINTS = [SweepPoint("lposs", Setting.from_flat(mode="lposs")),
          SweepPoint("lposs region_beta=0.3", Setting.from_flat(mode="lposs", region_beta=0.3)),
          SweepPoint("lposs region_beta=0.05", Setting.from_flat(mode="lposs", region_beta=0.05)),
          SweepPoint("lposs+", Setting.from_flat(mode="lposs+")),
          SweepPoint("lposs+ boundary_beta=0.3", Setting.from_flat(mode="lposs+", boundary_beta=0.3)),
          SweepPoint("lposs+ boundary_beta=0.05", Setting.from_flat(mode="lposs+", boundary_beta=0.05)),
          SweepPoint("lposs, regions refiner", Setting.from_flat(mode="lposs+", refiner="regions"))]


def evaluate(masks_name: str, ds: Any) -> dict[str, Any]:
    """Every point on every scene with `masks_name`'s regions -> metrics, region statistics, mask seconds."""
    vlm, vm, masks = DemoVLM(), DemoVM("v"), create_mask_model(masks_name)
    run = SettingsRun(ds, POINTS)
    regions, largest, seconds = [], [], 0.0
    for i in range(len(ds)):
        sample = ds[i]
        start = time.perf_counter()
        shard = extract_shard(sample.id, sample.image, ds.class_names_for(i), vlm, {"v": vm}, WINDOWS, masks=masks)
        seconds += time.perf_counter() - start
        ids = decode_regions(shard["regions"])
        counts = torch.bincount(ids.flatten())
        regions.append(int((counts[1:] > 0).sum()))
        largest.append(float(counts.max()) / ids.numel())
        run.add(shard, sample.image, run.label(sample.label))
    metrics = {label: m.summary() for label, m in run.metrics().items()}
    return {"id": masks.id, "metrics": metrics, "regions_median": float(np.median(regions)),
            "largest_region_share_median": float(np.median(largest)), "seconds_per_scene": seconds / len(ds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", default="demo,panoptic_cut_demo", help="comma-separated mask models")
    parser.add_argument("--scenes", type=int, default=16, help="demo scenes (the pipeline's demo set has 16)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    folder = generate_demo(Path(tempfile.mkdtemp(prefix="region_settings_")) / "demo", count=args.scenes)
    ds = get_dataset("demo", folder)
    results = {name: evaluate(name, ds) for name in args.masks.split(",")}
    print(f"{len(ds)} demo scenes, demo stand-in backbones, windows {WINDOWS}")
    print(f"{'setting':>28} " + " ".join(f"{name:>20}" for name in results))
    for point in POINTS:
        cells = [f"{r['metrics'][point.label]['miou']:.1f} ({r['metrics'][point.label]['biou']:.1f})"
                 for r in results.values()]
        print(f"{point.label:>28} " + " ".join(f"{cell:>20}" for cell in cells))
    for name, r in results.items():
        print(f"{name}: {r['regions_median']:.0f} regions a scene (median), the largest holds "
              f"{100 * r['largest_region_share_median']:.0f}% of the pixels; {r['seconds_per_scene']:.1f} s a scene "
              "(features and masks)")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
