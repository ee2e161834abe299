"""Backbone time of the features stage per dense head, in one process: what each head costs per image.

    python -m benchmarks.heads [--device cpu|cuda] [--images 2] [--short-side 448] [--heads trident,corrclip]
                               [--json OUT.json]

Random-weight OpenCLIP ViT-B/16 with each head of `lposs.models.heads.HEADS` (ProxyCLIP and CASS with a DINO ViT-B/8
proxy: its final tokens, its raw keys; ResCLIP reads the 21 class queries inside its forward; Trident a DINO ViT-B/16
proxy and SAM ViT-B's image encoder at 1024 px, its release's windows 336 / 224 of the whole image; CorrCLIP DINO
ViT-B/8's q + k and the demo's stand-in mask model, whose colour segments of a random image are many and small,
its time included; GEM one window per forward; CLIP-DINOiser its two convolutions, random, FOUND's rule off as
on most datasets; LaVG SCLIP's head and its release's mask model, Panoptic Cut with random DINO ViT-B/8 weights at
640 x 640, its time included: the vote runs later, in the evaluation) and a DINO ViT-B/16 graph (q, k, v from one
forward), on random images of VOC's size (375 x 500, 15 windows at short side 448); the cost does not depend on
the weights. Per head: seconds per image of
`features.extract_shard` (both backbones over all windows, seeds, graph features), the text classifier
time for 21 classes once, and the ratio to the MaskCLIP head measured in the same run (the heads take turns
image by image, so a change of load hits all of them alike).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lposs.experiment.extraction import extract_shard
from lposs.io import write_json
from lposs.models.factory import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, create_backbones, spec_from_clip_tag
from lposs.models.heads import HEADS

CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "table", "dog", "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor"]


def build(head: str, device: str) -> dict:
    """The head's backbones (random weights), its text classifier and that classifier's seconds."""
    record = HEADS[head]
    masks = "demo" if "regions" in record.reads else record.masks if record.masks and not record.reads_sam else "none"
    spec = spec_from_clip_tag(DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, True, head=head, masks=masks)
    vlm, graphs, masks = create_backbones(spec, device)
    vm = next(iter(graphs.values()))
    start = time.perf_counter()
    text = vlm.text_embeddings(CLASSES)
    return {"vlm": vlm, "vms": {f: vm.with_feature(f) for f in ("v", "q", "k")}, "text": text,
            "text_seconds": time.perf_counter() - start, "masks": masks}


def time_heads(images: list[np.ndarray], device: str, short_side: int,
               heads: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Per head: text seconds once, and the median seconds per image of the features stage's backbone work.

    The heads take turns image by image (round robin), so a change of machine load hits all of them alike.
    """
    models = {head: build(head, device) for head in heads or HEADS}
    windows = {"crop": 224, "stride": 112, "short_side": short_side, "long_side": 2048}
    seconds: dict[str, list[float]] = {head: [] for head in models}
    for i, image in enumerate([images[0]] + images):  # the first pass warms up
        for head, m in models.items():
            shard = extract_shard(str(i), image, CLASSES, m["vlm"], m["vms"], windows, text=m["text"],
                                  masks=m["masks"])
            if i:
                seconds[head].append(shard["seconds"])
    return {head: {"text_seconds": models[head]["text_seconds"], "seconds_per_image": float(np.median(s))}
            for head, s in seconds.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--short-side", type=int, default=448)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--heads", default=",".join(HEADS),
                        help="comma-separated heads (maskclip, the reference of the ratios, is always run)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(args.images)]
    chosen = ["maskclip"] + [h for h in args.heads.split(",") if h and h != "maskclip"]
    unknown = [h for h in chosen if h not in HEADS]
    if unknown:
        parser.error(f"unknown heads {unknown}; choose among {', '.join(HEADS)}")
    results = time_heads(images, args.device, args.short_side, chosen)
    base = results["maskclip"]["seconds_per_image"]
    print(f"{'head':>10} {'s/image':>8} {'x maskclip':>10} {'text s':>7}")
    for head, r in results.items():
        r["ratio_to_maskclip"] = r["seconds_per_image"] / base
        print(f"{head:>10} {r['seconds_per_image']:8.2f} {r['ratio_to_maskclip']:10.2f} {r['text_seconds']:7.2f}")
    out = {"device": args.device, "threads": torch.get_num_threads(), "images": args.images,
           "short_side": args.short_side, "heads": results}
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
