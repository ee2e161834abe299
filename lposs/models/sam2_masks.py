"""SAM 2 hiera-L automatic masks as region maps, through the `sam2` package (Ravi et al., 2024): CorrCLIP's
mask model.

    masks = Sam2Masks()                         # the cached (or downloaded) sam2_hiera_large.pt
    masks = Sam2Masks(checkpoint="sam2.pt")     # a local file; checkpoint="random": seeded random weights
    regions = masks.regions(image)              # image [3, H, W] in [0, 1] -> LongTensor [H, W], 0 = no mask

What CorrCLIP runs (zdk258/CorrCLIP, CorrCLIPv1/corrclip_segmentor.py:263-272, 329-342, pip sam2 1.1.0):
`build_sam2("sam2_hiera_l.yaml", "sam2_hiera_large.pt", apply_postprocessing=False)` and
`SAM2AutomaticMaskGenerator(points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4,
multimask_output=False)`, every other setting the package's default; the masks become one map by ascending
area, a larger mask overwriting the smaller ones (`lposs.models.sam_masks.regions_from_masks`, the same rule as
for SAM ViT-B). One difference: CorrCLIP casts the model to float16 and runs it under CUDA fp16 autocast; this
runs it in float32 on any device (a CPU has no fast float16), so a mask near a threshold may come out differently.
The config ships inside the sam2 package; the weights are Meta's file (checkpoints/download_ckpts.sh of
facebookresearch/sam2), kept in torch hub's checkpoint folder like SAM ViT-B's, with the same fail-fast offline
error (`lposs.models.loading.torch_hub_weights`). The generator resizes every image to the model's 1024 x 1024
input, whatever its size.
"""

from __future__ import annotations

import os
from typing import Any

from .loading import seeded, torch_hub_weights, weights_label
from .sam_masks import IOU_THRESHOLD, POINTS_PER_SIDE, STABILITY_THRESHOLD, AutomaticMasks

SAM2_CONFIG = "sam2_hiera_l.yaml"  # in the sam2 package (hydra's config module "sam2")
SAM2_HIERA_L_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt"
MULTIMASK_OUTPUT = False  # CorrCLIP: one mask per point


def sam2_hiera_l_weights(checkpoint: str | os.PathLike | None) -> str:
    """The local path of SAM 2 hiera-L's weights: `checkpoint`, or torch hub's cached copy, downloaded when
    possible."""
    return torch_hub_weights(checkpoint, SAM2_HIERA_L_URL, "SAM 2 hiera-L (sam2)", "--masks-checkpoint")


def build_sam2_model(checkpoint: str | os.PathLike | None = None, seed: int = 0, overrides: tuple[str, ...] = (),
                     config: str = SAM2_CONFIG) -> Any:
    """sam2's `build_sam2(config)` on the CPU, eval mode, without the video post-processing (as CorrCLIP):
    checkpoint "random" = seeded random weights, else the file `sam2_hiera_l_weights` resolves. overrides: hydra
    overrides of the config (tests build a small model)."""
    from sam2.build_sam import build_sam2

    def build(path: str | None) -> Any:
        return build_sam2(config, path, device="cpu", apply_postprocessing=False, hydra_overrides_extra=list(overrides))

    if checkpoint == "random":
        return seeded(seed, lambda: build(None))
    return build(sam2_hiera_l_weights(checkpoint))


class Sam2Masks(AutomaticMasks):
    """SAM 2's automatic mask generator as a mask model (see the module docstring). model: a built
    `sam2.modeling.sam2_base.SAM2Base` to use instead of hiera-L (tests build a small one)."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu", model: Any = None,
                 points_per_side: int = POINTS_PER_SIDE, seed: int = 0):
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        if model is None:
            model = build_sam2_model(checkpoint, seed)
            weights = ("sam2_hiera_large" if checkpoint is None
                       else weights_label(None, None if checkpoint == "random" else checkpoint, seed))
        else:
            weights = f"custom-{type(model).__name__}"
        self.generator = SAM2AutomaticMaskGenerator(model.to(device).eval(), points_per_side=points_per_side,
                                                    pred_iou_thresh=IOU_THRESHOLD,
                                                    stability_score_thresh=STABILITY_THRESHOLD,
                                                    multimask_output=MULTIMASK_OUTPUT)
        # SAM2ImagePredictor hard-codes the backbone's feature sizes for a 1024 input; derive them from the model's
        # input size (strides 4, 8, 16) so a smaller model runs too. For hiera-L these are the same numbers.
        size = model.image_size
        self.generator.predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8),
                                                   (size // 16, size // 16)]
        self.id = (f"sam2_hiera_l-{weights}-points{points_per_side}-iou{IOU_THRESHOLD:g}"
                   f"-stability{STABILITY_THRESHOLD:g}-single")
