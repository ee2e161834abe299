"""Mask models (issue 19): the demo's stand-in, SAM through segment-anything, SAM 2 through sam2, and their offline
errors."""

from functools import partial

import numpy as np
import pytest
import torch

from lposs.core.regions import decode_regions, encode_regions
from lposs.models import loading
from lposs.models.factory import BackboneSpec, create_backbones
from lposs.models.loading import BackboneUnavailable
from lposs.models.masks import MASK_MODELS, create_mask_model


def test_masks_become_one_map_by_corrclips_rule():
    from lposs.models.sam_masks import regions_from_masks

    big, inner, apart = (np.zeros((6, 8), dtype=bool) for _ in range(3))
    big[:4, :5], inner[1:3, 1:3], apart[5, 6:] = True, True, True  # areas 20, 4, 2
    regions = regions_from_masks([big, inner, apart], (6, 8))
    expected = np.zeros((6, 8), dtype=np.int64)
    expected[5, 6:], expected[:4, :5] = 1, 3  # ids by ascending area; the big mask paints over the inner one
    assert torch.equal(regions, torch.from_numpy(expected))


def test_the_demo_stand_in_gives_coloured_segments_and_a_compact_code():
    image = torch.zeros(3, 40, 60)
    image[:, :, 30:] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)  # two flat colours side by side
    regions = create_mask_model("demo").regions(image)
    assert regions.shape == (40, 60) and regions.dtype == torch.int64
    assert len(set(regions[:, :28].unique().tolist())) == 1 and len(set(regions[:, 32:].unique().tolist())) == 1
    assert regions[0, 0] != regions[0, 59] and regions.min() >= 1  # two regions, every pixel covered
    code = encode_regions(regions)
    assert torch.equal(decode_regions(code), regions) and code.numel() < regions.numel() / 5  # runs, not pixels
    with pytest.raises(ValueError, match="damaged"):
        decode_regions(code[:-1])


def tiny_sam(size: int = 64):
    """segment-anything's Sam at `size` px with one small block: the same code path as ViT-B, in a second on a CPU
    (size 1024: SAM's own input and 256 px mask prompts, as Trident's refinement hard-codes them)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    grid = size // 16
    return Sam(image_encoder=ImageEncoderViT(img_size=size, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                             out_chans=32, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                             qkv_bias=True, use_rel_pos=True, window_size=2),
               prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(grid, grid),
                                            input_image_size=(size, size), mask_in_chans=4),
               mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=32, iou_head_depth=1,
                                        iou_head_hidden_dim=16,
                                        transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64,
                                                                      num_heads=2)),
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def regions_through_a_spy(masks, monkeypatch, extra: list | None = None) -> tuple[dict, torch.Tensor]:
    """masks.regions of a 48 x 72 random image, the generator's input and output (plus `extra` masks) kept."""
    found = {}
    generate = masks.generator.generate

    def spy(pixels):
        found["pixels"] = pixels
        found["masks"] = generate(pixels) + list(extra or [])
        return found["masks"]

    monkeypatch.setattr(masks.generator, "generate", spy)
    regions = masks.regions(torch.rand(3, 48, 72, generator=torch.Generator().manual_seed(1)))
    assert found["pixels"].shape == (48, 72, 3) and found["pixels"].dtype == np.uint8
    assert regions.shape == (48, 72) and regions.dtype == torch.int64
    return found, regions


def test_sam_masks_run_the_package_generator_and_return_a_region_map(monkeypatch):
    pytest.importorskip("segment_anything")
    from lposs.models import sam_masks

    masks = sam_masks.SamMasks(model=tiny_sam())
    found, regions = regions_through_a_spy(masks, monkeypatch)
    expected = sam_masks.regions_from_masks([m["segmentation"] for m in found["masks"]], (48, 72))
    assert torch.equal(regions, expected)
    assert masks.generator.points_per_batch and masks.generator.pred_iou_thresh == 0.4
    assert "points8" in masks.id and "sam_vit_b" in masks.id


