"""What one click of the web app does, without Gradio: read the upload, get the backbones (lposs.app.webapp_models),
run MaskCLIP / LPOSS / LPOSS+ side by side, and write the overlays and label maps the page shows.

Every failure a user can cause or meet (no class names, an unreadable or odd image, missing weights,
out of memory) comes back as a `PageResult` whose `status` says what happened and what to do, never as
a traceback. `lposs.app.webapp` puts this on a page.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..demo import generate_demo
from ..io import atomic_write_bytes, write_json
from ..models.loading import BackboneUnavailable
from .label_maps import parse_classes, write_outputs
from .side_by_side import can_leave_unlabelled, mode_titles, segment_side_by_side, stage_names
from .webapp_models import ModelCache, ModelChoice, describe_rule, load_models, protocol_rule

LOG = logging.getLogger("lposs.app.webapp")
MAX_SIDE = 2048  # longer uploads are resized (the page says so); the CLI segments any size
MAX_CLASSES = 255  # label maps are 8-bit palette PNGs (index MAX_CLASSES stays free for "unlabelled")
KEEP_CLICKS = 20  # output folders of the most recent clicks kept on disk
WEIGHTS = ("real", "random", "demo")
DEMO_EXAMPLE_CLASSES = "sky, clouds; tree; grass, lawn; water, sea; road; building, house; cow, cattle; sand, beach"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

NOTICES = {
    "real": "**Real weights**, downloaded to the Hugging Face cache on first use (the first click takes a while). "
            "LPOSS's setting is OpenCLIP laion2b weights + MaskCLIP + DINO ViT-B/16; the other heads' releases use "
            "OpenAI's CLIP weights.",
    "random": "**RANDOM WEIGHTS — the segmentations below are meaningless.** The backbones are untrained "
              "(`--random-weights`): the page only shows that the app, the three modes and the timings work.",
    "demo": "**DEMO STAND-INS, not CLIP or DINO.** `--demo-backbones` replaces CLIP by a colour/texture matcher "
            "that knows only the demo vocabulary (sky, tree, grass, water, road, building, cow, sand and the "
            "aliases clouds, lawn, sea, lake, river, beach, house, street, cattle) and DINO by random Fourier "
            "features of patch appearance. The examples are generated scenes. What you see is what label "
            "propagation does to noisy seeds; it says nothing about CLIP or DINO.",
}
OVERLAY_WARNINGS = {"real": None, "random": "RANDOM WEIGHTS: meaningless output",
                    "demo": "DEMO STAND-INS (not CLIP/DINO)"}


class InputError(ValueError):
    """Something the user gave the page that it cannot use; the message says what and how to fix it."""


@dataclass(frozen=True)
class DemoConfig:
    """How the app was started (python -m lposs demo ...)."""

    weights: str = "real"  # "real" (downloaded), "random" (untrained), "demo" (lposs.demo stand-ins)
    device: str = "cpu"
    bf16: bool = False
    clip_weights: str = "openclip-laion2b"  # the CLIP weights selected when the page opens
    clip_checkpoint: str | None = None
    dino_checkpoint: str | None = None
    max_side: int = MAX_SIDE
    short_side: int = 448  # the windows' image size (paper: 448); smaller is faster on a CPU
    examples: str | None = None  # a folder of images (and optionally classes.txt); default: generated scenes

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if self.max_side < 64:
            raise ValueError(f"max_side must be at least 64 pixels, got {self.max_side}")
        if self.short_side < 224:
            raise ValueError(f"short_side must be at least one 224-pixel window, got {self.short_side}")

    @property
    def notice(self) -> str:
        return NOTICES[self.weights]


@dataclass
class PageResult:
    """Everything the page shows after a click; overlays, titles and files are empty when it failed."""

    status: str
    overlays: list[str] = field(default_factory=list)  # overlay PNG paths, one per mode
    titles: list[str] = field(default_factory=list)  # what each overlay is
    timings: str = ""  # markdown table
    files: list[str] = field(default_factory=list)  # label maps + classes.txt + settings.json to download


@dataclass(frozen=True)
class ClickSettings:
    """What the page's choices set for one click: backbones, LPOSS+ refiner, scoring rule."""

    choice: ModelChoice
    refiner: str
    rule: dict[str, Any]  # lposs.app.webapp_models.protocol_rule

    def unlabelled_name(self) -> str | None:
        """The legend's name for pixels the rule leaves out (label K), None when it labels every pixel."""
        if not can_leave_unlabelled(self.rule):
            return None
        area = "" if self.rule["area_thd"] is None else f", area_thd {self.rule['area_thd']:g}"
        return f"unlabelled (prob < {self.rule['prob_thd']:g}{area})"  # short: the legend is as wide as the image

    def unlabelled_note(self, label: int) -> str:
        """What the page says about the pixels the rule leaves out (label `label` in the maps)."""
        area = (f" (once the classes covering at most area_thd {self.rule['area_thd']:g} of the foreground pixels "
                f"have lost their probabilities)" if self.rule["area_thd"] is not None else "")
        return (f"The {self.rule['protocol']} rule sends the pixels whose top class probability is below its "
                f"prob_thd {self.rule['prob_thd']:g}{area} to the release's background class. Your classes have "
                f"no background, so those pixels are left **unlabelled**: label {label} in the maps, "
                f"\"{self.unlabelled_name()}\" in the legend.")


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

