"""SAM ViT-B automatic masks as region maps, through the segment-anything package (Kirillov et al., ICCV 2023).

    masks = SamMasks()                        # the cached (or downloaded) sam_vit_b_01ec64.pth
    masks = SamMasks(checkpoint="sam.pth")    # a local file; checkpoint="random": seeded random weights (tests)
    regions = masks.regions(image)            # image [3, H, W] in [0, 1] -> LongTensor [H, W], 0 = no mask

`segment_anything.SamAutomaticMaskGenerator` prompts SAM with a points_per_side x points_per_side grid (8, the
grid of CorrCLIP's SAM 2 option) and keeps masks whose predicted IoU and stability pass 0.4 (CorrCLIP's
thresholds); every other setting is the package's default. The masks become one map by CorrCLIP's rule
(`regions_from_masks`, shared with SAM 2: `lposs.models.sam2_masks`). Weights come from torch hub's checkpoint
folder (`$TORCH_HOME/hub/checkpoints`), where `torch.hub.load_state_dict_from_url` puts them; offline without them,
loading stops at once naming the file and the command that fetches it (`lposs.models.loading.torch_hub_weights`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .loading import seeded, torch_hub_weights

SAM_VIT_B_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
POINTS_PER_SIDE = 8
IOU_THRESHOLD = 0.4
STABILITY_THRESHOLD = 0.4


def regions_from_masks(masks: list[np.ndarray], shape: tuple[int, int]) -> Tensor:
    """Binary masks [H, W] -> one region map [H, W] (int64), CorrCLIP's rule: ids 1, 2, ... by ascending area,
    each mask painted in that order, so a larger mask overwrites the smaller ones it covers; 0 where none."""
    out = np.zeros(shape, dtype=np.int64)
    for region, mask in enumerate(sorted(masks, key=lambda m: int(m.sum())), start=1):
        out[mask] = region
    return torch.from_numpy(out)


def sam_vit_b_weights(checkpoint: str | os.PathLike | None) -> str:
    """The local path of SAM ViT-B's weights: `checkpoint`, or torch hub's cached copy, downloaded when possible."""
    return torch_hub_weights(checkpoint, SAM_VIT_B_URL, "SAM ViT-B (segment-anything)", "--masks-checkpoint")


def build_sam_vit_b(checkpoint: str | os.PathLike | None, seed: int = 0) -> tuple[Any, str]:
    """segment-anything's SAM ViT-B and the label of its weights: checkpoint "random" -> seeded random weights
    ("random"); else `sam_vit_b_weights(checkpoint)` ("sam_vit_b_01ec64")."""
    from segment_anything import sam_model_registry

    build = sam_model_registry["vit_b"]
    if checkpoint == "random":
        return seeded(seed, build), "random"
    return build(checkpoint=sam_vit_b_weights(checkpoint)), "sam_vit_b_01ec64"


def image_pixels(image: Tensor) -> np.ndarray:
    """image [3, H, W] float in [0, 1] -> [H, W, 3] uint8, what the automatic mask generators take."""
    return (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


class AutomaticMasks:
    """A mask model around an automatic mask generator (`self.generator.generate(pixels)` -> records with a
    "segmentation" [H, W] bool each, segment-anything's and sam2's alike); subclasses build it and set `id`."""

    generator: Any
    id: str

    @torch.no_grad()
    def regions(self, image: Tensor) -> Tensor:
        """image [3, H, W] in [0, 1] -> region ids [H, W] (int64; 0 = no mask)."""
        pixels = image_pixels(image)
        masks = [m["segmentation"] for m in self.generator.generate(pixels)]  # [H, W] bool each
        return regions_from_masks(masks, tuple(pixels.shape[:2]))


class SamMasks(AutomaticMasks):
    """SAM's automatic mask generator as a mask model (see the module docstring). model: a built
    `segment_anything.modeling.Sam` to use instead of ViT-B (tests build a small one)."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu", model: Any = None,
                 points_per_side: int = POINTS_PER_SIDE, seed: int = 0):
        from segment_anything import SamAutomaticMaskGenerator

        if model is None:
            model, weights = build_sam_vit_b(checkpoint, seed)
        else:
            weights = f"custom-{type(model).__name__}"
        self.generator = SamAutomaticMaskGenerator(model.to(device).eval(), points_per_side=points_per_side,
                                                   pred_iou_thresh=IOU_THRESHOLD,
                                                   stability_score_thresh=STABILITY_THRESHOLD)
        self.id = f"sam_vit_b-{weights}-points{points_per_side}-iou{IOU_THRESHOLD:g}-stability{STABILITY_THRESHOLD:g}"
