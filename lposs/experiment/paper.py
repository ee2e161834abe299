"""The paper's setting and MESS's, one command away: size the feature store, check data and weights, then
`dvc exp run` them.

    lposs paper            # the 8 benchmarks (make paper; also python -m lposs.experiment paper)
    lposs paper --check    # only the checks: the store's size beside the free disk, the data, the weights
    lposs paper --head sclip --protocol sclip    # another head, under its own protocol
    lposs mess             # MESS's 22 datasets (make mess)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ..models.factory import BackboneSpec, create_backbones
from ..models.head_registry import HEADS, head_record
from ..models.loading import BackboneUnavailable
from ..models.masks import OVERLAPPING
from ..models.protocols import PROTOCOLS, own_step, resolve
from ..models.records import DEFAULT_HEAD
from .commands import EXPERIMENTS, add_experiment_arguments
from .results import mess_entries
from .sizing import StoreEstimate, StoreShape, estimate_store
from .staging import dataset_root, open_entry
from .store import combo_name

PAPER_DATASETS = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]
PAPER_VM_FEATURES, PAPER_VM_DTYPE = "v", "float16"  # the smallest store the pipeline writes: DINO's v, half precision


def paper_overrides(head: str = DEFAULT_HEAD, protocol: str = "lposs", vm: str | None = None,
                    datasets: list[str] | None = None) -> list[str]:
    """`dvc exp run -S` overrides of the paper setting: the 8 benchmarks (or `datasets`), `head` seeds under
    `protocol` (windows, class files, background rule, CLIP weights of its release, head parameters when the
    head is the protocol's), the graph `vm`; the rows seeds, + own step (when the head's release has one),
    + LPOSS, + LPOSS+."""
    resolve(protocol, "voc21")  # an unknown name stops here, with the choices
    vm = vm or head_record(head).paper_vm  # the graph of the head's paper row (DINO B/16; ProxyCLIP's DINO B/8)
    return ["datasets=[" + ",".join(datasets or PAPER_DATASETS) + "]",
            "backbone.vlm=ViT-B-16", "backbone.vlm_pretrained=protocol", "backbone.masks=release",
            f"backbone.heads=[{head}]",
            f"backbone.vms=[{vm}]", "backbone.vm_pretrained=pretrained", f"backbone.vm_features={PAPER_VM_FEATURES}",
            f"backbone.vm_dtype={PAPER_VM_DTYPE}", f"protocol.name={protocol}", "protocol.background=protocol",
            "windows.crop=protocol", "windows.stride=protocol", "windows.short_side=protocol",
            "windows.long_side=protocol",
            f"ablate.sweeps=[{{param:mode,values:'[{', '.join(paper_modes(head))}]',mode:lposs+}}]"]


def paper_modes(head: str) -> list[str]:
    """The rows of a head's paper run: seeds, its release's own step when it has one, + LPOSS, + LPOSS+."""
    return ["maskclip"] + (["own"] if own_step(head, PAPER_DATASETS[0]) else []) + ["lposs", "lposs+"]


def paper_problems(data_dir: str, head: str = DEFAULT_HEAD, protocol: str = "lposs", vm: str | None = None,
                   datasets: list[str] | None = None) -> list[str]:
    """What is missing for the paper setting: each line names it and the command that provides it."""
    problems, roots = [], set()
    for name in datasets or PAPER_DATASETS:
        if dataset_root(name, data_dir) in roots:
            continue  # voc20 shares voc21's folder, and so on: one message per folder
        roots.add(dataset_root(name, data_dir))
        try:
            open_entry(name, data_dir)
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"data: {error}")
    weights = PROTOCOLS[protocol]["base"]["clip"]
    vm = vm or head_record(head).paper_vm
    try:
        create_backbones(BackboneSpec(vlm="ViT-B-16", vlm_weights=weights, head=head, vm=vm, masks="release"), "cpu")
    except BackboneUnavailable as error:  # this command takes no weight files: name the commands that cache them
        problems.append(f"weights ({head} head on ViT-B-16 {weights}, graph {vm}): {error.without_files()}")
    except Exception as error:  # noqa: BLE001 - anything else that stops the backbones: report it
        problems.append(f"weights ({head} head on ViT-B-16 {weights}, graph {vm}): {error}")
    return problems


def stores_masks(head: str) -> bool:
    """Whether the head's paper run stores a mask model's regions (masks "release": its record's mask model)."""
    return BackboneSpec(head=head).masks != "none"


def paper_store(data_dir: str, head: str = DEFAULT_HEAD, protocol: str = "lposs", vm: str | None = None,
                datasets: list[str] | None = None) -> StoreEstimate:
    """The feature store the paper setting (or `datasets`) will write, beside the free disk
    (lposs.experiment.sizing)."""
    vm = vm or head_record(head).paper_vm
    masks = BackboneSpec(head=head).masks  # "release" resolved: the head's record's mask model, or "none"
    shape = StoreShape(vm=vm, features=(PAPER_VM_FEATURES,), vm_dtype=PAPER_VM_DTYPE, masks=masks != "none",
                       masks_overlap=masks in OVERLAPPING)
    return estimate_store(datasets or PAPER_DATASETS, data_dir, shape, protocol, combo_name(head, vm))


def without_store(head: str, protocol: str, vm: str | None = None) -> str:
    """What avoids the feature store, for the disk message."""
    vm = vm or head_record(head).paper_vm
    if stores_masks(head):
        return (f"evaluate fewer datasets at a time (the store already keeps only DINO's {PAPER_VM_FEATURES} in "
                f"{PAPER_VM_DTYPE}; the streaming evaluator has no mask model for {head})")
    modes = ",".join(paper_modes(head))
    return (f"evaluate without a store, one dataset a command: `lposs stream DATASET --head {head} --protocol "
            f"{protocol} --vm {vm} --modes {modes} --device cuda` (the same metrics; "
            f"python -m lposs.experiment.streaming). The store already keeps only DINO's {PAPER_VM_FEATURES} in "
            f"{PAPER_VM_DTYPE}, the least the pipeline can store")


def run(args: argparse.Namespace) -> int:
    """`lposs paper|mess [--check]`: the store's size, data and weights checked, then `dvc exp run` (0: ran or
    all present)."""
    load_params_plugins(args.params)
    if args.head not in HEADS:
        raise ValueError(f"unknown head {args.head!r}; the heads: {', '.join(HEADS)}")
    datasets = mess_entries() if args.command == "mess" else PAPER_DATASETS
    default = (args.head, args.protocol) == (DEFAULT_HEAD, "lposs")
    name = args.command if default else f"{args.command}-{args.head}-{args.protocol}"
    overrides = paper_overrides(args.head, args.protocol, args.vm, datasets)  # an unknown protocol stops here
    command = ["dvc", "exp", "run", "-n", name] + [arg for o in overrides for arg in ("-S", o)]
    store = paper_store(args.data_dir, args.head, args.protocol, args.vm, datasets)
    print(store.report())
    disk = store.disk_problem(without_store(args.head, args.protocol, args.vm))
    problems = ([disk] if disk else []) + paper_problems(args.data_dir, args.head, args.protocol, args.vm, datasets)
    if problems:
        print(f"The {args.command} setting cannot run yet:\n- " + "\n- ".join(problems), file=sys.stderr)
        return 1
    print("disk, data and weights ready; " + ("would run: " if args.check else "running: ")
          + " ".join(f"'{c}'" if " " in c or "[" in c else c for c in command))
    return 0 if args.check else subprocess.call(command)


def load_params_plugins(params_file: str) -> None:
    """Import the `plugins:` of the pipeline's params.yaml (the experiment runs them), when the file is there."""
    import yaml

    from ..plugins import load_plugins

    path = Path(params_file)
    if path.is_file():
        load_plugins((yaml.safe_load(path.read_text()) or {}).get("plugins") or [], root=path.resolve().parent)


def main(argv: list[str] | None = None) -> int:
    """python -m lposs.experiment paper|mess (the same as `lposs paper|mess`)."""
    parser = argparse.ArgumentParser(prog="python -m lposs.experiment", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, what in EXPERIMENTS.items():
        add_experiment_arguments(commands.add_parser(command, help=f"run {what} as a DVC experiment"), command)
    try:
        return run(parser.parse_args(argv))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
