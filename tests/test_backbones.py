"""Backbones: MaskCLIP dense head and text classifier (open_clip), DINO q/k/v features (timm), offline errors.

Random weights only (CPU, no download). The hand recomputations below use plain tensor ops on the blocks'
weights and the token sequence captured from the library's OWN forward pass, so they check our forward
(embedding, token layout, positional embedding, block loop) as well as the MaskCLIP head itself.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import register_tiny_clip

from lposs.models import backbones, loading, text
from lposs.models.backbones import (
    VISION_MODELS,
    BackboneUnavailable,
    ClipGraphFeatures,
    DenseCLIP,
    DinoFeatures,
    MaskCLIP,
    VisionFeatures,
    split_synonyms,
)
from lposs.models.factory import BackboneSpec, create_backbones, spec_from_clip_choice
from lposs.models.heads import HEADS, dense_clip_features

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY_CLIP = "lposs-test-tiny-clip"
DEEP_TINY_CLIP = "lposs-test-tiny-clip-12"  # 12 blocks, as the 2025 heads read blocks 4, 6-9 and 11
SMALL_DINO = "vit_small_patch16_224.dino"
WINDOW_HEADS = [name for name, record in HEADS.items() if record.kind != "whole_image"]  # trident: the whole image, SAM
LAST_BLOCK_HEADS = [name for name, record in HEADS.items() if record.kind == "last_block"]
PROXY_FEATURES = {name: record.proxy_feature for name, record in HEADS.items() if record.proxy_feature}


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tmp_path_factory):
    """Register a tiny open_clip config (1 attention head, width 64) so most tests run in a second."""
    folder = tmp_path_factory.mktemp("open_clip_cfg")
    register_tiny_clip(folder, TINY_CLIP, vision_layers=3, text_layers=2)
    register_tiny_clip(folder, DEEP_TINY_CLIP, vision_layers=12, text_layers=2, head_width=32)  # 2 heads of 32


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_config):
    return MaskCLIP(TINY_CLIP, pretrained=None)


@pytest.fixture(scope="module")
def small_dino():
    return DinoFeatures(SMALL_DINO, pretrained=False)


def windows(batch: int, height: int = 224, width: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def capture_input(module: torch.nn.Module, run) -> torch.Tensor:
    """The first positional input `module` receives while `run()` executes."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[0]


def clip_last_block_input(vlm: MaskCLIP, images: torch.Tensor) -> torch.Tensor:
    """Tokens entering the last block during open_clip's own encode_image, as [B, L, W]."""
    x = (images - CLIP_MEAN) / CLIP_STD
    block = vlm.model.visual.transformer.resblocks[-1]
    tokens = capture_input(block, lambda: vlm.model.encode_image(x))
    # Read the layout from the shape itself (B != L here), not from open_clip's batch_first flag.
    return tokens if tokens.shape[0] == images.shape[0] else tokens.transpose(0, 1)


