"""PEARL's text-aware label propagation (TLP), a post-step on dense logits (PGSmall/PEARL pearl/prop.py:31-176
@c26062b, on in its run.sh; CVPR 2026).

    refined = tlp(logits, image, text)   # logits [B, C, H, W] before any logit scale, image CLIP-normalised
                                         # [B, 3, H, W], text [C, D] the C queries' embeddings -> [B, C, H, W]

On a grid coarsened by average pooling (factors round(H / grid), round(W / grid), Python's half-to-even
rounding, at least 1; grid 80, 224 on Cityscapes), with p = softmax(logits) over the C queries (no scale):
    s_c   = diag(S), S = rownorm(softmax(T T^T / 0.5) + 10 I) of the unit text embeddings T. The release
            writes einsum('cc,bcij->bcij', S, p), which reads only the diagonal: only diag(S) counts
    Cw    = max(max_c p_c, 0.05)^2 (1 + clamp(sum_c s_c p_c^2, 0, 1))          (confidence, per pixel)
    w_ij  = clamp(exp(-5 |gray_i - gray_j| / mean|dgray|) (1 + clamp(sum_c s_c p_c,i p_c,j, 0, 1)), 0, 1)
            between 4-neighbours (gray = 0.299 R + 0.587 G + 0.114 B of the pooled normalised image; the mean
            over all horizontal, respectively vertical, differences of the image)
    solve (Cw + L) F = Cw logits, L the graph Laplacian of w, by 25 conjugate-gradient steps from F = logits
            with ONE step size shared by all classes (inner products over C, H and W),
then F is resized bilinearly back to H x W. The release takes the gray-level mean over its whole batch
(PEARL runs one image per batch); here each image has its own, so batching does not change a result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

TLP_GRID = 80  # target pooled size; PEARL uses 224 on Cityscapes
TEXT_TEMPERATURE = 0.5
DIAGONAL_BOOST = 10.0
EDGE_SHARPNESS = 5.0
CG_STEPS = 25
EPS = 1e-6


def pooling_factors(height: int, width: int, grid: int = TLP_GRID) -> tuple[int, int]:
    """(sh, sw) = (round(H / grid), round(W / grid)), at least 1 (Python's round: 2.5 -> 2, 3.5 -> 4)."""
    return int(max(1, round(height / float(grid)))), int(max(1, round(width / float(grid))))


def text_self_affinity(text: Tensor) -> Tensor:
    """[C, D] -> diag(S) [C], S = rownorm(softmax(T T^T / 0.5) + 10 I), T the unit rows of text."""
    unit = F.normalize(text, dim=-1)
    similarity = torch.softmax(unit @ unit.T / max(TEXT_TEMPERATURE, EPS), dim=1)
    similarity = similarity + DIAGONAL_BOOST * torch.eye(len(text), device=text.device, dtype=text.dtype)
    return (similarity / (similarity.sum(dim=1, keepdim=True) + EPS)).diagonal()


def edge_weights(gray: Tensor, probs: Tensor, self_affinity: Tensor) -> tuple[Tensor, Tensor]:
    """gray [B, 1, H, W], probs [B, C, H, W], diag(S) [C] -> weights left [B, 1, H, W-1] and up [B, 1, H-1, W]."""
    s = self_affinity.view(1, -1, 1, 1)
    weights = []
    for dim in (3, 2):  # horizontal, then vertical neighbours
        n = gray.shape[dim]
        step = (gray.narrow(dim, 1, n - 1) - gray.narrow(dim, 0, n - 1)).abs()
        step = step / (step.mean(dim=(1, 2, 3), keepdim=True) + EPS)  # per image (the release: per batch)
        agree = (probs.narrow(dim, 1, n - 1) * (s * probs.narrow(dim, 0, n - 1))).sum(dim=1, keepdim=True)
        weights.append((torch.exp(-EDGE_SHARPNESS * step) * (1.0 + agree.clamp(0.0, 1.0))).clamp(0.0, 1.0))
    return weights[0], weights[1]


def laplacian(x: Tensor, w_h: Tensor, w_v: Tensor) -> Tensor:
    """L x for the 4-neighbour graph with weights w_h [B, 1, H, W-1], w_v [B, 1, H-1, W]; x [B, C, H, W]."""
    out = torch.zeros_like(x)
    diff = w_h * (x[:, :, :, 1:] - x[:, :, :, :-1])
    out[:, :, :, 1:] += diff
    out[:, :, :, :-1] -= diff
    diff = w_v * (x[:, :, 1:, :] - x[:, :, :-1, :])
    out[:, :, 1:, :] += diff
    out[:, :, :-1, :] -= diff
    return out


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x: Tensor, steps: int = CG_STEPS) -> Tensor:
    """`steps` CG steps for apply(x) = b from x, one step size per image: inner products over C, H, W."""
    residual = b - apply(x)
    direction = residual.clone()
    rs_old = (residual * residual).sum(dim=(1, 2, 3), keepdim=True)
    for _ in range(steps):
        applied = apply(direction)
        alpha = rs_old / ((direction * applied).sum(dim=(1, 2, 3), keepdim=True) + 1e-12)
        x = x + alpha * direction
        residual = residual - alpha * applied
        rs_new = (residual * residual).sum(dim=(1, 2, 3), keepdim=True)
        direction = residual + rs_new / (rs_old + 1e-12) * direction
        rs_old = rs_new
    return x


def tlp(logits: Tensor, image: Tensor, text: Tensor | None = None, grid: int = TLP_GRID, steps: int = CG_STEPS,
        self_affinity: Tensor | None = None) -> Tensor:
    """PEARL's TLP: logits [B, C, H, W] (before logit scale), CLIP-normalised image [B, 3, H, W], text [C, D];
    or, instead of text, its self_affinity [C] (`text_self_affinity(text)`, all TLP reads of the text)."""
    if (text is None) == (self_affinity is None):
        raise ValueError("tlp needs the queries' text embeddings [C, D] or their self_affinity [C], one of the two")
    height, width = logits.shape[-2:]
    factors = pooling_factors(height, width, grid)
    pooled = factors != (1, 1)
    image_s, logits_s = image.float(), logits.float()
    if pooled:
        image_s, logits_s = F.avg_pool2d(image_s, factors, factors), F.avg_pool2d(logits_s, factors, factors)
    probs = torch.softmax(logits_s, dim=1)  # [B, C, Hs, Ws]
    self_affinity = text_self_affinity(text.to(logits_s)) if text is not None else self_affinity.to(logits_s)  # [C]
    agree = (probs * (self_affinity.view(1, -1, 1, 1) * probs)).sum(dim=1, keepdim=True).clamp(0.0, 1.0)
    confidence = probs.max(dim=1, keepdim=True).values.clamp_min(0.05) ** 2 * (1.0 + agree)  # Cw [B, 1, Hs, Ws]
    gray = 0.299 * image_s[:, 0:1] + 0.587 * image_s[:, 1:2] + 0.114 * image_s[:, 2:3]
    w_h, w_v = edge_weights(gray, probs, self_affinity)
    solved = conjugate_gradient(lambda x: confidence * x + laplacian(x, w_h, w_v), confidence * logits_s, logits_s,
                                steps)
    if pooled:
        solved = F.interpolate(solved, size=(height, width), mode="bilinear", align_corners=False)
    return solved.to(logits.dtype)
