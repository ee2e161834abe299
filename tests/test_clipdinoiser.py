"""The `clipdinoiser` head (lposs.models.heads_2024.clipdinoiser) against a hand recomputation, its checkpoint, and
the traps of its release.

A tiny random open_clip ViT (tests/test_gem.py: 12 blocks of width 64) with random convolutions of that width (the
release's are 768 -> 256; the loader, tested apart, insists on those). The hand version is written from
wysoczanska/clip_dinoiser@a954aae (models/clip_dinoiser/clip_dinoiser.py, models/maskclip/maskclip.py) patch by
patch, on every block's input captured from open_clip's OWN forward with the release's position embedding. Each trap
has a test that fails on the wrong choice.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_gem import block_inputs, error, layer_norm, tiny_visual

from lposs.experiment import tables
from lposs.models import loading
from lposs.models.backbones import DenseCLIP
from lposs.models.factory import BackboneSpec, create_backbones
from lposs.models.heads import HEADS, dense_clip_features
from lposs.models.heads_2024 import clipdinoiser as cd
from lposs.models.protocols import class_names, resolve
from lposs.models.records import PUBLISHED_ORDER

SIZES = [(64, 64), (96, 128)]


@pytest.fixture(scope="module")
def visual():
    return tiny_visual(seed=1)


def convolutions(width: int = 64, seed: int = 0) -> cd.Convolutions:
    """Random convolutions of the release's kinds, sharp enough that some correlations fall under 0.2 and some
    patches are background."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        convs = cd.Convolutions(width=width, channels=16).eval()
        with torch.no_grad():
            convs.obj_proj.weight.mul_(8.0)
            convs.bkg_decoder.weight.mul_(20.0)
    return convs


def windows(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def close_queries(count: int = 4, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Unit queries close to each other, so that softmax(100 cos) leaves some patches uncertain (max P < 0.99)."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(1, dim, generator=g) + 0.03 * torch.randn(count, dim, generator=g), dim=-1)


# ---------------------------------------------------------------------------------------------------
# The release, by hand
# ---------------------------------------------------------------------------------------------------


def release_positional_embedding(visual, grid):
    """maskclip.py resize_pos_embed: the patch part bicubically to the grid (mmseg resize, align_corners False)."""
    pos = visual.positional_embedding.detach()
    patch = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patch.flatten(2).transpose(1, 2)[0]])


def mlp(block, x):
    hidden = x @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
    return hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def hand_attention(block, x):
    """W_o concat_heads(softmax(q k^T / sqrt d) v) + b_o of ln_1(x), head by head. x [L, W]."""
    h = layer_norm(x, block.ln_1)
    attn, width = block.attn, x.shape[-1]
    d = width // attn.num_heads
    qkv = h @ attn.in_proj_weight.T + attn.in_proj_bias
    heads = []
    for i in range(attn.num_heads):
        q, k, v = (qkv[:, part * width + i * d : part * width + (i + 1) * d] for part in range(3))
        heads.append(torch.softmax(q @ k.T / math.sqrt(d), dim=-1) @ v)
    return torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def hand_maskclip(visual, x):
    """maskclip.py extract_v + ln_post + proj: v = out_proj(value part of in_proj(ln_1 x)) + x; v += MLP(ln_2 v)."""
    block = visual.transformer.resblocks[-1]
    width = x.shape[-1]
    h = layer_norm(x, block.ln_1)
    value = h @ block.attn.in_proj_weight[2 * width :].T + block.attn.in_proj_bias[2 * width :]
    v = value @ block.attn.out_proj.weight.T + block.attn.out_proj.bias + x
    v = v + mlp(block, layer_norm(v, block.ln_2))
    return layer_norm(v, visual.ln_post)[1:] @ visual.proj  # [N, D]


