"""The paper's setting and MESS's, one command away: check data and weights, then `dvc exp run` them.

    python -m lposs.experiment paper            # the 8 benchmarks (make paper)
    python -m lposs.experiment paper --check    # only the checks
    python -m lposs.experiment paper --head sclip --protocol sclip    # another head, under its own protocol
    python -m lposs.experiment mess             # MESS's 22 datasets (make mess)
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from ..models.factory import BackboneSpec, create_backbones
from ..models.heads import HEADS, head_record
from ..models.loading import BackboneUnavailable
from ..models.protocols import PROTOCOLS, own_step, resolve
from .results import mess_entries
from .staging import dataset_root, open_entry

PAPER_DATASETS = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]


def paper_overrides(head: str = "maskclip", protocol: str = "lposs", vm: str | None = None,
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
            f"backbone.vms=[{vm}]", "backbone.vm_pretrained=pretrained", "backbone.vm_features=v",
            "backbone.vm_dtype=float16", f"protocol.name={protocol}", "protocol.background=protocol",
            "windows.crop=protocol", "windows.stride=protocol", "windows.short_side=protocol",
            "windows.long_side=protocol",
            f"ablate.sweeps=[{{param:mode,values:'[{', '.join(paper_modes(head))}]',mode:lposs+}}]"]


def paper_modes(head: str) -> list[str]:
    """The rows of a head's paper run: seeds, its release's own step when it has one, + LPOSS, + LPOSS+."""
    return ["maskclip"] + (["own"] if own_step(head, PAPER_DATASETS[0]) else []) + ["lposs", "lposs+"]


def paper_problems(data_dir: str, head: str = "maskclip", protocol: str = "lposs", vm: str | None = None,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lposs.experiment", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, what in (("paper", "the paper's 8 benchmarks"), ("mess", "MESS's 22 datasets (25 runs)")):
        sub = commands.add_parser(command, help=f"run {what} as a DVC experiment")
        sub.add_argument("--check", action="store_true", help="only check that data and weights are present")
        sub.add_argument("--data-dir", default="data")
        sub.add_argument("--head", default="maskclip", choices=tuple(HEADS), help="dense head")
        sub.add_argument("--protocol", default="lposs", help=f"evaluation protocol: {', '.join(PROTOCOLS)}")
        sub.add_argument("--vm", default=None, help="graph model (default: the head record's paper_vm, dino_vitb16; "
                                                    "dino_vitb8 for proxyclip)")
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
