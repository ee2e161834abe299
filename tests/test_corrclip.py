"""CorrCLIP's dense head (lposs.models.heads_masks.corrclip) against a hand recomputation, and its release quirks.

A tiny 12-block ViT/16 with random weights on CPU (ViT-B/16 is checked against the release itself by
benchmarks/parity_corrclip.py), synthetic DINO q + k and synthetic integer masks. The hand version follows
the release's own formulation (CorrCLIPv1/open_clip/transformer.py:506-634): the mask-class tokens and the patches
run TOGETHER through every block under one boolean attention mask, one attention head at a time, with the weights
read off the blocks; DBSCAN (min_samples 1) is written as connected components of distance <= eps; the nearest
resamplings are strided slices. The module instead runs the vanilla blocks and the tokens apart.
(Parity with the release's code itself: benchmarks/parity_corrclip.py.)
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import register_tiny_clip
from test_heads import clip_windows, layer_norm, mlp, release_positional_embedding

from lposs.models.heads_masks.corrclip import (
    DEFAULTS,
    corrclip,
    merge_regions,
    regions_at_grid,
    scoped_affinity,
    spatial_layers,
)


@pytest.fixture(scope="module")
def visual(tmp_path_factory):
    """A tiny 12-block ViT/16 (width 64, 2 heads of 32, output 32), random seeded weights: the property tests."""
    register_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), "corrclip-tiny-12", vision_layers=12, head_width=32)
    torch.manual_seed(0)
    return open_clip.create_model("corrclip-tiny-12", pretrained=None).visual.eval()


def pixel_regions(height: int, width: int) -> torch.Tensor:
    """[H, W] ids: 0 unsegmented; 1 and 2 (given the same DINO features below: merged); 3 with boundaries off the
    16 px grid; 4 a single DINO column at an odd index, so it vanishes at the CLIP grid."""
    ids = torch.zeros(height, width, dtype=torch.long)
    ids[: 3 * height // 8, : width // 2] = 1
    ids[: 3 * height // 8, width // 2 :] = 2
    ids[height // 2 + 4 :, : 100 * width // 224] = 3
    ids[height // 2 :, width - 24 : width - 16] = 4
    return ids


def dino_proxy(ids: torch.Tensor, channels: int = 64, seed: int = 0, noise: float = 0.3) -> torch.Tensor:
    """[h', w', C]: a random direction per region (1 and 2 share one) plus noise, unnormalised."""
    g = torch.Generator().manual_seed(seed)
    bases = 3 * torch.randn(int(ids.max()) + 1, channels, generator=g)
    bases[2] = bases[1]
    return bases[ids] + noise * torch.randn(*ids.shape, channels, generator=g)


# ---------------------------------------------------------------------------------------------------
# The hand recomputation
# ---------------------------------------------------------------------------------------------------


def dbscan_by_hand(distance: torch.Tensor, eps: float) -> list[int]:
    """DBSCAN with min_samples 1: connected components of distance <= eps, numbered by their first member."""
    labels = [-1] * len(distance)
    for start in range(len(distance)):
        if labels[start] != -1:
            continue
        label, stack = max(labels) + 1, [start]
        while stack:
            i = stack.pop()
            if labels[i] == -1:
                labels[i] = label
                stack += [j for j in range(len(distance)) if distance[i, j] <= eps and labels[j] == -1]
    return labels


def merged_by_hand(ids: torch.Tensor, feats: torch.Tensor, eps: float) -> torch.Tensor:
    values = sorted(set(ids.flatten().tolist()))
    if len(values) <= 2:
        return ids
    means = torch.stack([feats[ids == value].mean(0) for value in values])
    means = means / means.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = means[1:] @ means[1:].T
    labels = dbscan_by_hand(sim.max() - sim, eps)
    merged = ids.clone()
    for value, label in zip(values[1:], labels):
        merged[ids == value] = label + 10000
    return merged


def block_by_hand(block, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """One residual block on x [L, W], token i attending to j only where allowed[i, j]; head by head."""
    attn = block.attn
    heads, width = attn.num_heads, x.shape[1]
    d = width // heads
    q, k, v = (layer_norm(x, block.ln_1) @ attn.in_proj_weight.T + attn.in_proj_bias).split(width, dim=1)
    outs = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        logits = (q[:, part] @ k[:, part].T) / d**0.5
        outs.append(logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, part])
    y = x + torch.cat(outs, dim=1) @ attn.out_proj.weight.T + attn.out_proj.bias
    return y + mlp(block, layer_norm(y, block.ln_2))


def corrclip_by_hand(visual, window: torch.Tensor, proxy: torch.Tensor, pixel_ids: torch.Tensor) -> torch.Tensor:
    """The release's forward (batch 1) written out; DINO grid = H / 8, CLIP grid = H / 16 -> [h', w', D]."""
    height, width = window.shape[2:]
    gh, gw, hp, wp = height // 16, width // 16, height // 8, width // 8
    # embedding x_0 = ln_pre(CLS + patches + position embedding (the release's rule))
    patches = F.conv2d(window, visual.conv1.weight, stride=16)[0].flatten(1).T  # [N, W]
    x = torch.cat([visual.class_embedding[None], patches]) + release_positional_embedding(visual, window, "sclip")
    x = layer_norm(x, visual.ln_pre)  # [1 + N, W]
    # regions at the DINO grid (nearest: every 8th pixel), merged; scope and A
    feats = proxy.reshape(hp * wp, -1)
    feats = feats / feats.norm(dim=1, keepdim=True)
    dino_ids = merged_by_hand(pixel_ids[::8, ::8], feats.reshape(hp, wp, -1), 0.2).flatten()  # [N']
    lowest = dino_ids.min()
    sim = feats @ feats.T
    same = (dino_ids[:, None] == dino_ids[None, :]) & (dino_ids[:, None] != lowest)
    touching = ((dino_ids[:, None] == lowest) | (dino_ids[None, :] == lowest)) & (sim > sim.mean())
    affinity = (4 * sim).masked_fill(~(same | touching), float("-inf")).softmax(-1)  # [N', N']
    # mask-class tokens: one per id at the CLIP grid (every 2nd DINO patch), in front of CLS and the patches
    clip_ids = dino_ids.reshape(hp, wp)[::2, ::2].flatten()  # [N]
    values = sorted(set(clip_ids.tolist()))
    r, n = len(values), gh * gw
    allowed = torch.zeros(r + 1 + n, r + 1 + n, dtype=torch.bool)
    allowed[r:, r:] = True
    allowed[:r, r] = True
    for i, value in enumerate(values):
        allowed[i, r + 1 :] = clip_ids == value
    tokens = torch.cat([x[:1].repeat(r, 1), x])
    outputs = []
    for block in visual.transformer.resblocks[:-1]:
        tokens = block_by_hand(block, tokens, allowed)
        outputs.append(tokens[r:])  # x_1 .. x_11
    last = visual.transformer.resblocks[-1]
    branches = []
    width = x.shape[1]
    for source in (outputs[-1], torch.stack(outputs[5:10]).mean(0)):  # x_11 (main), mean x_6..x_10 (spatial)
        v = layer_norm(source, last.ln_1) @ last.attn.in_proj_weight[-width:].T + last.attn.in_proj_bias[-width:]
        v = F.interpolate(v[1:].T.reshape(1, -1, gh, gw), size=(hp, wp), mode="bilinear", align_corners=False)
        branches.append((affinity @ v[0].flatten(1).T) @ last.attn.out_proj.weight.T + last.attn.out_proj.bias)
    region_tokens = block_by_hand(last, tokens, allowed)[:r]  # [R, W]
    row = torch.tensor([values.index(value) for value in clip_ids.tolist()]).reshape(gh, gw)
    row = row.repeat_interleave(2, 0).repeat_interleave(2, 1).flatten()  # CLIP grid -> DINO grid, nearest
    semantic = region_tokens[row]  # [N', W]
    out = (layer_norm(branches[0], visual.ln_post) + layer_norm(branches[1], visual.ln_post)
           + 0.5 * layer_norm(semantic, visual.ln_post))
    return (out @ visual.proj).reshape(hp, wp, -1)


