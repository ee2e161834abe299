"""Background rules and named protocols on hand-made score maps with known answers; mixed patch grids."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lposs.core import scoring
from lposs.core.windows import merge_windows
from lposs.models import protocols
from lposs.models.heads import records
from lposs.segmentation import extract_features, predict_labels, propagate_features, to_graph_grid

SOFTMAX = {"background": "softmax", "logit_scale": 10.0, "prob_thd": 0.0, "area_thd": None}


def test_resolve_merges_base_dataset_and_overrides():
    voc = protocols.resolve("sclip", "voc21")
    assert (voc["logit_scale"], voc["prob_thd"], voc["area_thd"], voc["short_side"]) == (65.0, 0.1, 0.1, 336)
    assert protocols.resolve("sclip", "cityscapes")["short_side"] == 560
    assert protocols.resolve("sclip", "ade20k")["prob_thd"] == 0.0
    assert protocols.resolve("proxyclip", "cityscapes")[("crop")] == 224
    assert protocols.resolve("clearclip", "voc21", prob_thd=0.3)["prob_thd"] == 0.3
    lposs = protocols.resolve("lposs", "voc21")
    assert lposs["background"] == "synonyms" and lposs["short_side"] == 448 and lposs["clip"] == "laion2b_s34b_b88k"
    with pytest.raises(ValueError, match="unknown protocol 'scl1p'"):
        protocols.resolve("scl1p", "voc21")
    with pytest.raises(ValueError, match="has no setting"):
        protocols.resolve("sclip", "voc21", threshold=0.2)
    assert protocols.resolve("lposs", "voc21", background="softmax")["logit_scale"] == 40.0
    with pytest.raises(ValueError, match="positive logit_scale"):
        protocols.resolve("sclip", "voc21", logit_scale=0.0)


def test_release_class_files_expand_person_and_tvmonitor():
    default = [f"c{i}" for i in range(21)]
    sclip = protocols.class_names("sclip", "voc21", default)
    assert len(sclip) == 21 and len(sclip[15].split(";")) == 7 and sclip[15].startswith("person;person in shirt")
    assert sclip[20] == "television monitor;tv monitor;monitor;television;screen"
    assert len(sclip[0].split(";")) == 26  # the stuff words of the background
    assert protocols.class_names("clearclip", "voc21", default)[0] == "background"
    assert protocols.class_names("lposs", "voc21", default) == default
    assert protocols.class_names("sclip", "demo", ["sky"]) == ["sky"]  # no release file: the dataset's own
    with pytest.raises(ValueError, match="lists 21 classes"):
        protocols.class_names("sclip", "voc21", default[:20])


def test_synonym_rule_is_the_max_over_synonyms():
    scores = torch.tensor([[[0.1]], [[0.5]], [[0.3]], [[0.4]]])  # [C'=4, 1, 1]
    owner = torch.tensor([0, 0, 1, 1])
    pooled = scoring.class_scores(scores, owner, {"background": "synonyms"})
    assert pooled.flatten().tolist() == pytest.approx([0.5, 0.4])
    assert scoring.labels_from_scores(pooled, {"background": "synonyms"}).item() == 0


def test_softmax_rule_by_hand():
    scores = torch.tensor([[[0.1]], [[0.5]], [[0.3]]])  # [3, 1, 1]
    owner = torch.tensor([0, 1, 1])
    probs = scoring.class_scores(scores, owner, SOFTMAX)
    e = np.exp(10 * np.array([0.1, 0.5, 0.3]))
    assert probs.flatten().tolist() == pytest.approx([e[0] / e.sum(), e[1] / e.sum()], rel=1e-5)
    half = scoring.class_scores(scores, owner, SOFTMAX, cosine_scale=0.5)  # = logit scale 5
    e5 = np.exp(5 * np.array([0.1, 0.5, 0.3]))
    assert half.flatten()[1].item() == pytest.approx(e5[1] / e5.sum(), rel=1e-5)


def test_probability_threshold_sends_unsure_pixels_to_class_zero():
    probs = torch.tensor([[[0.2, 0.1]], [[0.45, 0.8]], [[0.35, 0.1]]])  # [K=3, 1, 2]
    rule = {**SOFTMAX, "prob_thd": 0.5}
    assert scoring.labels_from_scores(probs, rule).tolist() == [[0, 1]]
    assert scoring.labels_from_scores(probs, {**rule, "prob_thd": 0.4}).tolist() == [[1, 1]]


def test_area_threshold_drops_small_foreground_classes():
    # class 1 wins 8 pixels, class 2 wins 1, background 1: foreground area 9; area_thd 0.2 -> class 2 (1 <= 1.8)
    # loses its probabilities and its pixel goes to the next best class.
    probs = torch.zeros(3, 1, 10)
    probs[1, 0, :8] = 0.9
    probs[0, 0, :8] = 0.1
    probs[2, 0, 8], probs[0, 0, 8] = 0.7, 0.3
    probs[0, 0, 9] = 1.0
    rule = {**SOFTMAX, "area_thd": 0.2}
    assert scoring.labels_from_scores(probs, {**SOFTMAX}).tolist() == [[1] * 8 + [2, 0]]
    assert scoring.labels_from_scores(probs, rule).tolist() == [[1] * 8 + [0, 0]]
    assert scoring.labels_from_scores(probs, {**rule, "area_thd": 0.1}).tolist() == [[1] * 8 + [2, 0]]


class PatchColour:
    """Patch-mean colour features at any patch size (stand-in backbones for mixed grids)."""

    def __init__(self, patch):
        self.patch_size, self.id = patch, f"colour{patch}"

    def dense_features(self, windows):
        return F.normalize(F.avg_pool2d(windows, self.patch_size).permute(0, 2, 3, 1) + 1e-3, dim=-1)

    def text_embeddings(self, class_names):
        protos = {"red": [1.0, 0, 0], "green": [0, 1.0, 0], "blue": [0, 0, 1.0]}
        names = [(i, n.strip()) for i, c in enumerate(class_names) for n in c.split(";")]
        return F.normalize(torch.tensor([protos[n] for _, n in names]), dim=-1), torch.tensor([i for i, _ in names])


def two_colour_image(h=180, w=240):
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, : w // 2], image[:, w // 2 :] = (200, 30, 30), (30, 200, 30)
    return image


def resize(x, size):
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("vm_patch, grid", [(8, 28), (14, 16), (32, 7)])
def test_seeds_are_resized_to_the_graph_grid(vm_patch, grid):
    vlm, vm = PatchColour(16), PatchColour(vm_patch)
    feats = extract_features(two_colour_image(), ["red", "green"], vlm, vm, short_side=224)
    assert feats.grid == grid and feats.seeds.shape[0] == feats.vm_feats.shape[0] == len(feats.layout) * grid**2
    labels = predict_labels(feats, mode="lposs+", k=30, r=5)
    assert (labels[:, :100] == 0).all() and (labels[:, 140:] == 1).all()


def test_graph_grid_resize_is_bilinear_then_normalised():
    dense = F.normalize(torch.randn(2, 14, 14, 5), dim=-1)
    out = to_graph_grid(dense, (28, 28))
    manual = F.interpolate(dense.permute(0, 3, 1, 2), size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, F.normalize(manual.permute(0, 2, 3, 1), dim=-1))
    assert to_graph_grid(dense, (14, 14)) is dense


def test_softmax_protocol_in_propagate_features_matches_the_release_order():
    """Seeds mode under SCLIP's rule: merge cosines over windows, resize to the image, x logit_scale, softmax,
    max per class; the other order (softmax, then resize) differs measurably on the same canvas."""
    vlm = PatchColour(16)
    feats = extract_features(two_colour_image(), ["red", "green;blue"], vlm, vlm, short_side=224)
    rule = protocols.resolve("sclip", "voc21")
    probs = propagate_features(feats, mode="maskclip", background=rule)
    blocks = feats.seeds.reshape(len(feats.layout), feats.grid, feats.grid, -1).permute(0, 3, 1, 2)
    canvas = merge_windows(blocks, feats.layout, *feats.resized_hw, crop=feats.crop)  # [C', 224, 299]
    release = scoring.pool_synonyms((resize(canvas, (180, 240)) * rule["logit_scale"]).softmax(0), feats.owner)
    swapped = resize(scoring.pool_synonyms((canvas * rule["logit_scale"]).softmax(0), feats.owner), (180, 240))
    torch.testing.assert_close(probs, release, rtol=1e-5, atol=1e-5)
    assert (swapped - release).abs().max() > 0.05  # the order shows: the check above can fail
    raw = propagate_features(feats, mode="maskclip")  # synonyms rule: pooled cosines, resized
    assert probs.shape == raw.shape == (2, 180, 240)
    assert torch.all(probs >= 0) and torch.all(probs.sum(0) <= 1 + 1e-5)
    assert (probs.argmax(0) == raw.argmax(0)).all()
    lp = propagate_features(feats, mode="lposs", k=30, background=rule)
    assert lp.amax(0).min() < 1.0  # propagated scores are back at cosine size, not saturated
    labels = predict_labels(feats, mode="lposs", k=30, background={**rule, "prob_thd": 0.999})
    assert (labels == 0).float().mean() > 0.5


def test_2025_protocols_resolve_each_release_per_dataset():
    sc = protocols.resolve("scclip", "voc21")
    assert (sc["logit_scale"], sc["prob_thd"], sc["area_thd"], sc["short_side"], sc["clip"]) == (50.0, 0.15, 0.1, 336, "openai")
    assert protocols.resolve("sfp", "coco_object")["logit_scale"] == 55.0 and protocols.resolve("sfp", "ade20k")["short_side"] == 384
    assert protocols.resolve("scclip", "ade20k")["short_side"] == 336 and protocols.resolve("scclip", "cityscapes")["short_side"] == 560
    res = protocols.resolve("resclip", "voc21")
    assert res["head_params"] == {"temp_thd": 0.5, "rcs_weights": (2.0, 0.3), "sfr_weights": (2.2, 0.7)}
    assert res["prob_thd"] == 0.1 and res["whole_image"] and "slide_crop=0" in res["deviation"]
    assert protocols.resolve("resclip", "context60")["head_params"]["temp_thd"] == 0.3
    assert protocols.resolve("resclip", "voc20")["prob_thd"] == 0.0 and not protocols.resolve("resclip", "ade20k")["whole_image"]
    cass = protocols.resolve("cass", "voc20")
    assert cass["head_params"] == {"rescale_singular": False} and cass["text_params"]["global_semantics_weight"] == 0.4
    assert protocols.resolve("cass", "ade20k")["head_params"] == {} and protocols.resolve("cass", "cityscapes")["short_side"] == 560
    assert protocols.resolve("cass", "coco_stuff")["text_params"] == {"global_semantics_weight": 0.2, "mean_vector_weight": 0.02,
                                                                     "h_threshold": 0.02, "global_from": "image"}
    assert protocols.resolve("cass", "cityscapes")["text_params"]["global_from"] == "window"  # the crop's CLS there
    pearl, city = protocols.resolve("pearl", "voc21"), protocols.resolve("pearl", "cityscapes")
    assert pearl["post"] == "tlp" and pearl["post_params"] == {"grid": 80} and pearl["whole_image"]
    assert city["post_params"] == {"grid": 224} and city["head_params"] == {"alpha_kk": 0.3} and city["short_side"] == 560
    # dict settings merge key by key: the dataset's entry, then the caller's, update the base
    merged = protocols.resolve("cass", "voc20", head_params={"scale_factor": 5.0})["head_params"]
    assert merged == {"rescale_singular": False, "scale_factor": 5.0}
    assert protocols.resolve("resclip", "voc21", prob_thd=0.3)["prob_thd"] == 0.3


RELEASE_PROTOCOLS = [name for name, record in records().items() if record.protocol is not None]


@pytest.mark.parametrize("name", RELEASE_PROTOCOLS)
def test_release_protocols_name_parameters_their_functions_take(name):
    import inspect

    from lposs.core.tlp import tlp
    from lposs.models.heads import head_settings

    record = records()[name]
    for dataset in ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"):
        settings = protocols.resolve(name, dataset)
        assert settings["head"] == name
        assert settings["clip"] == "openai" or "/heads_2025/" not in record.origin  # every 2025 release: OpenAI's
        head_settings(name, settings.get("head_params", {}))  # raises on a name the head does not take
        if settings.get("text_params"):
            record.text_step.check(settings["text_params"])  # raises on a name its text step does not take
        if settings["post"] == "tlp":
            assert set(settings.get("post_params", {})) <= set(inspect.signature(tlp).parameters)


def test_2025_class_files_are_sclips_and_sfp_says_people():
    for dataset, size in (("voc21", 21), ("voc20", 20), ("cityscapes", 19), ("coco_object", 81)):
        default = [f"c{i}" for i in range(size)]
        sclip = protocols.class_names("sclip", dataset, default)
        assert all(protocols.class_names(name, dataset, default) == sclip for name in ("scclip", "resclip", "cass", "pearl"))
        sfp = protocols.class_names("sfp", dataset, default)
        changed = [(a, b) for a, b in zip(sclip, sfp) if a != b]
        if dataset == "coco_object":  # SFP keeps `person` there
            assert not changed
        else:
            assert len(changed) == 1 and changed[0][1] == changed[0][0].replace("person", "people")
    assert protocols.class_names("sfp", "voc21", [""] * 21)[15].startswith("people;people in shirt")
    assert protocols.class_names("sfp", "cityscapes", [""] * 19)[11] == "people"
