"""The `lposs` command (also `python -m lposs`), one door to every entry point:

    lposs segment IMAGE --classes "cow; grass; sky" --out seg.png    one photo
    lposs demo                                                       the web app
    lposs data list | fetch | check                                  the datasets
    lposs paper | mess [--check]                                     the paper's / MESS's setting as a DVC experiment
    lposs stream voc21 --device cuda                                 one dataset evaluated without a feature store
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from ..settings import MODES, OWN_STEP
from .label_maps import parse_classes, write_outputs


def cmd_segment(args: argparse.Namespace) -> None:
    import torch

    from ..datasets.base import read_image
    from ..hardware import use_physical_cores
    from ..models.factory import BackboneSpec, create_backbones, resolve_device, spec_from_clip_tag
    from ..models.protocols import WINDOW_KEYS, own_step, resolve
    from ..segmentation import segment

    device = resolve_device(args.device, "--device", "--device cpu")  # before any weights load
    if args.mode == OWN_STEP and (args.demo_backbones or own_step(args.head, "") is None):
        raise ValueError(f"--mode {OWN_STEP}: head {'demo' if args.demo_backbones else args.head!r} has no own "
                         f"post-step (heads with one: {', '.join(heads_with_own_steps())}); use --mode maskclip for "
                         "its seeds")
    use_physical_cores()  # torch's threads = physical cores unless OMP_NUM_THREADS is set
    names = parse_classes(args.classes, args.classes_file)
    image = read_image(Path(args.image))
    warning = None
    if args.random_weights:
        warning = "RANDOM WEIGHTS: this segmentation is meaningless (smoke test only)"
    elif args.demo_backbones:
        warning = ("DEMO STAND-INS, not CLIP or DINO: colour-prototype seeds and an appearance graph; "
                   "they know only the demo's classes")
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    if args.demo_backbones:
        spec = BackboneSpec(vlm="demo", vlm_weights="none", head="demo", vm="demo", vm_weights="none", masks="none")
    else:
        spec = spec_from_clip_tag(args.clip_model, args.clip_pretrained, args.random_weights, head=args.head,
                                  head_params=dict(args.head_param), vm=args.dino_model,
                                  clip_checkpoint=args.clip_checkpoint, vm_checkpoint=args.dino_checkpoint,
                                  bf16=args.bf16, masks=args.masks, masks_checkpoint=args.masks_checkpoint)
    backbones = create_backbones(spec, device=device)
    rule = resolve(args.protocol, "")  # no dataset: the protocol's defaults (windows, background rule)
    windows = {key: rule[key] for key in WINDOW_KEYS}
    if args.short_side is not None:
        windows["short_side"] = args.short_side
    with torch.no_grad():
        step = own_step(args.head, "", sam=spec.mask_weights) if args.mode == OWN_STEP else None
        labels = segment(image, names, mode=args.mode, vlm=backbones.vlm, vm=backbones.vm, device=device,
                         background=rule, masks=backbones.masks, own_step=step, refiner=args.refiner,
                         **windows).cpu().numpy()
    overlay = write_outputs(image, labels, names, Path(args.out), warning)
    print(f"wrote {args.out} (label map, palette index = class) and {overlay}")


def add_segment_arguments(seg: argparse.ArgumentParser) -> None:
    """The `segment` command's options (imports the models' registries, hence torch)."""
    from ..core.refiners import IMAGE_REFINERS
    from ..models import backbones
    from ..models.factory import RELEASE
    from ..models.head_registry import HEADS
    from ..models.masks import MASK_MODELS
    from ..models.protocols import PROTOCOLS
    from ..models.records import DEFAULT_HEAD

    seg.add_argument("image", help="an RGB image file (png, jpg, ...)")
    seg.add_argument("--classes", help='class names: "cow; grass; sky" (";" between classes, "," between synonyms)')
    seg.add_argument("--classes-file", help="a text file with one class per line (';' between synonyms)")
    seg.add_argument("--out", required=True, help="label map PNG; an _overlay.png with a legend is written beside it")
    seg.add_argument("--mode", choices=MODES + (OWN_STEP,), default="lposs+",
                     help="maskclip: the dense head's seeds alone; lposs: + label propagation over patches; "
                          "lposs+: + propagation over pixels (default); own: the seeds, then the head's release's "
                          "own post-step with its release's values (" + ", ".join(
                              f"{head}: {step}" for head, step in heads_with_own_steps().items()) + ")")
    seg.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (cuda when torch sees a GPU)")
    seg.add_argument("--short-side", type=int,
                     help="resize the image to this short side before windowing (default: the protocol's, 448)")
    seg.add_argument("--bf16", action="store_true",
                     help="bf16 autocast for the backbones (CUDA, or a CPU with native bfloat16: AVX-512 BF16 or AMX)")
    seg.add_argument("--clip-model", default=backbones.DEFAULT_CLIP_MODEL,
                     help=f"open_clip model name (default {backbones.DEFAULT_CLIP_MODEL})")
    seg.add_argument("--clip-pretrained", default=backbones.DEFAULT_CLIP_PRETRAINED, help="open_clip pretrained tag")
    seg.add_argument("--clip-checkpoint", help="local open_clip weights file (offline use)")
    seg.add_argument("--head", default=DEFAULT_HEAD, choices=list(HEADS),
                     help="dense CLIP head for the seeds (--plugin adds your own)")
    seg.add_argument("--head-param", action="append", default=[], type=head_param, metavar="NAME=VALUE",
                     help="one of the head's parameters (naclip's sigma=3, clipdinoiser's checkpoint=PATH; an unknown "
                          "name lists the head's); the value is read as YAML (numbers, true/false, null, else text); "
                          "repeatable")
    seg.add_argument("--protocol", default="lposs", choices=list(PROTOCOLS),
                     help="windows and background rule: lposs (synonym max) or a peer's (softmax + threshold)")
    seg.add_argument("--refiner", default="reference", choices=list(IMAGE_REFINERS), help="pixel refiner of LPOSS+")
    seg.add_argument("--dino-model", default=backbones.DEFAULT_DINO_MODEL,
                     help="graph model: dino_vitb16 dino_vitb8 dino_vits16 dinov2_vitb14_reg, a timm name, or clip")
    seg.add_argument("--dino-checkpoint", help="local timm DINO weights file (offline use)")
    readers = {name: record.mask_model for name, record in HEADS.items() if record.mask_model}
    seg.add_argument("--masks", default=RELEASE, choices=MASK_MODELS + (RELEASE,),
                     help=f"class-agnostic mask model; {RELEASE} (default): the one the head's release reads ("
                          + ", ".join(f"{head}: {masks}" for head, masks in readers.items()) + "), none for the others")
    seg.add_argument("--masks-checkpoint", help="local SAM / SAM 2 weights file, or DINO ViT-B/8's for panoptic_cut "
                                                "(offline use; trident reads SAM ViT-B's from here too)")
    weights = seg.add_mutually_exclusive_group()
    weights.add_argument("--random-weights", action="store_true",
                         help="random backbones, mask models and SAM included: smoke tests only, meaningless output")
    weights.add_argument("--demo-backbones", action="store_true",
                         help="the embedded stand-in backbones of lposs.demo, no download: they know only the demo "
                              "scenes' classes (sky, tree, grass, water, road, building, cow, sand) and synonyms")
    seg.set_defaults(run=cmd_segment)


def heads_with_own_steps() -> dict[str, str]:
    """{head: the name of its release's own post-step} (lposs.core.own_steps), read from the records' protocols."""
    from ..models.head_registry import HEADS
    from ..models.protocols import own_step

    return {name: step["name"] for name in HEADS if (step := own_step(name, "")) is not None}


def head_param(text: str) -> tuple[str, object]:
    """`--head-param NAME=VALUE` -> (name, value), the value read as YAML ("3" -> 3, "null" -> None, a path stays
    text)."""
    import yaml

    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. sigma=3, checkpoint=/path/last.pt)")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return name.strip(), value


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    from .webapp import add_demo_arguments as add
    from .webapp import run_demo

    add(demo)
    demo.set_defaults(run=run_demo)


def add_data_arguments(data: argparse.ArgumentParser) -> None:
    from ..datasets.cli import add_data_subcommands, run_data

    add_data_subcommands(data)
    data.set_defaults(run=lambda args: sys.exit(run_data(args)))


def add_experiment_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    from ..experiment.commands import add_experiment_arguments as add

    def run(args: argparse.Namespace) -> None:
        from ..experiment.paper import run

        sys.exit(run(args))

    add(parser, command)
    parser.set_defaults(run=run)


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    from ..experiment.commands import add_stream_arguments as add

    def run(args: argparse.Namespace) -> None:
        from ..experiment.streaming import run

        run(args)

    add(parser)
    parser.set_defaults(run=run)


# command -> (its help line, what adds its options). Only the command being run gets its options, so
# `lposs --help` imports no torch, `segment` neither the web app nor the dataset converters, and paper, mess and
# stream declare theirs without torch (lposs.experiment.commands).
COMMANDS = {
    "segment": ("segment one image with open-vocabulary class names", add_segment_arguments),
    "demo": ("local web app: MaskCLIP, LPOSS and LPOSS+ side by side on any photo", add_demo_arguments),
    "data": ("datasets: list, fetch (download + convert), check", add_data_arguments),
    "paper": ("the paper's 8 benchmarks as a DVC experiment (--check: disk, data, weights)",
              partial(add_experiment_arguments, command="paper")),
    "mess": ("MESS's 22 datasets as a DVC experiment (--check: disk, data, weights)",
             partial(add_experiment_arguments, command="mess")),
    "stream": ("evaluate one dataset without a feature store", add_stream_arguments),
}


PLUGIN_COMMANDS = ("segment", "demo")  # the commands that take --plugin (their heads come from the registry)


def plugin_specs(argv: list[str]) -> list[str]:
    """The values of every `--plugin X` / `--plugin=X` in argv, in order."""
    specs = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--plugin=")]
    return specs + [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--plugin"]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of the command named in argv (all commands' when argv is None). The plugins
    argv names are imported first, so that their heads are among the choices."""
    parser = argparse.ArgumentParser(prog="lposs", description="LPOSS / LPOSS+ segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = None if argv is None else next((arg for arg in argv if not arg.startswith("-")), "")
    if chosen in PLUGIN_COMMANDS and plugin_specs(argv):
        from ..plugins import load_plugins

        load_plugins(plugin_specs(argv))
    for name, (help_line, add_arguments) in COMMANDS.items():
        command = sub.add_parser(name, help=help_line)
        if chosen is None or chosen == name:
            add_arguments(command)
            if name in PLUGIN_COMMANDS:
                command.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                                     help="a Python file or module that registers heads (lposs.register_head); "
                                          "repeatable")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
        args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from None
