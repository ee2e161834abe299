"""Helpers for the DVC pipeline's notebooks (notebooks/*.ipynb, run by papermill from dvc.yaml).

stage -> features -> ablate -> plots. This module holds what the notebooks share and what tests check:
parameter validation (papermill only warns on unknown names), atomic JSON, timing, the staged index,
backbone construction, the ablation loop and the results table. The notebooks keep the story.

    python -m lposs.pipeline paper            # check data + weights, then `dvc exp run` the paper setting
    python -m lposs.pipeline paper --check    # only the checks
    python -m lposs.pipeline paper --head sclip --protocol sclip    # another head, under its own protocol
    python -m lposs.pipeline mess             # MESS's 22 datasets (make mess)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .datasets import get_dataset
from .datasets.registry import dataset_spec
from .features import FeatureStore, atomic_write_bytes, file_md5, to_image_features
from .metrics import SegmentationMetrics
from .protocols import BACKGROUND_RULES, PROTOCOLS, WINDOW_KEYS, labels_from_scores
from .protocols import class_names as protocol_class_names
from .protocols import resolve as resolve_protocol
from .segment import MODES, propagate_features
from .tables import DEMO_NOTE, METHODS, TALK_AVERAGES, results_table  # noqa: F401 - the plots notebook uses them



def caption(title: str, datasets: list[str], width: int = 110) -> str:
    """A figure title, with the demo note (wrapped) when the demo is among the datasets."""
    import textwrap

    return title + ("\n" + textwrap.fill(DEMO_NOTE, width) if "demo" in datasets else "")

# --------------------------------------------------------------------------------------------------
# Parameters: every notebook's parameters cell, by name and type (a test keeps the two in step)
# --------------------------------------------------------------------------------------------------

class WindowSize:
    """Type of a window parameter: a positive int, or "protocol" (the protocol's value for the dataset)."""


_BACKBONE = {"vlm": str, "vlm_pretrained": str, "head": str, "vm": str, "vm_pretrained": str, "proxy": str,
             "bf16": bool, "protocol": str}
PROPAGATION = {"k": int, "gamma": float, "sigma": float, "p": float, "vm_feature": str, "alpha": float,
               "maxiter": int, "tol": float, "solver": str, "r": int, "tau": float, "refiner": str}
STAGE_PARAMETERS: dict[str, dict[str, type]] = {
    "stage": {"dataset": str, "data_dir": str, "out_dir": str, "timings_dir": str},
    "features": {"dataset": str, "staged_dir": str, "out_dir": str, "timings_dir": str, **_BACKBONE,
                 "vm_features": str, "vm_dtype": str, "device": str, "crop": WindowSize, "stride": WindowSize,
                 "short_side": WindowSize, "long_side": WindowSize},
    "ablate": {"dataset": str, "staged_dir": str, "features_dir": str, "out_dir": str, "timings_dir": str,
               **_BACKBONE, "background": str, "sweep_param": str, "sweep_values": list, "sweep_mode": str,
               **PROPAGATION, "predictions": int, "device": str},
    "plots": {"params_file": str, "staged_dir": str, "ablations_dir": str, "timings_dir": str, "plots_dir": str,
              "results_dir": str},
}
SWEEPABLE = ("mode",) + tuple(PROPAGATION)
VM_FEATURES = ("q", "k", "v", "tokens")
CHOICES = {"mode": MODES, "vm_feature": VM_FEATURES + ("clip",), "solver": ("cg", "cg_reference"),
           "device": ("auto", "cpu", "cuda"), "vm_dtype": ("float32", "float16"), "protocol": tuple(PROTOCOLS),
           "background": ("protocol",) + BACKGROUND_RULES}


def injected_parameters(namespace: dict[str, Any], before: set[str]) -> dict[str, Any]:
    """The names a notebook's parameters cell (and papermill's injected cell) defined after `before`."""
    return {k: v for k, v in namespace.items() if k not in before and not k.startswith("_")}


def check_parameters(stage: str, values: dict[str, Any]) -> None:
    """Raise ValueError for unknown names (typos papermill would only warn about), wrong types, bad choices."""
    spec = STAGE_PARAMETERS[stage]
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for notebooks/{stage}.ipynb; its parameters are "
                         f"{sorted(spec)} (check the -p/-y names in dvc.yaml or on your papermill command line)")
    missing = sorted(set(spec) - set(values))
    if missing:
        raise ValueError(f"notebooks/{stage}.ipynb lacks parameter(s) {missing}")
    for name, kind in spec.items():
        check_value(name, values[name], kind)
    if stage == "ablate" and values["sweep_param"] not in SWEEPABLE:
        raise ValueError(f"sweep_param={values['sweep_param']!r}: sweepable are {', '.join(SWEEPABLE)}")


