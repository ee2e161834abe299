"""The `gem` head (lposs.models.heads_2024.gem) against a hand recomputation, and the traps of its release.

A tiny random open_clip ViT (12 blocks of width 64, 4 heads of 16, QuickGELU, 64 px images: native grid 4 x 4) with
every parameter randomised (biases and norms included). The hand version is written from GEM's formulas
(WalBouss/GEM@5fa677c gem/gem_utils.py), one attention head at a time, on every block's input captured from
open_clip's OWN forward with the position embedding made by the release's own resampling call (copied from
resample_abs_pos_embed). Each trap has a test that fails on the wrong choice.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from lposs.models.heads import HEADS, RUNNERS, dense_clip_features, head_record
from lposs.models.heads_2024.gem import gem_path
from lposs.models.protocols import resolve
from lposs.models.vit import hidden_states_as_released, positional_embedding

SIZES = [(64, 64), (96, 128)]  # the native 4 x 4 grid; 6 x 8, upsampled


def tiny_visual(seed: int = 0, layers: int = 12, width: int = 64, heads: int = 4) -> VisionTransformer:
    """A random open_clip VisionTransformer, patch 16, native 64 x 64; norms and biases random too."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = VisionTransformer(image_size=64, patch_size=16, width=width, layers=layers, heads=heads,
                                   mlp_ratio=2.0, output_dim=32, act_layer=QuickGELU).eval()
        with torch.no_grad():
            for name, parameter in visual.named_parameters():
                if parameter.dim() == 1:  # LayerNorm weights and biases, attention and MLP biases
                    parameter.add_(0.2 * torch.randn_like(parameter))
                elif "in_proj_weight" in name:  # sharper attention than the default init gives
                    parameter.mul_(3.0)
    return visual


@pytest.fixture(scope="module")
def visual():
    return tiny_visual()


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------
# The release's resampling, copied; the GEM path by hand
# ---------------------------------------------------------------------------------------------------


def release_positional_embedding(visual, grid: tuple[int, int]) -> torch.Tensor:
    """gem_utils.py resample_abs_pos_embed (num_prefix_tokens 1, bicubic, antialias True), [1 + gh*gw, W]."""
    posemb = visual.positional_embedding.detach()[None]
    old = int((posemb.shape[1] - 1) ** 0.5)
    if tuple(grid) == (old, old):
        return posemb[0]
    prefix, posemb = posemb[:, :1], posemb[:, 1:]
    posemb = posemb.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    posemb = F.interpolate(posemb, size=grid, mode="bicubic", antialias=True)
    posemb = posemb.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([prefix, posemb], dim=1)[0]


