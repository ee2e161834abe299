"""Command line: `python -m lposs segment IMAGE --classes "cow; grass; sky" --out seg.png`, and `data ...`."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from .segment import MODES

PALETTE_SEED = 7


def parse_classes(text: str | None, path: str | None) -> list[str]:
    """Classes from --classes ("a; b, c": ';' between classes, ',' between synonyms) or a file (one per line)."""
    if path:
        from .datasets.base import read_class_file

        names = read_class_file(Path(path))
    elif text:
        names = [";".join(s.strip() for s in c.split(",") if s.strip()) for c in text.split(";")]
        names = [n for n in names if n]
    else:
        names = []
    if not names:
        raise SystemExit('error: no class names: pass --classes "cow; grass; sky" or --classes-file FILE')
    return names


def palette(count: int) -> np.ndarray:
    """A fixed, readable colour per class: [count, 3] uint8."""
    rng = np.random.RandomState(PALETTE_SEED)
    colours = rng.randint(40, 256, size=(max(count, 1), 3)).astype(np.uint8)
    return colours[:count]


def write_outputs(image: np.ndarray, labels: np.ndarray, names: list[str], out: Path, warning: str | None) -> Path:
    """Label map PNG (palette, index = class) at `out`, and an overlay with a legend beside it."""
    from PIL import Image, ImageDraw

    colours = palette(len(names))
    label_png = Image.fromarray(labels.astype(np.uint8), mode="P")
    label_png.putpalette(colours.flatten().tolist())
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(label_png, out)
    blend = (0.45 * image + 0.55 * colours[labels]).astype(np.uint8)
    legend_h = 18 * (len(names) + (2 if warning else 0)) + 8
    canvas = Image.new("RGB", (blend.shape[1], blend.shape[0] + legend_h), "white")
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = blend.shape[0] + 4
    for name, colour in zip(names, colours):
        draw.rectangle([6, y + 2, 18, y + 14], fill=tuple(int(c) for c in colour))
        draw.text((24, y + 2), f"{name} ({(labels == names.index(name)).mean():.0%})", fill="black")
        y += 18
    if warning:
        draw.text((6, y + 2), warning, fill="red")
    overlay = out.with_name(out.stem + "_overlay.png")
    _save_atomic(canvas, overlay)
    return overlay


def _save_atomic(image, path: Path) -> None:
    """A PIL image as PNG through the package's atomic writer (temp file + os.replace)."""
    from .features import atomic_write_bytes

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def cmd_segment(args: argparse.Namespace) -> None:
    import torch

    from .backbones import load_backbones
    from .datasets.base import read_image
    from .protocols import WINDOW_KEYS, resolve
    from .segment import segment

    names = parse_classes(args.classes, args.classes_file)
    image = read_image(Path(args.image))
    warning = None
    if args.random_weights:
        warning = "RANDOM WEIGHTS: this segmentation is meaningless (smoke test only)"
        print(f"WARNING: {warning}", file=sys.stderr)
    vlm, vm = load_backbones(
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        dino_model=args.dino_model,
        device=args.device,
        random_weights=args.random_weights,
        clip_checkpoint=args.clip_checkpoint,
        dino_checkpoint=args.dino_checkpoint,
        bf16=args.bf16,
        head=args.head,
    )
    rule = resolve(args.protocol, "")  # no dataset: the protocol's defaults (windows, background rule)
    windows = {key: rule[key] for key in WINDOW_KEYS}
    with torch.no_grad():
        labels = segment(image, names, mode=args.mode, vlm=vlm, vm=vm, device=args.device, background=rule,
                         refiner=args.refiner, **windows).cpu().numpy()
    overlay = write_outputs(image, labels, names, Path(args.out), warning)
    print(f"wrote {args.out} (label map, palette index = class) and {overlay}")


def build_parser() -> argparse.ArgumentParser:
    from . import backbones
    from .heads import HEADS
    from .protocols import PROTOCOLS
    from .refine import REFINERS

    parser = argparse.ArgumentParser(prog="python -m lposs", description="LPOSS / LPOSS+ segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one image with open-vocabulary class names")
    seg.add_argument("image", help="an RGB image file (png, jpg, ...)")
    seg.add_argument("--classes", help='class names: "cow; grass; sky" (";" between classes, "," between synonyms)')
    seg.add_argument("--classes-file", help="a text file with one class per line (';' between synonyms)")
    seg.add_argument("--out", required=True, help="label map PNG; an _overlay.png with a legend is written beside it")
    seg.add_argument("--mode", choices=MODES, default="lposs+")
    seg.add_argument("--device", default="cpu", help="cpu or cuda")
    seg.add_argument("--bf16", action="store_true", help="bf16 autocast for the backbones (CUDA)")
    seg.add_argument("--clip-model", default=backbones.DEFAULT_CLIP_MODEL)
    seg.add_argument("--clip-pretrained", default=backbones.DEFAULT_CLIP_PRETRAINED, help="open_clip pretrained tag")
    seg.add_argument("--clip-checkpoint", help="local open_clip weights file (offline use)")
    seg.add_argument("--head", default="maskclip", choices=list(HEADS), help="dense CLIP head for the seeds")
    seg.add_argument("--protocol", default="lposs", choices=list(PROTOCOLS),
                     help="windows and background rule: lposs (synonym max) or a peer's (softmax + threshold)")
    seg.add_argument("--refiner", default="reference", choices=list(REFINERS), help="pixel refiner of LPOSS+")
    seg.add_argument("--dino-model", default=backbones.DEFAULT_DINO_MODEL,
                     help="graph model: dino_vitb16 dino_vitb8 dino_vits16 dinov2_vitb14_reg, a timm name, or clip")
    seg.add_argument("--dino-checkpoint", help="local timm DINO weights file (offline use)")
    seg.add_argument("--random-weights", action="store_true", help="random backbones: smoke tests only, meaningless output")
    seg.set_defaults(run=cmd_segment)

    from .webapp import add_demo_arguments, run_demo

    demo = sub.add_parser("demo", help="local web app: MaskCLIP, LPOSS and LPOSS+ side by side on any photo")
    add_demo_arguments(demo)
    demo.set_defaults(run=run_demo)

    from .datasets.cli import add_data_subcommands, run_data

    data = sub.add_parser("data", help="datasets: list, fetch (download + convert), check")
    add_data_subcommands(data)
    data.set_defaults(run=lambda args: sys.exit(run_data(args)))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from None