def offline_error(monkeypatch, tmp_path, masks: str) -> str:
    """The message of building the demo backbones with mask model `masks`, offline and with an empty cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    monkeypatch.setattr(loading, "_probe", lambda url, timeout=0: "no network (test)")
    with pytest.raises(BackboneUnavailable) as error:
        create_backbones(BackboneSpec(vlm="demo", vlm_weights="none", head="demo", vm="demo", vm_weights="none",
                                      vm_features=("v",), masks=masks))
    return str(error.value)


def test_sam_weights_offline_stop_at_once_naming_the_file_and_the_fetch(monkeypatch, tmp_path):
    pytest.importorskip("segment_anything")
    message = offline_error(monkeypatch, tmp_path, "sam_vit_b")
    assert "sam_vit_b_01ec64.pth" in message and "torch.hub.load_state_dict_from_url" in message
    assert str(tmp_path) in message
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        create_mask_model("sam_vit_b", checkpoint=str(tmp_path / "missing.pth"))


def test_an_unknown_mask_model_is_refused_with_the_choices():
    assert MASK_MODELS == ("none", "demo", "sam_vit_b", "sam2_hiera_l", "panoptic_cut", "panoptic_cut_demo")
    assert create_mask_model("none") is None
    with pytest.raises(ValueError, match="masks='sam2': use one of none, demo, sam_vit_b, sam2_hiera_l"):
        BackboneSpec(masks="sam2")
    with pytest.raises(ValueError, match="unknown mask model 'sam2'; choose one of none, demo, sam_vit_b, sam2_hiera_l"):
        create_mask_model("sam2")


# SAM 2's hiera-tiny config cut down by hydra overrides: a 128 px input, five Hiera blocks of 8 to 64 channels, a
# 32-wide neck and one small memory layer (unused by images, but built). The same generator path as hiera-L at 1024.
TINY_SAM2 = (
    "model.image_size=128", "model.image_encoder.trunk.embed_dim=8", "model.image_encoder.trunk.num_heads=1",
    "model.image_encoder.trunk.stages=[1,1,2,1]", "model.image_encoder.trunk.global_att_blocks=[3]",
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[2,2]",
    "++model.image_encoder.trunk.window_spec=[4,4,4,2]",
    "model.image_encoder.neck.d_model=32", "model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "model.memory_attention.num_layers=1", "model.memory_attention.d_model=32",
    "model.memory_attention.layer.d_model=32", "model.memory_attention.layer.dim_feedforward=32",
    "model.memory_attention.layer.self_attention.embedding_dim=32",
    "model.memory_attention.layer.cross_attention.embedding_dim=32",
    "model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
    "model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
    "model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "model.memory_encoder.out_dim=16", "model.memory_encoder.position_encoding.num_pos_feats=16",
    "model.memory_encoder.fuser.layer.dim=32", "model.memory_encoder.fuser.num_layers=1", "model.num_maskmem=1",
)


def test_sam2_masks_run_the_package_generator_with_corrclips_settings(monkeypatch):
    pytest.importorskip("sam2", reason="sam2 is not installed (pip install -e .[masks])")
    from lposs.models import sam2_masks

    model = sam2_masks.build_sam2_model("random", seed=0, overrides=TINY_SAM2, config="sam2_hiera_t.yaml")
    assert model.image_size == 128
    masks = sam2_masks.Sam2Masks(model=model)
    # random weights give few masks or none: two nested ones are added to what the generator finds, so the
    # ascending-area rule is exercised whatever the random model predicts
    big, inner = np.zeros((48, 72), dtype=bool), np.zeros((48, 72), dtype=bool)
    big[5:40, 5:60], inner[10:20, 10:20] = True, True
    found, regions = regions_through_a_spy(masks, monkeypatch, [{"segmentation": big}, {"segmentation": inner}])
    from lposs.models.sam_masks import regions_from_masks

    expected = regions_from_masks([m["segmentation"] for m in found["masks"]], (48, 72))
    assert torch.equal(regions, expected)
    assert regions[15, 15] == regions[30, 30] != 0  # the big mask painted over the inner one
    generator = masks.generator
    assert (generator.pred_iou_thresh, generator.stability_score_thresh) == (0.4, 0.4)
    assert generator.multimask_output is False and len(generator.point_grids[0]) == 64  # 8 x 8 points
    assert generator.predictor._bb_feat_sizes == [(32, 32), (16, 16), (8, 8)]  # from the 128 px input
    assert masks.id == "sam2_hiera_l-custom-SAM2Base-points8-iou0.4-stability0.4-single"
    assert masks.id == sam2_masks.Sam2Masks(model=model).id  # stable: the manifest can compare it


def test_sam2_hiera_l_config_ships_with_the_package():
    pytest.importorskip("sam2", reason="sam2 is not installed (pip install -e .[masks])")
    from hydra import compose

    from lposs.models.sam2_masks import SAM2_CONFIG

    config = compose(config_name=SAM2_CONFIG).model
    assert config.image_size == 1024 and config.image_encoder.trunk.embed_dim == 144  # hiera-L
    assert list(config.image_encoder.trunk.stages) == [2, 6, 36, 4]


def test_sam2_weights_offline_stop_at_once_naming_the_file_and_the_fetch(monkeypatch, tmp_path):
    pytest.importorskip("sam2", reason="sam2 is not installed (pip install -e .[masks])")
    message = offline_error(monkeypatch, tmp_path, "sam2_hiera_l")
    assert "sam2_hiera_large.pt" in message and "torch.hub.load_state_dict_from_url" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt" in message
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        create_mask_model("sam2_hiera_l", checkpoint=str(tmp_path / "missing.pt"))