def hand_clipdinoiser(visual, x, convs, guide_block=9, padding="replicate", normalise_first=False, self_weight=True,
                      found=False, text=None):
    """F' [N, D] of one window, patch by patch, as the release computes it (the keyword arguments: wrong choices)."""
    xs = block_inputs(visual, x, release_positional_embedding)
    grid = (x.shape[2] // 16, x.shape[3] // 16)
    block = visual.transformer.resblocks[guide_block]
    y = xs[guide_block] + hand_attention(block, xs[guide_block])
    guide = layer_norm(y, block.ln_2)[1:].T.reshape(1, -1, *grid)  # G [1, W, h, w]
    feats = hand_maskclip(visual, xs[-1])  # F [N, D]
    padded = F.pad(guide, (1, 1, 1, 1), mode=padding) if padding == "replicate" else F.pad(guide, (1, 1, 1, 1))
    proj = F.conv2d(padded, convs.obj_proj.weight, convs.obj_proj.bias)[0].flatten(1).T  # [N, 256]
    n = proj.shape[0]
    corr = torch.stack([torch.stack([proj[i] @ proj[j] / (proj[i].norm() * proj[j].norm()) for j in range(n)])
                        for i in range(n)])
    if not self_weight:
        corr = corr - torch.diag(torch.diag(corr))
    if normalise_first:
        corr = corr / corr.sum(dim=1, keepdim=True)
        corr = torch.where(corr < 0.2, torch.zeros_like(corr), corr)
        pooled = corr @ feats
    else:
        corr = torch.where(corr < 0.2, torch.zeros_like(corr), corr)
        pooled = torch.stack([(corr[i, :, None] * feats).sum(0) / (corr[i].sum() + 1e-6) for i in range(n)])
    if found:
        unit = guide / guide.norm(dim=1, keepdim=True)
        background = torch.sigmoid(F.conv2d(unit, convs.bkg_decoder.weight, convs.bkg_decoder.bias)).flatten()
        for i in range(n):
            p = torch.softmax(100 * F.normalize(pooled[i], dim=0) @ text.T, dim=0)
            if p.max() < 0.99 and background[i] <= 0.5:
                pooled[i] = text[0]
    return pooled


def ours(visual, x, convs, **settings):
    settings = cd.DEFAULTS | settings
    with torch.no_grad():
        return cd.clipdinoiser_features(visual, x, convs, settings)  # [B, h, w, D]


# ---------------------------------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_clipdinoiser_equals_hand_recomputation(visual, size):
    convs, x = convolutions(), windows(2, *size)
    got = ours(visual, x, convs)
    for b in range(2):
        expected = hand_clipdinoiser(visual, x[b : b + 1], convs)
        assert error(got[b].flatten(0, 1), expected) < 1e-5 * expected.abs().max()


@pytest.mark.parametrize("size", SIZES)
def test_found_rule_equals_hand_recomputation(visual, size):
    convs, x, text = convolutions(), windows(1, *size, seed=2), close_queries()
    with torch.no_grad():  # the decoder's bias at the median logit of this window: half its patches background
        guide = cd.guide_and_last_input(visual, x, "lposs")[0][:, 1:].transpose(1, 2).reshape(1, -1, size[0] // 16,
                                                                                             size[1] // 16)
        logits = torch.logit(cd.background_probability(convs, guide)) - convs.bkg_decoder.bias
        convs.bkg_decoder.bias.copy_(-logits.median())
    got = ours(visual, x, convs, found=True, text=text)[0].flatten(0, 1)
    expected = hand_clipdinoiser(visual, x, convs, found=True, text=text)
    sent = (expected == text[0]).all(dim=-1)
    assert 0 < int(sent.sum()) < len(sent), "the rule must send some patches to background and keep others"
    assert torch.equal((got == text[0]).all(dim=-1), sent)
    assert error(got, expected) < 1e-5 * expected.abs().max()
    labels = (F.normalize(got, dim=-1) @ text.T).argmax(-1)
    assert bool((labels[sent] == 0).all())  # the release's label at those patches: background
    without = ours(visual, x, convs, found=False)[0].flatten(0, 1)
    assert torch.equal(got[~sent], without[~sent])


def test_the_guide_is_block_10s_ln_2_not_block_11s(visual):
    convs, x = convolutions(), windows(1, 64, 64, seed=3)
    got = ours(visual, x, convs)[0].flatten(0, 1)
    assert error(got, hand_clipdinoiser(visual, x, convs)) < 1e-5 * got.abs().max()
    assert error(got, hand_clipdinoiser(visual, x, convs, guide_block=10)) > 1e-3 * got.abs().max()


def test_the_threshold_comes_before_the_normalisation(visual):
    convs, x = convolutions(), windows(1, 64, 64, seed=4)
    got = ours(visual, x, convs)[0].flatten(0, 1)
    assert error(got, hand_clipdinoiser(visual, x, convs, normalise_first=True)) > 1e-3 * got.abs().max()


def test_each_patch_weighs_itself(visual):
    convs, x = convolutions(), windows(1, 64, 64, seed=5)
    got = ours(visual, x, convs)[0].flatten(0, 1)
    assert error(got, hand_clipdinoiser(visual, x, convs, self_weight=False)) > 1e-3 * got.abs().max()


def test_the_3x3_convolution_pads_by_replication(visual):
    convs, x = convolutions(), windows(1, 96, 128, seed=6)
    assert convs.obj_proj.padding_mode == "replicate" and cd.Convolutions().obj_proj.padding_mode == "replicate"
    got = ours(visual, x, convs)[0].flatten(0, 1)
    assert error(got, hand_clipdinoiser(visual, x, convs, padding="zeros")) > 1e-3 * got.abs().max()


def test_the_runner_gives_the_head_normalised_with_its_checkpoint():
    visual = loading.load_open_clip("ViT-B-16", None, None, seed=0).visual.eval()
    x = windows(1, 224, 224, seed=7)
    with torch.no_grad():
        unit = dense_clip_features(visual, x, "clipdinoiser", checkpoint="random")
        raw = cd.clipdinoiser_features(visual, x, cd.release_convolutions("random"),
                                       HEADS["clipdinoiser"].settings({"checkpoint": "random"}))
    assert error(unit, F.normalize(raw, dim=-1)) < 1e-6
    with pytest.raises(ValueError, match="found=True needs the class list's query embeddings"):
        dense_clip_features(visual, x, "clipdinoiser", checkpoint="random", found=True)


# ---------------------------------------------------------------------------------------------------
# The checkpoint
# ---------------------------------------------------------------------------------------------------


def release_state(**changes) -> dict:
    state = {key: torch.zeros(shape) for key, shape in cd.CHECKPOINT_SHAPES.items()}
    state["bkg_decoder.bias"] = torch.tensor([0.5])
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def test_the_release_checkpoint_loads_with_its_keys_and_shapes(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"epoch": 99, "model_state_dict": release_state()}, path)
    convs = cd.load_convolutions(path)
    assert convs.bkg_decoder.bias.item() == 0.5 and convs.obj_proj.weight.shape == (256, 768, 3, 3)
    assert sum(p.numel() for p in convs.parameters()) == 1_770_497


@pytest.mark.parametrize("changes, named", [
    ({"obj_proj.bias": None}, "missing key 'obj_proj.bias'"),
    ({"clip.proj": torch.zeros(2)}, "unexpected key 'clip.proj'"),
    ({"obj_proj.weight": torch.zeros(256, 768, 1, 1)},
     r"obj_proj.weight has shape \[256, 768, 1, 1\], the release's \[256, 768, 3, 3\]"),
    ({"bkg_decoder.weight": torch.zeros(1, 512, 1, 1)}, r"bkg_decoder.weight has shape \[1, 512, 1, 1\]"),
])
def test_a_wrong_key_or_shape_is_refused_naming_it(tmp_path, changes, named):
    path = tmp_path / "last.pt"
    torch.save({"epoch": 99, "model_state_dict": release_state(**changes)}, path)
    with pytest.raises(loading.BackboneUnavailable, match=named):
        cd.load_convolutions(path)


def test_a_file_that_is_no_release_checkpoint_is_refused_naming_it(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(release_state(), path)  # the state dict alone, not {'epoch', 'model_state_dict'}
    with pytest.raises(loading.BackboneUnavailable, match=f"{path} is not .*no 'model_state_dict'"):
        cd.load_convolutions(path)
    with pytest.raises(loading.BackboneUnavailable, match="nowhere/last.pt for CLIP-DINOiser"):
        cd.release_convolutions("/nowhere/last.pt")


def test_offline_the_missing_checkpoint_is_named_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(loading, "_probe", lambda url, timeout=0: "no network (test)")
    cd.release_convolutions.cache_clear()
    with pytest.raises(loading.BackboneUnavailable) as caught:
        cd.release_convolutions(None)
    message = str(caught.value)
    assert str(tmp_path / "hub" / "checkpoints" / "last.pt") in message and "no network (test)" in message
    assert f"load_state_dict_from_url('{cd.CHECKPOINT_URL}')" in message
    assert "head_params={'checkpoint': PATH}; CLI: --head-param checkpoint=PATH" in message


def test_the_backbones_name_a_missing_checkpoint_and_random_clip_gets_random_convolutions(tmp_path):
    spec = BackboneSpec(vlm_weights="random", head="clipdinoiser", vm="clip",
                        head_params=(("checkpoint", str(tmp_path / "last.pt")),))
    with pytest.raises(loading.BackboneUnavailable, match=f"{tmp_path / 'last.pt'} for CLIP-DINOiser"):
        create_backbones(spec)
    vlm = DenseCLIP("ViT-B-16", pretrained=None, head="clipdinoiser")
    assert vlm.settings["checkpoint"] == "random" and "checkpoint_random" in vlm.id and vlm.needs_text


# ---------------------------------------------------------------------------------------------------
# The record: protocol, class files, published row, table
# ---------------------------------------------------------------------------------------------------


def test_the_protocol_applies_found_where_the_release_does():
    for dataset in PUBLISHED_ORDER:
        settings = resolve("clipdinoiser", dataset)
        assert (settings["crop"], settings["stride"], settings["short_side"], settings["logit_scale"]) == (
            448, 224, 448, 100.0)
        assert settings["clip"] == "laion2b_s34b_b88k" and "probabilities" in settings["deviation"]
        assert settings["head_params"].get("found", False) == (dataset in ("voc21", "coco_object")), dataset


@pytest.mark.parametrize("dataset, first", [("voc21", "background"), ("voc20", "aeroplane"),
                                            ("coco_object", "background"), ("context60", "background"),
                                            ("context59", "aeroplane"), ("coco_stuff", "person"),
                                            ("cityscapes", "road"), ("ade20k", "wall")])
def test_the_class_lists_are_the_releases(dataset, first):
    from lposs.datasets.base import packaged_class_names

    names = class_names("clipdinoiser", dataset, packaged_class_names(dataset))
    assert names[0] == first and all(";" not in name for name in names)
    if dataset == "voc21":
        assert names[11] == "dining table" and names[20] == "tvmonitor"


def test_the_published_row_and_the_table_say_it_was_trained():
    record = HEADS["clipdinoiser"]
    assert record.training.startswith("trained (light): 2 convolutions, 1.77 M parameters, on 1k ImageNet images")
    row = record.published[0]
    as_published = dict(zip(["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes",
                             "ade20k"], [62.1, 32.4, 34.8, 80.9, 35.9, 24.6, 31.7, 20.0]))
    assert all(row.on(d) == value for d, value in as_published.items()) and row.average == 40.3
    assert "OpenCLIP laion2b" in row.name and "trained (light)" in row.name
    run = {"head": "clipdinoiser", "vm": "dino_vitb16", "protocol": "clipdinoiser", "clip": "ViT-B-16 laion2b_s34b_b88k",
           "training": record.training, "deviations": ["voc21: " + resolve("clipdinoiser", "voc21")["deviation"]],
           "modes": {d: {m: {"miou": 10.0, "biou": 5.0} for m in tables.METHODS} for d in PUBLISHED_ORDER}}
    table = tables.results_table([run], list(PUBLISHED_ORDER))
    assert ("| clipdinoiser | dino_vitb16 | clipdinoiser | CLIP ViT-B-16 laion2b_s34b_b88k, trained (light): 2 "
            "convolutions, 1.77 M parameters, on 1k ImageNet images | seeds |") in table
    assert ("| clipdinoiser | published | own | as its name says | CLIP-DINOiser (OpenCLIP laion2b; trained (light): "
            "2 convolutions, 1.77 M parameters, on 1k ImageNet images) | 62.1 | 32.4 | 34.8 | 80.9 | 31.7 | 35.9 | "
            "20.0 | 24.6 | 40.3 |") in table
    assert "Published rows of clipdinoiser:" in table and "Deviation (clipdinoiser+dino_vitb16, clipdinoiser): voc21:" in table
    gem = tables.results_table([{**run, "head": "gem", "protocol": "gem", "training": "training-free"}],
                               list(PUBLISHED_ORDER))
    assert "| gem | published |" not in gem and "Published rows of" not in gem