def page_classes(text: str | None) -> list[str]:
    """The CLI's class syntax (';' between classes, ',' between synonyms) with the page's wording on errors."""
    try:
        names = parse_classes(text or "", None)
    except SystemExit:
        raise InputError("No class names: type them in the box, e.g. `cow; grass, lawn; sky` "
                         "(`;` between classes, `,` between synonyms of one class).") from None
    if len(names) > MAX_CLASSES:
        raise InputError(f"{len(names)} classes given; the label map holds at most {MAX_CLASSES}: give fewer.")
    return names


def read_upload(path: str | Path, max_side: int = MAX_SIDE) -> tuple[np.ndarray, list[str]]:
    """An uploaded file -> (RGB uint8 [H, W, 3], notes on what was changed to get there)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = Path(path).name
    try:
        with Image.open(path) as opened:
            animated = getattr(opened, "n_frames", 1) > 1
            notes = [f"`{name}` is animated: its first frame is segmented."] if animated else []
            image = ImageOps.exif_transpose(opened)
            image.load()
    except UnidentifiedImageError:
        raise InputError(f"`{name}` is not an image this app can read: upload a PNG, JPEG or WebP photo.") from None
    except Image.DecompressionBombError as error:
        raise InputError(f"`{name}` is too large to open safely ({error}); shrink it below "
                         f"{max_side} px a side first.") from None
    except OSError as error:  # truncated or corrupt files
        raise InputError(f"`{name}` could not be decoded ({error}): upload it again or save it anew.") from None
    image, note = to_rgb(image)
    notes += [note] if note else []
    width, height = image.size
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.LANCZOS)
        notes.append(f"The image is {width}×{height}: resized to {size[0]}×{size[1]} (this page caps the long side "
                     f"at {max_side} px; `python -m lposs segment` works at full size).")
    return np.asarray(image, dtype=np.uint8), notes


def to_rgb(image: Any) -> tuple[Any, str | None]:
    """A PIL image of any mode -> (RGB PIL image, a note saying what was converted, or None)."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in ("I", "F") or mode.startswith("I;"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        grey = ((values - low) / (high - low or 1.0) * 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB"), (f"The image is single-channel {mode} (high bit depth): "
                                                      "stretched to 8 bits and copied into R, G and B.")
    if "A" in mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        return flat, f"The image has transparency ({mode}): flattened onto white."
    if mode in ("L", "1"):
        return image.convert("RGB"), ("The image is greyscale: copied into R, G and B (CLIP and the LPOSS+ colour "
                                      "graph see no colour).")
    return image.convert("RGB"), f"The image is {mode}: converted to RGB."


