"""The demo's synthetic scenes: a deterministic painter of outdoor layouts with exact labels, and the
dataset writer (same seed, same bytes: `data.dvc` pins them). What the demo simulates: see `lposs.demo`."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import encode_png

DEMO_CLASSES: tuple[str, ...] = ("sky", "tree", "grass", "water", "road", "building", "cow", "sand")
IGNORE_INDEX = 255
DEFAULT_COUNT = 16
DEFAULT_SIZE = (256, 352)  # (height, width) of a generated scene
DEFAULT_SEED = 0

# Synonyms the demo VLM understands; each maps to a class of DEMO_CLASSES.
ALIASES: dict[str, str] = {
    "cattle": "cow", "sea": "water", "lake": "water", "river": "water", "house": "building",
    "street": "road", "beach": "sand", "lawn": "grass", "clouds": "sky",
}

# Nominal mean colour (RGB in [0, 1]) of each class: the painter's palette and the VLM's prototypes.
PALETTE: dict[str, tuple[float, float, float]] = {
    "sky": (0.52, 0.68, 0.90),
    "tree": (0.22, 0.38, 0.18),
    "grass": (0.40, 0.58, 0.26),
    "water": (0.26, 0.44, 0.62),
    "road": (0.42, 0.42, 0.44),
    "building": (0.60, 0.54, 0.48),
    "cow": (0.50, 0.38, 0.28),
    "sand": (0.78, 0.70, 0.50),
}
# Nominal patch contrast (std of a 16x16 patch) of each class: the texture half of the VLM's prototypes.
CONTRAST: dict[str, float] = {
    "sky": 0.015, "tree": 0.035, "grass": 0.022, "water": 0.045, "road": 0.02, "building": 0.08,
    "cow": 0.15, "sand": 0.028,
}
CLASS_INDEX = {name: i for i, name in enumerate(DEMO_CLASSES)}


# --------------------------------------------------------------------------------------------------
# Deterministic noise and shapes (numpy, exactly-rounded arithmetic only)
# --------------------------------------------------------------------------------------------------

def value_noise(rng: np.random.RandomState, height: int, width: int, cell_y: float, cell_x: float) -> np.ndarray:
    """Smooth random field in [0, 1], [H, W]: a random grid with cells of cell_y x cell_x pixels, smoothstep-interpolated."""
    grid = rng.random_sample((int(height / cell_y) + 3, int(width / cell_x) + 3))
    ys = (np.arange(height) + rng.random_sample() * cell_y) / cell_y
    xs = (np.arange(width) + rng.random_sample() * cell_x) / cell_x
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def noise_1d(rng: np.random.RandomState, length: int, cell: float) -> np.ndarray:
    """Smooth random curve in [0, 1], [length]."""
    return value_noise(rng, 1, length, 1.0, cell)[0]


def blob(rng: np.random.RandomState, shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float,
         roughness: float = 0.35) -> np.ndarray:
    """Boolean [H, W] mask of an ellipse with a noisy, irregular outline."""
    height, width = shape
    yy = (np.arange(height)[:, None] - cy) / ry
    xx = (np.arange(width)[None, :] - cx) / rx
    wobble = value_noise(rng, height, width, max(ry / 2, 2.0), max(rx / 2, 2.0))
    return yy * yy + xx * xx < 1 + roughness * (wobble - 0.5)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask that touch a pixel outside it (4-neighbourhood), both sides of the edge."""
    pad = np.pad(mask, 1, mode="edge")
    inner = pad[1:-1, 1:-1]
    differs = (pad[:-2, 1:-1] != inner) | (pad[2:, 1:-1] != inner) | (pad[1:-1, :-2] != inner) | (pad[1:-1, 2:] != inner)
    return differs


# --------------------------------------------------------------------------------------------------
# Class textures: each returns RGB float [H, W, 3]
# --------------------------------------------------------------------------------------------------

@dataclass
class Lighting:
    """Per-image illumination: a global brightness and a colour cast, plus per-class colour shifts."""

    brightness: float
    cast: np.ndarray  # [3]
    shifts: dict[str, np.ndarray]  # class -> [3]

    @staticmethod
    def draw(rng: np.random.RandomState) -> "Lighting":
        brightness = 0.85 + 0.25 * rng.random_sample()
        cast = 0.95 + 0.10 * rng.random_sample(3)
        shifts = {name: 0.10 * (rng.random_sample(3) - 0.5) for name in DEMO_CLASSES}
        return Lighting(brightness, cast, shifts)

    def colour(self, name: str) -> np.ndarray:
        return (np.array(PALETTE[name]) + self.shifts[name]) * self.cast * self.brightness