def check_value(name: str, value: Any, kind: type) -> None:
    if kind is WindowSize:
        if value != "protocol" and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"parameter {name}={value!r} should be a positive int or 'protocol' (the protocol's value)")
        return
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ValueError(f"parameter {name}={value!r} should be {kind.__name__}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"parameter {name}={value!r}: choose one of {', '.join(CHOICES[name])}")


def sweep_settings(base: dict[str, Any], param: str, values: list, mode: str) -> list[dict[str, Any]]:
    """One propagation setting per swept value: `base` (the PROPAGATION params) with `param` replaced."""
    if param not in SWEEPABLE:
        raise ValueError(f"cannot sweep {param!r}; sweepable: {', '.join(SWEEPABLE)}")
    if not isinstance(values, list) or not values:
        raise ValueError(f"sweep over {param!r} needs a non-empty list of values, got {values!r}")
    check_value("sweep_mode", mode, str)
    if mode not in MODES:
        raise ValueError(f"sweep mode {mode!r}: choose one of {', '.join(MODES)}")
    settings = []
    for value in values:
        setting = {**base, "mode": mode, param: value}
        check_value(param, value, str if param == "mode" else PROPAGATION[param])
        setting["label"] = f"{param}={value}"
        setting["swept"] = param
        settings.append(setting)
    if len({s["label"] for s in settings}) != len(settings):
        raise ValueError(f"sweep over {param!r} repeats a value: {values}")
    return settings


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device auto or cpu")
    return device


# --------------------------------------------------------------------------------------------------
# Files: atomic JSON, timing
# --------------------------------------------------------------------------------------------------

def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON written atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n").encode())
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (Path, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


@contextmanager
def timed(path: str | os.PathLike, stage: str, **info: Any) -> Iterator[dict[str, Any]]:
    """Time a block; write {stage, seconds, device, ...info} to path when it completes."""
    record: dict[str, Any] = {"stage": stage, **info}
    start = time.perf_counter()
    yield record
    record["seconds"] = time.perf_counter() - start
    write_json(path, record)


# --------------------------------------------------------------------------------------------------
# Stage 1: the staged index of a dataset
# --------------------------------------------------------------------------------------------------

def split_entry(entry: str) -> tuple[str, str | None]:
    """A `datasets` entry -> (registry name, split): 'paxray:test_lungs' names a split, 'voc21' the default."""
    name, _, split = entry.partition(":")
    return name, split or None


def dataset_root(name: str, data_dir: str) -> Path:
    """data_dir/<the dataset's folder> (voc21 and voc20 share data/voc, ...)."""
    return Path(data_dir) / dataset_spec(split_entry(name)[0]).folder


def stage_index(name: str, data_dir: str, progress: bool = True) -> dict[str, Any]:
    """Index of a dataset's evaluation images: paths, md5s, class names (what later stages read)."""
    ds = get_dataset(split_entry(name)[0], dataset_root(name, data_dir), split_entry(name)[1])
    images = []
    for i, item in enumerate(tqdm(ds.items, desc=f"index {name}", unit="img", disable=not progress)):
        entry = {"id": item.id, "image": str(item.image), "label": str(item.label),
                 "image_md5": file_md5(item.image), "label_md5": file_md5(item.label)}
        if ds.class_names_for(i) != ds.class_names:
            entry["class_names"] = ds.class_names_for(i)
        images.append(entry)
    return {"dataset": name, "root": str(ds.root), "split": ds.split, "class_names": ds.class_names,
            "num_classes": ds.num_classes, "ignore_index": ds.ignore_index,
            "reduce_zero_label": ds.reduce_zero_label, "images": images}


def open_staged(staged_dir: str, name: str) -> tuple[Any, dict[str, Any]]:
    """(dataset, index) for a staged dataset; the dataset must still list exactly the staged images."""
    index = read_json(Path(staged_dir) / name / "index.json")
    ds = get_dataset(split_entry(name)[0], index["root"], index["split"])
    if [item.id for item in ds.items] != [entry["id"] for entry in index["images"]]:
        raise ValueError(f"dataset {name!r} under {index['root']} no longer lists the staged images: "
                         "re-run the stage step (dvc repro)")
    return ds, index


# --------------------------------------------------------------------------------------------------
# Stage 2: backbones
# --------------------------------------------------------------------------------------------------

def clip_weights(vlm: str, vlm_pretrained: str, protocol: str) -> str:
    """The CLIP weights tag: "protocol" -> the weights the protocol's release published with."""
    if vlm == "demo":
        return "none"
    return PROTOCOLS[protocol]["base"]["clip"] if vlm_pretrained == "protocol" else vlm_pretrained


def combo_name(head: str, vm: str) -> str:
    """A backbone combination's name in folders, stage outputs and tables: '<head>+<vm>'."""
    return f"{head}+{vm}"


def backbone_key(vlm: str, vlm_pretrained: str, head: str, vm: str, vm_pretrained: str, bf16: bool,
                 proxy: str = "dino_vitb8") -> str:
    """Folder name of a backbone combination in the feature store, from the params alone (no weights needed)."""
    parts = [vlm if vlm_pretrained in ("none", "") else f"{vlm}.{vlm_pretrained}",
             f"proxyclip.{proxy}" if head == "proxyclip" else head,
             vm if vm_pretrained in ("none", "pretrained", "") or vm == "clip" else f"{vm}.{vm_pretrained}"]
    key = "+".join(parts) + ("+bf16" if bf16 else "")
    return re.sub(r"[^A-Za-z0-9._+-]", "-", key)


def store_folder(root: str, dataset: str, vlm: str, weights: str, head: str, vm: str, vm_pretrained: str,
                 bf16: bool, proxy: str = "dino_vitb8") -> Path:
    """root/<dataset>/<head>+<vm>/<backbone key>: the folder DVC tracks per combination, one store per weights."""
    key = backbone_key(vlm, weights, head, vm, vm_pretrained, bf16, proxy)
    return Path(root) / dataset / combo_name(head, vm) / key


def parse_features(text: str, vm: str = "") -> list[str]:
    """'q,k,v' -> ['q', 'k', 'v'] (the VM feature variants to store); the `clip` graph has one: ['clip']."""
    if vm == "clip":
        return ["clip"]
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in VM_FEATURES]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"vm_features={text!r}: give distinct names among {', '.join(VM_FEATURES)} separated by "
                         "commas, e.g. 'v' or 'q,k,v'")
    return names


