"""GEM, Grounding Everything (Bousselham, Petersen, Ferrari, Kuehne, CVPR 2024; WalBouss/GEM@5fa677c, also PyPI
gem-torch 1.0.1, the same files): a self-self attention path beside the last depth - 1 = 6 blocks, one window.

x_l is the output of CLIP block l (x_0 the embedded tokens); the original path runs unchanged. The GEM path starts
from x_6 and, in each block l = 7..12, keeps the residual and drops the FFN (gem/gem_utils.py:153-171):

    g_6 = x_6;   g_l = g_(l-1) + W_o concat_heads(GEMattn(ln_1 x_(l-1))) + b_o     (ln_1 of the ORIGINAL tokens)

GEMattn per head on all 1 + N tokens (CLS included), q, k, v = the block's in_proj of h = ln_1 x_(l-1) (:60-134):

    tau  = mean over the 1 + N tokens of ||h|| (full width) x d^-1/2      one inverse temperature per image and block
    for t in (q, k, v): ss_attn_iter times t <- softmax(tau n(t) n(t)^T) n(t)       (n: unit rows over d)
                        A_t = softmax(tau n(t) n(t)^T)
    out  = (A_q v + A_k v + A_v v) / 3                                    the mean of the three, on the RAW v

then ln_post on the final g, proj (gem/gem_utils.py:214-221). A given ss_attn_temp is used as the inverse temperature
itself. The position embedding is resized by torch's antialiased bicubic to the grid size (the "gem" rule of
lposs.models.vit). The release feeds open_clip's blocks sequence-first (open_clip <= 2.23), so its untouched blocks
run torch's unfused attention, as the traced runner does (lposs.models.vit.hidden_states_as_released).

The inverse temperature is a mean over one forward's tokens: per IMAGE in the release, which squashes the whole
image to 448 x 448 (README, app.py) and runs it as one forward; per WINDOW here (a window is one forward). For an image
that is one window (square, or resized to the crop) they are the same; otherwise each window has its own.

Not reproduced: the release resamples the embedding only when the token count differs from the embedding's WIDTH
(gem_utils.py:194 compares with positional_embedding.shape[1], 768 for ViT-B); a grid of exactly 767 patches would
keep the native embedding there. CLIP weights its release shows: OpenAI ViT-B/16 (README; QuickGELU), MetaCLIP
ViT-B-16-quickgelu metaclip_400m (app.py, test_examples.py), OpenCLIP ViT-B-16 laion400m_e32 (app.py).
No published 8-benchmark row: the stored material gives none with a source.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..heads_2025.common import WindowTrace
from ..protocol_bases import SOFTMAX
from ..records import register_head
from ..vit import qkv_per_head

DEFAULTS: dict[str, Any] = {"interpolation": "gem", "depth": 7, "ss_attn_iter": 1, "ss_attn_temp": None}

# README / app.py: the whole image resized to 448 x 448 (bicubic), one forward; the nearest here: one 448 window at
# short side 448 (windows 448 apart: the fewest views). No class files, no thresholds in the release: LPOSS's lists,
# the argmax of the scores (with prob_thd 0 and no area rule the logit scale does not change the labels)
PROTOCOL = {
    "base": {**SOFTMAX, "logit_scale": 100.0, "crop": 448, "stride": 448, "short_side": 448, "classes": "lposs",
             "post": None, "head_params": {},
             "deviation": "the release squashes the whole image to 448 x 448 and runs it as one forward (its inverse "
                          "temperature per image); here 448 windows at short side 448, the temperature per window",
             "source": "WalBouss/GEM 5fa677c README.md, app.py (gem-torch 1.0.1)"},
    "datasets": {},
}


def check(settings: dict[str, Any]) -> None:
    depth, iterations, temp = settings["depth"], settings["ss_attn_iter"], settings["ss_attn_temp"]
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth={depth!r}: an integer >= 2 (the GEM path runs beside the last depth - 1 blocks; "
                         "the release crashes at depth 1)")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"ss_attn_iter={iterations!r}: an integer >= 0")
    if temp is not None and not (isinstance(temp, (int, float)) and not isinstance(temp, bool) and temp > 0):
        raise ValueError(f"ss_attn_temp={temp!r}: None (adaptive, the release's default) or a positive number")


def inverse_temperature(h: Tensor) -> Tensor:
    """h = ln_1(x) [..., L, W] -> [..., 1, 1, 1]: the mean token norm over the L tokens, times d^-1/2 (per head d)."""
    return h.norm(dim=-1).mean(dim=-1)[..., None, None, None]


def self_self_weights(t: Tensor, inv_temp: Tensor | float, iterations: int) -> Tensor:
    """t [..., heads, L, d] -> A_t = softmax(tau n(t) n(t)^T) after `iterations` self-self steps, [..., heads, L, L]."""
    for _ in range(iterations + 1):
        unit = F.normalize(t, dim=-1)
        weights = torch.softmax(unit @ unit.transpose(-2, -1) * inv_temp, dim=-1)
        t = weights @ unit
    return weights


def gem_attention(block: nn.Module, x: Tensor, iterations: int, temp: float | None) -> Tensor:
    """The GEM path's attention output of one block (before ls_1), [..., L, W], on the original tokens x [..., L, W]."""
    q, k, v = qkv_per_head(block, x)  # [..., heads, L, d]
    scale = q.shape[-1] ** -0.5
    inv_temp = inverse_temperature(block.ln_1(x)) * scale if temp is None else float(temp)
    outputs = [self_self_weights(t, inv_temp, iterations) @ v for t in (v, k, q)]  # each A_t v, raw v
    mean = (outputs[0] + outputs[1] + outputs[2]) / 3  # [..., heads, L, d]
    return block.attn.out_proj(mean.transpose(-3, -2).flatten(-2))


def gem_path(visual: nn.Module, hidden: list[Tensor], depth: int, iterations: int, temp: float | None) -> Tensor:
    """hidden = [x_0, ..., x_{L-1}] (each [..., 1 + N, W]) -> the GEM path's final g, [..., 1 + N, W], before ln_post."""
    blocks = visual.transformer.resblocks
    first = len(blocks) - (depth - 1)  # blocks first..L-1 (0-based) get the second path; it starts from their input
    if first < 0:
        raise ValueError(f"depth={depth}: at most {len(blocks) + 1} for a ViT of {len(blocks)} blocks")
    g = hidden[first]
    for index in range(first, len(blocks)):
        block = blocks[index]
        g = g + block.ls_1(gem_attention(block, hidden[index], iterations, temp))  # no FFN on this path
    return g


@register_head(
    "gem", title="GEM", kind="traced", defaults=DEFAULTS, check=check, protocol=PROTOCOL,
    release="WalBouss/GEM@5fa677c", year=2024,
)
def gem(visual: nn.Module, window: WindowTrace, settings: dict[str, Any]) -> Tensor:
    """One window's patch tokens [N, W] before ln_post: the GEM path's final g, CLS dropped."""
    g = gem_path(visual, window.hidden, settings["depth"], settings["ss_attn_iter"], settings["ss_attn_temp"])
    return g[1:]
