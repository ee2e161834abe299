"""Class-agnostic mask models: the region maps LPOSS's graphs can respect (`lposs.core.regions`).

    masks = create_mask_model("demo")      # None for "none"
    regions = masks.regions(image)         # image [3, H, W] in [0, 1] -> LongTensor [H, W], 0 = no region
    masks.id                               # what the feature store's manifest records

MASK_MODELS names what is available: "none" (no regions: the graphs of the paper) and "demo" (the stand-in of
the offline demo, `lposs.demo.masks`: colour segments, no download). The features stage computes an image's
regions once, at the resized size the windows are cut from, and stores them beside the seeds; a propagation or
refiner setting never recomputes them.
"""

from __future__ import annotations

from typing import Any

MASK_MODELS = ("none", "demo")


def create_mask_model(name: str, device: str = "cpu") -> Any:
    """The mask model `name` (see MASK_MODELS), or None for "none"."""
    if name not in MASK_MODELS:
        raise ValueError(f"unknown mask model {name!r}; choose one of {', '.join(MASK_MODELS)}")
    if name == "none":
        return None
    from ..demo.masks import DemoMasks

    return DemoMasks()
