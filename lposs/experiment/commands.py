"""The experiment's commands behind the `lposs` door: paper and mess (the paper's or MESS's setting as a DVC
experiment, `lposs.experiment.paper`) and stream (one dataset evaluated without a feature store,
`lposs.experiment.streaming`).

Their options are declared here, and only here, without importing torch, so `lposs paper --help` answers at once
(lposs.app.cli imports the work when a command runs). The older entry points build the same options: `python -m
lposs.experiment paper|mess` (paper.main) and `python -m lposs.experiment.streaming` (streaming.main).
"""

from __future__ import annotations

import argparse

from ..models.records import DEFAULT_HEAD

EXPERIMENTS = {"paper": "the paper's 8 benchmarks", "mess": "MESS's 22 datasets (25 runs)"}
STREAM_HELP = "evaluate one dataset in one pass, without a feature store (decode, backbones, propagation, metrics)"


def add_experiment_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of `lposs paper` / `lposs mess` (command: which of EXPERIMENTS)."""
    parser.add_argument("--check", action="store_true",
                        help="only check: the feature store's size against the free disk, the data, the weights")
    parser.add_argument("--data-dir", default="data", help="dataset roots: DATA_DIR/<folder> (default: data)")
    parser.add_argument("--head", default=DEFAULT_HEAD,
                        help=f"dense head (default {DEFAULT_HEAD}; an unknown name lists them)")
    parser.add_argument("--protocol", default="lposs",
                        help="evaluation protocol (default lposs; sclip, clearclip, ...: an unknown name lists them)")
    parser.add_argument("--vm", default=None, help="graph model (default: the head record's paper_vm, dino_vitb16; "
                                                   "dino_vitb8 for proxyclip)")
    parser.add_argument("--params", default="params.yaml",
                        help="the pipeline's params.yaml, whose `plugins:` are imported first (a plugin's head)")
    parser.set_defaults(command=command)


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `lposs stream` (python -m lposs.experiment.streaming)."""
    parser.add_argument("dataset", help="a dataset name (voc21, ..., demo), or name:split (paxray:test_bones)")
    parser.add_argument("--data-dir", default="data", help="dataset roots: DATA_DIR/<folder> (default: data)")
    parser.add_argument("--protocol", default="lposs", help="prompts, windows and background rule of a release")
    parser.add_argument("--background", default="protocol", help="protocol | synonyms | softmax")
    parser.add_argument("--vlm", default="ViT-B-16", help="open_clip model name, or demo")
    parser.add_argument("--vlm-pretrained", default="protocol", help="weights tag; protocol = the release's")
    parser.add_argument("--head", default="protocol", help="dense CLIP head; protocol = the release's")
    parser.add_argument("--vm", default="dino_vitb16", help="graph model (lposs.models.loading.VISION_MODELS), "
                                                            "clip, or demo")
    parser.add_argument("--vm-pretrained", default="pretrained", help="pretrained | random")
    parser.add_argument("--vm-feature", default="v", help="q | k | v | tokens")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast in the backbones (CUDA)")
    parser.add_argument("--modes", default="maskclip,lposs,lposs+", help="comma-separated, evaluated together "
                        "(own: the head's release's own post-step, e.g. PEARL's TLP)")
    parser.add_argument("--refiner", default="reference", help="LPOSS+ pixel refiner (lposs.core.refine.REFINERS)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when present")
    parser.add_argument("--batch-images", type=int, default=4, help="images whose windows share a forward")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers decoding images")
    parser.add_argument("--store", help="also write the feature shards to this folder (optional)")
    parser.add_argument("--limit", type=int, help="only the first N images (a quick check)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="a Python file or module that registers heads (lposs.register_head); repeatable")
