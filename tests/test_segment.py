"""One image end to end with small stand-in backbones (colour features), every mode."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lposs.segmentation import extract_features, pool_synonyms, propagate_features, segment


class ColourBackbone:
    """Patch-mean colour as the feature and fixed colour prototypes as 'text': a tiny, exact stand-in."""

    id = "test-colour"
    patch_size = 16
    prototypes = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}

    def dense_features(self, windows):
        pooled = F.avg_pool2d(windows, self.patch_size)  # [B, 3, g, g]
        return F.normalize(pooled.permute(0, 2, 3, 1) + 1e-3, dim=-1)  # [B, g, g, 3]

    def text_embeddings(self, class_names):
        names = [(i, n.strip()) for i, c in enumerate(class_names) for n in c.split(";")]
        emb = torch.tensor([self.prototypes[n] for _, n in names])
        return F.normalize(emb, dim=-1), torch.tensor([i for i, _ in names])


def two_colour_image(h=180, w=240):
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, : w // 2] = (200, 30, 30)
    image[:, w // 2 :] = (30, 200, 30)
    return image


@pytest.mark.parametrize("mode", ["maskclip", "lposs", "lposs+"])
def test_segment_two_colour_image(mode):
    backbone = ColourBackbone()
    labels = segment(two_colour_image(), ["red", "green"], mode=mode, vlm=backbone, vm=backbone, k=50, r=5)
    assert labels.shape == (180, 240)
    assert (labels[:, :100] == 0).all() and (labels[:, 140:] == 1).all()


def test_features_layout_and_shapes():
    backbone = ColourBackbone()
    feats = extract_features(two_colour_image(), ["red", "green; blue"], backbone, backbone)
    assert feats.resized_hw == (448, 597) and len(feats.layout) == 15
    assert feats.seeds.shape == (15 * 196, 3) and feats.vm_feats.shape == (15 * 196, 3)
    assert feats.owner.tolist() == [0, 1, 1]
    scores = propagate_features(feats, mode="lposs", k=30)
    assert scores.shape == (2, 180, 240)


def test_reference_solver_gives_the_same_scores():
    """Batched CG against the released per-column CG: within 2e-6 of the score scale, docs/benchmarks.md's measure
    (max |fast - ref| / max |ref|, benchmarks/speed.py); measured 3.7e-7 here (6.3e-7 elementwise)."""
    backbone = ColourBackbone()
    feats = extract_features(two_colour_image(), ["red", "green", "blue"], backbone, backbone)
    fast = propagate_features(feats, mode="lposs", k=40)
    ref = propagate_features(feats, mode="lposs", k=40, solver="cg_reference")
    torch.testing.assert_close(fast, ref, rtol=0, atol=2e-6 * ref.abs().max().item())


def test_synonyms_are_max_pooled():
    scores = torch.tensor([[[1.0]], [[5.0]], [[3.0]]])
    assert pool_synonyms(scores, torch.tensor([0, 1, 1])).flatten().tolist() == [1.0, 5.0]


def test_bad_inputs_are_named():
    backbone = ColourBackbone()
    with pytest.raises(ValueError, match="class_names is empty"):
        segment(two_colour_image(), [], vlm=backbone, vm=backbone)
    with pytest.raises(ValueError, match="RGB uint8"):
        segment(np.zeros((10, 10), dtype=np.uint8), ["red"], vlm=backbone, vm=backbone)
    feats = extract_features(two_colour_image(), ["red"], backbone, backbone)
    with pytest.raises(ValueError, match=r"mode=.lposs\+\+.: choose one of maskclip"):
        propagate_features(feats, mode="lposs++")


def test_segment_runs_the_heads_own_step_in_mode_own():
    """mode "own": the seeds, then the step it is given (NACLIP's PAMR here); without a step, the seeds."""
    backbone = ColourBackbone()
    image = np.random.RandomState(0).randint(0, 255, (96, 128, 3), dtype=np.uint8)
    names, windows = ["red", "green", "blue"], {"crop": 64, "stride": 32, "short_side": 96}
    seeds = segment(image, names, mode="maskclip", vlm=backbone, vm=backbone, **windows)
    assert torch.equal(segment(image, names, mode="own", vlm=backbone, vm=backbone, **windows), seeds)
    refined = segment(image, names, mode="own", vlm=backbone, vm=backbone, own_step={"name": "pamr"}, **windows)
    features = extract_features(torch.from_numpy(image).permute(2, 0, 1) / 255.0, names, backbone, backbone,
                                crop=64, stride=32, short_side=96)
    direct = propagate_features(features, mode="own", own_step={"name": "pamr"}).argmax(0)
    assert torch.equal(refined, direct) and not torch.equal(refined, seeds)