@pytest.mark.parametrize("size", [(224, 224), (160, 224)])
def test_corrclip_matches_hand_recomputation(visual, size):
    """The native grid, and one off it (the SCLIP position-embedding rule, copied from the release)."""
    window = clip_windows(1, *size)
    pixel_ids = pixel_regions(*size)
    dino_ids = pixel_ids[::8, ::8]
    proxy = dino_proxy(dino_ids, seed=1)
    merged = merged_by_hand(dino_ids, F.normalize(proxy, dim=-1), 0.2)
    assert len(merged.unique()) == 4 and len(dino_ids.unique()) == 5  # DBSCAN ran and merged 1 with 2
    assert 4 in dino_ids and len(merged[::2, ::2].unique()) == 3  # region 4 has no token at the CLIP grid
    with torch.no_grad():
        expected = corrclip_by_hand(visual, window, proxy, pixel_ids)
        got = corrclip(visual, window, proxy, regions_at_grid(pixel_ids, (size[0] // 8, size[1] // 8)),
                       dict(DEFAULTS))
    assert got.shape == expected.shape == (size[0] // 8, size[1] // 8, visual.proj.shape[1])
    error = (got - expected).abs().max().item()
    print(f"corrclip hand check {size}: max abs error {error:.2e}")
    assert error <= 1e-5


# ---------------------------------------------------------------------------------------------------
# Properties and the release's rules
# ---------------------------------------------------------------------------------------------------


def run(visual, ids: torch.Tensor, proxy: torch.Tensor, size=(112, 112)) -> torch.Tensor:
    with torch.no_grad():
        return corrclip(visual, clip_windows(1, *size, seed=2), proxy, ids, dict(DEFAULTS))


def test_lowest_id_is_unsegmented_even_when_a_real_region(visual):
    """Two real regions {3, 7} covering the window: 3 (the lowest) gets the S > mean rule, not its own block."""
    ids = torch.full((14, 14), 7, dtype=torch.long)
    ids[:, :5] = 3
    proxy = dino_proxy(ids, noise=2.0)
    feats = F.normalize(proxy.flatten(0, 1), dim=-1)
    sim, flat = feats @ feats.T, ids.flatten()
    affinity = scoped_affinity(feats, ids, DEFAULTS["tau"])
    in3, in7 = flat == 3, flat == 7
    assert (affinity[in7][:, in7] > 0).all()  # a real region: every pair inside it
    above = sim > sim.mean()
    pairs3 = in3[:, None] & in3[None, :]
    assert (affinity[pairs3 & ~above] == 0).all() and (affinity[pairs3 & above] > 0).all()
    across = in3[:, None] & in7[None, :]
    assert (affinity[across & above] > 0).all() and (affinity[across & ~above] == 0).all()
    assert (affinity[in7[:, None] & in3[None, :] & ~above] == 0).all()
    # the output depends on the ids only through their order: 3 -> 0 changes nothing, swapping the order does
    base = run(visual, ids, proxy)
    assert torch.equal(run(visual, torch.where(ids == 3, 0, ids), proxy), base)
    swapped = torch.where(ids == 3, 7, 3)
    assert (run(visual, swapped, proxy) - base).abs().max() > 1e-3


def test_regions_with_identical_features_are_merged(visual):
    ids = torch.zeros(14, 14, dtype=torch.long)  # 0: an unsegmented border
    ids[1:7, 1:7], ids[1:7, 7:13], ids[7:13, 1:13] = 1, 2, 3
    g = torch.Generator().manual_seed(3)
    proxy = torch.randn(14, 14, 64, generator=g)
    proxy[(ids == 1) | (ids == 2)] = torch.randn(64, generator=g)  # 1 and 2: the same DINO feature everywhere
    feats = F.normalize(proxy.flatten(0, 1), dim=-1)
    merged = merge_regions(ids, feats, DEFAULTS["dbscan_eps"], DEFAULTS["dbscan_min_samples"])
    assert len(merged[ids == 1].unique()) == 1 and torch.equal(merged[ids == 1].unique(), merged[ids == 2].unique())
    assert merged[ids == 1][0] >= 10000 and merged[ids == 3][0] >= 10000 and merged[ids == 1][0] != merged[ids == 3][0]
    assert (merged[ids == 0] == 0).all()  # the unsegmented region keeps its id
    # ... so the head cannot tell them from one region given as one id
    assert torch.allclose(run(visual, ids, proxy), run(visual, torch.where(ids == 2, 1, ids), proxy), atol=1e-6)
    # with only two ids (one real region + unsegmented) nothing is merged
    two = torch.where(ids == 0, 0, 5)
    assert torch.equal(merge_regions(two, feats, 0.2, 1), two)


def test_output_at_the_dino_grid(visual):
    ids = regions_at_grid(pixel_regions(112, 160), (14, 20))
    out = run(visual, ids, dino_proxy(ids), size=(112, 160))
    assert out.shape == (14, 20, visual.proj.shape[1]) and torch.isfinite(out).all()


def test_inputs_are_checked(visual):
    ids = torch.zeros(14, 14, dtype=torch.long)
    proxy = torch.randn(14, 14, 64)
    with pytest.raises(ValueError, match="regions"):
        corrclip(visual, clip_windows(1, 112, 112), proxy, ids[:, :13], dict(DEFAULTS))
    with pytest.raises(ValueError, match="window"):
        corrclip(visual, clip_windows(2, 112, 112), proxy, ids, dict(DEFAULTS))
    with pytest.raises(ValueError, match="window"):
        corrclip(visual, clip_windows(1, 112, 120), proxy, ids, dict(DEFAULTS))


def test_regions_at_grid_is_torch_nearest():
    ids = torch.randint(0, 50, (32, 48), generator=torch.Generator().manual_seed(0))
    assert torch.equal(regions_at_grid(ids, (8, 12)), ids[::4, ::4])
    assert torch.equal(regions_at_grid(ids[:7, :7], (3, 3)), ids[[0, 2, 4]][:, [0, 2, 4]])  # floor(i * 7 / 3)


def test_spatial_layers_follow_the_release():
    """NUM_SPATIAL 5 / 12 / 28 for 12 / 24 / 32 blocks, else L - 4; x_{L-1-n} .. x_{L-2} (transformer.py:529-599)."""
    assert spatial_layers(12) == slice(6, 11)  # x_6 .. x_10
    assert spatial_layers(24) == slice(11, 23)
    assert spatial_layers(32) == slice(3, 31)
    assert spatial_layers(16) == slice(3, 15)


# ---------------------------------------------------------------------------------------------------
# End to end: DenseCLIP with a DINO q + k proxy, the mask model's regions, segment
# ---------------------------------------------------------------------------------------------------


def test_dino_qk_is_the_normalised_sum_of_the_last_blocks_q_and_k():
    from lposs.models.backbones import VisionFeatures

    dino = VisionFeatures("dino_vits16", pretrained=False, feature="qk")
    windows = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    parts = dino.dense_features_multi(windows, ("qk",))
    _, qkv, _ = dino._forward(windows)
    expected = F.normalize(dino._qkv_part(qkv, "q") + dino._qkv_part(qkv, "k"), dim=-1)[:, 1:].reshape(2, 4, 6, -1)
    assert torch.allclose(parts["qk"], expected, atol=1e-6)


def test_corrclip_runs_end_to_end_on_the_mask_models_regions():
    from lposs.demo.masks import DemoMasks
    from lposs.image_features import extract_features
    from lposs.models.backbones import DenseCLIP, VisionFeatures
    from lposs.models.heads_masks.corrclip import regions_at_grid
    from lposs.segmentation import segment

    dino = VisionFeatures("dino_vits16", pretrained=False)
    vlm = DenseCLIP("ViT-B-16", pretrained=None, head="corrclip", proxy=dino.with_feature("qk"), quick_gelu=True,
                    text_cache=None)
    assert vlm.reads_regions and not vlm.whole_image
    image = torch.zeros(3, 200, 260)
    image[:, :, 130:] = torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1)  # two flat colours: two demo regions
    image += 0.05 * torch.rand(3, 200, 260, generator=torch.Generator().manual_seed(2))
    names = ["cow", "grass", "sky"]
    masks = DemoMasks()
    feats = extract_features(image, names, vlm, dino, masks=masks, crop=224, stride=112, short_side=224)
    assert feats.regions is not None and feats.regions.shape == feats.resized_hw
    crops = torch.stack([F.pad(feats.image_resized[:, y1:y2, x1:x2], (0, 224 - (x2 - x1), 0, 224 - (y2 - y1)))
                         for y1, y2, x1, x2 in feats.layout])
    window_regions = torch.stack([F.pad(feats.regions[y1:y2, x1:x2], (0, 224 - (x2 - x1), 0, 224 - (y2 - y1)))
                                  for y1, y2, x1, x2 in feats.layout])
    dense = vlm.dense_features(crops, regions=window_regions)  # [B, 14, 14, D] at DINO S/16's grid
    emb, _ = vlm.text_embeddings(names)
    assert torch.allclose(feats.seeds, dense.reshape(-1, dense.shape[-1]) @ emb.T, atol=1e-5)
    assert regions_at_grid(window_regions[0], (14, 14)).unique().numel() >= 2  # the head saw both regions
    labels = segment(image, names, "lposs+", vlm=vlm, vm=dino, masks=masks, crop=224, stride=112, short_side=224)
    assert labels.shape == (200, 260) and labels.max() < 3
    with pytest.raises(ValueError, match="reads mask regions"):
        segment(image, names, "lposs", vlm=vlm, vm=dino, crop=224, stride=112, short_side=224)
