"""The results table: our rows per head x graph x {seeds, + LPOSS, + LPOSS+} beside each head's published numbers.

Published 8-benchmark mIoU at ViT-B/16 (docs/field.md section 7: the OV-Stitcher release's comparison table,
the NACLIP README (sinahmr/NACLIP 0cac3a6), ResCLIP's figures) and the LPOSS paper (arXiv 2503.19777; docs/method.md
section 9). Each published row was measured under its own release's protocol (docs/field.md section 5); each of
our rows names the protocol it ran.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .captions import DEMO_NOTE

# the 8 benchmarks in the order of the published lists below
PUBLISHED_ORDER = ["voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade20k", "coco_stuff"]
PUBLISHED: dict[str, list[tuple[str, list[float], float]]] = {  # head -> [(row name, numbers, average)]
    "maskclip": [("MaskCLIP", [43.4, 23.2, 20.6, 74.9, 24.9, 26.4, 11.9, 16.7], 30.3),
                 ("LPOSS+ (OpenCLIP laion2b + DINO B/16)", [61.1, 34.6, 33.4, 78.8, 37.3, 37.8, 21.8, 25.9], 41.3)],
    "sclip": [("SCLIP", [59.1, 30.4, 30.5, 80.4, 32.2, 34.2, 16.1, 22.4], 38.2)],
    "clearclip": [("ClearCLIP", [51.8, 32.6, 33.0, 80.9, 30.0, 35.9, 16.7, 23.9], 38.1)],
    "naclip": [("NACLIP (no PAMR)", [58.9, 32.2, 33.2, 79.7, 35.5, 35.2, 17.4, 23.3], 39.4),
               ("NACLIP (repo default, PAMR)", [64.07, 34.99, 36.19, 83.03, 38.27, 38.35, 19.05, 25.69], 42.46)],
    "proxyclip": [("ProxyCLIP (DINO B/8)", [61.3, 35.3, 37.5, 80.3, 38.1, 39.1, 20.2, 26.5], 42.3)],
}
TALK_AVERAGES = {"maskclip": 27.0, "lposs": 38.3, "lposs+": 41.3}  # the talk: MaskCLIP -> LPOSS -> LPOSS+
METHODS = {"maskclip": "seeds", "lposs": "+ LPOSS", "lposs+": "+ LPOSS+"}

def published(head: str, dataset: str) -> list[tuple[str, float]]:
    """[(row name, mIoU)] published for `head` on `dataset` (empty when none)."""
    if dataset not in PUBLISHED_ORDER:
        return []
    return [(name, numbers[PUBLISHED_ORDER.index(dataset)]) for name, numbers, _ in PUBLISHED.get(head, [])]


def results_table(runs: list[dict[str, Any]], datasets: list[str]) -> str:
    """Markdown, one row per run x mode, then each head's published rows.

    runs: [{"head", "vm", "protocol" (name), "deviations" (list of str), "modes": {dataset: {mode: {miou, biou}}}}].
    A column per dataset; "avg of 8" when every paper benchmark was run.
    """
    full = all(d in datasets for d in PUBLISHED_ORDER)
    columns = datasets + (["avg of 8"] if full else [])
    lines = ["| head | graph | protocol | method | " + " | ".join(columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for run in runs:
        for mode, method in METHODS.items():
            cells = [_cell(run["modes"].get(d, {}).get(mode)) for d in datasets]
            if full:
                values = [run["modes"].get(d, {}).get(mode, {}).get("miou") for d in PUBLISHED_ORDER]
                cells.append("-" if None in values else f"{np.mean(values):.1f}")
            lines.append(f"| {run['head']} | {run['vm']} | {run['protocol']} | {method} | " + " | ".join(cells) + " |")
    for head in dict.fromkeys(run["head"] for run in runs):
        for name, numbers, average in PUBLISHED.get(head, []):
            cells = [f"{numbers[PUBLISHED_ORDER.index(d)]:.1f}" if d in PUBLISHED_ORDER else "" for d in datasets]
            cells += [f"{average:.1f}"] if full else []
            lines.append(f"| {head} | published | own | {name} | " + " | ".join(cells) + " |")
    lines += ["", "mIoU (Boundary IoU) in percent. Published rows: ViT-B/16, each under its own release's protocol "
              "(docs/field.md sections 5 and 7: the OV-Stitcher release's comparison table, the NACLIP README, ResCLIP's "
              "figures; LPOSS+: arXiv 2503.19777); the talk's averages of the 8: MaskCLIP "
              f"{TALK_AVERAGES['maskclip']} -> LPOSS {TALK_AVERAGES['lposs']} -> LPOSS+ {TALK_AVERAGES['lposs+']}."]
    for run in runs:
        for deviation in run.get("deviations", []):
            lines.append(f"Deviation ({run['head']}+{run['vm']}, {run['protocol']}): {deviation}.")
    if "demo" in datasets:
        lines.append(f"Note: {DEMO_NOTE}.")
    return "\n".join(lines) + "\n"


def _cell(scores: dict | None) -> str:
    return "-" if not scores else f"{scores['miou']:.1f} ({scores['biou']:.1f})"
