"""Panoptic Cut (LaVG's mask model, lposs.models.panoptic_cut): the release's masks on a tiny image with a stand-in
DINO, each trap of its pipeline, its missing-package error, and the overlapping masks' code and id map.

The release's code (dahyun-kang/lavg@2db88e5 panoptic_cut/) is re-typed here, step for step, as the reference;
benchmarks/parity_panoptic_cut.py compares with the release's own files."""

from __future__ import annotations

import importlib.util
import math
import sys
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lposs.core.regions import decode_masks, encode_masks, masks_to_regions, partition_masks, resize_masks
from lposs.models.ncut import cut_masks
from lposs.models.panoptic_cut import DinoKeys, PanopticCut, dino_position_embedding, square_pixels, to_image_size

needs_crf = pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None,
                               reason="Panoptic Cut's CRF needs pydensecrf2: pip install -e .[masks]")

# ------------------------------------------------------------------- the release, re-typed as the reference

def release_cut(feats: torch.Tensor, dims: list[int], tau: float = 0.3, N: int = 8) -> list[np.ndarray]:
    """panoptic_cut.py:49-113 (get_affinity_matrix, second_smallest_eigenvector, check_num_fg_corners,
    detect_box), masks nearest-upsampled to the square in the caller."""
    from scipy import ndimage

    bipartitions = []
    unoccupied = torch.ones(dims, dtype=torch.bool).view(-1)
    occupied = 0
    for _ in range(N):
        f = F.normalize(feats[:, unoccupied], p=2, dim=0)
        A = (f.transpose(0, 1) @ f > tau).float()
        A[A == 0] = 1e-5
        D = torch.diag(torch.sum(A, dim=1))
        _, eigenvectors = torch.lobpcg(A=D - A, B=D, k=2, largest=False)
        eigenvec_sp = eigenvectors[:, 1]
        bipartition_sp = eigenvec_sp > torch.mean(eigenvec_sp)
        bipartition = torch.zeros(dims, dtype=torch.bool).view(-1)
        eigenvec = torch.zeros(dims, dtype=torch.float).view(-1)
        bipartition[unoccupied] = bipartition_sp
        eigenvec[unoccupied] = eigenvec_sp
        eigenvec[unoccupied == False] = torch.abs(eigenvec_sp).min()
        seed = torch.argmax(torch.abs(eigenvec))
        b = bipartition.reshape(dims)
        nc = int(b[0][0]) + int(b[0][-1]) + int(b[-1][0]) + int(b[-1][-1])
        reverse = True if nc >= 3 else bipartition[seed] != 1
        if reverse:
            eigenvec = eigenvec * -1
            bipartition_sp = torch.logical_not(bipartition_sp)
            bipartition = torch.zeros(dims, dtype=torch.bool).view(-1)
            bipartition[unoccupied] = bipartition_sp
        seed = torch.argmax(eigenvec)
        objects, _ = ndimage.label(bipartition.reshape(dims).float().numpy())
        cc = objects[np.unravel_index(seed.item(), dims)]
        mask = torch.from_numpy((objects == cc).astype(np.float32))
        bipartitions.append(mask)
        occupied += mask.view(-1)
        occupied = (occupied > 0).float()
        unoccupied = torch.logical_not(occupied)
        if unoccupied.sum() <= 5:
            break
    return bipartitions


