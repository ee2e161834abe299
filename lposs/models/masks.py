"""Class-agnostic mask models: the region maps LPOSS's graphs can respect (`lposs.core.regions`).

    masks = create_mask_model("demo")      # None for "none"
    regions = masks.regions(image)         # image [3, H, W] in [0, 1] -> LongTensor [H, W], 0 = no region
    masks.id                               # what the feature store's manifest records

MASK_MODELS names what is available: "none" (no regions: the graphs of the paper), "demo" (the stand-in of
the offline demo, `lposs.demo.masks`: colour segments, no download), "sam_vit_b" (SAM ViT-B's automatic masks
through segment-anything, `lposs.models.sam_masks`) and "sam2_hiera_l" (SAM 2 hiera-L's, CorrCLIP's mask model,
through the sam2 package, `lposs.models.sam2_masks`); both SAMs use CorrCLIP's 8 x 8 point grid, 0.4 thresholds
and ascending-area merge, weights from torch hub's cache (`pip install -e .[masks]`). The features stage computes an
image's regions once, at the resized size the windows are cut from, and stores them beside the seeds; a propagation
or refiner setting never recomputes them.
"""

from __future__ import annotations

from typing import Any

MASK_MODELS = ("none", "demo", "sam_vit_b", "sam2_hiera_l")
PACKAGES = {"sam_vit_b": "segment-anything", "sam2_hiera_l": "sam2"}  # what each SAM imports


def create_mask_model(name: str, device: str = "cpu", checkpoint: str | None = None) -> Any:
    """The mask model `name` (see MASK_MODELS), or None for "none". checkpoint: the SAM's weight file ("random":
    seeded random weights); None = the cached or downloaded one."""
    if name not in MASK_MODELS:
        raise ValueError(f"unknown mask model {name!r}; choose one of {', '.join(MASK_MODELS)}")
    if name == "none":
        return None
    if name == "demo":
        from ..demo.masks import DemoMasks

        return DemoMasks()
    try:
        if name == "sam2_hiera_l":
            from .sam2_masks import Sam2Masks as Masks
        else:
            from .sam_masks import SamMasks as Masks
        return Masks(checkpoint, device)  # the SAM package is imported here
    except ImportError as error:
        raise ImportError(f"mask model {name!r} needs the {PACKAGES[name]} package: pip install -e .[masks] "
                          f"({error})") from error