# --------------------------------------------------------------------------------------------------
# One click
# --------------------------------------------------------------------------------------------------

def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


class SegmentService:
    """One instance per running app: the config, the model cache, and a folder for the outputs."""

    def __init__(self, config: DemoConfig, out_root: str | Path | None = None,
                 loader: Callable[[ModelChoice], tuple[Any, Any]] | None = None):
        self.config = config
        self.out_root = Path(out_root or tempfile.mkdtemp(prefix="lposs-demo-"))
        self.out_root.mkdir(parents=True, exist_ok=True)
        self.models = ModelCache(loader or self._load)
        self._clicks: list[Path] = []

    def _load(self, choice: ModelChoice) -> tuple[Any, Any]:
        config = self.config
        return load_models(choice, config.weights, config.device, config.bf16, config.clip_checkpoint,
                           config.dino_checkpoint)

    def run(self, image_path: str | None, classes_text: str | None, choice: ModelChoice,
            refiner: str = "reference", progress: Callable[..., Any] | None = None,
            protocol: str = "lposs") -> PageResult:
        """Segment one upload with the three modes, scored by `protocol` (lposs.app.webapp_models.protocol_choices);
        any failure becomes a status message."""
        stage = "reading the inputs"
        try:
            if not image_path:
                raise InputError("No image: upload a photo (or pick an example) first.")
            settings = ClickSettings(choice, refiner, protocol_rule(protocol))
            names = page_classes(classes_text)
            image, notes = read_upload(image_path, self.config.max_side)
            stage = "loading the backbones"
            _report(progress, 0.05, "loading the backbones (the first use of real weights downloads them)")
            start = time.perf_counter()
            (vlm, vm), cached = self.models.get(choice)
            load_seconds = time.perf_counter() - start
            steps = stage_names(choice.head, refiner)

            def on_stage(key: str) -> None:
                nonlocal stage
                stage = steps[key]
                _report(progress, 0.1 + 0.17 * list(steps).index(key), stage)

            result = segment_side_by_side(image, names, vlm, vm, self.config.device, refiner, on_stage,
                                          self.config.short_side, background=settings.rule)
            stage = "writing the overlays"
            _report(progress, 0.95, stage)
            return self._page(image, names, result, settings, notes, (load_seconds, cached))
        except InputError as error:
            return PageResult(status=f"**Cannot segment:** {error}")
        except Exception as error:  # noqa: BLE001 - the page shows a message, the console the traceback
            return PageResult(status=self._failure(error, stage))

    def _failure(self, error: Exception, stage: str) -> str:
        if isinstance(error, BackboneUnavailable):
            return f"**The backbones cannot be loaded.**\n\n```\n{error}\n```"
        if is_out_of_memory(error):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return (f"**Out of memory on {self.config.device}** while {stage}. Fix: a smaller image "
                    f"(`--max-side`, now {self.config.max_side}), fewer classes, `--bf16` on CUDA, or `--device cpu`.")
        if isinstance(error, ValueError):
            return f"**Cannot segment:** {error}"
        LOG.exception("the web app failed while %s", stage)
        return f"**Unexpected error while {stage}:** {type(error).__name__}: {error} (the console has the details)."

    def _page(self, image: np.ndarray, names: list[str], result: Any, settings: ClickSettings,
              notes: list[str], loading: tuple[float, bool]) -> PageResult:
        folder = self._new_click_folder()
        start = time.perf_counter()
        unlabelled = settings.unlabelled_name()
        legend = names + ([unlabelled] if unlabelled else [])  # label len(names): left out by the rule
        protocol, head = settings.rule["protocol"], settings.choice.head
        overlays, files = [], []
        for mode, labels in result.labels.items():
            label_map = folder / f"labels_{mode.replace('+', '_plus')}_{protocol}.png"
            overlays.append(str(write_outputs(image, labels, legend, label_map, OVERLAY_WARNINGS[self.config.weights])))
            files.append(str(label_map))
        files += self._write_metadata(folder, legend, settings, image.shape[:2])
        seconds = dict(result.seconds, write=time.perf_counter() - start)
        timings = timings_table(seconds, stage_names(head, settings.refiner), loading, image.shape[:2], len(names),
                                self.config.device, describe_rule(settings.rule))
        notes = notes + ([settings.unlabelled_note(len(names))] if unlabelled else [])
        status = "\n\n".join([f"**Done:** {len(names)} classes on a {image.shape[1]}×{image.shape[0]} image, "
                               f"scored by the **{protocol}** protocol.", *(f"**Note:** {note}" for note in notes)])
        suffix = "" if protocol == "lposs" else f" ({protocol} scoring)"
        titles = [title + suffix for title in mode_titles(head).values()]
        return PageResult(status=status, overlays=overlays, titles=titles, timings=timings, files=files)

    def _write_metadata(self, folder: Path, legend: list[str], settings: ClickSettings,
                        image_hw: tuple[int, int]) -> list[str]:
        """classes.txt (label -> name, "unlabelled" last when the rule leaves pixels out) and settings.json."""
        classes_file = folder / "classes.txt"
        atomic_write_bytes(classes_file, "".join(f"{i}\t{n}\n" for i, n in enumerate(legend)).encode())
        config = self.config
        record = {"scoring": settings.rule, "clip_weights": settings.choice.clip_weights, "head": settings.choice.head,
                  "vision_model": settings.choice.vision_model, "refiner": settings.refiner, "weights": config.weights,
                  "device": config.device, "bf16": config.bf16, "short_side": config.short_side,
                  "image_hw": list(image_hw), "labels": dict(enumerate(legend))}
        settings_file = write_json(folder / "settings.json", record)
        return [str(classes_file), str(settings_file)]

    def _new_click_folder(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="click-", dir=self.out_root))
        self._clicks.append(folder)
        while len(self._clicks) > KEEP_CLICKS:
            shutil.rmtree(self._clicks.pop(0), ignore_errors=True)
        return folder


