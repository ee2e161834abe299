"""Class-agnostic mask models: the region maps LPOSS's graphs can respect (`lposs.core.regions`).

    masks = create_mask_model("demo")      # None for "none"
    regions = masks.regions(image)         # image [3, H, W] in [0, 1] -> LongTensor [H, W], 0 = no region
    masks.id                               # what the feature store's manifest records

MASK_MODELS names what is available: "none" (no regions: the graphs of the paper), "demo" (the stand-in of
the offline demo, `lposs.demo.masks`: colour segments, no download) and "sam_vit_b" (SAM ViT-B's automatic masks
through segment-anything, `lposs.models.sam_masks`; `pip install -e .[masks]`). The features stage computes an image's
regions once, at the resized size the windows are cut from, and stores them beside the seeds; a propagation or
refiner setting never recomputes them.
"""

from __future__ import annotations

from typing import Any

MASK_MODELS = ("none", "demo", "sam_vit_b")


def create_mask_model(name: str, device: str = "cpu", checkpoint: str | None = None) -> Any:
    """The mask model `name` (see MASK_MODELS), or None for "none". checkpoint: SAM's weight file ("random":
    seeded random weights); None = the cached or downloaded one."""
    if name not in MASK_MODELS:
        raise ValueError(f"unknown mask model {name!r}; choose one of {', '.join(MASK_MODELS)}")
    if name == "none":
        return None
    if name == "demo":
        from ..demo.masks import DemoMasks

        return DemoMasks()
    try:
        from .sam_masks import SamMasks
    except ImportError as error:
        raise ImportError(f"mask model {name!r} needs the segment-anything package: pip install -e .[masks] "
                          f"({error})") from error
    return SamMasks(checkpoint, device)
