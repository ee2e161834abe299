"""The results table: our rows per head x graph x {seeds, + own step, + LPOSS, + LPOSS+} beside the published numbers.

Each head's published 8-benchmark mIoU at ViT-B/16 comes from its record (lposs.models.records.Published: its
release's module, with the source of every row; docs/field.md section 7 collects them). Each published row was
measured under its own release's protocol (docs/field.md sections 5 and 16); each of our rows names the protocol
it ran. Every row says what it is built on: CLIP weights, extra models, and whether anything was trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models.head_registry import records
from ..models.records import PUBLISHED_ORDER, TRAINING_FREE
from .captions import DEMO_NOTE

# the talk's averages of the 8: MaskCLIP -> patch LP on CLIP's own features (not DINO's) -> LPOSS+ on DINO's graph
TALK_AVERAGES = {"maskclip": 27.0, "lposs": 38.3, "lposs+": 41.3}
METHODS = {"maskclip": "seeds", "own": "+ own step", "lposs": "+ LPOSS", "lposs+": "+ LPOSS+"}
OWN_STEP_TITLES = {"tlp": "PEARL's TLP", "pamr": "PAMR", "region_mode": "CorrCLIP's map correction",
                   "sam_refine": "Trident's SAM refinement",
                   "lavg_vote": "LaVG's per-window mask vote"}  # the own steps of lposs.core.own_steps, as a row says


def published(head: str, dataset: str) -> list[tuple[str, float]]:
    """[(row name, mIoU)] published for `head` on `dataset` (empty when none)."""
    record = records().get(head)
    if record is None or dataset not in PUBLISHED_ORDER:
        return []
    return [(row.name, row.on(dataset)) for row in record.published]


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
    shown = [records()[head] for head in dict.fromkeys(run["head"] for run in runs) if head in records()]
    for record in shown:
        for row in record.published:
            cells = [f"{row.on(d):.1f}" if d in PUBLISHED_ORDER else "" for d in datasets]
            cells += [f"{row.average:.1f}"] if full else []
            lines.append(f"| {record.name} | published | own | as its name says | {row.name} | " + " | ".join(cells)
                         + " |")
    lines += ["", ("mIoU (Boundary IoU) in percent. Published rows: ViT-B/16, each under its own release's protocol "
              "(docs/field.md sections 5 and 7: the OV-Stitcher release's comparison table, the NACLIP README, ResCLIP's "
              "figures; LPOSS+: arXiv 2503.19777); the talk's averages of the 8: MaskCLIP "
              f"{TALK_AVERAGES['maskclip']} -> label propagation over patches with CLIP's own features as the graph "
              f"{TALK_AVERAGES['lposs']} -> LPOSS+ with DINO's graph {TALK_AVERAGES['lposs+']} (docs/method.md "
              "section 9).")]
    with_rows = [record for record in shown if record.published]
    if with_rows:  # only then: tables without them (the demo's) keep their footnote byte for byte
        sources = "; ".join(dict.fromkeys(row.source for record in with_rows for row in record.published))
        lines.append(f"Published rows of {', '.join(record.name for record in with_rows)}: ViT-B/16, each under its "
                     f"release's protocol ({sources}).")
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
    return f"+ own step ({OWN_STEP_TITLES.get(step, step)})" if step else "+ own step (none in its release)"


def built_on(run: dict[str, Any], mode: str) -> str:
    """What a row's numbers come from: the CLIP weights, the head's second model and mask model, the graph model
    when the method propagates over it; and whether anything was trained for segmentation (the head's record)."""
    if run["head"] == "demo":
        return "demo stand-ins (no CLIP, no DINO)"
    parts = [f"CLIP {run.get('clip', '?')}"] + ([f"{run['proxy']} proxy"] if run.get("proxy") else [])
    record = records().get(run["head"])
    in_head = record is None or "regions" in record.reads or record.reads_sam  # else only its own step reads them
    parts += [f"{run['masks']} masks"] if run.get("masks") and (in_head or mode != "maskclip") else []
    parts += [f"{run['vm']} graph"] if mode in ("lposs", "lposs+") else []
    return " + ".join(parts) + f", {run.get('training', TRAINING_FREE)}"


def _cell(scores: dict | None) -> str:
    return "-" if not scores else f"{scores['miou']:.1f} ({scores['biou']:.1f})"