def protocol_windows(protocol: str, dataset: str, **given: int | str) -> dict[str, int]:
    """crop, stride, short_side, long_side: the given ints, and the protocol's value where "protocol".

    dataset: a registry name or a `datasets` entry ("paxray:test_lungs"); the protocol knows names only."""
    settings = resolve_protocol(protocol, split_entry(dataset)[0])
    return {key: settings[key] if given[key] == "protocol" else int(given[key]) for key in WINDOW_KEYS}


def prompts(ds: Any, index: int, protocol: str) -> list[str]:
    """The class prompts of image `index` under `protocol` (its release's class file where it has one)."""
    return protocol_class_names(protocol, ds.name, ds.class_names_for(index))


def background_rule(protocol: str, dataset: str, background: str = "protocol") -> dict[str, Any]:
    """The protocol's settings on `dataset` (a name or a `name:split` entry), with the background rule
    switched when `background` says so."""
    return resolve_protocol(protocol, split_entry(dataset)[0],
                            background=None if background == "protocol" else background)


# ProxyCLIP's release runs one crop per forward, so its "mean over the batch" is a mean over one window;
# the pipeline batches all windows of an image, so it takes that mean per window (lposs.heads).
PIPELINE_HEAD_PARAMS = {"proxyclip": {"affinity_mean": "window"}}


