"""MESS evaluation summaries: per-dataset scores -> the five domain means and the 22-dataset mean, and the
Markdown table that sets our rows beside MESS's leaderboard reference rows.

Aggregation follows mess/evaluation/mess_evaluation.py (mess-benchmark 0.2): PAXRay's four binary splits
are averaged into PAXRay-4 (``combine_paxray``), a domain's score is the mean over its datasets, and the
overall score the mean over the 22 datasets (means skip datasets without a result, as pandas does there;
``missing`` names them). The reference rows come from lposs.experiment.mess_leaderboard (cited there).

    runs = {"chase_db1": mess_scores(metrics, "chase_db1"), "paxray": {"test_lungs": ..., ...}, ...}
    summary = mess_summary(runs)
    markdown = mess_table({"LPOSS+ (ours)": summary})
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..datasets.mess import DOMAINS, MESS, mess_spec
from ..io import atomic_write_bytes, write_json
from .mess_leaderboard import SOURCE, reference_datasets

AVERAGED = ("mIoU", "CoI-mIoU")
REFERENCE_MODELS = ("Random", "ZSSeg-B", "SAN-B", "CAT-Seg-B", "CAT-Seg-L")


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def dataset_scores(name: str, result: Mapping[str, Any]) -> dict[str, Any] | None:
    """One dataset's scores: ``result`` is a scores dict, or {split: scores} over its evaluated splits
    (PAXRay: the mean of the four, as MESS combines them; None until all four are there)."""
    if "mIoU" in result:
        return dict(result)
    splits = mess_spec(name).evaluated_splits
    unknown = set(result) - set(mess_spec(name).splits)
    if unknown:
        raise ValueError(f"{name}: unknown split(s) {sorted(unknown)}; MESS evaluates {', '.join(splits)}")
    if not all(s in result for s in splits):
        return None
    if len(splits) == 1:
        return dict(result[splits[0]])
    keys = [k for k, v in result[splits[0]].items() if isinstance(v, (int, float)) or v is None]
    return {k: _mean([result[s].get(k) for s in splits]) for k in keys} | {"splits": list(splits)}


def mess_summary(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{"datasets": {name: scores}, "domains": {domain: {metric: mean}}, "mean": {metric: mean}, "missing": [...]}.

    ``runs`` maps registry names of MESS datasets to ``lposs.experiment.mess_metrics.mess_scores`` results (or to
    {split: scores}). Domain and overall means are taken for mIoU and CoI-mIoU.
    """
    unknown = [name for name in runs if name not in {spec.name for spec in MESS}]
    if unknown:
        raise ValueError(f"not MESS datasets: {unknown}; see lposs.datasets.mess.mess_datasets()")
    datasets = {}
    for spec in MESS:
        if spec.name in runs and (scores := dataset_scores(spec.name, runs[spec.name])) is not None:
            datasets[spec.name] = scores
    domains = {domain: {metric: _mean([s.get(metric) for n, s in datasets.items() if mess_spec(n).domain == domain])
                        for metric in AVERAGED} for domain in DOMAINS}
    overall = {metric: _mean([s.get(metric) for s in datasets.values()]) for metric in AVERAGED}
    return {"datasets": datasets, "domains": domains, "mean": overall,
            "missing": [spec.name for spec in MESS if spec.name not in datasets]}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _reference_domain_means(reference: dict[str, float], domain: str) -> float:
    return float(np.mean([reference[s.name] for s in MESS if s.domain == domain]))


def mess_table(ours: Mapping[str, Mapping[str, Any]], metric: str = "mIoU",
               references: tuple[str, ...] = REFERENCE_MODELS) -> str:
    """Markdown: one row per dataset (grouped by domain), a mean row per domain and the 22-dataset mean;
    columns = MESS's reference models (mIoU only: the leaderboard publishes per-dataset mIoU), then ours.

    ``ours``: {column label: ``mess_summary(...)``}. Reference domain means are recomputed from the
    leaderboard's per-dataset numbers (they match its domain table to its rounding, see the tests).
    """
    refs = reference_datasets()
    references = references if metric == "mIoU" else ()
    header = ["Domain", "Dataset", *references, *ours]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for domain in DOMAINS:
        for spec in (s for s in MESS if s.domain == domain):
            cells = [refs[m][spec.name] for m in references]
            cells += [summary["datasets"].get(spec.name, {}).get(metric) for summary in ours.values()]
            lines.append(f"| {domain} | {spec.title} | " + " | ".join(map(_cell, cells)) + " |")
        cells = [_reference_domain_means(refs[m], domain) for m in references]
        cells += [summary["domains"][domain].get(metric) for summary in ours.values()]
        lines.append(f"| **{domain}** | **mean** | " + " | ".join(f"**{_cell(c)}**" for c in cells) + " |")
    cells = [refs[m]["Mean"] for m in references] + [summary["mean"].get(metric) for summary in ours.values()]
    lines.append("| **MESS** | **mean of 22** | " + " | ".join(f"**{_cell(c)}**" for c in cells) + " |")
    notes = [f"{metric} (%), MESS protocol (255 ignored; PAXRay-4 = mean of its 4 binary tasks)."]
    if references:
        notes.append(f"Reference rows: {SOURCE}.")
    for label, summary in ours.items():
        if summary["missing"]:
            notes.append(f"{label}: no result for {', '.join(summary['missing'])}; its means cover the others.")
    return "\n".join(lines + [""] + notes) + "\n"


def binary_table(ours: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: sensitivity / specificity (%) of the two-class MESS sets, one column pair per run."""
    header = ["Dataset"] + [f"{label} {m}" for label in ours for m in ("Sensitivity", "Specificity")]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for spec in MESS:
        if len(spec.class_names(spec.evaluated_splits[0])) != 2:
            continue
        cells = [summary["datasets"].get(spec.name, {}).get(m) for summary in ours.values()
                 for m in ("Sensitivity", "Specificity")]
        lines.append(f"| {spec.title} | " + " | ".join(map(_cell, cells)) + " |")
    return "\n".join(lines) + "\n"


def write_mess_report(ours: Mapping[str, Mapping[str, Any]], out_dir) -> dict[str, str]:
    """Write ``mess_table.md`` (mIoU beside the references, CoI-mIoU, sensitivity / specificity) and
    ``mess_metrics.json`` (the summaries) into ``out_dir``, atomically; returns {kind: path}."""
    from pathlib import Path

    out = Path(out_dir)
    text = "\n".join(["## MESS mIoU", "", mess_table(ours), "## MESS class-of-interest mIoU", "",
                      mess_table(ours, metric="CoI-mIoU"), "## MESS two-class sets", "", binary_table(ours)])
    table = out / "mess_table.md"
    write_json(out / "mess_metrics.json", dict(ours))
    atomic_write_bytes(table, text.encode())
    return {"table": str(table), "metrics": str(out / "mess_metrics.json")}