def _mix(base: np.ndarray, other: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """base*(1-w) + other*w with base/other [3] or [H,W,3] and w [H,W]."""
    w = weight[..., None]
    return base * (1 - w) + other * w


def paint_textures(rng: np.random.RandomState, shape: tuple[int, int], light: Lighting,
                   horizon: float) -> dict[str, np.ndarray]:
    """One full-image texture per class; the scene picks each pixel from its class's texture."""
    height, width = shape
    ones = np.ones((height, width))
    rows = np.arange(height)[:, None] * ones

    def shade(name: str, field: np.ndarray, amplitude: float) -> np.ndarray:
        return light.colour(name) * (1 + amplitude * (field - 0.5))[..., None]

    sky = light.colour("sky") * (1 + 0.25 * np.clip(rows / max(horizon, 1.0), 0, 1))[..., None]
    clouds = np.clip((value_noise(rng, height, width, 22, 48) - 0.55) * 3.0, 0, 1)
    sky = _mix(sky, np.array([0.93, 0.93, 0.95]) * light.brightness, clouds)

    ripples = value_noise(rng, height, width, 3, 40)
    water = shade("water", ripples, 0.5)
    glints = np.clip((ripples - 0.8) * 4.0, 0, 1)
    water = _mix(water, light.colour("sky"), glints)

    grass = shade("grass", 0.6 * value_noise(rng, height, width, 7, 7) + 0.4 * value_noise(rng, height, width, 2, 2), 0.35)
    tree = shade("tree", value_noise(rng, height, width, 9, 9), 0.8)
    sand = shade("sand", value_noise(rng, height, width, 3, 3), 0.2)
    road = shade("road", value_noise(rng, height, width, 2, 2), 0.2)

    building = shade("building", value_noise(rng, height, width, 30, 30), 0.15)
    window_y = (rows % 14) < 7
    window_x = (np.arange(width)[None, :] * ones % 12) < 6
    windows = (window_y & window_x).astype(float)
    building = _mix(building, np.array([0.20, 0.24, 0.32]) * light.brightness, 0.6 * windows)

    spots = np.clip((value_noise(rng, height, width, 10, 10) - 0.5) * 6.0, 0, 1)
    if rng.random_sample() < 0.5:  # black-and-white cow
        cow = _mix(np.array([0.88, 0.86, 0.82]) * light.brightness, np.array([0.10, 0.09, 0.09]), spots)
    else:  # brown cow with pale patches
        cow = _mix(light.colour("cow") * 0.8, np.array([0.85, 0.80, 0.72]) * light.brightness, 0.7 * spots)
    return {"sky": sky, "water": water, "grass": grass, "tree": tree, "sand": sand, "road": road,
            "building": building, "cow": cow}


# --------------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------------

def layout_scene(rng: np.random.RandomState, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Class index map [H, W] (uint8), ignore mask [H, W] (cow outlines, as VOC marks object borders), horizon row."""
    height, width = shape
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    label = np.full(shape, CLASS_INDEX["sky"], np.uint8)
    horizon = height * (0.30 + 0.15 * rng.random_sample())
    skyline = horizon + 0.08 * height * (noise_1d(rng, width, width / 4) - 0.5)  # [W]
    label[rows > skyline[None, :]] = CLASS_INDEX["grass"]

    kind = rng.randint(3)  # 0 pasture, 1 coast, 2 town
    if kind == 1:  # coast: water below the horizon, then a beach
        shore = skyline + 0.15 * height + 0.12 * height * (noise_1d(rng, width, width / 3) - 0.5)
        beach = shore + 0.08 * height + 0.10 * height * noise_1d(rng, width, width / 3)
        label[(rows > skyline[None, :]) & (rows <= shore[None, :])] = CLASS_INDEX["water"]
        label[(rows > shore[None, :]) & (rows <= beach[None, :])] = CLASS_INDEX["sand"]
    elif kind == 0 and rng.random_sample() < 0.7:  # pasture with a pond
        cy = horizon + (height - horizon) * (0.35 + 0.3 * rng.random_sample())
        cx = width * (0.2 + 0.6 * rng.random_sample())
        pond = blob(rng, shape, cy, cx, 0.10 * height, 0.22 * width) & (rows > skyline[None, :] + 4)
        label[pond] = CLASS_INDEX["water"]
    if kind == 2 or rng.random_sample() < 0.15:  # a road running to a vanishing point on the horizon
        vanish = width * (0.3 + 0.4 * rng.random_sample())
        spread = (rows - horizon) / (height - horizon)  # 0 at horizon, 1 at the bottom
        half = 0.03 * width + 0.30 * width * spread
        centre = vanish + (width * (0.2 + 0.6 * rng.random_sample()) - vanish) * spread
        road = (rows > horizon + 2) & (np.abs(cols - centre) < half)
        label[road & (label != CLASS_INDEX["water"])] = CLASS_INDEX["road"]

    on_land = (label == CLASS_INDEX["grass"]) | (label == CLASS_INDEX["sand"])
    _place_buildings(rng, label, skyline, count=rng.randint(0, 4) if kind != 2 else rng.randint(2, 5))
    _place_trees(rng, label, skyline, count=rng.randint(1, 5))
    ignore = _place_cows(rng, label, on_land, count=rng.randint(1, 4) if kind != 2 else rng.randint(0, 2))
    return label, ignore, horizon


def _place_buildings(rng: np.random.RandomState, label: np.ndarray, skyline: np.ndarray, count: int) -> None:
    height, width = label.shape
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    for _ in range(count):
        x1 = int(rng.random_sample() * width * 0.85)
        x2 = min(width, x1 + int(width * (0.08 + 0.15 * rng.random_sample())))
        base = int(skyline[min((x1 + x2) // 2, width - 1)] + 0.04 * height)
        top = int(base - height * (0.12 + 0.22 * rng.random_sample()))
        label[(rows >= top) & (rows < base) & (cols >= x1) & (cols < x2)] = CLASS_INDEX["building"]


def _place_trees(rng: np.random.RandomState, label: np.ndarray, skyline: np.ndarray, count: int) -> None:
    height, width = label.shape
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    for _ in range(count):
        cx = width * rng.random_sample()
        foot = skyline[int(cx) % width] + 0.25 * (height - skyline[int(cx) % width]) * rng.random_sample()
        size = height * (0.08 + 0.10 * rng.random_sample())
        trunk = (np.abs(cols - cx) < 0.12 * size) & (rows < foot) & (rows > foot - 1.2 * size)
        crown = blob(rng, label.shape, foot - 1.4 * size, cx, 0.9 * size, 0.8 * size, roughness=0.6)
        label[trunk | crown] = CLASS_INDEX["tree"]


def _place_cows(rng: np.random.RandomState, label: np.ndarray, on_land: np.ndarray, count: int) -> np.ndarray:
    height, width = label.shape
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    ignore = np.zeros(label.shape, bool)
    land_rows = np.nonzero(on_land.any(axis=1))[0]
    for _ in range(count if land_rows.size else 0):
        cy = land_rows[0] + (land_rows[-1] - land_rows[0]) * (0.3 + 0.6 * rng.random_sample())
        size = 0.06 * height + 0.08 * height * (cy - land_rows[0]) / max(land_rows[-1] - land_rows[0], 1)
        cx = width * (0.1 + 0.8 * rng.random_sample())
        facing = 1 if rng.random_sample() < 0.5 else -1
        body = blob(rng, label.shape, cy, cx, 0.55 * size, 1.0 * size, roughness=0.15)
        head = blob(rng, label.shape, cy - 0.45 * size, cx + facing * 1.1 * size, 0.3 * size, 0.3 * size, roughness=0.2)
        legs = ((rows > cy) & (rows < cy + 1.0 * size)
                & ((np.abs(cols - (cx - 0.6 * size)) < 0.1 * size) | (np.abs(cols - (cx + 0.6 * size)) < 0.1 * size)))
        cow = body | head | legs
        label[cow] = CLASS_INDEX["cow"]
        ignore |= outline(cow)
    return ignore


def render_scene(rng: np.random.RandomState, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image uint8 [H, W, 3] and label uint8 [H, W] (class index, 255 = ignore)."""
    label, ignore, horizon = layout_scene(rng, shape)
    light = Lighting.draw(rng)
    textures = paint_textures(rng, shape, light, horizon)
    image = np.zeros(shape + (3,))
    for name, texture in textures.items():
        image = np.where((label == CLASS_INDEX[name])[..., None], texture, image)
    image = image + 0.03 * (rng.random_sample(image.shape) - 0.5)  # sensor noise
    image = np.floor(np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    label = np.where(ignore, IGNORE_INDEX, label).astype(np.uint8)
    return image, label


# --------------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------------

def generate_demo(out: str | Path, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED,
                  size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """Write `count` scenes to out/{images,labels}/scene_NNN.png and out/classes.txt, atomically.

    The set is built in a temporary sibling folder and swapped in, so an interrupted run never leaves
    a half-written dataset. Same (count, seed, size) -> byte-identical files.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if min(size) < 64:
        raise ValueError(f"scenes need at least 64 pixels a side, got size={size}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        for index in range(count):
            rng = np.random.RandomState(seed * 100_003 + index)
            image, label = render_scene(rng, tuple(size))
            (staging / "images" / f"scene_{index:03d}.png").write_bytes(encode_png(image))
            (staging / "labels" / f"scene_{index:03d}.png").write_bytes(encode_png(label))
        (staging / "classes.txt").write_text("\n".join(DEMO_CLASSES) + "\n")
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(staging, out)
            shutil.rmtree(trash)
        else:
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out