def build_backbones(vlm: str, vlm_pretrained: str, head: str, vm: str, vm_pretrained: str, vm_features: list[str],
                    device: str, bf16: bool = False, proxy: str = "dino_vitb8") -> tuple[Any, dict[str, Any]]:
    """(vlm, {feature: vm}). "demo" -> the stand-ins of lposs/demo.py (head "demo"); otherwise an open_clip model
    name (pretrained tag, or "random" for seeded random weights) with a dense head of lposs.heads, and a vision
    model of lposs.backbones.VISION_MODELS ("pretrained"/"random"), or "clip": the VLM's own dense features.
    Missing weights raise lposs.backbones.BackboneUnavailable within seconds, naming the fetch command."""
    if vlm == "demo" or head == "demo" or vm == "demo":
        if not (vlm == "demo" and head == "demo" and vm == "demo"):
            raise ValueError("the demo backbones go together: backbone.vlm demo, heads [demo], vms [demo]")
        from .demo import DemoVLM, DemoVM

        return DemoVLM(device=device), {f: DemoVM(f, device=device) for f in vm_features}
    from .backbones import load_backbones

    if vm_pretrained not in ("pretrained", "random"):
        raise ValueError(f"backbone.vm_pretrained={vm_pretrained!r}: use 'pretrained' or 'random'")
    clip, graph = load_backbones(vlm, None if vlm_pretrained == "random" else vlm_pretrained,
                                 vm, vm_features[0] if vm != "clip" else "v", device, bf16=bf16, head=head,
                                 head_params=PIPELINE_HEAD_PARAMS.get(head), proxy_model=proxy,
                                 random_vm=vm_pretrained == "random")
    return clip, graph_models(clip, vm, vm_features, graph.with_feature if vm != "clip" else None)


def graph_models(clip: Any, vm: str, vm_features: list[str], build: Any) -> dict[str, Any]:
    """{feature: graph model}: the VLM itself for vm "clip", else one model per stored feature."""
    from .backbones import ClipGraphFeatures

    return {"clip": ClipGraphFeatures(clip)} if vm == "clip" else {f: build(f) for f in vm_features}


# --------------------------------------------------------------------------------------------------
# Stage 3: the ablation loop
# --------------------------------------------------------------------------------------------------

def propagation_kwargs(setting: dict[str, Any]) -> dict[str, Any]:
    """A setting -> keyword arguments of `segment.propagate_features`.

    The reference refiner takes r and tau from the setting (pixel.r, pixel.tau); another named refiner
    keeps its own unless the sweep is over r or tau.
    """
    kwargs = {k: setting[k] for k in ("mode", "k", "gamma", "sigma", "p", "alpha", "maxiter", "tol", "solver")}
    if setting["mode"] == "lposs+":
        kwargs["refiner"] = setting["refiner"]
        for name in ("r", "tau"):
            if setting["refiner"] == "reference" or setting.get("swept") == name:
                kwargs[name] = setting[name]
    return kwargs


