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


def legend_font(size: int):
    """PIL's built-in font at `size` pixels (the FreeType build; the old bitmap font where that is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def write_outputs(image: np.ndarray, labels: np.ndarray, names: list[str], out: Path, warning: str | None) -> Path:
    """Label map PNG (palette, index = class) at `out`, and an overlay with a legend beside it.

    The legend's text scales with the image (about 1/32 of its width, at least 14 px) and its entries fill
    as many columns as fit the width: a swatch, the class and its share of the pixels."""
    import textwrap

    from PIL import Image, ImageDraw

    colours = palette(len(names))
    label_png = Image.fromarray(labels.astype(np.uint8), mode="P")
    label_png.putpalette(colours.flatten().tolist())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_png(label_png, out)
    blend = (0.45 * image + 0.55 * colours[labels]).astype(np.uint8)
    height, width = blend.shape[:2]
    size = max(14, round(width / 32))
    font, pad, line = legend_font(size), size // 2, round(size * 1.4)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [f"{name} ({(labels == i).mean():.0%})" for i, name in enumerate(names)]
    entry_width = size + pad + max((measure.textlength(e, font=font) for e in entries), default=0) + 2 * pad
    columns = max(1, min(len(entries), int((width - pad) // entry_width)))
    rows = -(-len(entries) // columns)
    wrapped = textwrap.wrap(warning, max(20, int(width / (0.55 * size)))) if warning else []
    canvas = Image.new("RGB", (width, height + line * (rows + len(wrapped)) + 2 * pad), "white")
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (entry, colour) in enumerate(zip(entries, colours)):
        x, y = pad + (i // rows) * entry_width, height + pad + (i % rows) * line
        draw.rectangle([x, y + (line - size) // 2, x + size, y + (line + size) // 2],
                       fill=tuple(int(c) for c in colour), outline="black")
        draw.text((x + size + pad, y + line // 2), entry, fill="black", font=font, anchor="lm")
    for j, text in enumerate(wrapped):
        draw.text((pad, height + pad + (rows + j) * line + line // 2), text, fill="red", font=font, anchor="lm")
    overlay = out.with_name(out.stem + "_overlay.png")
    save_image_png(canvas, overlay)
    return overlay
