"""The results table: our rows per head x graph x {seeds, + own step, + LPOSS, + LPOSS+} beside the published numbers.

Published 8-benchmark mIoU at ViT-B/16 (docs/field.md section 7: the OV-Stitcher release's comparison table,
the NACLIP README (sinahmr/NACLIP 0cac3a6), ResCLIP's figures) and the LPOSS paper (arXiv 2503.19777; docs/method.md
section 9). Each published row was measured under its own release's protocol (docs/field.md section 5, the 2025
releases' section 16); each of our rows names the protocol it ran.

The 2025 heads' rows (docs/field.md section 7, second table) come from ResCLIP's results figure (ResCLIP) and
PEARL's results figure (PEARL with its TLP post-step; SFP and CASS as PEARL reproduced them). SC-CLIP's own
per-dataset numbers, CASS's with its own DINO B/8 proxy and SFP's own table are not among them. Trident's row
comes from its results figure, CorrCLIP's (SAM 2 masks of 32 points per side) from its README. Every row name says what the row is built on: CLIP weights, extra
models, training-free, whose run.
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
    # the 2025 heads (docs/field.md section 7), their sources' order VOC21/PC60/Object/VOC20/PC59/Stuff/City/ADE
    # rearranged to PUBLISHED_ORDER (Cityscapes, Context59, ADE20K, COCO-Stuff)
    "resclip": [("ResCLIP (OpenAI CLIP, on NACLIP; training-free, no extra model)",
                 [61.1, 33.5, 35.0, 86.0, 35.9, 36.8, 18.0, 24.7], 41.4)],
    "pearl": [("PEARL (OpenAI CLIP, training-free, no extra model; with its TLP post-step)",
               [64.1, 35.1, 37.3, 86.9, 37.6, 38.6, 19.4, 26.3], 43.2)],
    "cass": [("CASS (OpenAI CLIP + DINOv2-reg B/14 proxy, training-free; PEARL's reproduction)",
              [58.6, 32.1, 33.1, 86.1, 34.1, 35.3, 17.6, 23.9], 40.1),
             ("CASS (OpenAI CLIP + DINOv3 B/16 proxy, training-free; PEARL's reproduction)",
              [62.3, 34.0, 36.0, 87.6, 36.2, 37.6, 18.8, 25.4], 42.2)],
    "sfp": [("SFP (OpenAI CLIP, training-free, no extra model; PEARL's reproduction)",
             [56.8, 32.3, 32.1, 83.4, 34.1, 36.0, 18.1, 24.0], 39.6)],
    # the two heads that read a mask model (docs/field.md sections 7 and 14)
    "trident": [("Trident (OpenAI CLIP + DINO B/16 proxy + SAM ViT-B, training-free)",
                 [67.1, 38.6, 41.1, 84.5, 42.9, 42.2, 21.9, 28.3], 45.8)],
    "corrclip": [(("CorrCLIP (MetaCLIP + DINO B/8 proxy + SAM 2 hiera-L masks of 32 points, training-free; with its "
                   "map correction)"), [74.8, 44.2, 43.7, 88.8, 49.4, 48.8, 26.9, 31.6], 51.0)],
}
HEADS_2025_SOURCES = ("docs/field.md sections 7 and 16: ResCLIP's results figure; PEARL's results figure for PEARL "
                      "(TLP on) and its reproductions of SFP and CASS; Trident's results figure; CorrCLIP's README")
TALK_AVERAGES = {"maskclip": 27.0, "lposs": 38.3, "lposs+": 41.3}  # the talk: MaskCLIP -> LPOSS -> LPOSS+
METHODS = {"maskclip": "seeds", "own": "+ own step", "lposs": "+ LPOSS", "lposs+": "+ LPOSS+"}
OWN_STEP_NAMES = {"tlp": "PEARL's TLP", "pamr": "PAMR", "region_mode": "CorrCLIP's map correction",
                  "sam_refine": "Trident's SAM refinement"}
_HEADS_2025 = ("scclip", "sfp", "resclip", "cass", "pearl", "trident", "corrclip")  # footnoted with their sources

def published(head: str, dataset: str) -> list[tuple[str, float]]:
    """[(row name, mIoU)] published for `head` on `dataset` (empty when none)."""
    if dataset not in PUBLISHED_ORDER:
        return []
    return [(name, numbers[PUBLISHED_ORDER.index(dataset)]) for name, numbers, _ in PUBLISHED.get(head, [])]


def results_table(runs: list[dict[str, Any]], datasets: list[str]) -> str:
    """Markdown, one row per run x mode, then each head's published rows.

    runs: [{"head", "vm", "protocol" (name), "deviations" (list of str), "modes": {dataset: {mode: {miou, biou}}},
    optional "clip" (CLIP weights tag), "proxy" (the head's second vision model), "own_step" (a name of
    `lposs.core.own_steps.OWN_STEPS` or None)}]. A row per run and method (seeds, + own step, + LPOSS, + LPOSS+),
    each saying what it is built on; a column per dataset; "avg of 8" when every paper benchmark was run.
    """
    full = all(d in datasets for d in PUBLISHED_ORDER)
    columns = datasets + (["avg of 8"] if full else [])
    lines = ["| head | graph | protocol | built on | method | " + " | ".join(columns) + " |",
             "|---|---|---|---|---|" + "---|" * len(columns)]
    for run in runs:
        for mode in METHODS:
            cells = [_cell(run["modes"].get(d, {}).get(mode)) for d in datasets]
            if full:
                values = [run["modes"].get(d, {}).get(mode, {}).get("miou") for d in PUBLISHED_ORDER]
                cells.append("-" if None in values else f"{np.mean(values):.1f}")
            lines.append(f"| {run['head']} | {run['vm']} | {run['protocol']} | {built_on(run, mode)} | "
                         f"{method_name(run, mode)} | " + " | ".join(cells) + " |")
    for head in dict.fromkeys(run["head"] for run in runs):
        for name, numbers, average in PUBLISHED.get(head, []):
            cells = [f"{numbers[PUBLISHED_ORDER.index(d)]:.1f}" if d in PUBLISHED_ORDER else "" for d in datasets]
            cells += [f"{average:.1f}"] if full else []
            lines.append(f"| {head} | published | own | as its name says | {name} | " + " | ".join(cells) + " |")
    lines += ["", ("mIoU (Boundary IoU) in percent. Published rows: ViT-B/16, each under its own release's protocol "
              "(docs/field.md sections 5 and 7: the OV-Stitcher release's comparison table, the NACLIP README, ResCLIP's "
              "figures; LPOSS+: arXiv 2503.19777); the talk's averages of the 8: MaskCLIP "
              f"{TALK_AVERAGES['maskclip']} -> LPOSS {TALK_AVERAGES['lposs']} -> LPOSS+ {TALK_AVERAGES['lposs+']}.")]
    shown_2025 = [head for head in dict.fromkeys(run["head"] for run in runs)
                  if head in _HEADS_2025 and head in PUBLISHED]
    if shown_2025:  # only then: tables without the 2025 heads (the demo's) keep their footnote byte for byte
        lines.append(f"Published rows of {', '.join(shown_2025)}: ViT-B/16, each under its release's "
                     f"protocol ({HEADS_2025_SOURCES}).")
    for run in runs:
        for deviation in run.get("deviations", []):
            lines.append(f"Deviation ({run['head']}+{run['vm']}, {run['protocol']}): {deviation}.")
    if "demo" in datasets:
        lines.append(f"Note: {DEMO_NOTE}.")
    return "\n".join(lines) + "\n"


def method_name(run: dict[str, Any], mode: str) -> str:
    """A row's method: "+ own step" names the step of the head's release, or says it has none."""
    if mode != "own":
        return METHODS[mode]
    step = run.get("own_step")
    return f"+ own step ({OWN_STEP_NAMES.get(step, step)})" if step else "+ own step (none in its release)"


def built_on(run: dict[str, Any], mode: str) -> str:
    """What a row's numbers come from: the CLIP weights, the head's second model and mask model, the graph model
    when the method propagates over it; and that nothing was trained for segmentation."""
    if run["head"] == "demo":
        return "demo stand-ins (no CLIP, no DINO)"
    parts = [f"CLIP {run.get('clip', '?')}"] + ([f"{run['proxy']} proxy"] if run.get("proxy") else [])
    parts += [f"{run['masks']} masks"] if run.get("masks") else []
    parts += [f"{run['vm']} graph"] if mode in ("lposs", "lposs+") else []
    return " + ".join(parts) + ", training-free"


def _cell(scores: dict | None) -> str:
    return "-" if not scores else f"{scores['miou']:.1f} ({scores['biou']:.1f})"
