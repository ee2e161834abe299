"""PEARL's Procrustes-aligned attention (PGSmall/PEARL pearl/attn.py:5-78 @c26062b, arch 'reduced'), one window.

Per head, on q, k, v of ln_1(x_11) (CLS included), in float32:
    w_t = |q_t| with w_CLS = 0, normalised (+1e-6);  q_c = q - sum_t w_t q_t,  k_c = k - sum_t w_t k_t
    M = k_c^T q_c (d x d);  R = M (M^T M)^-1/2 by `polar_iters` Newton-Schulz steps (5 do not converge: use 5)
    logits = s q (k R)^T + alpha_kk s k_c k_c^T           (k uncentred in the first term)
    output = softmax(logits) . v, no residual, no FFN; the CLS row is dropped afterwards, as the segmentor does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..protocol_bases import WHOLE_IMAGE, WINDOWS_2025
from ..records import Published, register_head
from ..vit import attend, qkv_per_head
from .common import WindowTrace, last_block

# TLP on (run.sh:4), pooled to round(H/80) x round(W/80), 224 on Cityscapes; alpha_kk 0.3 on ADE and City
PROTOCOL = {
    "base": {**WINDOWS_2025, "post": "tlp", "post_params": {"grid": 80},
             "source": "PGSmall/PEARL c26062b configs/cfg_*.py, run.sh"},
    "datasets": {"voc21": {"prob_thd": 0.1, **WHOLE_IMAGE}, "context60": {"prob_thd": 0.1},
                 "coco_object": {"prob_thd": 0.1}, "voc20": dict(WHOLE_IMAGE),
                 "cityscapes": {"short_side": 560, "head_params": {"alpha_kk": 0.3}, "post_params": {"grid": 224}},
                 "ade20k": {"head_params": {"alpha_kk": 0.3}}},
}


DEFAULTS: dict[str, Any] = {"interpolation": "sclip", "alpha_kk": 0.08, "polar_iters": 5, "use_kk": True}


def polar_factor(m: Tensor, iterations: int = 5, eps: float = 1e-6) -> Tensor:
    """[..., d, d] -> M (M^T M)^-1/2 by Newton-Schulz on A = M^T M / ||A||_F + eps I (pearl/attn.py:5-19)."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand_as(m)
    a = m.transpose(-2, -1) @ m
    norm = a.flatten(-2).norm(dim=-1).clamp_min(eps)[..., None, None]  # Frobenius norm
    y, z = a / norm + eps * eye, eye.clone()
    for _ in range(iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return m @ (z / torch.sqrt(norm))


def pearl_attention(q: Tensor, k: Tensor, alpha_kk: float, iterations: int, use_kk: bool) -> Tensor:
    """q, k [heads, L, d] (row 0 = CLS) -> attention weights [heads, L, L]."""
    q, k = q.float(), k.float()
    scale = q.shape[-1] ** -0.5
    w = q.norm(dim=-1, keepdim=True)  # [heads, L, 1]
    w[:, :1] = 0.0  # the CLS token does not weigh in the means
    w = w / (w.sum(dim=1, keepdim=True) + 1e-6)
    q_c = q - (w * q).sum(dim=1, keepdim=True)
    k_c = k - (w * k).sum(dim=1, keepdim=True)
    rotation = polar_factor(k_c.transpose(-2, -1) @ q_c, iterations)  # [heads, d, d]
    logits = (q * scale) @ (k @ rotation).transpose(-2, -1)
    if use_kk:
        logits = logits + alpha_kk * ((k_c @ k_c.transpose(-2, -1)) * scale)
    return torch.softmax(logits, dim=-1)


@register_head(
    "pearl", title="PEARL", kind="traced", defaults=DEFAULTS, protocol=PROTOCOL, release="PGSmall/PEARL@c26062b",
    year=2025,
    published=(Published("PEARL (OpenAI CLIP, training-free, no extra model; with its TLP post-step)",
                         (64.1, 35.1, 37.3, 86.9, 37.6, 38.6, 19.4, 26.3), 43.2,
                         "PEARL's results figure (PGSmall/PEARL c26062b assets/results.png)"),),
)
def pearl(visual: nn.Module, window: WindowTrace, settings: dict[str, Any]) -> Tensor:
    """One window's patch tokens [N, W] before ln_post."""
    block = last_block(visual)
    q, k, v = qkv_per_head(block, window.hidden[-1])  # [heads, 1 + N, d]
    weights = pearl_attention(q, k, float(settings["alpha_kk"]), int(settings["polar_iters"]), bool(settings["use_kk"]))
    return attend(block, weights, v.float())[1:]