def block_inputs(visual, x: torch.Tensor, positional=release_positional_embedding) -> list[torch.Tensor]:
    """The input of every block, [x_0, ..., x_{L-1}] of ONE image [1, 3, H, W], each [1 + N, W], from open_clip's own
    forward (unfused attention, as the release's sequence-first blocks run) with a release's position embedding
    (`positional(visual, grid)`, GEM's by default)."""
    seen, native = [], visual.positional_embedding
    hooks = [b.register_forward_pre_hook(lambda _m, a: seen.append(a[0][0].clone()))
             for b in visual.transformer.resblocks]
    grid = (x.shape[2] // 16, x.shape[3] // 16)
    visual.positional_embedding = nn.Parameter(positional(visual, grid))
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            visual(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        visual.positional_embedding = native
        for hook in hooks:
            hook.remove()
    return seen


def layer_norm(x, ln):
    return F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)


def hand_gem_attention(block, x, iterations=1, temp=None, reads=None, on="raw v", temp_over=None):
    """GEMattn of one block, head by head. x: the original tokens [L, W]; reads: the tokens ln_1 is taken of (the
    wrong choice: the GEM path's own); on: "raw v" (the release) or "iterated" (A_t applied to the iterated t);
    temp_over: the tokens whose mean norm makes the temperature (the wrong choice: a whole batch's)."""
    h = layer_norm(x if reads is None else reads, block.ln_1)  # [L, W]
    attn = block.attn
    heads, width = attn.num_heads, h.shape[-1]
    d = width // heads
    qkv = h @ attn.in_proj_weight.T + attn.in_proj_bias  # [L, 3W]
    norms = layer_norm(temp_over, block.ln_1).norm(dim=-1) if temp_over is not None else h.norm(dim=-1)
    tau = norms.mean() * d**-0.5 if temp is None else temp
    outputs = []
    for head in range(heads):
        q, k, v = (qkv[:, part * width + head * d : part * width + (head + 1) * d] for part in range(3))
        total = torch.zeros_like(v)
        for t in (v, k, q):
            for _ in range(iterations):
                u = t / t.norm(dim=-1, keepdim=True)
                t = torch.softmax(tau * u @ u.T, dim=-1) @ u
            u = t / t.norm(dim=-1, keepdim=True)
            total = total + torch.softmax(tau * u @ u.T, dim=-1) @ (v if on == "raw v" else u)
        outputs.append(total / 3)
    return torch.cat(outputs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias  # [L, W]


def hand_gem(visual, x, depth=7, iterations=1, temp=None, reads="original", on="raw v"):
    """Unit patch features [gh, gw, D] of one image [1, 3, H, W]."""
    xs = block_inputs(visual, x)
    first = len(xs) - (depth - 1)
    g = xs[first]
    for index in range(first, len(xs)):
        block = visual.transformer.resblocks[index]
        g = g + hand_gem_attention(block, xs[index], iterations, temp, None if reads == "original" else g, on)
    feats = layer_norm(g, visual.ln_post)[1:] @ visual.proj
    return F.normalize(feats, dim=-1).reshape(x.shape[2] // 16, x.shape[3] // 16, -1)


def error(a, b) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("params", [{}, {"ss_attn_iter": 2}, {"ss_attn_iter": 0, "depth": 3},
                                    {"ss_attn_temp": 2.5, "depth": 13}])
def test_gem_equals_hand_recomputation(visual, size, params):
    x = images(2, *size)
    with torch.no_grad():
        feats = dense_clip_features(visual, x, "gem", **params)  # [2, gh, gw, D]
    for b in range(2):
        expected = hand_gem(visual, x[b : b + 1], params.get("depth", 7), params.get("ss_attn_iter", 1),
                            params.get("ss_attn_temp"))
        assert error(feats[b], expected) < 1e-5, (size, params, b)


def test_the_temperature_is_per_image_not_per_batch(visual):
    """gem_path on a batch of two windows equals each alone; the same images sharing one temperature (the mean over
    both) would not: the second is scaled so that its token norms differ."""
    x = torch.cat([images(1, 64, 64, seed=1), 3 * images(1, 64, 64, seed=2)])
    hidden = [torch.stack(pair) for pair in zip(*(hidden_states_as_released(visual, x[b : b + 1], "gem")
                                                  for b in range(2)))]  # [x_0 .. x_11], each [2, 1 + N, W]
    with torch.no_grad():
        batched = gem_path(visual, hidden, 7, 1, None)  # [2, 1 + N, W]
        alone = [gem_path(visual, [h[b] for h in hidden], 7, 1, None) for b in range(2)]
        block = visual.transformer.resblocks[6]
        shared = hand_gem_attention(block, hidden[6][0], temp_over=hidden[6].flatten(0, 1))
        own = hand_gem_attention(block, hidden[6][0])
    assert all(error(batched[b], alone[b]) < 1e-5 for b in range(2))
    assert error(shared, own) > 1e-3  # a batch-wide temperature is another head


def test_the_attention_reads_ln_1_of_the_original_path(visual):
    x = images(1, 96, 128, seed=3)
    with torch.no_grad():
        feats = dense_clip_features(visual, x, "gem")[0]
    assert error(feats, hand_gem(visual, x)) < 1e-5
    assert error(feats, hand_gem(visual, x, reads="gem")) > 1e-3


def test_the_mean_of_the_three_weights_the_raw_v(visual):
    x = images(1, 64, 64, seed=4)
    with torch.no_grad():
        feats = dense_clip_features(visual, x, "gem")[0]
    assert error(feats, hand_gem(visual, x)) < 1e-5
    assert error(feats, hand_gem(visual, x, on="iterated")) > 1e-3


def test_the_antialiased_rule_differs_from_the_other_two_when_upsampling(visual):
    for grid in [(6, 8), (8, 8)]:
        gem = positional_embedding(visual, grid, "gem")
        assert error(gem, release_positional_embedding(visual, grid)) < 1e-6
        for other in ("lposs", "sclip"):
            assert error(gem, positional_embedding(visual, grid, other)) > 1e-3, (grid, other)
        plain = F.interpolate(visual.positional_embedding[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=grid,
                              mode="bicubic", align_corners=False)  # the same call without antialias
        assert error(gem[1:], plain.permute(0, 2, 3, 1).reshape(-1, plain.shape[1])) > 1e-3
    assert torch.equal(positional_embedding(visual, (4, 4), "gem"), visual.positional_embedding)


def test_the_traced_runner_is_what_the_head_returns_before_normalisation(visual):
    x = images(1, 64, 64, seed=5)
    record = head_record("gem")
    with torch.no_grad():
        raw = RUNNERS["traced"](record, visual, x, record.settings(), {})
        unit = dense_clip_features(visual, x, "gem")
    assert error(F.normalize(raw, dim=-1), unit) < 1e-6


def test_parameters_are_checked(visual):
    for bad, match in [({"depth": 1}, "depth=1"), ({"depth": 2.0}, "depth=2.0"), ({"ss_attn_iter": -1}, "ss_attn_iter"),
                       ({"ss_attn_temp": 0}, "ss_attn_temp"), ({"alpha": 1}, "no parameter 'alpha'")]:
        with pytest.raises(ValueError, match=match):
            dense_clip_features(visual, images(1, 64, 64), "gem", **bad)
    with pytest.raises(ValueError, match="at most 13"):
        dense_clip_features(visual, images(1, 64, 64), "gem", depth=14)


def test_the_record_carries_the_release_and_its_protocol():
    record = HEADS["gem"]
    assert record.kind == "traced" and record.defaults["interpolation"] == "gem"
    assert record.release == "WalBouss/GEM@5fa677c" and record.published == () and record.training == "training-free"
    settings = resolve("gem", "voc21")
    assert (settings["crop"], settings["short_side"], settings["clip"], settings["head"]) == (448, 448, "openai", "gem")
    assert "448 x 448" in settings["deviation"] and "per window" in settings["deviation"]
