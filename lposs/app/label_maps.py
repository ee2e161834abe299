"""What the CLI and the web page share: class names in (the ';' / ',' syntax or a file), label maps and
overlays with a legend out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datasets.base import read_class_file
from ..io import palette, save_image_png


def parse_classes(text: str | None, path: str | None) -> list[str]:
    """Classes from --classes ("a; b, c": ';' between classes, ',' between synonyms) or a file (one per line)."""
    if path:
        try:
            names = read_class_file(Path(path))
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"--classes-file: {error}") from None
    elif text:
        names = [";".join(s.strip() for s in c.split(",") if s.strip()) for c in text.split(";")]
        names = [n for n in names if n]
    else:
        names = []
    if not names:
        raise SystemExit('error: no class names: pass --classes "cow; grass; sky" or --classes-file FILE')
    return names


def write_outputs(image: np.ndarray, labels: np.ndarray, names: list[str], out: Path, warning: str | None) -> Path:
    """Label map PNG (palette, index = class) at `out`, and an overlay with a legend beside it."""
    from PIL import Image, ImageDraw

    colours = palette(len(names))
    label_png = Image.fromarray(labels.astype(np.uint8), mode="P")
    label_png.putpalette(colours.flatten().tolist())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_png(label_png, out)
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
    save_image_png(canvas, overlay)
    return overlay