def hand_maskclip(visual, x: torch.Tensor) -> torch.Tensor:
    """Spec section 2 written out with plain tensor ops. x: [B, L, W] entering the last block."""
    block = visual.transformer.resblocks[-1]
    width = x.shape[-1]
    ln1, ln2, mlp = block.ln_1, block.ln_2, block.mlp
    y = F.layer_norm(x, (width,), ln1.weight, ln1.bias, ln1.eps)
    w_in, b_in = block.attn.in_proj_weight, block.attn.in_proj_bias
    v = y @ w_in[2 * width :].T + b_in[2 * width :]
    v = v @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    v = v + x
    h = F.layer_norm(v, (width,), ln2.weight, ln2.bias, ln2.eps)
    h = F.gelu(h @ mlp.c_fc.weight.T + mlp.c_fc.bias) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    v = v + h
    v = F.layer_norm(v, (width,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
    feats = v[:, 1:] @ visual.proj
    return feats / feats.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------------
# MaskCLIP dense features
# ---------------------------------------------------------------------------------------------------


def test_maskclip_spec_model_matches_hand_recomputation():
    """The paper's ViT-B-16 config (random weights): features = hand-written MaskCLIP head, to 1e-5."""
    vlm = MaskCLIP("ViT-B-16", pretrained=None)
    images = windows(1)
    feats = vlm.dense_features(images)
    assert feats.shape == (1, 14, 14, 512)
    assert vlm.patch_size == 16 and vlm.embed_dim == 512
    with torch.no_grad():
        expected = hand_maskclip(vlm.model.visual, clip_last_block_input(vlm, images))  # [1, 196, 512]
    torch.testing.assert_close(feats.reshape(1, 196, 512), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(1, 14, 14), atol=1e-5, rtol=0)


def test_maskclip_tiny_batch_matches_hand_recomputation(tiny_clip):
    images = windows(3, seed=1)
    feats = tiny_clip.dense_features(images)
    assert feats.shape == (3, 14, 14, 32)
    with torch.no_grad():
        expected = hand_maskclip(tiny_clip.model.visual, clip_last_block_input(tiny_clip, images))
    torch.testing.assert_close(feats.reshape(3, 196, 32), expected, atol=1e-5, rtol=1e-5)
    # Windows are independent: one window alone gives the same features as inside the batch.
    torch.testing.assert_close(tiny_clip.dense_features(images[1:2]), feats[1:2], atol=1e-5, rtol=1e-5)


def test_maskclip_token_layout_matches_open_clip_and_transposing_breaks_it(tiny_clip):
    images = windows(2, seed=2)
    ours = tiny_clip.tokens_before_last_block((images - CLIP_MEAN) / CLIP_STD)
    theirs = clip_last_block_input(tiny_clip, images)
    assert ours.shape == (2, 197, 64)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # The check is sensitive: the first block on transposed tokens mixes windows instead of patches.
    block = tiny_clip.model.visual.transformer.resblocks[0]
    with torch.no_grad():
        straight = block(ours)
        transposed = block(ours.transpose(0, 1)).transpose(0, 1)
    assert (straight - transposed).abs().max() > 1e-2


def test_maskclip_head_equals_open_clip_block_when_attention_is_self(tiny_clip_config):
    """With one head and q = k = 30 * ln_1(x), each token attends only to itself, so open_clip's own
    last block reduces to MaskCLIP's value path: its own output tokens must then equal our features."""
    vlm = MaskCLIP(TINY_CLIP, pretrained=None, seed=3)
    attn = vlm.model.visual.transformer.resblocks[-1].attn
    assert attn.num_heads == 1
    with torch.no_grad():
        attn.in_proj_weight[:128] = 30.0 * torch.eye(64).repeat(2, 1)
        attn.in_proj_bias[:128] = 0.0
    images = windows(2, seed=4)
    vlm.model.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = vlm.model.visual((images - CLIP_MEAN) / CLIP_STD)  # [2, 196, 64] after ln_post
    vlm.model.visual.output_tokens = False
    expected = F.normalize(tokens @ vlm.model.visual.proj, dim=-1)
    torch.testing.assert_close(vlm.dense_features(images).reshape(2, 196, 32), expected, atol=1e-4, rtol=1e-4)


def test_maskclip_other_window_sizes_interpolate_positions(tiny_clip):
    native = tiny_clip.model.visual.positional_embedding
    assert tiny_clip.positional_embedding(14, 14) is native
    pos = tiny_clip.positional_embedding(10, 28)
    assert pos.shape == (1 + 280, 64)
    torch.testing.assert_close(pos[0], native[0])
    feats = tiny_clip.dense_features(windows(1, 160, 448))
    assert feats.shape == (1, 10, 28, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(1, 10, 28), atol=1e-5, rtol=0)


def test_maskclip_rejects_bad_windows(tiny_clip):
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        tiny_clip.dense_features(windows(1, 200, 224))
    with pytest.raises(ValueError, match=r"\[B, 3, h, w\]"):
        tiny_clip.dense_features(torch.rand(3, 224, 224))


def test_maskclip_random_weights_are_seeded_and_bf16_needs_native_support_on_cpu(tiny_clip, monkeypatch):
    monkeypatch.setattr(backbones, "cpu_has_native_bf16", lambda: False)
    again = MaskCLIP(TINY_CLIP, pretrained=None, bf16=True)
    assert again.bf16 is False
    assert again.id == tiny_clip.id == f"openclip-{TINY_CLIP}-random0-maskclip"
    torch.testing.assert_close(again.dense_features(windows(1)), tiny_clip.dense_features(windows(1)))
    monkeypatch.setattr(backbones, "cpu_has_native_bf16", lambda: True)
    native = MaskCLIP(TINY_CLIP, pretrained=None, bf16=True)
    assert native.bf16 is True and native.id == f"openclip-{TINY_CLIP}-random0-maskclip-bf16"
    reduced, full = native.dense_features(windows(1)), tiny_clip.dense_features(windows(1))
    assert reduced.dtype == torch.float32 and not torch.equal(reduced, full)  # computed in bfloat16
    assert (reduced * full).sum(-1).min() > 0.98  # and close: cosine to the float32 features
    other = MaskCLIP(TINY_CLIP, pretrained=None, seed=1)
    assert other.id.endswith("random1-maskclip")
    assert not torch.equal(other.model.visual.proj, tiny_clip.model.visual.proj)


def test_maskclip_loads_a_local_checkpoint(tiny_clip, tmp_path):
    path = tmp_path / "tiny weights.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    loaded = MaskCLIP(TINY_CLIP, pretrained=None, checkpoint=path, seed=7)
    assert loaded.id == f"openclip-{TINY_CLIP}-file-tiny_weights-maskclip"
    torch.testing.assert_close(loaded.dense_features(windows(1)), tiny_clip.dense_features(windows(1)))


def test_dense_clip_ids_name_the_head_its_changed_parameters_and_the_proxy(tiny_clip, small_dino):
    proxies = {head: small_dino.with_feature(feature) for head, feature in PROXY_FEATURES.items()}
    made = {head: DenseCLIP(TINY_CLIP, None, head=head, proxy=proxies.get(head)) for head in WINDOW_HEADS}
    assert MaskCLIP is DenseCLIP and made["maskclip"].id == tiny_clip.id
    assert made["sclip"].id == f"openclip-{TINY_CLIP}-random0-sclip"
    assert made["proxyclip"].id == f"openclip-{TINY_CLIP}-random0-proxyclip-proxy_timm-{SMALL_DINO}-random0-tokens"
    changed = DenseCLIP(TINY_CLIP, None, head="naclip", head_params={"sigma": 3, "interpolation": "lposs"})
    assert changed.id == f"openclip-{TINY_CLIP}-random0-naclip-interpolation_lposs-sigma_3"
    assert DenseCLIP(TINY_CLIP, None, head="naclip", head_params={"sigma": 5}).id == made["naclip"].id
    assert len({vlm.id for vlm in made.values()} | {changed.id}) == len(WINDOW_HEADS) + 1
    assert made["cass"].id == f"openclip-{TINY_CLIP}-random0-cass-proxy_timm-{SMALL_DINO}-random0-k_raw"
    assert made["resclip"].id == f"openclip-{TINY_CLIP}-random0-resclip"  # temp_thd 0.5 is DenseCLIP's default
    resclip = DenseCLIP(TINY_CLIP, None, head="resclip", head_params={"temp_thd": 0.11, "sfr_weights": (1.8, 0.7)})
    assert resclip.id == f"openclip-{TINY_CLIP}-random0-resclip-sfr_weights_1.8,0.7-temp_thd_0.11"
    images = windows(1, seed=8)
    feats = {head: made[head].dense_features(images) for head in LAST_BLOCK_HEADS}  # 3 blocks: the 2024 heads
    assert all((feats[head] - feats["maskclip"]).abs().max() > 1e-3 for head in feats if head != "maskclip")


def test_dense_clip_runs_every_head_of_the_registry(small_dino):
    """Every head of HEADS that reads only windows through DenseCLIP (12 tiny blocks); resclip reads the queries
    given with the windows. (Trident reads the whole image and SAM: tests/test_trident.py.)"""
    proxies = {head: small_dino.with_feature(feature) for head, feature in PROXY_FEATURES.items()}
    made = {head: DenseCLIP(DEEP_TINY_CLIP, None, head=head, proxy=proxies.get(head)) for head in WINDOW_HEADS}
    text, _ = made["maskclip"].text_embeddings(["red", "green;grass", "sky"])  # [4, 32]
    images = windows(2, 112, 160, seed=8)
    regions = torch.zeros(2, 112, 160, dtype=torch.long)  # corrclip's: 0 unsegmented, three regions
    regions[:, :64, :80], regions[:, :64, 80:], regions[:, 80:, 32:] = 3, 5, 9
    torch.manual_seed(0)  # CASS's low-rank step draws from the global RNG
    feats = {head: vlm.dense_features(images, text=text, **({"regions": regions} if vlm.reads_regions else {}))
             for head, vlm in made.items()}
    for head, out in feats.items():
        assert out.shape == (2, 7, 10, 32) and made[head].patch_size == 16, head
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 7, 10), atol=1e-5, rtol=0)
        assert head == "maskclip" or (out - feats["maskclip"]).abs().max() > 1e-3, head
    assert {head for head in made if made[head].needs_text} == {"resclip", "clipdinoiser"}  # FOUND's rule reads them
    x = (images - CLIP_MEAN) / CLIP_STD
    expected = dense_clip_features(made["resclip"].model.visual, x, "resclip", text=text, temp_thd=0.5)
    torch.testing.assert_close(feats["resclip"], expected)
    other = made["resclip"].dense_features(images, text=text[:2])  # another class list: other pass-1 labels
    assert other.shape == expected.shape
    with pytest.raises(ValueError, match="'resclip' needs the class list's query embeddings"):
        made["resclip"].dense_features(images)
    from lposs.image_features import extract_features  # the one caller: it hands the class list's queries over

    image = (windows(1, 112, 160, seed=12)[0] * 255).round().byte().permute(1, 2, 0).numpy()
    got = extract_features(image, ["red", "green;grass", "sky"], made["resclip"], small_dino, crop=112, stride=48,
                           short_side=112)
    crops = torch.stack([got.image_resized[:, y1:y2, x1:x2] for y1, y2, x1, x2 in got.layout])  # [2, 3, 112, 112]
    dense = made["resclip"].dense_features(crops, text=text)  # [2, 7, 7, 32]
    torch.testing.assert_close(got.seeds, dense.reshape(-1, 32) @ text.T, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not in head_params"):
        DenseCLIP(DEEP_TINY_CLIP, None, head="resclip", head_params={"text": text})
    with pytest.raises(ValueError, match="'cass' needs proxy"):
        DenseCLIP(DEEP_TINY_CLIP, None, head="cass")


def hand_raw_keys(vm: VisionFeatures, images: torch.Tensor) -> torch.Tensor:
    """CASS's proxy by hand: the last block's keys of the window resized to a square, CLS dropped, not normalised."""
    side = min(images.shape[-2:])
    square = F.interpolate(images, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    x = (square - IMAGENET_MEAN) / IMAGENET_STD
    block = vm.model.blocks[-1]
    tokens = capture_input(block, lambda: vm.model.forward_features(x))  # [B, 1 + N, D]
    dim = tokens.shape[-1]
    keys = block.attn.qkv(block.norm1(tokens))[..., dim : 2 * dim]
    return keys[:, 1:].reshape(images.shape[0], side // vm.patch_size, side // vm.patch_size, dim)


def test_cass_proxy_is_the_raw_keys_of_the_square_window(small_dino):
    proxy = small_dino.with_feature("k_raw")
    images = windows(2, 112, 160, seed=10)
    keys = proxy.dense_features(images)
    with torch.no_grad():
        expected = hand_raw_keys(small_dino, images)
    assert keys.shape == (2, 7, 7, 384)
    torch.testing.assert_close(keys, expected, atol=1e-5, rtol=1e-5)
    assert (keys.norm(dim=-1) - 1).abs().max() > 0.1  # not normalised
    both = small_dino.dense_features_multi(images, ("k", "k_raw"))
    assert both["k"].shape == (2, 7, 10, 384) and torch.equal(both["k_raw"], keys)
    square = windows(1, 112, 112, seed=11)  # square windows: the keys of the window itself
    unit = F.normalize(small_dino.dense_features_multi(square, ("k_raw",))["k_raw"], dim=-1)
    torch.testing.assert_close(unit, small_dino.dense_features_multi(square, ("k",))["k"], atol=1e-5, rtol=1e-5)
    vlm = DenseCLIP(DEEP_TINY_CLIP, None, head="cass", proxy=proxy)
    torch.manual_seed(3)
    feats = vlm.dense_features(images)
    torch.manual_seed(3)
    direct = dense_clip_features(vlm.model.visual, (images - CLIP_MEAN) / CLIP_STD, "cass", proxy=expected)
    torch.testing.assert_close(feats, direct, atol=1e-5, rtol=1e-5)


def test_dense_clip_proxyclip_runs_the_proxy_on_the_same_windows(tiny_clip_config):
    proxy = VisionFeatures("vit_small_patch8_224.dino", pretrained=False, feature="tokens")
    vlm = DenseCLIP(TINY_CLIP, None, head="proxyclip", proxy=proxy)
    assert vlm.patch_size == 8 and vlm.clip_patch_size == 16
    images = windows(2, 112, 160, seed=9)
    feats = vlm.dense_features(images)
    assert feats.shape == (2, 14, 20, 32)
    tokens = proxy.dense_features(images)  # [2, 14, 20, 384], ImageNet-normalised input
    expected = dense_clip_features(vlm.model.visual, (images - CLIP_MEAN) / CLIP_STD, "proxyclip", proxy=tokens)
    torch.testing.assert_close(feats, expected)
    with pytest.raises(ValueError, match="'proxyclip' needs proxy"):
        DenseCLIP(TINY_CLIP, None, head="proxyclip")
    with pytest.raises(ValueError, match="unknown head 'mask'"):
        DenseCLIP(TINY_CLIP, None, head="mask")


def test_clip_graph_features_are_the_vlm_features(tiny_clip):
    vm = ClipGraphFeatures(tiny_clip)
    assert vm.id == f"clip:{tiny_clip.id}" and vm.patch_size == 16 and vm.embed_dim == 32
    images = windows(1, seed=10)
    torch.testing.assert_close(vm.dense_features(images), tiny_clip.dense_features(images))
    assert list(vm.dense_features_multi(images)) == ["clip"]


# ---------------------------------------------------------------------------------------------------
# Text embeddings
# ---------------------------------------------------------------------------------------------------


def test_split_synonyms():
    assert split_synonyms(["cat", " dog ; puppy", "New York"]) == (["cat", "dog", "puppy", "New York"], [0, 1, 1, 2])
    for bad in ([], "cat", [""], ["cat", "  "], ["a;;b"], ["a;"]):
        with pytest.raises(ValueError, match="class"):
            split_synonyms(bad)


def test_text_embeddings_use_the_80_templates_and_match_hand_ensemble(tiny_clip_config, monkeypatch):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    vlm = MaskCLIP(TINY_CLIP, pretrained=None)
    real_tokenizer, prompts = vlm.tokenizer, []

    def spy(texts):
        prompts.extend(texts)
        return real_tokenizer(texts)

    vlm.tokenizer = spy
    monkeypatch.setattr(text, "TEXT_BATCH_SIZE", 70)  # 240 prompts -> 4 uneven batches
    emb, owner = vlm.text_embeddings(["cat", "dog; puppy"])
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert prompts == [t(name) for name in ["cat", "dog", "puppy"] for t in OPENAI_IMAGENET_TEMPLATES]
    assert emb.shape == (3, 32) and owner.dtype == torch.long and owner.tolist() == [0, 1, 1]
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    with torch.no_grad():
        per_prompt = vlm.model.encode_text(real_tokenizer([t("puppy") for t in OPENAI_IMAGENET_TEMPLATES]))
    per_prompt = per_prompt / per_prompt.norm(dim=-1, keepdim=True)
    expected = per_prompt.mean(0) / per_prompt.mean(0).norm()
    torch.testing.assert_close(emb[2], expected, atol=1e-5, rtol=1e-5)
    # Repeated calls reuse the encoding and hand out copies.
    emb[0] = 0.0
    again, _ = vlm.text_embeddings(["cat", "dog; puppy"])
    assert len(prompts) == 240 and again.norm(dim=-1).min() > 0.99


def test_text_embeddings_reject_empty_class_lists(tiny_clip):
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_clip.text_embeddings([])
    with pytest.raises(ValueError, match="empty name"):
        tiny_clip.text_embeddings(["cat", ""])


# ---------------------------------------------------------------------------------------------------
# DINO q / k / v features
# ---------------------------------------------------------------------------------------------------


def hand_qkv(vm: DinoFeatures, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """norm1 -> qkv slices of the last block, on the block input captured from timm's own forward."""
    x_in = (images - IMAGENET_MEAN) / IMAGENET_STD
    block = vm.model.blocks[-1]
    x = capture_input(block, lambda: vm.model.forward_features(x_in))  # [B, prefix + N, C]
    y = F.layer_norm(x, x.shape[-1:], block.norm1.weight, block.norm1.bias, block.norm1.eps)
    dim, prefix = x.shape[-1], vm.model.num_prefix_tokens
    out = {}
    for index, name in enumerate("qkv"):
        w = block.attn.qkv.weight[index * dim : (index + 1) * dim]
        b = block.attn.qkv.bias[index * dim : (index + 1) * dim]
        part = (y @ w.T + b)[:, prefix:]
        out[name] = part / part.norm(dim=-1, keepdim=True)
    return out


def test_dino_spec_model_matches_hand_recomputation():
    vm = DinoFeatures("vit_base_patch16_224.dino", pretrained=False)
    assert vm.patch_size == 16 and vm.embed_dim == 768 and vm.id == "timm-vit_base_patch16_224.dino-random0-v"
    images = windows(1, seed=5)
    feats = vm.dense_features(images)
    assert feats.shape == (1, 14, 14, 768)
    with torch.no_grad():
        expected = hand_qkv(vm, images)["v"]  # [1, 196, 768]
    torch.testing.assert_close(feats.reshape(1, 196, 768), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature", ["q", "k", "v"])
def test_dino_qkv_features_match_hand_recomputation(small_dino, feature, monkeypatch):
    monkeypatch.setattr(small_dino, "feature", feature)
    images = windows(2, seed=6)
    feats = small_dino.dense_features(images)
    assert feats.shape == (2, 14, 14, 384)
    with torch.no_grad():
        expected = hand_qkv(small_dino, images)
    torch.testing.assert_close(feats.reshape(2, 196, 384), expected[feature], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 14, 14), atol=1e-5, rtol=0)
    others = [name for name in "qkv" if name != feature]
    assert all((feats.reshape(2, 196, 384) - expected[name]).abs().max() > 1e-2 for name in others)


def test_dino_drops_register_tokens_and_takes_other_sizes():
    vm = DinoFeatures("vit_small_patch14_reg4_dinov2.lvd142m", pretrained=False)
    assert vm.num_prefix_tokens == 5 and vm.patch_size == 14
    images = windows(1, 224, 168, seed=7)
    feats = vm.dense_features(images)
    assert feats.shape == (1, 16, 12, 384)
    with torch.no_grad():
        expected = hand_qkv(vm, images)["v"]
    torch.testing.assert_close(feats.reshape(1, 192, 384), expected, atol=1e-5, rtol=1e-5)


def test_dino_rejects_unknown_feature_and_loads_a_checkpoint(small_dino, tmp_path):
    with pytest.raises(ValueError, match="'q', 'k', 'v', 'tokens'"):
        DinoFeatures(SMALL_DINO, pretrained=False, feature="x")
    path = tmp_path / "dino.pth"
    torch.save(small_dino.model.state_dict(), path)
    loaded = DinoFeatures(SMALL_DINO, checkpoint=path, seed=3)
    assert loaded.id == f"timm-{SMALL_DINO}-file-dino-v"
    torch.testing.assert_close(loaded.dense_features(windows(1)), small_dino.dense_features(windows(1)))


@pytest.fixture(scope="module")
def small_dinov3():
    return VisionFeatures("dinov3_vits16", pretrained=False)


def hand_dinov3_attention(vm: VisionFeatures, images: torch.Tensor, rotate=(True, True, False), prefix_too=False):
    """The last block's attention by hand: norm1, fused qkv, RoPE (rotate-half, from rope.get_embed) on the
    chosen parts of q, k, v, on tokens 5: (or, prefix_too, on the first N tokens), softmax(s q k^T) v, proj.
    -> ({q, k, v, q_rope, k_rope: [B, L, D]}, attention output [B, L, D], what the block's attention gave)."""
    block, heads = vm.model.blocks[-1], vm.model.blocks[-1].attn.num_heads
    x = (images - IMAGENET_MEAN) / IMAGENET_STD
    seen = []
    hook = block.attn.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        tokens = capture_input(block, lambda: vm.model.forward_features(x))  # [B, 5 + N, D]
    finally:
        hook.remove()
    batch, length, dim = tokens.shape
    h = F.layer_norm(tokens, (dim,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    qkv = h @ block.attn.qkv.weight.T + (0 if block.attn.qkv.bias is None else block.attn.qkv.bias)
    parts = dict(zip("qkv", qkv.split(dim, dim=-1)))
    sin, cos = vm.model.rope.get_embed(shape=(x.shape[2] // 16, x.shape[3] // 16)).chunk(2, dim=-1)  # [N, d]
    rows = slice(0, length - 5) if prefix_too else slice(5, length)  # the wrong choice: the first N tokens

    def rope(t):  # [B, L, D] -> rotated per head on the N patch rows, x cos + rotate_half(x) sin
        t = t.reshape(batch, length, heads, -1).clone()
        patches = t[:, rows]
        half = patches.shape[-1] // 2
        turned = torch.cat([-patches[..., half:], patches[..., :half]], dim=-1)
        t[:, rows] = patches * cos[:, None] + turned * sin[:, None]
        return t.reshape(batch, length, dim)

    feats = {**parts, "q_rope": rope(parts["q"]), "k_rope": rope(parts["k"])}
    q, k, v = (rope(parts[p]) if turn else parts[p] for p, turn in zip("qkv", rotate))
    split = lambda t: t.reshape(batch, length, heads, -1).transpose(1, 2)  # noqa: E731 - [B, heads, L, d]
    weights = torch.softmax(split(q) @ split(k).transpose(-2, -1) * split(q).shape[-1] ** -0.5, dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(batch, length, dim)
    return feats, out @ block.attn.proj.weight.T + block.attn.proj.bias, seen[0]


def test_dinov3_qkv_before_and_after_rope_match_hand_recomputation(small_dinov3):
    vm = small_dinov3
    assert vm.model_name == "vit_small_patch16_dinov3.lvd1689m" and vm.num_prefix_tokens == 5 and vm.has_rope
    images = windows(2, 112, 160, seed=13)  # a 7 x 10 grid: RoPE off the square
    names = ("q", "k", "v", "q_rope", "k_rope", "tokens")
    feats = vm.dense_features_multi(images, names)
    with torch.no_grad():
        hand, attention, block_attention = hand_dinov3_attention(vm, images)
        final = vm.model.forward_features((images - IMAGENET_MEAN) / IMAGENET_STD)
    hand["tokens"] = final
    for name in names:
        assert feats[name].shape == (2, 7, 10, 384), name
        expected = F.normalize(hand[name][:, 5:], dim=-1).reshape(2, 7, 10, 384)
        torch.testing.assert_close(feats[name], expected, atol=1e-5, rtol=1e-5, msg=name)
    assert (feats["q"] - feats["q_rope"]).abs().max() > 1e-2 and (feats["k"] - feats["k_rope"]).abs().max() > 1e-2
    torch.testing.assert_close(attention, block_attention, atol=1e-5, rtol=1e-5)  # our RoPE is the block's


@pytest.mark.parametrize("wrong", ["v rotated", "prefix rotated"])
def test_dinov3_rope_on_v_or_on_the_prefix_tokens_is_not_the_block(small_dinov3, wrong):
    images = windows(1, 112, 160, seed=14)
    with torch.no_grad():
        _, right, block_attention = hand_dinov3_attention(small_dinov3, images)
        args = {"rotate": (True, True, True)} if wrong == "v rotated" else {"prefix_too": True}
        _, attention, _ = hand_dinov3_attention(small_dinov3, images, **args)
    torch.testing.assert_close(right, block_attention, atol=1e-5, rtol=1e-5)
    assert (attention - block_attention).abs().max() > 1e-3


def test_dinov3_grids_mix_and_rope_features_need_rope(small_dinov3, small_dino, tiny_clip):
    from lposs.image_features import extract_features

    image = (windows(1, 150, 200, seed=15)[0] * 255).round().byte().permute(1, 2, 0).numpy()
    graph = small_dinov3.with_feature("k_rope")
    feats = extract_features(image, ["red", "sky"], tiny_clip, graph, crop=112, stride=56, short_side=112)
    assert feats.grid == 7 and feats.seeds.shape[0] == feats.vm_feats.shape[0] == len(feats.layout) * 49
    b8 = VisionFeatures("vit_small_patch8_224.dino", pretrained=False, feature="k")  # the B/8 grid beside it
    assert extract_features(image, ["red", "sky"], tiny_clip, b8, crop=112, stride=56, short_side=112).grid == 14
    with pytest.raises(ValueError, match="no rotary position embedding"):
        small_dino.with_feature("q_rope")
    with pytest.raises(ValueError, match="no rotary position embedding"):
        VisionFeatures(SMALL_DINO, pretrained=False, feature="k_rope")
    assert VISION_MODELS["dinov3_vitb16"] == "vit_base_patch16_dinov3.lvd1689m"
    assert VISION_MODELS["dinov3_vitl16"] == "vit_large_patch16_dinov3.lvd1689m"


# ---------------------------------------------------------------------------------------------------
# Offline behaviour and the factory
# ---------------------------------------------------------------------------------------------------


def _skip_if_cached(repo_id: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")
    for name in names:
        if isinstance(try_to_load_from_cache(repo_id, name), str):
            pytest.skip(f"{repo_id} weights are cached here; the offline error cannot happen")


@pytest.mark.parametrize("offline_how", ["HF_HUB_OFFLINE", "unreachable endpoint"])
def test_real_clip_weights_offline_raise_actionable_error(monkeypatch, offline_how):
    _skip_if_cached("laion/CLIP-ViT-B-16-laion2B-s34B-b88K")
    if offline_how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # the probe path, made deterministic: nothing listens on the discard port of localhost
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(loading, "_hf_offline", lambda: False)
        monkeypatch.setattr(loading, "_hf_endpoint", lambda: "http://127.0.0.1:9")
    with pytest.raises(BackboneUnavailable) as info:
        MaskCLIP("ViT-B-16", pretrained="laion2b_s34b_b88k")
    message = str(info.value)
    needed_parts = ("ViT-B-16", "laion2b_s34b_b88k", backbones.hf_cache_dir(), "network", "checkpoint=PATH")
    for needed in needed_parts + ("--clip-checkpoint",):
        assert needed in message
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("name, timm_name, extra", [
    ("vit_base_patch16_224.dino", "vit_base_patch16_224.dino", ("network",)),
    ("dinov3_vitb16", "vit_base_patch16_dinov3.lvd1689m", ("model.safetensors", "timm/vit_base_patch16_dinov3.lvd1689m")),
], ids=["dino", "dinov3"])
def test_real_vision_model_weights_offline_raise_actionable_error(monkeypatch, name, timm_name, extra):
    _skip_if_cached(f"timm/{timm_name}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as info:
        VisionFeatures(name, pretrained=True)
    message = str(info.value)
    for needed in (timm_name, backbones.hf_cache_dir(), "--dino-checkpoint", *extra):
        assert needed in message


def test_metaclip_weights_resolve_with_quickgelu_and_fail_fast_offline(monkeypatch):
    assert loading.resolve_clip_weights("metaclip-fullcc") == ("ViT-B-16", "metaclip_fullcc")
    assert loading.open_clip_quick_gelu("ViT-B-16", "metaclip_fullcc")  # open_clip's config for the tag
    spec = spec_from_clip_choice("metaclip-fullcc", random=True, vm="clip")
    assert spec.vlm_weights == "random" and spec.quick_gelu is True
    _skip_if_cached("timm/vit_base_patch16_clip_224.metaclip_2pt5b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as info:
        create_backbones(spec_from_clip_choice("metaclip-fullcc", vm="clip"))
    message = str(info.value)
    for needed in ("ViT-B-16", "'metaclip_fullcc'", "timm/vit_base_patch16_clip_224.metaclip_2pt5b",
                   "HF_HUB_OFFLINE is set", "open_clip.create_model('ViT-B-16', pretrained='metaclip_fullcc')",
                   "--clip-checkpoint"):
        assert needed in message


def test_openai_weights_offline_name_the_hub_repo(monkeypatch):
    _skip_if_cached("timm/vit_base_patch16_clip_224.openai")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as info:
        create_backbones(spec_from_clip_choice("openai", vm="clip"))
    for needed in ("ViT-B-16", "'openai'", "timm/vit_base_patch16_clip_224.openai", "--clip-checkpoint"):
        assert needed in str(info.value)


def test_without_weight_files_the_fix_is_the_fetch_command(monkeypatch):
    """Where no weight file can be passed (the pipeline, `make paper`), the message offers no --*-checkpoint
    flag: it names what is missing (every backbone at once) and the commands that cache it."""
    _skip_if_cached("timm/vit_base_patch16_224.dino")
    _skip_if_cached("laion/CLIP-ViT-B-16-laion2B-s34B-b88K")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as info:
        create_backbones(BackboneSpec(vlm="ViT-B-16", vlm_weights="laion2b_s34b_b88k", vm="dino_vitb16"))
    full, pipeline = str(info.value), info.value.without_files()
    assert "--dino-checkpoint" in full and "--clip-checkpoint" in full
    assert "checkpoint" not in pipeline and "HF_HUB_OFFLINE is set" in pipeline
    assert "timm.create_model('vit_base_patch16_224.dino', pretrained=True)" in pipeline
    assert "open_clip.create_model('ViT-B-16', pretrained='laion2b_s34b_b88k')" in pipeline


def test_missing_checkpoint_and_unknown_names_are_named():
    with pytest.raises(BackboneUnavailable, match="nowhere.pt"):
        MaskCLIP(TINY_CLIP, pretrained=None, checkpoint="/nowhere.pt")
    with pytest.raises(ValueError, match="unknown pretrained tag 'no-such-tag'"):
        MaskCLIP("ViT-B-16", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        MaskCLIP("ViT-Q-99", pretrained=None)
    with pytest.raises(ValueError, match="unknown timm model"):
        DinoFeatures("vit_nothing", pretrained=False)


def test_create_backbones_random_weights():
    spec = BackboneSpec(vlm=TINY_CLIP, vlm_weights="random", vm=SMALL_DINO, vm_weights="random", vm_features=("k",))
    backbones = create_backbones(spec)
    vlm, vm = backbones.vlm, backbones.vm
    assert isinstance(vlm, MaskCLIP) and isinstance(vm, DinoFeatures)
    assert vlm.id == f"openclip-{TINY_CLIP}-random0-maskclip" and vm.id == f"timm-{SMALL_DINO}-random0-k"
    assert vlm.patch_size == vm.patch_size == 16


def test_create_backbones_heads_proxy_and_graph_choices(tiny_clip_config):
    spec = BackboneSpec(vlm=TINY_CLIP, vlm_weights="random", vm="clip", head="sclip",
                        head_params={"interpolation": "lposs"})
    vlm, graphs, _ = create_backbones(spec)
    vm = graphs["clip"]
    assert isinstance(vm, ClipGraphFeatures) and vm.vlm is vlm
    assert vm.id == f"clip:openclip-{TINY_CLIP}-random0-sclip-interpolation_lposs"
    spec = BackboneSpec(vlm=TINY_CLIP, vlm_weights="random", vm="vit_small_patch8_224.dino", vm_weights="random",
                        vm_features=("k",), head="proxyclip", proxy="vit_small_patch8_224.dino")
    vlm, graphs, _ = create_backbones(spec)
    vm = graphs["k"]
    assert vlm.proxy.model is vm.model and vlm.proxy.id.endswith("-tokens") and vm.id.endswith("-k")
    assert vlm.patch_size == vm.patch_size == 8
    spec = BackboneSpec(vlm=DEEP_TINY_CLIP, vlm_weights="random", vm=SMALL_DINO, vm_weights="random", head="cass")
    assert spec.proxy == "dino_vitb8" and spec.key().startswith(f"{DEEP_TINY_CLIP}.random+cass.dino_vitb8+")
    spec = BackboneSpec(vlm=DEEP_TINY_CLIP, vlm_weights="random", vm=SMALL_DINO, vm_weights="random", head="cass",
                        proxy=SMALL_DINO)
    vlm, graphs, _ = create_backbones(spec)
    assert vlm.proxy.model is graphs["v"].model and vlm.proxy.feature == "k_raw" and vlm.patch_size == 16
    with pytest.raises(ValueError, match="unknown CLIP weights 'openclip'"):
        spec_from_clip_choice("openclip", random=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_on_cuda_stays_close_to_float32():
    images = windows(2)
    for make in (lambda bf16: MaskCLIP(pretrained=None, device="cuda", bf16=bf16),
                 lambda bf16: DinoFeatures(pretrained=False, device="cuda", bf16=bf16)):
        full, half = make(False), make(True)
        assert half.bf16 and half.id.endswith("-bf16")
        a, b = full.dense_features(images), half.dense_features(images)
        assert a.dtype == b.dtype == torch.float32
        assert (a * b).sum(-1).min() > 0.98


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("head", [name for name in WINDOW_HEADS if "regions" not in HEADS[name].reads])
def test_every_head_in_bf16_on_cuda_stays_close_to_float32(head):
    images = windows(2)

    def make(bf16):
        feature = PROXY_FEATURES.get(head)
        proxy = VisionFeatures("dino_vitb8", False, feature, device="cuda", bf16=bf16) if feature else None
        return DenseCLIP(pretrained=None, device="cuda", bf16=bf16, head=head, proxy=proxy)

    full, half = make(False), make(True)
    text = full.text_embeddings(["cat", "dog", "sky"])[0]
    torch.manual_seed(0)
    a = full.dense_features(images, text=text)
    torch.manual_seed(0)
    b = half.dense_features(images, text=text)
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    assert (a * b).sum(-1).mean() > 0.98  # proxyclip's "< 0 -> -inf" cut may flip a few entries in bf16
