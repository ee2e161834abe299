"""The dense CLIP heads (lposs.models.heads) and the graph's vision models against hand recomputations.

Random weights on CPU. Every hand version below is written in the most literal form: one window and one
attention head at a time, weights read off the blocks, on the tokens captured from the library's OWN forward
pass with the position embedding made by the release's own interpolation call (copied from its code). So the
checks cover our token pipeline, each release's interpolation rule and each head's last block.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lposs.models import loading, vit
from lposs.models.backbones import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, VisionFeatures
from lposs.models.factory import create_backbones, spec_from_clip_choice
from lposs.models.heads import HEADS, dense_clip_features, positional_embedding

# One head per last-block function (2025 heads: test_heads_2025); a record that reuses another head's function
# (LaVG runs SCLIP's) is checked to give exactly that head's features.
LAST_BLOCK = {name: record.function.__name__ for name, record in HEADS.items() if record.kind == "last_block"}
CHECKED_HEADS = [name for name, function in LAST_BLOCK.items() if name == function]
REUSING_HEADS = [(name, function) for name, function in LAST_BLOCK.items() if name != function]
ERRORS: dict[str, float] = {}  # max abs error of each hand check, printed at the end of the module (-s)


@pytest.fixture(scope="module")
def visual():
    """open_clip ViT-B-16 (12 heads of 64), random seeded weights, GELU (like the laion2b weights)."""
    return loading.load_open_clip("ViT-B-16", None, None, seed=0).visual.eval()


@pytest.fixture(scope="module", autouse=True)
def report_errors():
    yield
    for name, error in sorted(ERRORS.items()):
        print(f"max abs error {name}: {error:.2e}")


def clip_windows(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    return (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------------
# The releases' code, copied: position embeddings, NACLIP's Omega
# ---------------------------------------------------------------------------------------------------


def release_positional_embedding(visual, x: torch.Tensor, rule: str) -> torch.Tensor:
    """[1 + gh*gw, W] as each release computes it for images x."""
    pos = visual.positional_embedding.detach()
    B, nc, w, h = x.shape  # noqa: N806 - the releases' names (w is the height here)
    if (w // 16, h // 16) == (14, 14):
        return pos
    N, dim = pos.shape[0] - 1, pos.shape[1]  # noqa: N806
    patch_pos_embed = pos[1:].reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2)
    if rule == "lposs":  # LPOSS models/maskclip/maskclip.py resize_pos_embed -> mmseg resize
        patch_pos_embed = F.interpolate(patch_pos_embed, size=(w // 16, h // 16), mode="bicubic", align_corners=False)
    else:  # SCLIP clip/model.py:263-281 (NACLIP passes align_corners=False, recompute_scale_factor=False)
        w0, h0 = w // 16 + 0.1, h // 16 + 0.1
        patch_pos_embed = nn.functional.interpolate(
            patch_pos_embed, scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic"
        )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(-1, dim)
    return torch.cat([pos[:1], patch_pos_embed])


def naclip_addition(dim1: int, dim2: int, std: float) -> torch.Tensor:
    """NACLIP clip/model.py gaussian_window + get_attention_addition (the window slid by a convolution)."""
    constant = 1 / (std * math.sqrt(2))
    ks = []
    for dim in [2 * dim1 - 1, 2 * dim2 - 1]:
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start * constant, (start + (dim - 1)) * constant, steps=dim))
    window = torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2)).permute((0, 3, 1, 2)).contiguous()
    out = F.conv2d(m.view(-1, dim1, dim2).unsqueeze(1), window.unsqueeze(0).unsqueeze(1), padding="same").squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    out = torch.vstack([torch.zeros((1, dim1 * dim2)), out])
    return torch.hstack([torch.zeros((dim1 * dim2 + 1, 1)), out])


def last_block_input(visual, x: torch.Tensor, rule: str) -> torch.Tensor:
    """Tokens entering the last block in open_clip's own forward, with the release's position embedding."""
    seen, native = [], visual.positional_embedding
    handle = visual.transformer.resblocks[-1].register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
    visual.positional_embedding = nn.Parameter(release_positional_embedding(visual, x, rule))
    try:
        with torch.no_grad():
            visual(x)
    finally:
        handle.remove()
        visual.positional_embedding = native
    return seen[0] if seen[0].shape[0] == x.shape[0] else seen[0].transpose(0, 1)  # [B, L, W]


# ---------------------------------------------------------------------------------------------------
# The heads, by hand
# ---------------------------------------------------------------------------------------------------


def layer_norm(x, ln):
    return F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)


def mlp(block, x):
    hidden = x @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    act = hidden * torch.sigmoid(1.702 * hidden) if "QuickGELU" in type(block.mlp.gelu).__name__ else F.gelu(hidden)
    return act @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def proxy_affinity_by_hand(proxy, beta, gamma):
    """ProxyCLIP open_clip/transformer.py:570-579 on ex_feats = proxy as [B, C, H, W]."""
    ex_feats = proxy.permute(0, 3, 1, 2)
    q_k = F.normalize(ex_feats.flatten(2, 3), dim=1)
    similarity = torch.einsum("b c m, b c n -> b m n", q_k, q_k)
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    return F.softmax(similarity, dim=-1)  # [B, N', N']


def hand_head(visual, x, head, grid, proxy=None, sigma=5.0, beta=1.2, gamma=3.0):
    """docs/field.md sections 2-3, one window and one attention head at a time. x: [B, L, W] -> [B, N, D]."""
    block = visual.transformer.resblocks[-1]
    width, n_heads = x.shape[-1], block.attn.num_heads
    d = width // n_heads
    s = d**-0.5
    w_in, b_in = block.attn.in_proj_weight, block.attn.in_proj_bias
    w_o, b_o = block.attn.out_proj.weight, block.attn.out_proj.bias
    omega = naclip_addition(grid[0], grid[1], sigma)
    affinity = proxy_affinity_by_hand(proxy, beta, gamma) if head == "proxyclip" else None
    out = []
    for b in range(x.shape[0]):
        h = layer_norm(x[b], block.ln_1)  # [L, W]
        q = h @ w_in[:width].T + b_in[:width]
        k = h @ w_in[width : 2 * width].T + b_in[width : 2 * width]
        v = h @ w_in[2 * width :].T + b_in[2 * width :]
        per_head = []
        for i in range(n_heads):
            qi, ki, vi = q[:, i * d : (i + 1) * d], k[:, i * d : (i + 1) * d], v[:, i * d : (i + 1) * d]
            if head == "maskclip":
                attn = torch.eye(x.shape[1])
            elif head == "sclip":
                attn = torch.softmax(qi @ qi.T * s, dim=-1) + torch.softmax(ki @ ki.T * s, dim=-1)
            elif head == "clearclip":
                attn = torch.softmax(qi @ qi.T * s, dim=-1)
            elif head == "naclip":
                attn = torch.softmax(ki @ ki.T * s + omega, dim=-1)
            else:  # proxyclip: this head's patch values resized to the proxy grid
                attn = affinity[b]
                grid_v = vi[1:].T.reshape(1, d, grid[0], grid[1])
                vi = F.interpolate(grid_v, size=proxy.shape[1:3], mode="bilinear", align_corners=False)
                vi = vi.reshape(d, -1).T  # [N', d]
            per_head.append(attn @ vi)
        o = torch.cat(per_head, dim=-1) @ w_o.T + b_o
        if head in ("maskclip", "sclip"):  # residual and FFN kept
            y = x[b] + o
            z = y + mlp(block, layer_norm(y, block.ln_2))
        else:
            z = o
        z = layer_norm(z, visual.ln_post)
        z = z if head == "proxyclip" else z[1:]  # CLS dropped
        feats = z @ visual.proj
        out.append(feats / feats.norm(dim=-1, keepdim=True))
    return torch.stack(out)


CASES = [  # (head, params, batch, window size, proxy grid)
    *[(head, {}, 2, (224, 224), (28, 28)) for head in CHECKED_HEADS],
    *[(head, {}, 1, (160, 272), (20, 34)) for head in CHECKED_HEADS],
    ("naclip", {"sigma": 2.0}, 1, (160, 272), None),
    ("proxyclip", {"beta": 0.5, "gamma": 5.0}, 2, (224, 224), (16, 16)),
    ("sclip", {"interpolation": "lposs"}, 1, (160, 272), None),
    ("maskclip", {"interpolation": "sclip"}, 1, (160, 272), None),
]


@pytest.mark.parametrize("head, params, batch, size, proxy_grid", CASES)
def test_head_equals_hand_recomputation(visual, head, params, batch, size, proxy_grid):
    x = clip_windows(batch, *size, seed=len(ERRORS))
    grid = (size[0] // 16, size[1] // 16)
    proxy = None
    if head == "proxyclip":  # a random proxy with another grid and width (e.g. DINO ViT-S/8 tokens)
        proxy = torch.randn(batch, *proxy_grid, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = dense_clip_features(visual, x, head, proxy=proxy, **params)
        rule = params.get("interpolation", HEADS[head].defaults["interpolation"])
        hand_params = {key: value for key, value in params.items() if key != "interpolation"}
        expected = hand_head(visual, last_block_input(visual, x, rule), head, grid, proxy, **hand_params)
    out_grid = proxy_grid if head == "proxyclip" else grid
    assert feats.shape == (batch, *out_grid, 512)
    error = (feats.reshape(expected.shape) - expected).abs().max().item()
    ERRORS[f"{head}{params or ''} {size[0]}x{size[1]}"] = error
    assert error < 1e-4
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(batch, *out_grid), atol=1e-5, rtol=0)


def test_heads_differ_from_each_other(visual):
    x = clip_windows(1, 224, 224, seed=3)
    proxy = torch.randn(1, 14, 14, 64)
    with torch.no_grad():
        feats = {head: dense_clip_features(visual, x, head, proxy=proxy if head == "proxyclip" else None)
                 for head in CHECKED_HEADS}
    for a in CHECKED_HEADS:
        for b in CHECKED_HEADS:
            assert a == b or (feats[a] - feats[b]).abs().max() > 1e-2, (a, b)


@pytest.mark.parametrize("head, function", REUSING_HEADS)
def test_a_head_reusing_a_function_gives_that_heads_features(visual, head, function):
    assert function in CHECKED_HEADS, f"{head} reuses {function}, which no hand recomputation checks"
    x = clip_windows(1, 160, 272, seed=5)
    with torch.no_grad():
        assert torch.equal(dense_clip_features(visual, x, head), dense_clip_features(visual, x, function))


# ---------------------------------------------------------------------------------------------------
# Position-embedding rules
# ---------------------------------------------------------------------------------------------------


def test_the_two_interpolation_rules_differ_off_the_native_grid(visual):
    lposs_pos = positional_embedding(visual, (10, 17), "lposs")
    sclip_pos = positional_embedding(visual, (10, 17), "sclip")
    assert lposs_pos.shape == sclip_pos.shape == (1 + 170, 768)
    torch.testing.assert_close(lposs_pos[0], sclip_pos[0])  # CLS untouched
    assert (lposs_pos - sclip_pos).abs().max() > 1e-3
    assert positional_embedding(visual, (14, 14), "sclip") is visual.positional_embedding
    x = clip_windows(1, 160, 272, seed=4)
    with torch.no_grad():
        default = dense_clip_features(visual, x, "maskclip")
        other = dense_clip_features(visual, x, "maskclip", interpolation="sclip")
        same = dense_clip_features(visual, clip_windows(1, 224, 224), "maskclip", interpolation="sclip")
    assert (default - other).abs().max() > 1e-3
    torch.testing.assert_close(same, dense_clip_features(visual, clip_windows(1, 224, 224), "maskclip"))


def test_naclip_prior_matches_the_release_convolution():
    ours = vit.neighbourhood_prior((6, 9), 5.0)
    torch.testing.assert_close(ours, naclip_addition(6, 9, 5.0), atol=1e-6, rtol=0)
    assert torch.all(ours[1:, 1:].diagonal() == 1) and ours[0].abs().max() == 0 and ours[:, 0].abs().max() == 0


# ---------------------------------------------------------------------------------------------------
# ProxyCLIP's batch mean, and bad input
# ---------------------------------------------------------------------------------------------------


def test_proxyclip_affinity_mean_over_the_batch_or_per_window(visual):
    x = clip_windows(2, 224, 224, seed=5)
    proxy = torch.randn(2, 14, 14, 64, generator=torch.Generator().manual_seed(2))
    proxy[1] += 2.0  # the second window's tokens are far more similar to each other
    with torch.no_grad():
        batch = dense_clip_features(visual, x, "proxyclip", proxy=proxy)
        window = dense_clip_features(visual, x, "proxyclip", proxy=proxy, affinity_mean="window")
        alone = torch.cat([dense_clip_features(visual, x[i : i + 1], "proxyclip", proxy=proxy[i : i + 1])
                           for i in range(2)])
    torch.testing.assert_close(window, alone, atol=1e-5, rtol=1e-5)  # "window": batching does not matter
    assert (batch - alone).abs().max() > 1e-3  # the release's batch mean mixes windows


def test_bad_heads_and_inputs_are_named(visual):
    x = clip_windows(1, 224, 224)
    with pytest.raises(ValueError, match="unknown head 'bogus'; choose one of maskclip, .*sclip.*register your own"):
        dense_clip_features(visual, x, "bogus")
    with pytest.raises(ValueError, match="'proxyclip' needs proxy"):
        dense_clip_features(visual, x, "proxyclip")
    with pytest.raises(ValueError, match="takes no proxy"):
        dense_clip_features(visual, x, "sclip", proxy=torch.zeros(1, 14, 14, 8))
    with pytest.raises(ValueError, match="no parameter 'sigma'"):
        dense_clip_features(visual, x, "sclip", sigma=3.0)
    with pytest.raises(ValueError, match="interpolation"):
        dense_clip_features(visual, x, "maskclip", interpolation="nearest")
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        dense_clip_features(visual, clip_windows(1, 200, 224), "maskclip")


# ---------------------------------------------------------------------------------------------------
# OpenAI weights run in QuickGELU (the GELU trap of open_clip >= 2.29)
# ---------------------------------------------------------------------------------------------------


def test_openai_choice_builds_quick_gelu_and_it_changes_the_features(visual):
    vlm = create_backbones(spec_from_clip_choice("openai", random=True, vm="clip")).vlm
    act = vlm.model.visual.transformer.resblocks[-1].mlp.gelu
    assert type(act).__name__ == "QuickGELU" and vlm.id.startswith("openclip-ViT-B-16-quickgelu-random0-")
    gelu_block = visual.transformer.resblocks[-1]
    assert isinstance(gelu_block.mlp.gelu, nn.GELU)  # the same seed without quick_gelu: GELU
    torch.testing.assert_close(vlm.model.visual.proj, visual.proj)  # ... and the same weights
    x = clip_windows(1, 224, 224, seed=6)
    with torch.no_grad():
        quick = dense_clip_features(vlm.model.visual, x, "maskclip")
        expected = hand_head(vlm.model.visual, last_block_input(vlm.model.visual, x, "lposs"), "maskclip", (14, 14))
    torch.testing.assert_close(quick.reshape(expected.shape), expected, atol=1e-4, rtol=1e-4)
    assert (quick - dense_clip_features(visual, x, "maskclip")).abs().max() > 1e-3


@pytest.mark.parametrize("tag, quick", [("openai", True), ("laion2b_s34b_b88k", False)])
def test_pretrained_tags_build_their_activation(monkeypatch, tag, quick):
    """The real-weights path (download stubbed out): the 'openai' tag must build QuickGELU."""
    import open_clip

    real_create = open_clip.create_model
    monkeypatch.setattr(loading, "_resolve_download", lambda *args: None)  # "the library may download"
    monkeypatch.setattr(open_clip, "create_model", lambda name, pretrained, **kw: real_create(name, None, **kw))
    model = loading.load_open_clip("ViT-B-16", tag, None, seed=0)
    assert (type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU") == quick


# ---------------------------------------------------------------------------------------------------
# Vision models: q / k / v / tokens by hand
# ---------------------------------------------------------------------------------------------------


def hand_vision_features(vm: VisionFeatures, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The last timm block by hand (per window, per attention head) on its input from timm's own forward."""
    x_in = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    block, seen = vm.model.blocks[-1], []
    handle = block.register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
    try:
        with torch.no_grad():
            vm.model.forward_features(x_in)
    finally:
        handle.remove()
    x, prefix = seen[0], vm.num_prefix_tokens  # [B, prefix + N, C]
    dim, n_heads = x.shape[-1], block.attn.num_heads
    d = dim // n_heads
    out = {name: [] for name in ("q", "k", "v", "tokens")}
    for b in range(x.shape[0]):
        h = layer_norm(x[b], block.norm1)
        qkv = {name: h @ block.attn.qkv.weight[i * dim : (i + 1) * dim].T + block.attn.qkv.bias[i * dim : (i + 1) * dim]
               for i, name in enumerate("qkv")}
        per_head = []
        for i in range(n_heads):
            qi, ki, vi = (qkv[name][:, i * d : (i + 1) * d] for name in "qkv")
            per_head.append(torch.softmax(qi @ ki.T * d**-0.5, dim=-1) @ vi)
        attn = torch.cat(per_head, dim=-1) @ block.attn.proj.weight.T + block.attn.proj.bias
        gamma1, gamma2 = (getattr(scale, "gamma", 1.0) for scale in (block.ls1, block.ls2))  # LayerScale
        y = x[b] + attn * gamma1
        hidden = F.gelu(layer_norm(y, block.norm2) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
        z = y + (hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias) * gamma2
        parts = {**qkv, "tokens": layer_norm(z, vm.model.norm)}
        for name, part in parts.items():
            part = part[prefix:]  # CLS and registers dropped
            out[name].append(part / part.norm(dim=-1, keepdim=True))
    return {name: torch.stack(parts) for name, parts in out.items()}


@pytest.mark.parametrize("name, size, prefix, grid", [
    ("dino_vitb8", (112, 112), 1, (14, 14)),  # ProxyCLIP's default proxy: /8
    ("dinov2_vitb14_reg", (112, 126), 5, (8, 9)),  # CLS + 4 registers dropped, /14
])
def test_vision_model_features_equal_hand_recomputation(name, size, prefix, grid):
    vm = VisionFeatures(name, pretrained=False)
    for block in vm.model.blocks[-1:]:  # DINOv2's layer scales start at 1e-5: make the block matter
        for scale in (block.ls1, block.ls2):
            if hasattr(scale, "gamma"):
                scale.gamma.data.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))
    assert vm.num_prefix_tokens == prefix and vm.id == f"timm-{loading.VISION_MODELS[name]}-random0-v"
    images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(7))
    feats = vm.dense_features_multi(images, ("q", "k", "v", "tokens"))
    expected = hand_vision_features(vm, images)
    for feature, value in feats.items():
        assert value.shape == (1, *grid, 768)
        error = (value.reshape(expected[feature].shape) - expected[feature]).abs().max().item()
        ERRORS[f"{name} {feature}"] = error
        assert error < 1e-4, feature
        torch.testing.assert_close(vm.with_feature(feature).dense_features(images), value)
    assert (feats["tokens"] - feats["v"]).abs().max() > 1e-2


def test_vision_model_names_and_features():
    short, full = VisionFeatures("dino_vits16", pretrained=False), VisionFeatures("vit_small_patch16_224.dino", False)
    assert short.id == full.id == "timm-vit_small_patch16_224.dino-random0-v"
    tokens = short.with_feature("tokens")
    assert tokens.model is short.model and tokens.id.endswith("-tokens") and short.feature == "v"
    with pytest.raises(ValueError, match="'tokens'"):
        short.dense_features_multi(torch.rand(1, 3, 32, 32), ("v", "cls"))
    with pytest.raises(ValueError, match="dino_vitb8"):
        VisionFeatures("dino_vit_nothing", pretrained=False)
