"""LaVG (lposs.models.heads_masks.lavg): its record, its per-window mask vote (lposs.core.mask_vote) against the
release's window loop re-typed (dahyun-kang/lavg@2db88e5 clip_segmentor.py:62-158), each trap of the vote, the
mode "own" that runs it, and the overlapping masks kept in a feature shard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lposs.core.mask_vote import vote_window, vote_windows
from lposs.core.own_steps import OWN_STEPS, run_window_step
from lposs.core.regions import masks_to_regions, partition_masks, region_vote, resize_masks
from lposs.core.scoring import class_scores
from lposs.core.windows import merge_windows, window_layout
from lposs.experiment import tables
from lposs.image_features import ImageFeatures
from lposs.models.factory import BackboneSpec
from lposs.models.heads import HEADS
from lposs.models.protocols import class_names, own_step, resolve
from lposs.models.records import PUBLISHED_ORDER
from lposs.segmentation import propagate_features

# --------------------------------------------------------- the release's window loop, re-typed as the reference


def release_forward_feature(features: torch.Tensor, queries: torch.Tensor, obj_masks: torch.Tensor,
                            remove_falsefg: bool, bgidx: int) -> torch.Tensor:
    """clip_segmentor.py:62-97 after the encoder: features [1, D, g, g] unit norm, queries [Q, D], obj_masks
    [M, h, w] bool (the window's) -> logits [1, Q, h, w]."""
    image_features = F.interpolate(features, size=obj_masks.shape[1:], mode="bilinear", align_corners=False)
    logits = torch.einsum("b d h w, c d -> b h w c", image_features, queries)
    for i in reversed(range(obj_masks.shape[0])):
        if obj_masks[i].sum() == 0:
            continue
        mask_feat = torch.sum(image_features * obj_masks[i], dim=[-1, -2]) / obj_masks[i].sum()
        logits[obj_masks[i].unsqueeze(0)] = mask_feat @ queries.T
    if remove_falsefg:
        bglogit = torch.zeros(logits.shape).type(torch.bool)
        bglogit[:, :, :, bgidx:][obj_masks[-1].unsqueeze(0)] = True
        logits[bglogit == True] = logits.min().item()
    return logits.permute(0, 3, 1, 2)


def release_slide(window_features: torch.Tensor, queries: torch.Tensor, masks: torch.Tensor, size, crop, stride,
                  remove_falsefg: bool, bgidx: int) -> torch.Tensor:
    """clip_segmentor.py:99-150: the windows' voted logits summed into the image and divided by the count."""
    h_img, w_img = size
    preds, count = torch.zeros(1, queries.shape[0], h_img, w_img), torch.zeros(1, 1, h_img, w_img)
    index = 0
    for h_idx in range(max(h_img - crop + stride - 1, 0) // stride + 1):
        for w_idx in range(max(w_img - crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(h_idx * stride + crop, h_img), min(w_idx * stride + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logit = release_forward_feature(window_features[index : index + 1], queries, masks[:, y1:y2, x1:x2],
                                            remove_falsefg, bgidx)
            preds += F.pad(logit, (x1, preds.shape[3] - x2, y1, preds.shape[2] - y2))
            count[:, :, y1:y2, x1:x2] += 1
            index += 1
    return (preds / count)[0]


def overlapping_masks(height: int, width: int) -> torch.Tensor:
    """[4, H, W]: three masks in discovery order (0 and 1 overlap, 2 small), then the complement."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    masks = torch.stack([(yy < height * 0.6) & (xx < width * 0.5), (yy > height * 0.3) & (xx > width * 0.3),
                         (yy > height * 0.8) & (xx < width * 0.2)])
    return torch.cat([masks, ~masks.any(0, keepdim=True)])


# ------------------------------------------------------------------------------------------- the record


def test_the_record_is_sclips_head_with_panoptic_cut_masks_and_the_vote_as_its_own_step():
    record = HEADS["lavg"]
    assert record.function is HEADS["sclip"].function and record.kind == "last_block"  # reused, not copied
    assert record.masks == "panoptic_cut" and BackboneSpec(head="lavg").masks == "panoptic_cut"  # "release"
    assert record.origin.rsplit(":", 1)[0].endswith("heads_masks/lavg.py")  # registered where it is declared
    row = record.published[0]
    assert dict(zip(PUBLISHED_ORDER, row.miou)) == {"voc21": 62.1, "context60": 31.6, "coco_object": 34.2,
                                                     "voc20": 82.5, "cityscapes": 26.2, "context59": 34.7,
                                                     "ade20k": 15.8, "coco_stuff": 23.2}
    assert round(float(np.mean(row.miou)), 1) == row.average == 38.8
    assert "DINO ViT-B/8" in row.name and "training-free" in row.name and record.training == "training-free"
    voc21, stuff = resolve("lavg", "voc21"), resolve("lavg", "coco_stuff")
    assert (voc21["logit_scale"], voc21["prob_thd"], voc21["area_thd"], voc21["clip"]) == (65.0, 0.1, 0.1, "openai")
    assert (stuff["short_side"], resolve("lavg", "cityscapes")["short_side"], stuff["crop"]) == (448, 560, 224)
    sclip = resolve("sclip", "voc21")
    assert {k: v for k, v in voc21.items() if k not in ("post", "post_params", "source", "head", "protocol")} == \
        {k: v for k, v in sclip.items() if k not in ("post", "source", "head", "protocol")}  # SCLIP's configs
    assert class_names("lavg", "voc21", ["x"] * 21) == class_names("sclip", "voc21", ["x"] * 21)
    assert own_step("lavg", "voc21") == {"name": "lavg_vote", "complement_to_background": True}
    assert own_step("lavg", "voc20") == {"name": "lavg_vote", "complement_to_background": False}


def test_every_own_step_has_its_title_in_the_table():
    assert set(tables.OWN_STEP_TITLES) == set(OWN_STEPS)
    assert tables.method_name({"own_step": "lavg_vote"}, "own") == "+ own step (LaVG's per-window mask vote)"


# ------------------------------------------------------------------------------------------------ the vote


@pytest.mark.parametrize("voc21", [False, True])
def test_the_vote_is_the_releases_window_loop(voc21):
    generator = torch.Generator().manual_seed(0)
    size, crop, stride, grid = (40, 56), 24, 16, 6
    layout = window_layout(*size, crop=crop, stride=stride)
    features = F.normalize(torch.randn(len(layout), 8, grid, grid, generator=generator), dim=1)  # [B, D, g, g]
    queries = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    owner = torch.tensor([0, 0, 1, 2, 3])  # two background synonyms, then one query per class
    masks = overlapping_masks(*size)
    seeds = torch.einsum("bdhw,cd->bchw", features, queries)  # the stored seeds: the windows' patch cosines
    ours = vote_windows(seeds, layout, size, crop, masks, (owner != 0) if voc21 else None)
    expected = release_slide(features, queries, masks, size, crop, stride, voc21, bgidx=2)
    assert torch.allclose(ours, expected, atol=1e-5)
    step = {"name": "lavg_vote", "complement_to_background": voc21}
    assert torch.equal(run_window_step(seeds, layout, size, crop, masks, owner, step), ours)


def test_overlaps_go_to_the_lowest_index_with_means_over_each_masks_full_extent():
    logits = torch.arange(12.0).view(1, 3, 4)  # one query
    masks = torch.zeros(3, 3, 4, dtype=torch.bool)
    masks[0, :, :2] = True
    masks[1, :, 1:3] = True  # overlaps mask 0 on column 1
    masks[2] = ~masks[:2].any(0)  # the complement: column 3
    voted = vote_window(logits, masks)[0]
    mean0, mean1, mean2 = logits[0, :, :2].mean(), logits[0, :, 1:3].mean(), logits[0, :, 3].mean()
    assert torch.all(voted[:, :2] == mean0)  # column 1 lies in both: mask 0, voted last, wins
    assert torch.all(voted[:, 2] == mean1)  # mask 1's mean runs over its full extent, the overlap included
    assert torch.all(voted[:, 3] == mean2)  # the complement is voted like any mask
    partition = region_vote(logits, masks_to_regions(masks) % 3)  # ids 1, 2 and the complement as 0
    assert not torch.allclose(voted, partition[0])  # a partition averages mask 1 over column 2 only, skips id 0


def test_voc21s_rule_sends_the_complement_to_the_background_queries_only():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 6, generator=generator)
    masks = overlapping_masks(6, 6)
    owner = torch.tensor([0, 0, 1, 2])
    plain, pushed = vote_window(logits, masks), vote_window(logits, masks, owner != 0)
    outside = masks[-1]
    assert outside.any() and torch.equal(pushed[:, ~outside], plain[:, ~outside])
    assert torch.equal(pushed[:2, outside], plain[:2, outside])  # the background synonyms keep their vote
    assert torch.all(pushed[2:, outside] == plain.min())  # the others: the window's minimum after the vote


def test_the_vote_runs_per_window_before_the_merge():
    generator = torch.Generator().manual_seed(2)
    size, crop = (24, 40), 24
    layout = window_layout(*size, crop=crop, stride=16)  # two windows overlapping on 8 columns
    seeds = torch.randn(len(layout), 3, 3, 3, generator=generator)
    masks = overlapping_masks(*size)
    before = vote_windows(seeds, layout, size, crop, masks)
    after = vote_window(merge_windows(seeds, layout, *size, crop=crop), masks)  # vote on the merged canvas
    assert not torch.allclose(before, after, atol=1e-4)
    with pytest.raises(ValueError, match="resized image's size"):
        vote_windows(seeds, layout, (20, 40), crop, masks)


def test_run_window_step_refuses_unknown_steps_and_parameters():
    seeds, layout, masks = torch.zeros(1, 2, 2, 2), [(0, 8, 0, 8)], torch.ones(1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="not a window step"):
        run_window_step(seeds, layout, (8, 8), 8, masks, torch.tensor([0, 1]), {"name": "tlp"})
    with pytest.raises(ValueError, match="complement_to_background"):
        run_window_step(seeds, layout, (8, 8), 8, masks, torch.tensor([0, 1]), {"name": "lavg_vote", "voc": 1})


# -------------------------------------------------------------------------------------- the mode "own"


def _features(masks: torch.Tensor | None, regions: torch.Tensor | None = None) -> ImageFeatures:
    """Two 3 x 3-patch windows on a 24 x 40 resized image (48 x 80 original), 4 queries for 3 classes."""
    generator = torch.Generator().manual_seed(3)
    layout = window_layout(24, 40, crop=24, stride=16)
    return ImageFeatures(seeds=torch.randn(len(layout) * 9, 4, generator=generator),
                         vm_feats=F.normalize(torch.randn(len(layout) * 9, 5, generator=generator), dim=-1),
                         owner=torch.tensor([0, 0, 1, 2]), layout=layout, resized_hw=(24, 40), original_hw=(48, 80),
                         grid=3, crop=24, regions=regions, masks=masks)


def test_mode_own_votes_the_windows_with_the_masks_resized_from_the_original_size():
    masks = overlapping_masks(48, 80)  # at the original size, as stored
    features = _features(masks, regions=None)
    rule = {"background": "softmax", "logit_scale": 65.0, "prob_thd": 0.1, "area_thd": 0.1}
    step = {"name": "lavg_vote", "complement_to_background": True}
    scores = propagate_features(features, "own", background=rule, own_step=step)
    blocks = features.seeds.T.reshape(4, 2, 3, 3).transpose(0, 1)  # [B, C', g, g]
    canvas = vote_windows(blocks, features.layout, (24, 40), 24, resize_masks(masks, (24, 40)),
                          features.owner != 0)
    canvas = F.interpolate(canvas[None], size=(48, 80), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(scores, class_scores(canvas, features.owner, rule), atol=1e-6)
    assert not torch.allclose(scores, propagate_features(features, "maskclip", background=rule), atol=1e-4)
    # a mask model of region maps (SAM, the demo's): its regions as a partition, id 0 last
    regions = masks_to_regions(resize_masks(masks, (24, 40))[:2]) % 3  # ids 0, 1, 2
    partitioned = propagate_features(_features(None, regions), "own", background=rule, own_step=step)
    canvas = vote_windows(blocks, features.layout, (24, 40), 24, partition_masks(regions), features.owner != 0)
    canvas = F.interpolate(canvas[None], size=(48, 80), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(partitioned, class_scores(canvas, features.owner, rule), atol=1e-6)
    with pytest.raises(ValueError, match="mask regions"):
        propagate_features(_features(None, None), "own", background=rule, own_step=step)


# ------------------------------------------------------------------------------ the masks in the store


def test_a_shard_keeps_the_overlapping_masks_at_the_original_size(tmp_path):
    pytest.importorskip("pydensecrf", reason="Panoptic Cut's CRF needs pydensecrf2: pip install -e .[masks]")
    from lposs.demo import DemoVLM, DemoVM
    from lposs.demo.scenes import render_scene
    from lposs.experiment.extraction import extract_shard, make_manifest, to_image_features
    from lposs.experiment.store import CorruptShard, FeatureStore
    from lposs.models.panoptic_cut import DemoKeys, PanopticCut

    pixels, _ = render_scene(np.random.RandomState(0), (70, 90))
    masks = PanopticCut(DemoKeys(), size=128)  # the demo's stand-in keys on an 8 x 8 grid: quick
    vlm, vm = DemoVLM(), DemoVM("v")
    windows = {"crop": 32, "stride": 32, "short_side": 48, "long_side": 2048}
    shard = extract_shard("x0", pixels, ["sky", "grass"], vlm, {"v": vm}, windows, masks=masks)
    expected = masks.masks(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    manifest = make_manifest("demo", ["sky", "grass"], vlm.id, {"v": vm.id}, windows, masks=masks.id,
                             masks_overlap=True)
    store = FeatureStore(tmp_path / "store", manifest)
    store.save(shard)
    features = to_image_features(store.load("x0", check_values=True), "v")
    assert torch.equal(features.masks, expected) and features.masks.shape[1:] == (70, 90)
    assert torch.equal(features.regions, masks_to_regions(resize_masks(expected, features.resized_hw)))
    without = FeatureStore(tmp_path / "plain", make_manifest("demo", ["sky", "grass"], vlm.id, {"v": vm.id}, windows,
                                                            masks=masks.id))
    with pytest.raises(CorruptShard, match="keys"):
        without.check(shard, "x0")  # a store whose manifest promises no masks refuses a shard holding them
    with pytest.raises(ValueError, match="masks_overlap"):
        make_manifest("demo", ["sky"], vlm.id, {"v": vm.id}, windows, masks_overlap=True)
