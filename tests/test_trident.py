"""Trident's head (lposs.models.heads_masks.trident) against a hand recomputation, and SAM's last-block tensors.

Random ViT-B-16-quickgelu weights, synthetic DINO tokens and a synthetic SAM attention / values (a SAM ViT-B is
too large here; `SamAttention` is checked on a small SAM built from segment-anything's modules). The hand version
runs each window through open_clip's own forward (hooks, tests/test_heads_2025.py), one attention head and one
window at a time, and keeps the release's traps: the ProxyCLIP mean over ALL windows, the splice's averaged
overlaps, the SAM threshold per query row.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_heads import clip_windows, layer_norm
from test_heads_2025 import block_outputs, out_proj, per_head
from test_masks import tiny_sam

from lposs.models import loading
from lposs.models.heads_masks.trident import DEFAULTS, release_windows, sam_affinity, trident


@pytest.fixture(scope="module")
def visual():
    return loading.load_open_clip("ViT-B-16", None, None, seed=0, quick_gelu=True).visual.eval()


def synthetic_sam(heads: int, grid: tuple[int, int], dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    attn = torch.softmax(3 * torch.randn(heads, n, n, generator=g), dim=-1)
    values = torch.randn(heads, *grid, dim, generator=g) + 0.5 * torch.randn(1, *grid, dim, generator=g)
    return attn, values


def hand_sam_weights(attn, values, cos_fac, refine_neg_cos=True):
    heads, n = attn.shape[0], attn.shape[1]
    sims = []
    for h in range(heads):
        v = values[h].reshape(n, -1)
        v = v / v.norm(dim=-1, keepdim=True)
        sims.append(v @ v.T)
    mean = sum(sims) / heads  # over heads, then over keys: one threshold per query row
    kept = torch.zeros(n, n)
    for i in range(n):
        t = cos_fac * mean[i].mean()
        if not refine_neg_cos and t < 0:
            t = torch.tensor(0.6)
        t = min(t, torch.tensor(0.9))
        for h in range(heads):
            kept[i] += torch.where(sims[h][i] > t, attn[h, i], torch.zeros(n)) / heads
    return kept / kept.sum(dim=1, keepdim=True)


def hand_trident(visual, windows, proxy, cells, canvas, attn, values, beta=1.2, gamma=3.0, cos_fac=1.2):
    block = visual.transformer.resblocks[-1]
    grid = windows.shape[2] // 16
    pgrid = proxy.shape[1]
    feats = F.normalize(proxy.flatten(1, 2), dim=-1)
    sims = feats @ feats.transpose(1, 2)
    mean = sims.mean()  # the whole batch: every window of the image
    ratio = pgrid // grid
    total = torch.zeros(visual.transformer.width, canvas[0] * ratio, canvas[1] * ratio)
    count = torch.zeros(canvas[0] * ratio, canvas[1] * ratio)
    for b in range(windows.shape[0]):
        x11 = block_outputs(visual, windows[b : b + 1])[-1]  # [1 + N, W]
        logits = gamma * (sims[b] - beta * mean)
        a = torch.softmax(logits.masked_fill(logits < 0, float("-inf")), dim=-1)
        outs = []
        for _, _, v in per_head(block, x11):
            patches = v[1:].T.reshape(1, -1, grid, grid)
            patches = F.interpolate(patches, size=(pgrid, pgrid), mode="bilinear", align_corners=False)
            outs.append(a @ patches.reshape(v.shape[1], -1).T)
        window = out_proj(block, outs).T.reshape(-1, pgrid, pgrid)
        y1, x1, y2, x2 = (int(c) * ratio for c in cells[b])
        total[:, y1:y2, x1:x2] += window
        count[y1:y2, x1:x2] += 1
    spliced = F.interpolate((total / count)[None], size=values.shape[1:3], mode="bilinear", align_corners=False)[0]
    out = hand_sam_weights(attn, values, cos_fac) @ spliced.flatten(1).T
    return layer_norm(out, visual.ln_post) @ visual.proj


@pytest.mark.parametrize("proxy_grid", [14, 28])  # DINO B/16 as released; a finer proxy (the ratio-2 splice)
def test_trident_equals_a_hand_recomputation(visual, proxy_grid):
    image = clip_windows(1, 224, 336, seed=3)[0]
    windows, cells, canvas = release_windows(image, crop=224, stride=112, patch=16)
    assert cells.tolist() == [[0, 0, 14, 14], [0, 7, 14, 21]] and canvas == (14, 21)
    proxy = torch.randn(len(windows), proxy_grid, proxy_grid, 32, generator=torch.Generator().manual_seed(4))
    attn, values = synthetic_sam(3, (6, 9))
    settings = {**DEFAULTS, "cos_fac": 1.2}
    with torch.no_grad():
        ours = trident(visual, windows, proxy, cells, canvas, attn, values, **settings)
        hand = hand_trident(visual, windows, proxy, cells, canvas, attn, values)
    assert ours.shape == (1, 6, 9, 512)
    error = (ours.reshape(-1, 512) - hand).abs().max().item()
    print(f"max abs error trident (proxy grid {proxy_grid}): {error:.2e}")
    assert error <= 1e-4


def test_the_sam_threshold_is_per_query_row_capped_and_optionally_lifted_when_negative():
    attn, values = synthetic_sam(4, (3, 4), seed=5)
    for cos_fac, neg in [(1.2, True), (0.0, True), (5.0, True), (-2.0, False)]:
        ours = sam_affinity(attn, values, cos_fac, neg)
        hand = hand_sam_weights(attn, values, cos_fac, neg)
        assert torch.allclose(ours, hand, atol=1e-6), (cos_fac, neg)
        assert torch.allclose(ours.sum(dim=1), torch.ones(12), atol=1e-6)
    # a cap of 0.9: with cos_fac 5 only near-duplicates survive, but every row keeps its diagonal
    assert (sam_affinity(attn, values, 5.0, True).diagonal() > 0).all()


def test_release_windows_round_the_image_and_lay_windows_flush_with_the_border():
    image = torch.rand(3, 350, 500)
    windows, cells, canvas = release_windows(image, crop=336, stride=224, patch=16)
    # long side 500 -> 512; short 350 * 512 / 500 = 358 -> 368; windows at 0 and 32 down, 0 and 176 across
    assert canvas == (23, 32) and windows.shape == (4, 3, 336, 336)
    assert cells.tolist() == [[0, 0, 21, 21], [0, 11, 21, 32], [2, 0, 23, 21], [2, 11, 23, 32]]
    # sides below the crop (multiples of 16 already): windows of that side, here 224 x 336 at 0 and 112 across
    windows, cells, canvas = release_windows(torch.rand(3, 224, 448), crop=336, stride=224, patch=16)
    assert windows.shape == (2, 3, 224, 336) and cells.tolist() == [[0, 0, 14, 21], [0, 7, 14, 28]]


def test_sam_attention_recomputes_what_the_last_block_computes():
    pytest.importorskip("segment_anything")
    from lposs.models.sam_attention import SamAttention, last_block_attention

    model = tiny_sam()
    model.image_encoder.blocks[-1].window_size = 0  # global attention in the last block, as SAM ViT-B's block 12
    sam = SamAttention(model=model)
    block = model.image_encoder.blocks[-1]
    seen = {}
    hook = block.attn.register_forward_hook(lambda _m, inputs, out: seen.update(x=inputs[0], out=out))
    attn, values = sam(torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(2)))
    hook.remove()
    # the tiny SAM reads 64 px: 40 x 60 -> rounded to 48 x 64 -> long side 64 -> 48 x 64 of the 64 x 64 input
    assert sam.predictor.input_size == (48, 64) and values.shape == (2, 3, 4, 16) and attn.shape == (2, 12, 12)
    full, v = last_block_attention(block.attn, seen["x"])  # [heads, 16, 16] over the padded 4 x 4 grid
    rebuilt = (full @ v.reshape(2, 16, -1)).reshape(2, 4, 4, -1).permute(1, 2, 0, 3).reshape(1, 4, 4, -1)
    assert torch.allclose(block.attn.proj(rebuilt), seen["out"], atol=1e-5)
    assert torch.allclose(full.sum(-1), torch.ones(2, 16), atol=1e-5)
    assert torch.allclose(attn, full.view(2, 4, 4, 4, 4)[:, :3, :, :3, :].reshape(2, 12, 12))
    model.image_encoder.blocks[-1].window_size = 2
    with pytest.raises(ValueError, match="global attention"):
        SamAttention(model=model)


def test_window_cells_sample_each_windows_box_of_the_whole_image_map():
    from lposs.image_features import window_cells

    ramp = torch.arange(12, dtype=torch.float32).repeat(8, 1)  # [8, 12]: value = column index
    whole = torch.stack([ramp, torch.ones(8, 12)], dim=-1)[None]  # [1, 8, 12, 2] on a 64 x 96 image
    cells = window_cells(whole, [(0, 32, 32, 64), (32, 64, 64, 96)], (64, 96), crop=32, grid=4)
    assert cells.shape == (2, 4, 4, 2)
    expected = F.normalize(torch.stack([torch.tensor([4.0, 5.0, 6.0, 7.0]), torch.ones(4)], dim=-1), dim=-1)
    # a linear map sampled symmetrically in each cell gives its value at the cell's centre (inside the map)
    assert torch.allclose(cells[0, 1], expected, atol=1e-6)
    inside = F.normalize(torch.tensor([[8.0, 1.0], [9.0, 1.0]]), dim=-1)
    assert torch.allclose(cells[1, 2, :2], inside, atol=1e-6)


@pytest.fixture(scope="module")
def trident_backbones():
    pytest.importorskip("segment_anything")
    from lposs.models.backbones import DenseCLIP, VisionFeatures
    from lposs.models.sam_attention import SamAttention

    model = tiny_sam()
    model.image_encoder.blocks[-1].window_size = 0
    dino = VisionFeatures("dino_vits16", pretrained=False, feature="tokens")
    vlm = DenseCLIP("ViT-B-16", pretrained=None, head="trident", proxy=dino, sam=SamAttention(model=model),
                    head_params={"slide_crop": 224, "slide_stride": 112}, quick_gelu=True, text_cache=None)
    return vlm, dino.with_feature("v")


def test_trident_runs_end_to_end_and_its_seeds_are_the_whole_image_features_cut_into_windows(trident_backbones):
    from lposs.image_features import extract_features, window_cells
    from lposs.segmentation import segment

    vlm, vm = trident_backbones
    assert vlm.whole_image and "-sam_custom-Sam" in vlm.id and "trident" in vlm.id
    image = (torch.rand(3, 200, 260, generator=torch.Generator().manual_seed(6)) * 255).byte().permute(1, 2, 0).numpy()
    names = ["cow", "grass", "sky"]
    feats = extract_features(image, names, vlm, vm, crop=224, stride=112, short_side=224)
    whole = vlm.whole_image_features(torch.from_numpy(image).permute(2, 0, 1).float() / 255, feats.image_resized)
    assert whole.shape[0] == 1 and torch.allclose(whole.norm(dim=-1), torch.ones(whole.shape[:3]), atol=1e-5)
    emb, _ = vlm.text_embeddings(names)
    cells = window_cells(whole, feats.layout, feats.resized_hw, 224, 14)  # [B, 14, 14, D]
    assert torch.allclose(feats.seeds, cells.reshape(-1, cells.shape[-1]) @ emb.T, atol=1e-5)
    labels = segment(image, names, "lposs+", vlm=vlm, vm=vm, crop=224, stride=112, short_side=224)
    assert labels.shape == (200, 260) and labels.max() < 3
    with pytest.raises(ValueError, match="reads the whole image"):
        vlm.dense_features(torch.rand(1, 3, 224, 224))


def test_trident_and_corrclip_specs_name_their_extra_models():
    from lposs.models.factory import BackboneSpec

    assert BackboneSpec(head="trident").proxy == "dino_vitb16" and BackboneSpec(head="corrclip", masks="demo").proxy == "dino_vitb8"
    assert BackboneSpec(head="corrclip").masks == "sam2_hiera_l"  # masks "release": its release's mask model
    assert BackboneSpec(head="trident").masks == "none"  # it reads SAM's tensors itself, not a mask model's regions
    with pytest.raises(ValueError, match="reads a mask model's regions: set masks.*its release uses sam2_hiera_l"):
        BackboneSpec(head="corrclip", masks="none")


def test_trident_offline_names_the_sam_weights(monkeypatch, tmp_path):
    pytest.importorskip("segment_anything")
    from lposs.models.factory import BackboneSpec, create_backbones
    from lposs.models.loading import BackboneUnavailable

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    monkeypatch.setattr(loading, "_probe", lambda url, timeout=0: "no network (test)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as error:
        create_backbones(BackboneSpec(vlm="ViT-B-16", vlm_weights="laion2b_s34b_b88k", head="trident",
                                      vm="dino_vitb16", vm_weights="random"))
    assert "sam_vit_b_01ec64.pth" in str(error.value) and str(tmp_path) in str(error.value)