def release_predict(square: np.ndarray, patch_masks: list[torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """predict.py:110-129 with crf.py's densecrf and densecrf_postprocess: -> [M + 1, H, W] as the file holds."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf import utils
    from scipy import ndimage

    out = []
    for patch_mask in patch_masks:
        bipartition = F.interpolate(patch_mask[None, None], size=square.shape[:2], mode="nearest").squeeze().numpy()
        fg = bipartition.reshape(1, *bipartition.shape).astype(float)
        logits = torch.from_numpy(np.concatenate((1 - fg, fg), axis=0))
        logits = F.interpolate(logits.unsqueeze(0), size=square.shape[:2], mode="bilinear").squeeze()
        probs = F.softmax(logits, dim=0).numpy()
        d = dcrf.DenseCRF2D(square.shape[1], square.shape[0], 2)
        d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(probs)))
        d.addPairwiseGaussian(sxy=3, compat=7)
        d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(square), compat=10)
        MAP = np.argmax(np.array(d.inference(10)).reshape((2, *square.shape[:2])), axis=0).astype(np.float32)
        pseudo_mask = ndimage.binary_fill_holes(MAP >= 0.5)
        m1, m2 = torch.from_numpy(bipartition) > 0.5, torch.from_numpy(pseudo_mask) > 0.5
        iou = (torch.sum(m1 * (m1 == m2)).float() / torch.sum(m1 + m2)).item()
        if iou < 0.5:
            pseudo_mask = pseudo_mask * -1
        pseudo_mask[pseudo_mask < 0] = 0
        pil = Image.fromarray(np.uint8(pseudo_mask * 255))
        pseudo_mask = np.asarray(pil.resize((size[1], size[0]))).astype(np.uint8)
        upper, lower = np.max(pseudo_mask), np.min(pseudo_mask)
        pseudo_mask = pseudo_mask.copy()
        pseudo_mask[pseudo_mask > upper / 2.0] = upper
        pseudo_mask[pseudo_mask <= upper / 2.0] = lower
        out.append(pseudo_mask)
    out.append(np.stack(out, axis=0).sum(axis=0) == 0)
    return np.stack([np.asarray(m, dtype=np.int64) for m in out])


# ------------------------------------------------------------------------------ stand-ins for DINO

class ColourKeys:
    """A stand-in key model: each 4-pixel patch's mean colour, centred (so unlike colours have negative cosines),
    plus fixed noise."""

    patch_size, id = 4, "test-colour-keys"

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        means = F.avg_pool2d(image, 4)[0]  # [3, gh, gw]
        noise = 0.02 * torch.randn(3, *means.shape[1:], generator=torch.Generator().manual_seed(0))
        return (means - 0.5 + noise).flatten(1), tuple(means.shape[1:])


class SpyKeys(ColourKeys):
    seen: ClassVar[list[tuple[int, ...]]] = []

    def __call__(self, image):
        self.seen.append(tuple(image.shape))
        return super().__call__(image)


def blobs_image(height: int = 30, width: int = 44) -> torch.Tensor:
    """[3, H, W] in [0, 1], exactly uint8 values: a blue ground with a red and a green rectangle, a little noise."""
    rng = np.random.RandomState(3)
    pixels = np.array([40, 70, 190]) + rng.randint(-6, 7, (height, width, 3))
    pixels[4:16, 5:20] = (220, 30, 30)
    pixels[14:26, 26:40] = (30, 200, 40)
    return torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8)).permute(2, 0, 1).float() / 255


def tiny_dino():
    """A two-block ViT with DINO's layout (patch 8, class token, absolute position embedding of a 4 x 4 grid)."""
    import timm.models.vision_transformer as vit

    torch.manual_seed(0)
    return vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                                 qkv_bias=True, dynamic_img_size=True).eval()


# ------------------------------------------------------------------------------------------- tests

@needs_crf
def test_a_tiny_image_gets_the_releases_masks_with_the_same_seed():
    image = blobs_image()
    for seed in (0, 1):
        ours = PanopticCut(ColourKeys(), size=48, seed=seed).masks(image)  # [M + 1, 30, 44]
        square = square_pixels(image, 48)
        keys, grid = ColourKeys()(torch.from_numpy(square).permute(2, 0, 1)[None].float() / 255)
        torch.manual_seed(seed)
        expected = release_predict(square, release_cut(keys, list(grid)), (30, 44))
        assert ours.dtype == torch.bool and ours.shape == expected.shape
        assert torch.equal(ours, torch.from_numpy(expected != 0)), seed
    assert 2 <= int(ours[:-1].flatten(1).any(1).sum())  # the two rectangles survive the CRF
    assert torch.equal(ours[-1], ~ours[:-1].any(0))  # the complement: pixels in no mask


def test_the_seed_is_the_only_randomness_and_leaves_the_callers_rng_alone():
    keys = torch.randn(16, 100, generator=torch.Generator().manual_seed(1))
    state = torch.random.get_rng_state()
    first = cut_masks(keys, (10, 10), seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # forked: the caller's stream is untouched
    assert all(torch.equal(a, b) for a, b in zip(first, cut_masks(keys, (10, 10), seed=5)))
    torch.manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(first, cut_masks(keys, (10, 10), seed=None)))  # the global RNG
    assert not torch.equal(torch.random.get_rng_state(), state)


@needs_crf
def test_the_image_is_resized_to_a_square_and_the_masks_come_back_at_its_size():
    SpyKeys.seen.clear()
    image = blobs_image(30, 44)
    masks = PanopticCut(SpyKeys(), size=48).masks(image)
    assert SpyKeys.seen == [(1, 3, 48, 48)]  # a square, whatever the aspect: 30 x 44 is not kept
    assert masks.shape[1:] == (30, 44)
    pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    expected = np.asarray(Image.fromarray(pixels).resize((48, 48), Image.LANCZOS))
    assert np.array_equal(square_pixels(image, 48), expected)
    kept_aspect = np.asarray(Image.fromarray(pixels).resize((48, 35), Image.LANCZOS))
    assert kept_aspect.shape != square_pixels(image, 48).shape


def test_the_tiny_dinos_keys_are_its_last_block_keys_with_dinos_position_rule():
    model = tiny_dino()
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))  # a 6 x 6 grid (native 4 x 4)
    keys, grid = DinoKeys(model, "tiny")(image)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = model.patch_embed.proj((image - mean) / std).flatten(2).transpose(1, 2)  # dino.py:156-159
    x = torch.cat([model.cls_token, x], dim=1)
    N, dim = model.pos_embed.shape[1] - 1, x.shape[-1]  # dino.py:202-222, re-typed
    patch_pos = F.interpolate(model.pos_embed[:, 1:].reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim)
                              .permute(0, 3, 1, 2), scale_factor=(6.1 / math.sqrt(N), 6.1 / math.sqrt(N)),
                              mode="bicubic")
    x = x + torch.cat([model.pos_embed[:, :1], patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)], dim=1)
    for blk in model.blocks[:-1]:  # dino.py:57-82, 135-141
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(1, 37, 3, 2, 16).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * 16 ** -0.5).softmax(dim=-1)
        x = x + blk.attn.proj((attn @ qkv[2]).transpose(1, 2).reshape(1, 37, 32))
        x = x + blk.mlp(blk.norm2(x))
    last = model.blocks[-1]  # dino.py:297-324: the hook on qkv, heads head-major, CLS dropped
    k = last.attn.qkv(last.norm1(x)).reshape(1, 37, 3, 2, 16).permute(2, 0, 3, 1, 4)[1]
    expected = k.transpose(1, 2).reshape(1, 37, -1)[:, 1:].transpose(1, 2).reshape(32, 36)
    assert grid == (6, 6) and torch.allclose(keys, expected, atol=1e-6)
    timm_pos = __import__("timm").layers.resample_abs_pos_embed(model.pos_embed, new_size=[6, 6], num_prefix_tokens=1)
    assert (timm_pos - dino_position_embedding(model.pos_embed, (6, 6))).abs().max() > 1e-3  # timm's: antialiased
    assert torch.equal(dino_position_embedding(model.pos_embed, (4, 4)), model.pos_embed)  # native: unchanged


