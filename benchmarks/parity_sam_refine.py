"""Parity of lposs.models.sam_refine with Trident's own `sam_refinement` (seg_utils/utils.py:92-197; not a test).

Both get the same SamPredictor (pip segment-anything's SAM ViT-B, seeded random weights, the image set once), the
same coarse label map and class probabilities (3 classes in blocks, a small region below minimal_area, noise), and
the release's constants (coarse_thresh 0.2, minimal_area 225, sam_mask_coff 0.005) at several IoU thresholds:
every mask kept, about half kept (the failed regions' rule), none kept. Prints how many labels differ and the max
abs difference of the refined probabilities.

The release imports skimage (its connected regions; ours use scipy.ndimage with the same 8-connectivity) and cv2:

    pip install --target /tmp/skimage_pkgs scikit-image lazy_loader imageio tifffile networkx --no-deps
    git -C <Trident mirror> archive HEAD seg_utils | tar -x -C /tmp/trident_release
    PYTHONPATH=.:/tmp/skimage_pkgs python benchmarks/parity_sam_refine.py /tmp/trident_release
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from lposs.models.sam_attention import rounded_image
from lposs.models.sam_refine import STEP_DEFAULTS, sam_refine


def import_release_utils(checkout: Path):
    spec = importlib.util.spec_from_file_location("trident_seg_utils", checkout / "seg_utils" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def coarse_map(height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(height, width, dtype=torch.long)
    labels[: height // 2, width // 2 :], labels[height * 5 // 8 :, : width // 3] = 1, 2
    labels[height * 3 // 4 : height * 3 // 4 + 10, width * 3 // 4 : width * 3 // 4 + 10] = 2  # below 225 halved
    probs = 0.1 + 0.8 * F.one_hot(labels, 3).permute(2, 0, 1).float() + 0.3 * torch.rand(3, height, width, generator=g)
    return labels, probs / probs.sum(0, keepdim=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="folder holding the release's seg_utils/")
    args = parser.parse_args()
    from segment_anything import SamPredictor, sam_model_registry

    release = import_release_utils(args.checkout)
    torch.manual_seed(0)
    predictor = SamPredictor(sam_model_registry["vit_b"]().eval())
    height, width = 300, 400
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        predictor.set_image(rounded_image(image))
        labels, probs = coarse_map(height, width, seed=2)
        ious = []
        spy = predictor.predict_torch
        predictor.predict_torch = lambda **kw: (out := spy(**kw), ious.extend(out[1][:, 0].tolist()))[0]
        sam_refine(predictor, (height, width), labels, probs, {"sam_iou_thresh": -1.0})
        predictor.predict_torch = spy
        middle = sorted(ious)[len(ious) // 2]
        for threshold in (-1.0, middle, 2.0):
            step = {**STEP_DEFAULTS, "sam_iou_thresh": threshold}
            ours, ours_probs = sam_refine(predictor, (height, width), labels, probs, step)
            theirs, _, theirs_probs, _ = release.sam_refinement(
                (image.permute(1, 2, 0) * 255).byte().numpy(), labels[None], probs, 3, predictor,
                step["coarse_thresh"], step["minimal_area"], step["sam_mask_coff"], threshold)
            differ = int((ours != theirs.reshape(ours.shape)).sum())
            gap = (ours_probs - theirs_probs.reshape(ours_probs.shape)).abs().max().item()
            kept = sum(iou > threshold for iou in ious)
            print(f"IoU threshold {threshold:+.3f} ({kept} of {len(ious)} masks kept): {differ} labels differ, "
                  f"max abs difference of the refined probabilities {gap:.2e}")


if __name__ == "__main__":
    main()
