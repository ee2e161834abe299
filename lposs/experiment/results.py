"""Stage 4: the sweeps and timings collected back, the numbers of the results table and of MESS's tables.

    results = collect_results(ablations_dir, datasets, combos, sweeps)   {dataset: {combo: {param: results.json}}}
    mode_metrics(results)        seeds / + LPOSS / + LPOSS+ per dataset and combination (results/metrics.json)
    table_runs(results)          the rows of `tables.results_table` (results/table.md)
    mess_tables(results)         MESS's tables, when MESS datasets were run
    collect_timings(...)         seconds per stage (plots/figures/timing.png)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..io import read_json
from .staging import split_entry
from .tables import METHODS, TRAINING_FREE


def collect_results(ablations_dir: str, datasets: list[str], combos: list[str],
                    sweeps: list[dict[str, str]]) -> dict[str, dict[str, dict]]:
    """{dataset: {combo: {param: results.json}}} for what params.yaml lists now (stale folders are ignored).

    A sweep whose values leave out the default gets its default point from the mode sweep (same base
    setting, same mode), marked "from": "mode sweep": the default runs once, not once per sweep.
    """
    out: dict[str, dict[str, dict]] = {}
    for dataset in datasets:
        out[dataset] = {}
        for combo in combos:
            runs = {}
            for sweep in sweeps:
                run = read_json(Path(ablations_dir) / dataset / combo / sweep["param"] / "results.json")
                if run["sweep_values"] != yaml.safe_load(sweep["values"]) or run["sweep_mode"] != sweep["mode"]:
                    raise ValueError(f"{ablations_dir}/{dataset}/{combo}/{sweep['param']} holds another sweep than "
                                     "params.yaml lists: run `dvc repro` to bring it up to date")
                runs[sweep["param"]] = run
            if "mode" in runs:
                for param, run in runs.items():
                    if param != "mode":
                        add_default_point(run, runs["mode"])
            out[dataset][combo] = runs
    return out


def add_default_point(run: dict[str, Any], mode_run: dict[str, Any]) -> None:
    """Insert the mode sweep's record for run's mode when run's values leave out the default value."""
    param, default = run["sweep_param"], run["base"][run["sweep_param"]]
    if default in [r["setting"][param] for r in run["records"]] or mode_run["base"] != run["base"]:
        return
    found = [r for r in mode_run["records"] if r["setting"]["mode"] == run["sweep_mode"]]
    if not found:
        return
    record = {**found[0], "label": f"{param}={default}", "from": "mode sweep"}
    records = run["records"] + [record]
    if all(isinstance(r["setting"][param], (int, float)) for r in records):
        records.sort(key=lambda r: r["setting"][param])
    run["records"] = records


def collect_timings(timings_dir: str, datasets: list[str], combos: list[str],
                    sweeps: list[dict[str, str]]) -> list[dict[str, Any]]:
    """[{name, seconds, device}] per stage run; features count the backbone time of every shard."""
    rows = []
    for dataset in datasets:
        stage = read_json(Path(timings_dir) / f"stage-{dataset}.json")
        rows.append({"name": f"stage {dataset}", "seconds": stage["seconds"]})
        for combo in combos:
            features = read_json(Path(timings_dir) / f"features-{dataset}-{combo}.json")
            rows.append({"name": f"features {dataset} {combo} (backbones)", "seconds": features["backbone_seconds"],
                         "device": features["device"]})
            for sweep in sweeps:
                ablate = read_json(Path(timings_dir) / f"ablate-{dataset}-{combo}-{sweep['param']}.json")
                rows.append({"name": f"ablate {dataset} {combo} {sweep['param']} x{ablate['settings']}",
                             "seconds": ablate["seconds"], "device": ablate["device"]})
    return rows


def mode_metrics(results: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{dataset: {combo: {mode: {miou, biou}}}} from the mode sweep of every dataset and combination."""
    return {dataset: {combo: {r["setting"]["mode"]: {"miou": round(r["metrics"]["miou"], 2),
                                                     "biou": round(r["metrics"]["biou"], 2)}
                              for r in runs["mode"]["records"]}
                      for combo, runs in by_combo.items() if "mode" in runs}
            for dataset, by_combo in results.items()}


def table_runs(results: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """The rows of `tables.results_table`: one per backbone combination and protocol, with its mode metrics."""
    modes = mode_metrics(results)
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for dataset, by_combo in results.items():
        for combo, sweeps in by_combo.items():
            if "mode" not in sweeps:
                continue
            mode_run = sweeps["mode"]
            built = mode_run.get("built_on", {})
            row = runs.setdefault((combo, mode_run["protocol"]["protocol"]), {
                "head": mode_run["head"], "vm": mode_run["vm_name"], "protocol": mode_run["protocol"]["protocol"],
                "clip": built.get("clip", "?"), "proxy": built.get("proxy"),
                "masks": built.get("masks"), "training": built.get("training", TRAINING_FREE),
                "own_step": (mode_run.get("own_step") or {}).get("name"), "deviations": [], "modes": {}})
            row["modes"][dataset] = modes[dataset][combo]
            if "deviation" in mode_run["protocol"]:
                row["deviations"].append(f"{dataset}: {mode_run['protocol']['deviation']}")
    return list(runs.values())


def mess_tables(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: MESS's tables (lposs.experiment.mess_results) for the MESS datasets among the results, one column per
    combination x method, beside MESS's leaderboard rows; empty when no MESS dataset was run."""
    from ..datasets.mess import MESS_DATASETS
    from .mess_metrics import mess_scores
    from .mess_results import binary_table, mess_summary, mess_table

    ours: dict[str, dict[str, dict]] = {}  # {column: {name: {split: scores}}}
    for entry, by_combo in results.items():
        name, split = split_entry(entry)
        if name not in MESS_DATASETS:
            continue
        for combo, runs in by_combo.items():
            for record in runs.get("mode", {}).get("records", []):
                column = f"{combo} {METHODS[record['setting']['mode']]}"
                scores = mess_scores(record["metrics"], name, split)
                ours.setdefault(column, {}).setdefault(name, {})[split or MESS_DATASETS[name].main_split] = scores
    if not ours:
        return ""
    summaries = {column: mess_summary(runs) for column, runs in ours.items()}
    return "\n".join(["## MESS (22 datasets, 5 domains)", "", mess_table(summaries), "### Class-of-interest mIoU", "",
                      mess_table(summaries, metric="CoI-mIoU"), "### Two-class datasets", "", binary_table(summaries)])


def mess_entries() -> list[str]:
    """The `datasets` entries of MESS's 25 evaluation runs ('name', or 'name:split' for PAXRay-4's four)."""
    from ..datasets.mess import MESS_DATASETS, evaluation_runs

    return [name if split == MESS_DATASETS[name].main_split else f"{name}:{split}" for name, split in evaluation_runs()]