def timings_table(seconds: dict[str, float], names: dict[str, str], loading: tuple[float, bool],
                  image_hw: tuple[int, int], classes: int, device: str, scoring: str = "") -> str:
    """Markdown: one row per stage (model loading, backbones, each mode, writing) and the total; `scoring`
    (lposs.app.webapp_models.describe_rule) says how the scores became labels."""
    load_seconds, cached = loading
    rows = [("load the backbones" + (" (kept from an earlier click)" if cached else ""), load_seconds)]
    rows += [(names[key], seconds[key]) for key in names if key in seconds]
    rows.append(("overlays + label maps written", seconds["write"]))
    lines = [f"Stage times on **{device}** ({image_hw[1]}×{image_hw[0]} image, {classes} classes):", "",
             "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in rows]
    lines.append(f"| **total** | **{sum(value for _, value in rows):.2f}** |")
    lines += ["", f"Scoring protocol: {scoring}"] if scoring else []
    return "\n".join(lines)


def _report(progress: Callable[..., Any] | None, fraction: float, description: str) -> None:
    if progress is not None:
        progress(fraction, desc=description)


def example_rows(config: DemoConfig, out_root: Path) -> tuple[list[list[str]], str]:
    """([[image path, class text], ...], what they are): a folder given with --examples, else generated scenes."""
    if config.examples:
        folder = Path(config.examples)
        if not folder.is_dir():
            raise FileNotFoundError(f"--examples {folder}: no such folder; give a folder of images")
        classes_file = folder / "classes.txt"
        lines = classes_file.read_text().splitlines() if classes_file.is_file() else []
        text = "; ".join(line.strip().replace(";", ",") for line in lines if line.strip())  # file ';' = page ','
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:8]
        return [[str(p), text] for p in images], f"Examples from {folder}"
    scenes = generate_demo(out_root / "examples", count=3)
    images = sorted((scenes / "images").glob("*.png"))
    return [[str(p), DEMO_EXAMPLE_CLASSES] for p in images], "Examples: generated scenes (synthetic, from lposs.demo)"
