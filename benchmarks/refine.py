"""Pixel refinement on real images (docs/method.md section 11): how much does LPOSS+ sharpen a perfect patch map?

Coarse scores are what a perfect patch-level predictor would give: the ground truth one-hot averaged over
16x16 patches and upsampled bilinearly. They are refined by `lposs.core.refine.refine_pixels`, and mIoU and
Boundary IoU are measured before and after, on the resized grid, accumulated over the whole set.

    python -m benchmarks.refine --dataset camvid --root ../shared/data/camvid_segnet --split val \
        --refiner reference --json results/refine_camvid_reference.json
    python -m benchmarks.refine --dataset davis2016 --root ../shared/data/davis2016_train_sub \
        --split train_every10 --refiner best --json results/refine_davis_best.json

Options: --refiner reference|tempered|best|relaxed|pamr (see lposs/core/refine.py), --device cpu|cuda,
--limit N (first N images), --every K (every K-th image, before --limit), --threads N (CPU threads; 1 gives
steadier timings on a shared machine). A run that writes JSON saves its totals every few images to
OUT.json.partial and resumes from there when restarted.

Robustness mode (issue 13): the same protocol with the coarse scores transformed as a head would deliver
them (benchmarks/robustness.py: affine, per-pixel and smooth noise, softmax at logit scales 40 and 100,
patch label noise), every refiner on every transform of the same images; one Markdown table of
refiner x transform x dataset (`--table A.json B.json` merges runs):

    python -m benchmarks.refine --robustness --dataset camvid --root ../shared/data/camvid_segnet \
        --split val --refiners reference best pamr --json rob_camvid.json --markdown rob_camvid.md

Protocol (exactly the reference's): image resized with the section-1 scale to
(int(h*s + 0.5), int(w*s + 0.5)), bilinear without antialiasing (align_corners False); ground truth
resized nearest; one-hot where ignored pixels count for no class; 16x16 average pooling in ceil mode (a
border patch averages the pixels it has); bilinear upsampling back (align_corners False); coarse
prediction = argmax.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from lposs.core.metrics import SegmentationMetrics
from lposs.core.refine import REFINERS, refine_pixels
from lposs.core.windows import resized_size
from lposs.datasets import get_dataset
from lposs.experiment.store import atomic_write_bytes
from lposs.io import write_json

from .robustness import TRANSFORMS, coarse_map, transform_seed, upsample

DATASETS = ("camvid", "davis2016")
PATCH = 16


# --------------------------------------------------------------------------- protocol
def resize_pair(image: np.ndarray, label: np.ndarray) -> tuple[Tensor, Tensor]:
    """uint8 [H, W, 3] and int64 [H, W] -> image float [3, h, w] in [0, 1] (bilinear), label [h, w] (nearest)."""
    size = resized_size(*label.shape)  # the section-1 scale s, rounded as int(h*s + 0.5), int(w*s + 0.5)
    img = torch.tensor(image).permute(2, 0, 1).float() / 255.0  # [3, H, W] (a copy: PIL arrays are read-only)
    img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    lab = torch.tensor(label)[None, None].float()  # [1, 1, H, W]
    lab = F.interpolate(lab, size=size, mode="nearest")[0, 0].long()  # [h, w]
    return img, lab


def patch_average(label: Tensor, num_classes: int, patch: int = PATCH) -> Tensor:
    """Ground truth [h, w] -> class fractions per patch [C, ceil(h/patch), ceil(w/patch)].

    One-hot where labels outside 0..num_classes-1 (the ignore label) count for no class. Average pooling
    in ceil mode without padding: a border patch divides by the number of pixels it really has.
    """
    if label.dim() != 2:
        raise ValueError(f"label must be a 2-D [H, W] map, got shape {tuple(label.shape)}")
    valid = (label >= 0) & (label < num_classes)
    onehot = F.one_hot(torch.where(valid, label, 0), num_classes).permute(2, 0, 1).float()  # [C, h, w]
    onehot = onehot * valid
    return F.avg_pool2d(onehot[None], patch, stride=patch, ceil_mode=True)[0]  # [C, ceil(h/p), ceil(w/p)]


def coarse_scores(label: Tensor, num_classes: int, patch: int = PATCH) -> Tensor:
    """Ground truth [h, w] -> coarse class scores [C, h, w]: patch fractions upsampled bilinearly."""
    return upsample(patch_average(label, num_classes, patch), tuple(label.shape))


# --------------------------------------------------------------------------- data
def load_dataset(name: str, root: str, split: str):
    """The dataset through the package's registry (CamVid void and DAVIS mask > 127 already encoded)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: the refinement benchmark supports {', '.join(DATASETS)}")
    return get_dataset(name, root, split)