@needs_crf
def test_a_mask_the_crf_moves_far_is_emptied_but_keeps_its_channel():
    from lposs.models.panoptic_cut import refine_mask

    pixels = np.full((32, 32, 3), 128, dtype=np.uint8)
    pixels[8:24, 8:24] = (240, 20, 20)
    kept = np.zeros((32, 32), dtype=np.float32)
    kept[8:24, 8:24] = 1  # follows the red square: the CRF keeps it
    assert refine_mask(pixels, kept)[8:24, 8:24].all()
    stray = np.zeros((32, 32), dtype=np.float32)
    stray[0:8, 0:8] = 1  # a corner of the flat grey: the CRF spreads it or drops it far from itself
    assert not refine_mask(pixels, stray).any()


def test_the_size_threshold_keeps_the_releases_two_values():
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    out = to_image_size(mask, (17, 23))
    assert out.shape == (17, 23) and out.any() and not out.all()
    almost_all = np.ones((40, 40), dtype=bool)
    almost_all[0, 0] = False  # bicubic leaves no pixel at 0: the minimum is kept where the mask fades
    assert to_image_size(almost_all, (20, 20)).all()
    assert not to_image_size(np.zeros((40, 40), dtype=bool), (20, 20)).any()


def test_a_missing_pydensecrf_stops_with_its_name_and_the_install_command(monkeypatch):
    from lposs.models.masks import create_mask_model

    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match=r"pydensecrf2.*pip install -e \.\[masks\]"):
        create_mask_model("panoptic_cut_demo")
    with pytest.raises(ImportError, match="pydensecrf"):
        PanopticCut(ColourKeys())


def test_overlapping_masks_keep_their_code_and_give_ids_by_the_lowest_index():
    masks = torch.zeros(4, 5, 7, dtype=torch.bool)
    masks[0, :3, :4] = True
    masks[1, 1:5, 2:7] = True  # overlaps mask 0
    masks[3] = ~masks[:3].any(0)  # mask 2 empty; the complement last
    code = encode_masks(masks)
    assert code.dtype == torch.int32 and torch.equal(decode_masks(code), masks)  # the empty channel survives
    regions = masks_to_regions(masks)
    assert regions[1, 2] == 1 and regions[4, 6] == 2 and regions[4, 0] == 4  # mask 0 wins the overlap
    assert torch.equal(masks_to_regions(partition_masks(regions)), torch.where(regions == 0, 5, regions))
    assert torch.equal(resize_masks(masks, (10, 14))[:, ::2, ::2], masks)  # nearest: every source pixel kept
    with pytest.raises(ValueError, match="damaged"):
        decode_masks(torch.cat([torch.tensor([2], dtype=torch.int32), code[1:]]))  # bits above mask 1


@needs_crf
def test_the_registry_names_the_models_of_overlapping_masks():
    from lposs.models.masks import MASK_MODELS, OVERLAPPING, create_mask_model

    assert OVERLAPPING <= set(MASK_MODELS) and PanopticCut.overlapping
    assert create_mask_model("panoptic_cut_demo").overlapping and not getattr(create_mask_model("demo"), "overlapping",
                                                                               False)
    assert {"sam_vit_b", "sam2_hiera_l"}.isdisjoint(OVERLAPPING)  # region maps only
