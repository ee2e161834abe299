"""Each release's own post-step as the evaluation mode "own": which head has which, and what the mode computes."""

import pytest
import torch
import torch.nn.functional as F

from lposs.core.own_steps import run_label_step, run_own_step
from lposs.core.pamr import clip_normalise, pamr
from lposs.core.regions import region_mode
from lposs.core.scoring import class_scores
from lposs.core.tlp import text_self_affinity, tlp
from lposs.experiment import tables
from lposs.experiment.parameters import PipelineParams
from lposs.image_features import ImageFeatures, merge_patches
from lposs.models.protocols import own_step
from lposs.segmentation import propagate_features
from lposs.settings import MODES, Setting


def test_each_release_names_its_own_step_with_its_values_per_dataset():
    assert own_step("pearl", "voc21") == {"name": "tlp", "grid": 80}
    assert own_step("pearl", "cityscapes") == {"name": "tlp", "grid": 224}  # PEARL's coarser grid there
    assert own_step("naclip", "ade20k") == {"name": "pamr"}
    assert own_step("corrclip", "voc21") == {"name": "region_mode"}  # CorrCLIP's map correction
    assert own_step("trident", "ade20k", sam="random") == {"name": "sam_refine", "coarse_thresh": 0.05,
                                                          "minimal_area": 225, "sam_mask_coff": 0.005,
                                                          "sam_iou_thresh": 0.8, "sam": "random"}
    for head in ("maskclip", "sclip", "clearclip", "proxyclip", "scclip", "sfp", "resclip", "cass"):
        assert own_step(head, "voc21") is None, head  # PAMR off or absent in these releases


def test_tlp_from_the_self_affinity_equals_tlp_from_the_text():
    torch.manual_seed(0)
    logits, image, text = torch.randn(1, 5, 40, 56), torch.rand(1, 3, 40, 56), torch.randn(5, 16)
    expected = tlp(logits, image, text, grid=8)
    assert torch.allclose(tlp(logits, image, grid=8, self_affinity=text_self_affinity(text)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="one of the two"):
        tlp(logits, image, text, self_affinity=text_self_affinity(text))


def test_run_own_step_runs_the_named_step_on_the_clip_normalised_image():
    torch.manual_seed(1)
    canvas, image, text = torch.randn(4, 48, 64), torch.rand(3, 48, 64), torch.randn(4, 8)
    affinity = text_self_affinity(text)
    refined = run_own_step(canvas, image, {"name": "tlp", "grid": 16}, affinity)
    expected = tlp(canvas[None], clip_normalise(image)[None], text, grid=16)[0]
    assert torch.allclose(refined, expected, atol=1e-6) and not torch.allclose(refined, canvas, atol=1e-3)
    assert torch.equal(run_own_step(canvas, image, {"name": "pamr"}), pamr(image, canvas))
    with pytest.raises(ValueError, match="unknown own step 'crf'"):
        run_own_step(canvas, image, {"name": "crf"})
    with pytest.raises(ValueError, match="re-run the features stage"):
        run_own_step(canvas, image, {"name": "tlp"}, None)
    with pytest.raises(ValueError, match="differ in size"):
        run_own_step(canvas, image[:, :40], {"name": "pamr"})


def _features() -> ImageFeatures:
    """Two 2 x 2-patch windows side by side on a 32 x 48 image, 3 queries for 2 classes."""
    torch.manual_seed(2)
    text = torch.randn(3, 8)
    return ImageFeatures(seeds=torch.randn(8, 3), vm_feats=F.normalize(torch.randn(8, 4), dim=-1),
                         owner=torch.tensor([0, 1, 1]), layout=[(0, 32, 0, 32), (0, 32, 16, 48)],
                         resized_hw=(32, 48), original_hw=(64, 96), grid=2, crop=32,
                         image_resized=torch.rand(3, 32, 48), text_affinity=text_self_affinity(text))


def test_mode_own_is_the_seeds_canvas_then_the_step_then_the_protocols_rule():
    features = _features()
    rule = {"background": "softmax", "logit_scale": 40.0, "prob_thd": 0.0, "area_thd": None}
    step = {"name": "tlp", "grid": 8}
    scores = propagate_features(features, "own", background=rule, own_step=step)
    canvas = run_own_step(merge_patches(features, features.seeds), features.image_resized, step,
                          features.text_affinity)  # [3, 32, 48]
    canvas = F.interpolate(canvas[None], size=(64, 96), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(scores, class_scores(canvas, features.owner, rule), atol=1e-6)
    seeds_only = propagate_features(features, "maskclip", background=rule)
    assert not torch.allclose(scores, seeds_only, atol=1e-4)
    # a head whose release has no own step: the row is its seeds
    assert torch.equal(propagate_features(features, "own", background=rule), seeds_only)


def test_own_is_an_evaluation_mode_but_not_one_segment_offers():
    assert Setting(mode="own").mode == "own" and "own" not in MODES
    with pytest.raises(ValueError, match="mode='owned'"):
        Setting(mode="owned")


def test_the_table_names_each_rows_step_and_what_it_is_built_on():
    run = {"head": "pearl", "vm": "dinov3_vitb16", "protocol": "pearl", "clip": "ViT-B-16 openai", "proxy": None,
           "own_step": "tlp", "modes": {}}
    assert tables.method_name(run, "own") == "+ own step (PEARL's TLP)"
    assert tables.built_on(run, "own") == "CLIP ViT-B-16 openai, training-free"  # TLP uses no graph model
    assert tables.built_on(run, "lposs+") == "CLIP ViT-B-16 openai + dinov3_vitb16 graph, training-free"
    cass = {**run, "head": "cass", "proxy": "dino_vitb8", "own_step": None}
    assert tables.built_on(cass, "maskclip") == "CLIP ViT-B-16 openai + dino_vitb8 proxy, training-free"
    assert tables.method_name(cass, "own") == "+ own step (none in its release)"


def test_the_protocols_head_and_text_parameters_reach_only_its_own_head():
    params = PipelineParams.load("params.yaml", {"backbone": {"vlm": "ViT-B-16", "vlm_pretrained": "random",
                                                             "heads": ["resclip"], "vms": ["dino_vitb16"],
                                                             "vm_pretrained": "random"},
                                                "protocol": {"name": "resclip"}})
    spec = params.backbone_spec("resclip", "dino_vitb16", "voc20")
    assert dict(spec.head_params) == {"temp_thd": 0.1, "rcs_weights": (2.0, 0.6), "sfr_weights": (2.1, 0.6)}
    assert dict(params.backbone_spec("resclip", "dino_vitb16", "ade20k").head_params)["temp_thd"] == 0.25
    assert params.backbone_spec("scclip", "dino_vitb16", "voc20").head_params == ()  # not ResCLIP's head
    assert params.backbone_spec("resclip", "dino_vitb16").head_params == ()  # no dataset: the head's defaults
    assert params.built_on("cass") == {"clip": "ViT-B-16 random", "proxy": "dino_vitb8", "masks": None,
                                       "training": "training-free"}
    assert params.built_on("trident") == {"clip": "ViT-B-16 random", "proxy": "dino_vitb16", "masks": "sam_vit_b",
                                          "training": "training-free"}
    assert params.own_step("trident", "voc21")["sam"] == "random"  # random CLIP: random SAM for its refinement
    cass = PipelineParams.load("params.yaml", {"backbone": {"vlm": "ViT-B-16", "vlm_pretrained": "random"},
                                               "protocol": {"name": "cass"}})
    spec = cass.backbone_spec("cass", "dino_vitb16", "cityscapes")
    assert dict(spec.head_params) == {"rescale_singular": False}
    assert dict(spec.text_params) == {"global_semantics_weight": 0.1, "mean_vector_weight": 0.03,
                                      "h_threshold": 0.14, "global_from": "window"}
    assert cass.backbone_spec("pearl", "dino_vitb16", "cityscapes").text_params == ()
    assert params.own_step("pearl", "cityscapes") == {"name": "tlp", "grid": 224}


def test_region_mode_gives_each_region_its_commonest_label_but_skips_the_smallest_id():
    labels = torch.tensor([[0, 1, 1, 2], [0, 1, 2, 2], [3, 3, 3, 1]])
    regions = torch.tensor([[0, 5, 5, 5], [0, 5, 5, 7], [7, 7, 9, 9]])
    # region 5: labels 1, 1, 2, 1, 2 -> 1; region 7: 2, 3, 3 -> 3; region 9: 3, 1 tie -> the smaller, 1
    expected = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 3], [3, 3, 1, 1]])
    assert torch.equal(region_mode(labels, regions), expected)
    # no pixel of id 0: the smallest id present (5) is the release's "unsegmented" region and keeps its labels
    covered = regions.masked_fill(regions == 0, 5)
    kept = region_mode(labels, covered)
    assert torch.equal(kept[covered == 5], labels[covered == 5]) and torch.equal(kept[2], expected[2])
    for region in (7, 9):  # ties and modes as torch.mode computes them
        assert (kept[covered == region] == torch.mode(labels[covered == region]).values).all()