# --------------------------------------------------------------------------- run
CHECKPOINT_EVERY = 10  # images between checkpoints of a run that writes JSON


def image_indices(dataset, limit: int | None = None, every: int = 1) -> list[int]:
    """Every `every`-th image of the dataset, the first `limit` of those (all when None)."""
    if every < 1:
        raise ValueError(f"every must be a positive step between images, got {every}")
    return list(range(0, len(dataset), every))[:limit]


def run(dataset, refiner: str = "reference", device: str = "cpu", limit: int | None = None,
        progress: bool = True, checkpoint: Path | None = None, every: int = 1, **overrides) -> dict:
    """Coarse and refined metrics over the dataset (every `every`-th image, the first `limit` of them),
    seconds per image.

    overrides: single settings of the refiner (see lposs.core.refine.REFINERS). Seconds are wall-clock time
    of the refinement alone; cpu_seconds the process CPU time it used (steadier on a shared machine).
    checkpoint: a file where the running totals are saved every few images; a run with the same settings
    continues from it (and deletes it when done).
    """
    indices = image_indices(dataset, limit, every)
    count = len(indices)
    key = {"dataset": repr(dataset), "refiner": refiner, "overrides": overrides, "count": count,
           "every": every, "device": str(device)}
    state = _load_checkpoint(checkpoint, key) or {
        "key": key, "next": 0, "seconds": 0.0, "cpu_seconds": 0.0,
        "coarse": _metrics_state(SegmentationMetrics(dataset.num_classes, ignore_index=dataset.ignore_index)),
        "refined": _metrics_state(SegmentationMetrics(dataset.num_classes, ignore_index=dataset.ignore_index)),
    }
    coarse = _metrics_from_state(state["coarse"], dataset)
    refined = _metrics_from_state(state["refined"], dataset)
    for position in tqdm(range(state["next"], count), desc=f"refine {refiner}", disable=not progress,
                         initial=state["next"], total=count):
        _, image, label = dataset[indices[position]]
        img, lab = resize_pair(image, label)
        scores = coarse_scores(lab, dataset.num_classes)
        coarse.update(scores.argmax(0), lab)
        seconds, cpu_seconds, out = timed_refine(img, scores, refiner, device, overrides)
        state["seconds"] += seconds
        state["cpu_seconds"] += cpu_seconds
        refined.update(out.argmax(0).cpu(), lab)
        state["next"] = position + 1
        if checkpoint is not None and (state["next"] % CHECKPOINT_EVERY == 0 or state["next"] == count):
            state["coarse"], state["refined"] = _metrics_state(coarse), _metrics_state(refined)
            write_json(checkpoint, state)
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    return {
        "images": count,
        "coarse": {"miou": coarse.miou(), "biou": coarse.boundary_iou()},
        "refined": {"miou": refined.miou(), "biou": refined.boundary_iou()},
        "seconds_per_image": state["seconds"] / max(count, 1),
        "cpu_seconds_per_image": state["cpu_seconds"] / max(count, 1),
    }


def timed_refine(img: Tensor, scores: Tensor, refiner: str, device: str, overrides: dict
                 ) -> tuple[float, float, Tensor]:
    """(wall seconds, CPU seconds, refined scores [C, h, w]) of one refinement on `device`."""
    img, scores = img.to(device), scores.to(device)
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = refine_pixels(img, scores, refiner=refiner, **overrides)
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


