"""Trident's SAM refinement (lposs.models.sam_refine), the own step "sam_refine", on a small SAM with SAM's own
1024 px input (random weights). The release's code itself is compared in benchmarks/parity_sam_refine.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_masks import tiny_sam

from lposs.models.sam_refine import class_regions, sam_refine

pytest.importorskip("segment_anything")


@pytest.fixture(scope="module")
def predictor():
    from segment_anything import SamPredictor

    from lposs.models.sam_attention import rounded_image

    sam = SamPredictor(tiny_sam(1024).eval())
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sam.set_image(rounded_image(image))
    return sam


def coarse_map() -> tuple[torch.Tensor, torch.Tensor]:
    """labels [96, 128] of 3 classes in blocks, and probabilities that agree with them."""
    labels = torch.zeros(96, 128, dtype=torch.long)
    labels[:48, 64:], labels[60:, :40] = 1, 2
    labels[70:74, 100:104] = 2  # too small a region (2 x 2 on the halved map)
    probs = 0.1 + 0.8 * F.one_hot(labels, 3).permute(2, 0, 1).float()
    probs += 0.05 * torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1))
    return labels, probs / probs.sum(0, keepdim=True)


def test_class_regions_are_8_connected_big_enough_and_prompt_at_their_peak():
    onehot = np.zeros((2, 12, 12), dtype=bool)
    onehot[0, 0:3, 0:3] = onehot[0, 3:5, 3:5] = True  # touching at a corner: one region of 13 pixels
    onehot[0, 8:10, 8:10] = True  # 4 pixels: below minimal_area
    probs = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(2))
    probs[0, 4, 3] = 5.0
    found = class_regions(onehot, probs, classes=2, coarse=0.0, minimal_area=5)
    masks, boxes, points = found[0]
    assert masks.shape == (1, 12, 12) and int(masks.sum()) == 13 and 1 not in found
    assert boxes.tolist() == [[0.0, 0.0, 4.0, 4.0]] and points.tolist() == [[3.0, 4.0]]  # x, y of the peak


def test_no_mask_passes_the_iou_threshold_and_nothing_changes(predictor):
    labels, probs = coarse_map()
    refined, _ = sam_refine(predictor, (96, 128), labels, probs, {"sam_iou_thresh": 2.0, "minimal_area": 20})
    assert torch.equal(refined, labels)


def test_kept_masks_redraw_each_class_as_the_release_computes_it(predictor, monkeypatch):
    labels, probs = coarse_map()
    seen = []
    predict = predictor.predict_torch

    def spy(**kwargs):
        out = predict(**kwargs)
        seen.append((kwargs, out))
        return out

    monkeypatch.setattr(predictor, "predict_torch", spy)
    step = {"sam_iou_thresh": -1.0, "minimal_area": 20, "coarse_thresh": 0.2}
    refined, refined_probs = sam_refine(predictor, (96, 128), labels, probs, step)
    assert len(seen) == 3  # one SAM call per class with a region; the 2 x 2 region of class 2 is skipped
    assert [len(kwargs["boxes"]) for kwargs, _ in seen] == [1, 1, 1]
    mask_prompt = seen[1][0]["mask_input"]  # class 1: 0.005 x its probabilities where above 0.2, on 256 px
    assert mask_prompt.shape == (1, 256, 256) and 0 < mask_prompt.max() <= 0.005  # unbatched, as released
    expected = torch.zeros(3, 96, 128)
    for c, (_, (_, _, logits)) in enumerate(seen):
        full = predictor.model.postprocess_masks(logits, predictor.input_size, predictor.original_size)[:, 0]
        expected[c] = (full.sigmoid() * probs[c]).max(0).values * (full > 0).any(0)
    assert torch.allclose(refined_probs, expected, atol=1e-6)
    assert torch.equal(refined, torch.where(expected.sum(0) == 0, labels, expected.argmax(0)))


def test_the_own_step_runs_through_propagate_features(predictor, monkeypatch):
    from lposs.core.scoring import labels_from_scores
    from lposs.image_features import ImageFeatures
    from lposs.models import sam_refine as module
    from lposs.segmentation import propagate_features

    monkeypatch.setattr(module, "sam_predictor", lambda weights=None, device="cpu": predictor)
    torch.manual_seed(3)
    features = ImageFeatures(seeds=torch.randn(8, 3), vm_feats=F.normalize(torch.randn(8, 4), dim=-1),
                             owner=torch.tensor([0, 1, 2]), layout=[(0, 32, 0, 32), (0, 32, 16, 48)],
                             resized_hw=(32, 48), original_hw=(64, 96), grid=2, crop=32,
                             image_resized=torch.rand(3, 32, 48))
    rule = {"background": "softmax", "logit_scale": 40.0, "prob_thd": 0.0, "area_thd": None}
    step = {"name": "sam_refine", "sam_iou_thresh": -1.0, "minimal_area": 4, "coarse_thresh": 0.0}
    seeds = propagate_features(features, "maskclip", background=rule)
    scores = propagate_features(features, "own", background=rule, own_step=step)
    expected = module.refine_with_sam(features.image_resized, labels_from_scores(seeds, rule), seeds, step, predictor)
    assert torch.equal(labels_from_scores(scores, rule), expected)
