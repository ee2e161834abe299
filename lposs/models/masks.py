"""Class-agnostic mask models: the region maps LPOSS's graphs can respect (`lposs.core.regions`).

    masks = create_mask_model("demo")      # None for "none"
    regions = masks.regions(image)         # image [3, H, W] in [0, 1] -> LongTensor [H, W], 0 = no region
    masks.id                               # what the feature store's manifest records

MASK_MODELS names what is available (`MASK_BUILDERS`, one entry each): "none" (no regions: the graphs of the
paper), "demo" (the stand-in of the offline demo, `lposs.demo.masks`: colour segments, no download), "sam_vit_b"
(SAM ViT-B's automatic masks through segment-anything, `lposs.models.sam_masks`), "sam2_hiera_l" (SAM 2 hiera-L's,
CorrCLIP's mask model, through the sam2 package, `lposs.models.sam2_masks`), "panoptic_cut" (LaVG's: normalized cuts
on DINO ViT-B/8's keys and a dense CRF, `lposs.models.panoptic_cut`; no SAM) and "panoptic_cut_demo" (the same
with the demo's stand-in for DINO, offline). Both SAMs use CorrCLIP's 8 x 8 point grid, 0.4 thresholds and
ascending-area merge, weights from torch hub's cache; Panoptic Cut's DINO comes from the Hugging Face cache (timm)
and its CRF from pydensecrf (`pip install -e .[masks]` for all of them). The features stage computes an image's
regions once, at the resized size the windows are cut from, and stores them beside the seeds; a propagation or
refiner setting never recomputes them. A model of overlapping masks (`overlapping`: Panoptic Cut) reads the
original image, and its masks are stored too (`masks(image)` -> bool [M, H, W]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _demo(device: str, checkpoint: str | None) -> Any:
    from ..demo.masks import DemoMasks

    return DemoMasks()


def _sam_vit_b(device: str, checkpoint: str | None) -> Any:
    from .sam_masks import SamMasks

    return SamMasks(checkpoint, device)


def _sam2_hiera_l(device: str, checkpoint: str | None) -> Any:
    from .sam2_masks import Sam2Masks

    return Sam2Masks(checkpoint, device)


def _panoptic_cut(device: str, checkpoint: str | None) -> Any:
    from .panoptic_cut import PanopticCut

    return PanopticCut.dino(checkpoint, device)


def _panoptic_cut_demo(device: str, checkpoint: str | None) -> Any:
    from .panoptic_cut import DemoKeys, PanopticCut

    return PanopticCut(DemoKeys(device))


# name -> build(device, checkpoint) (None: no model), and the package each needs beyond the base install
MASK_BUILDERS: dict[str, Callable[[str, str | None], Any] | None] = {
    "none": None, "demo": _demo, "sam_vit_b": _sam_vit_b, "sam2_hiera_l": _sam2_hiera_l,
    "panoptic_cut": _panoptic_cut, "panoptic_cut_demo": _panoptic_cut_demo}
PACKAGES = {"sam_vit_b": "segment-anything", "sam2_hiera_l": "sam2", "panoptic_cut": "pydensecrf2",
            "panoptic_cut_demo": "pydensecrf2"}
MASK_MODELS = tuple(MASK_BUILDERS)
OVERLAPPING = frozenset({"panoptic_cut", "panoptic_cut_demo"})  # models whose `overlapping` masks are stored too


def create_mask_model(name: str, device: str = "cpu", checkpoint: str | None = None) -> Any:
    """The mask model `name` (see MASK_MODELS), or None for "none". checkpoint: its weight file (SAM's, or DINO
    ViT-B/8's for panoptic_cut; "random": seeded random weights); None = the cached or downloaded one."""
    if name not in MASK_BUILDERS:
        raise ValueError(f"unknown mask model {name!r}; choose one of {', '.join(MASK_MODELS)}")
    build = MASK_BUILDERS[name]
    if build is None:
        return None
    try:
        return build(device, checkpoint)  # the model's package is imported here
    except ImportError as error:
        if name not in PACKAGES:
            raise
        raise ImportError(f"mask model {name!r} needs the {PACKAGES[name]} package: pip install -e .[masks] "
                          f"({error})") from error