# --------------------------------------------------------------------------- robustness mode
def run_robustness(dataset, refiners: list[str], transforms: list[str], device: str = "cpu",
                   limit: int | None = None, every: int = 1, progress: bool = True,
                   checkpoint: Path | None = None) -> dict:
    """The same protocol with the coarse scores transformed as a head would deliver them (issue 13).

    For every image, every transform of benchmarks/robustness.py (seeded by transform and image index)
    and every refiner: coarse and refined metrics, accumulated over the images. All cells of the table
    see the same images. The checkpoint is saved after every image and kept: running again with the
    same settings resumes, with a larger `limit` extends the run, with the same `limit` rewrites the result.
    """
    indices = image_indices(dataset, limit, every)
    key = {"dataset": repr(dataset), "refiners": refiners, "transforms": transforms, "every": every,
           "device": str(device)}  # no count: a later run with a larger --limit extends the same images
    state = _load_checkpoint(checkpoint, key) or _empty_robustness_state(dataset, key)
    if state["next"] > len(indices):
        raise ValueError(f"the checkpoint {checkpoint} already holds {state['next']} images, more than the "
                         f"{len(indices)} asked for: raise --limit to at least {state['next']} or delete it")
    metrics = {t: {"coarse": _metrics_from_state(state["cells"][t]["coarse"], dataset),
                   **{r: _metrics_from_state(state["cells"][t][r], dataset) for r in refiners}}
               for t in transforms}
    for position in tqdm(range(state["next"], len(indices)), desc="robustness", disable=not progress,
                         initial=state["next"], total=len(indices)):
        index = indices[position]
        _, image, label = dataset[index]
        img, lab = resize_pair(image, label)
        pooled = patch_average(lab, dataset.num_classes)
        for name in transforms:
            generator = torch.Generator().manual_seed(transform_seed(name, index))
            scores = coarse_map(pooled, tuple(lab.shape), name, generator)
            metrics[name]["coarse"].update(scores.argmax(0), lab)
            for refiner in refiners:
                seconds, _, out = timed_refine(img, scores, refiner, device, {})
                state["seconds"][refiner] += seconds
                metrics[name][refiner].update(out.argmax(0).cpu(), lab)
        state["next"] = position + 1
        if checkpoint is not None:
            state["cells"] = {t: {k: _metrics_state(m) for k, m in cell.items()} for t, cell in metrics.items()}
            write_json(checkpoint, state)
    return {
        "images": state["next"], "image_indices": indices[: state["next"]],
        "seconds_per_image": {r: state["seconds"][r] / max(state["next"] * len(transforms), 1) for r in refiners},
        "cells": [{"transform": t, "refiner": r,
                   "coarse": _scores(metrics[t]["coarse"]), "refined": _scores(metrics[t][r])}
                  for t in transforms for r in refiners],
    }


def _empty_robustness_state(dataset, key: dict) -> dict:
    def empty() -> dict:
        return _metrics_state(SegmentationMetrics(dataset.num_classes, ignore_index=dataset.ignore_index))
    return {"key": key, "next": 0, "seconds": {r: 0.0 for r in key["refiners"]},
            "cells": {t: {k: empty() for k in ["coarse", *key["refiners"]]} for t in key["transforms"]}}


def _scores(metrics: SegmentationMetrics) -> dict:
    return {"miou": metrics.miou(), "biou": metrics.boundary_iou()}


def robustness_table(results: list[dict]) -> str:
    """One Markdown table, refiner x transform x dataset, from the JSON results of robustness runs."""
    rows = ["| dataset (images) | transform | refiner | coarse mIoU / BIoU | refined mIoU / BIoU | gain mIoU / BIoU |",
            "|---|---|---|---|---|---|"]
    for result in results:
        for cell in result["cells"]:
            c, r = cell["coarse"], cell["refined"]
            rows.append(f"| {result['dataset']} ({result['images']}) | {cell['transform']} | {cell['refiner']} "
                        f"| {c['miou']:.2f} / {c['biou']:.2f} | {r['miou']:.2f} / {r['biou']:.2f} "
                        f"| {r['miou'] - c['miou']:+.2f} / {r['biou'] - c['biou']:+.2f} |")
    return "\n".join(rows)


def _metrics_state(metrics: SegmentationMetrics) -> dict:
    return {"confusion": metrics.confusion.tolist(),
            "boundary_intersection": metrics.boundary_intersection.tolist(),
            "boundary_union": metrics.boundary_union.tolist(), "images": metrics.images}


def _metrics_from_state(state: dict, dataset) -> SegmentationMetrics:
    metrics = SegmentationMetrics(dataset.num_classes, ignore_index=dataset.ignore_index)
    metrics.confusion = np.array(state["confusion"], dtype=np.int64)
    metrics.boundary_intersection = np.array(state["boundary_intersection"], dtype=np.int64)
    metrics.boundary_union = np.array(state["boundary_union"], dtype=np.int64)
    metrics.images = state["images"]
    return metrics