def run_settings(ds: Any, index: dict[str, Any], store: FeatureStore, settings: list[dict[str, Any]],
                 device: str = "cpu", predictions: int = 0, prediction_dir: str | os.PathLike | None = None,
                 progress: bool = True, protocol: str = "lposs", background: dict[str, Any] | None = None,
                 indices: Sequence[int] | None = None, metrics: dict[str, SegmentationMetrics] | None = None,
                 seconds: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Evaluate every setting on the dataset's images (each shard read once).

    protocol: whose class prompts the features were computed with; background: the rule that turns
    scores into labels (`background_rule`; None = LPOSS's synonym max).
    indices: the images to evaluate (default all; `lposs.sharded` runs subsets); metrics / seconds:
    accumulators per setting label to add into (other shards' counts), made empty when None.
    Returns one record per setting: the setting, its metrics summary (and confusion matrix) and seconds of
    propagation. The label maps of `predictions` images spread over the whole dataset go to
    prediction_dir/<label>/<image id>.png.
    """
    keep = prediction_indices(len(ds), predictions)
    metrics = metrics if metrics is not None else {
        s["label"]: SegmentationMetrics(ds.num_classes, ds.ignore_index, ds.reduce_zero_label) for s in settings}
    seconds = seconds if seconds is not None else {s["label"]: 0.0 for s in settings}
    indices = range(len(ds)) if indices is None else indices
    for i in tqdm(indices, desc=f"ablate {ds.name}", unit="img", disable=not progress):
        entry, sample = index["images"][i], ds[i]
        shard = store.load(sample.id, class_names=prompts(ds, i, protocol), image_md5=entry["image_md5"])
        for setting in settings:
            feats = to_image_features(shard, setting["vm_feature"], sample.image if setting["mode"] == "lposs+"
                                      else None)
            start = time.perf_counter()
            scores = propagate_features(feats, device=device, background=background, **propagation_kwargs(setting))
            pred = labels_from_scores(scores, background or {}).cpu().numpy()
            seconds[setting["label"]] += time.perf_counter() - start
            metrics[setting["label"]].update(pred, sample.label)
            if i in keep and prediction_dir is not None:
                save_label_map(Path(prediction_dir) / setting["label"] / f"{safe_id(sample.id)}.png", pred)
    return [result_record(s, metrics[s["label"]], seconds[s["label"]], len(ds)) for s in settings]


def result_record(setting: dict[str, Any], metrics: SegmentationMetrics, seconds: float, images: int) -> dict:
    """One setting's record: the setting, its metrics summary and confusion matrix, its propagation seconds."""
    return {"setting": {k: v for k, v in setting.items() if k not in ("label", "swept")}, "label": setting["label"],
            "metrics": {**metrics.summary(), "confusion": metrics.confusion.tolist()},
            "seconds": seconds, "seconds_per_image": seconds / max(images, 1)}


def without_times(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(records without their wall times, {label: seconds per image}): results.json holds only what the
    numbers depend on, so its hash is the same for any executor or machine; the times go to timings/."""
    times = {r["label"]: r["seconds_per_image"] for r in records}
    return [{k: v for k, v in r.items() if k not in ("seconds", "seconds_per_image")} for r in records], times


def prediction_indices(n_images: int, predictions: int) -> set[int]:
    """The images whose label maps are kept: `predictions` of them spread evenly over the dataset."""
    if not predictions or not n_images:
        return set()
    return set(np.linspace(0, n_images - 1, min(predictions, n_images)).round().astype(int).tolist())


def safe_id(image_id: str) -> str:
    return re.sub(r"[\\/]", "__", image_id)


def save_label_map(path: Path, labels: np.ndarray) -> None:
    """Class-index map as a grey PNG, atomically."""
    from .demo import encode_png

    if labels.max(initial=0) > 255:
        raise ValueError(f"{path}: more than 256 classes do not fit a PNG label map")
    atomic_write_bytes(path, encode_png(labels.astype(np.uint8)))


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path))


# --------------------------------------------------------------------------------------------------
# Stage 4: collecting results and timings; the results table, beside the published numbers
# --------------------------------------------------------------------------------------------------

def collect_results(ablations_dir: str, datasets: list[str], combos: list[str],
                    sweeps: list[dict[str, str]]) -> dict[str, dict[str, dict]]:
    """{dataset: {combo: {param: results.json}}} for what params.yaml lists now (stale folders are ignored).

    A sweep whose values leave out the default gets its default point from the mode sweep (same base
    setting, same mode), marked "from": "mode sweep": the default runs once, not once per sweep.
    """
    import yaml

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
            row = runs.setdefault((combo, mode_run["protocol"]["protocol"]), {
                "head": mode_run["head"], "vm": mode_run["vm_name"], "protocol": mode_run["protocol"]["protocol"],
                "deviations": [], "modes": {}})
            row["modes"][dataset] = modes[dataset][combo]
            if "deviation" in mode_run["protocol"]:
                row["deviations"].append(f"{dataset}: {mode_run['protocol']['deviation']}")
    return list(runs.values())


def mess_tables(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: MESS's tables (lposs.mess_results) for the MESS datasets among the results, one column per
    combination x method, beside MESS's leaderboard rows; empty when no MESS dataset was run."""
    from .datasets.mess import MESS_DATASETS
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
    from .datasets.mess import MESS_DATASETS, evaluation_runs

    return [name if split == MESS_DATASETS[name].main_split else f"{name}:{split}" for name, split in evaluation_runs()]


# --------------------------------------------------------------------------------------------------
# The paper's setting, one command away
# --------------------------------------------------------------------------------------------------

PAPER_DATASETS = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]
PAPER_VMS = {"proxyclip": "dino_vitb8"}  # the graph a head's paper row uses by default (else DINO B/16)


def paper_overrides(head: str = "maskclip", protocol: str = "lposs", vm: str | None = None,
                    datasets: list[str] | None = None) -> list[str]:
    """`dvc exp run -S` overrides of the paper setting: the 8 benchmarks (or `datasets`), `head` seeds under
    `protocol` (windows, class files, background rule, CLIP weights of its release), the graph `vm`."""
    resolve_protocol(protocol, "voc21")  # an unknown name stops here, with the choices
    vm = vm or PAPER_VMS.get(head, "dino_vitb16")
    return ["datasets=[" + ",".join(datasets or PAPER_DATASETS) + "]",
            "backbone.vlm=ViT-B-16", "backbone.vlm_pretrained=protocol", f"backbone.heads=[{head}]",
            f"backbone.vms=[{vm}]", "backbone.vm_pretrained=pretrained", "backbone.vm_features=v",
            "backbone.vm_dtype=float16", f"protocol.name={protocol}", "protocol.background=protocol",
            "windows.crop=protocol", "windows.stride=protocol", "windows.short_side=protocol",
            "windows.long_side=protocol",
            "ablate.sweeps=[{param:mode,values:'[maskclip, lposs, lposs+]',mode:lposs+}]"]


def paper_problems(data_dir: str, head: str = "maskclip", protocol: str = "lposs", vm: str | None = None,
                   datasets: list[str] | None = None) -> list[str]:
    """What is missing for the paper setting: each line names it and the command that provides it."""
    problems, roots = [], set()
    for name in datasets or PAPER_DATASETS:
        if dataset_root(name, data_dir) in roots:
            continue  # voc20 shares voc21's folder, and so on: one message per folder
        roots.add(dataset_root(name, data_dir))
        try:
            get_dataset(split_entry(name)[0], dataset_root(name, data_dir), split_entry(name)[1])
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"data: {error}")
    weights = clip_weights("ViT-B-16", "protocol", protocol)
    vm = vm or PAPER_VMS.get(head, "dino_vitb16")
    try:
        build_backbones("ViT-B-16", weights, head, vm, "pretrained", ["v"] if vm != "clip" else [], "cpu")
    except Exception as error:  # noqa: BLE001 - BackboneUnavailable and friends: report them
        problems.append(f"weights ({head} head on ViT-B-16 {weights}, graph {vm}): {error}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lposs.pipeline", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, what in (("paper", "the paper's 8 benchmarks"), ("mess", "MESS's 22 datasets (25 runs)")):
        sub = commands.add_parser(command, help=f"run {what} as a DVC experiment")
        sub.add_argument("--check", action="store_true", help="only check that data and weights are present")
        sub.add_argument("--data-dir", default="data")
        sub.add_argument("--head", default="maskclip", help="dense head: maskclip sclip clearclip naclip proxyclip")
        sub.add_argument("--protocol", default="lposs", help=f"evaluation protocol: {', '.join(PROTOCOLS)}")
        sub.add_argument("--vm", default=None, help="graph model (default dino_vitb16; dino_vitb8 for proxyclip)")
    args = parser.parse_args(argv)
    datasets = mess_entries() if args.command == "mess" else PAPER_DATASETS
    default = (args.head, args.protocol) == ("maskclip", "lposs")
    name = args.command if default else f"{args.command}-{args.head}-{args.protocol}"
    overrides = paper_overrides(args.head, args.protocol, args.vm, datasets)
    command = ["dvc", "exp", "run", "-n", name] + [arg for o in overrides for arg in ("-S", o)]
    problems = paper_problems(args.data_dir, args.head, args.protocol, args.vm, datasets)
    if problems:
        print(f"The {args.command} setting cannot run yet:\n- " + "\n- ".join(problems), file=sys.stderr)
        return 1
    print("data and weights present; " + ("would run: " if args.check else "running: ")
          + " ".join(f"'{c}'" if " " in c or "[" in c else c for c in command))
    return 0 if args.check else subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main())