def test_the_label_step_rewrites_only_the_pixels_whose_label_changes():
    torch.manual_seed(3)
    scores = torch.rand(3, 6, 8)
    regions = torch.zeros(3, 4, dtype=torch.long)
    regions[:, 2:] = 1  # half of the image at a third of the size: resized by nearest neighbour
    rule = {"background": "softmax", "logit_scale": 40.0, "prob_thd": 0.0, "area_thd": None}
    out = run_label_step(scores, regions, {"name": "region_mode"}, rule)
    labels = scores.argmax(0)
    mode = torch.mode(labels[:, 4:].reshape(-1)).values
    assert (out.argmax(0)[:, 4:] == mode).all() and torch.equal(out[:, :, :4], scores[:, :, :4])
    with pytest.raises(ValueError, match="runs on labels"):
        run_own_step(scores, torch.rand(3, 6, 8), {"name": "region_mode"})


def test_mode_own_of_corrclip_corrects_the_labels_region_by_region():
    features = _features()
    features.regions = torch.zeros(32, 48, dtype=torch.long)
    features.regions[:, 24:] = 3
    rule = {"background": "softmax", "logit_scale": 40.0, "prob_thd": 0.0, "area_thd": None}
    scores = propagate_features(features, "own", background=rule, own_step={"name": "region_mode"})
    seeds = propagate_features(features, "maskclip", background=rule)
    right = seeds.argmax(0)[:, 48:]
    assert (scores.argmax(0)[:, 48:] == torch.mode(right.reshape(-1)).values).all()
    assert torch.equal(scores[:, :, :48], seeds[:, :, :48])  # the smallest id (0) keeps its labels
    features.regions = None
    with pytest.raises(ValueError, match="mask regions"):
        propagate_features(features, "own", background=rule, own_step={"name": "region_mode"})