def _load_checkpoint(path: Path | None, key: dict) -> dict | None:
    """The saved state of an interrupted run with the same settings, else None."""
    if path is None or not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if state.get("key") != json.loads(json.dumps(key)):
        return None
    print(f"resuming from {path} at image {state['next']}", file=sys.stderr)
    return state


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def table(result: dict) -> str:
    c, r = result["coarse"], result["refined"]
    rows = [
        f"{result['dataset']} ({result['split']}, {result['images']} images), refiner {result['refiner']}, "
        f"{result['device']}",
        "| stage | mIoU | Boundary IoU |",
        "|---|---|---|",
        f"| coarse | {c['miou']:.2f} | {c['biou']:.2f} |",
        f"| refined | {r['miou']:.2f} | {r['biou']:.2f} |",
        f"| gain | {r['miou'] - c['miou']:+.2f} | {r['biou'] - c['biou']:+.2f} |",
        f"seconds per image (refinement only): {result['seconds_per_image']:.2f} wall, "
        f"{result['cpu_seconds_per_image']:.2f} CPU ({result['threads']} threads)",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--root", help="dataset folder (CamVid: holds CamVid/; DAVIS: holds DAVIS/)")
    parser.add_argument("--split", help="CamVid val/test; DAVIS ImageSets/480p/NAME.txt")
    parser.add_argument("--refiner", default="reference", choices=sorted(REFINERS))
    parser.add_argument("--robustness", action="store_true",
                        help="the robustness protocol: --refiners x --transforms on the same images")
    parser.add_argument("--refiners", nargs="+", default=["reference", "best", "pamr"], choices=sorted(REFINERS))
    parser.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=list(TRANSFORMS))
    parser.add_argument("--table", nargs="+", type=Path, default=None, metavar="JSON",
                        help="only print (and with --markdown write) one table of robustness JSON results")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (quick runs)")
    parser.add_argument("--every", type=int, default=1, help="only every N-th image (before --limit)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here (atomically)")
    parser.add_argument("--markdown", type=Path, default=None, help="robustness mode: write the table here")
    args = parser.parse_args(argv)
    if args.table is not None:
        return print_table([json.loads(path.read_text()) for path in args.table], args.markdown)
    if not (args.dataset and args.root and args.split):
        parser.error("--dataset, --root and --split are required (except with --table)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be a positive number of images")
    if args.every < 1:
        parser.error("--every must be a positive step between images")
    if args.threads is not None:
        set_threads(args.threads)
    try:
        dataset = load_dataset(args.dataset, args.root, args.split)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    checkpoint = None if args.json is None else args.json.with_name(args.json.name + ".partial")
    about = dict(dataset=args.dataset, root=str(args.root), split=args.split, limit=args.limit,
                 every=args.every, device=_device_name(args.device), torch=torch.__version__)
    if args.robustness:
        result = run_robustness(dataset, args.refiners, args.transforms, device=args.device, limit=args.limit,
                                every=args.every, checkpoint=checkpoint)
        result.update(about, settings={r: REFINERS[r] for r in args.refiners}, threads=torch.get_num_threads())
        if args.json is not None:
            write_json(args.json, result)
        return print_table([result], args.markdown)
    result = run(dataset, refiner=args.refiner, device=args.device, limit=args.limit, every=args.every,
                 checkpoint=checkpoint)
    result.update(about, refiner=args.refiner, settings=REFINERS[args.refiner], threads=torch.get_num_threads())
    print(table(result))
    if args.json is not None:
        write_json(args.json, result)
    return 0


def print_table(results: list[dict], markdown: Path | None) -> int:
    """Print the robustness table of `results` and write it to `markdown` (atomically) when given."""
    text = robustness_table(results)
    print(text)
    if markdown is not None:
        atomic_write_bytes(markdown, (text + "\n").encode())
    return 0


def set_threads(threads: int) -> None:
    """CPU threads for torch."""
    torch.set_num_threads(threads)


def _device_name(device: str) -> str:
    if str(device).startswith("cuda"):
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


if __name__ == "__main__":
    sys.exit(main())
