"""PEARL's text-aware label propagation (lposs/core/tlp.py) against a dense-matrix recomputation, and its traps:
only diag(S) counts, and one conjugate-gradient step size is shared by all classes.

The recomputation runs in float64. Like the release, TLP runs in float32, whose CG rounding grows as the residual
shrinks: a few steps agree to ~1e-7, the default 25 to ~3e-5. The traps are checked after 5 steps, where the
wrong choices move the result by 100x to 10000x that."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lposs.core.tlp import pooling_factors, tlp


def inputs(classes: int, height: int, width: int, seed: int = 0):
    """Cosine-like logits [1, C, H, W] with smooth regions, a CLIP-normalised image, and text where queries 0-2
    are near-synonyms (large off-diagonal text similarities)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, 3, 4, generator=g)
    logits = 0.2 + 0.3 * F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    logits = logits + 0.01 * torch.randn(1, classes, height, width, generator=g)
    image = F.interpolate(torch.randn(1, 3, 4, 4, generator=g), size=(height, width), mode="nearest")
    image = image + 0.2 * torch.randn(1, 3, height, width, generator=g)
    text = torch.randn(classes, 512, generator=g)
    text[:3] = text[0] + 0.3 * torch.randn(3, 512, generator=g)
    return logits, image, text


def hand_tlp(logits, image, text, grid, steps, full_s=False, per_class_steps=False):
    """One image, in float64, with the graph as a dense matrix: pool, confidence, edges, CG, resize."""
    _, classes, height, width = logits.shape
    sh, sw = max(1, round(height / grid)), max(1, round(width / grid))
    hs, ws = height // sh, width // sw

    def pool(t):  # [K, H, W] -> [K, hs, ws], block means
        return t[:, : hs * sh, : ws * sw].reshape(len(t), hs, sh, ws, sw).mean(dim=(2, 4))

    x0 = pool(logits[0].double()).reshape(classes, -1).T  # [n, C]
    img = pool(image[0].double())
    p = torch.softmax(x0, dim=1)
    t = text.double() / text.double().norm(dim=1, keepdim=True)
    s = torch.softmax(t @ t.T / 0.5, dim=1) + 10 * torch.eye(classes, dtype=torch.float64)
    s = s / (s.sum(dim=1, keepdim=True) + 1e-6)
    m = s if full_s else torch.diag(s.diagonal())
    agree = ((p @ m.T) * p).sum(dim=1).clamp(0, 1)
    confidence = p.max(dim=1).values.clamp_min(0.05) ** 2 * (1 + agree)  # [n]
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).flatten()
    lap = torch.zeros(hs * ws, hs * ws, dtype=torch.float64)
    for pairs in ([(r * ws + c, r * ws + c + 1) for r in range(hs) for c in range(ws - 1)],
                  [(r * ws + c, (r + 1) * ws + c) for r in range(hs - 1) for c in range(ws)]):
        mean_step = sum(abs(gray[j] - gray[i]) for i, j in pairs) / len(pairs)
        for i, j in pairs:  # i: left / upper, j: right / lower
            gain = 1 + (p[j] @ (m @ p[i])).clamp(0, 1)
            w = (torch.exp(-5 * abs(gray[j] - gray[i]) / (mean_step + 1e-6)) * gain).clamp(0, 1)
            lap[i, i] += w
            lap[j, j] += w
            lap[i, j] -= w
            lap[j, i] -= w
    a = torch.diag(confidence) + lap
    b = confidence[:, None] * x0

    def cg(x, rhs):  # plain CG on the whole [n, K] block: one step size
        r = rhs - a @ x
        d = r.clone()
        rs = (r * r).sum()
        for _ in range(steps):
            ad = a @ d
            alpha = rs / ((d * ad).sum() + 1e-12)
            x, r = x + alpha * d, r - alpha * ad
            rs_new = (r * r).sum()
            d, rs = r + rs_new / (rs + 1e-12) * d, rs_new
        return x

    if per_class_steps:
        solved = torch.cat([cg(x0[:, c : c + 1], b[:, c : c + 1]) for c in range(classes)], dim=1)
    else:
        solved = cg(x0, b)
    solved = solved.T.reshape(1, classes, hs, ws).float()
    if (sh, sw) != (1, 1):
        solved = F.interpolate(solved, size=(height, width), mode="bilinear", align_corners=False)
    return solved, (a, b)


CASES = [(5, 40, 48, 8), (4, 12, 10, 80), (6, 30, 44, 8)]  # classes, H, W, grid: pooled 8x8, none, 4x11 (rounding)


@pytest.mark.parametrize("steps, tolerance", [(5, 1e-6), (10, 1e-6), (25, 1e-4)])
@pytest.mark.parametrize("classes, height, width, grid", CASES)
def test_tlp_equals_dense_recomputation(classes, height, width, grid, steps, tolerance):
    logits, image, text = inputs(classes, height, width)
    expected, _ = hand_tlp(logits, image, text, grid, steps=steps)
    refined = tlp(logits, image, text, grid=grid, steps=steps)
    assert refined.shape == logits.shape
    torch.testing.assert_close(refined, expected, atol=tolerance, rtol=0)
    assert (refined - logits).abs().max() > 0.1  # it does something


def test_many_steps_solve_the_linear_system():
    logits, image, text = inputs(5, 40, 48)
    _, (a, b) = hand_tlp(logits, image, text, 8, steps=0)
    exact = torch.linalg.solve(a, b).T.reshape(1, 5, 8, 8).float()
    exact = F.interpolate(exact, size=(40, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(tlp(logits, image, text, grid=8, steps=400), exact, atol=1e-5, rtol=0)
    assert (tlp(logits, image, text, grid=8) - exact).abs().max() > 1e-5  # 25 steps do not converge


@pytest.mark.parametrize("classes, height, width, grid", CASES)
def test_only_the_diagonal_of_the_text_matrix_counts(classes, height, width, grid):
    logits, image, text = inputs(classes, height, width)
    refined = tlp(logits, image, text, grid=grid, steps=5)
    right, _ = hand_tlp(logits, image, text, grid, steps=5)
    full, _ = hand_tlp(logits, image, text, grid, steps=5, full_s=True)
    assert (refined - right).abs().max() < 1e-6
    assert (refined - full).abs().max() > 1e-4  # the synonyms' off-diagonal similarities would count


@pytest.mark.parametrize("classes, height, width, grid", CASES)
def test_one_step_size_for_all_classes(classes, height, width, grid):
    logits, image, text = inputs(classes, height, width)
    refined = tlp(logits, image, text, grid=grid, steps=5)
    per_class, _ = hand_tlp(logits, image, text, grid, steps=5, per_class_steps=True)
    assert (refined - per_class).abs().max() > 1e-3


def test_pooling_rounds_half_to_even_and_images_are_independent():
    assert pooling_factors(200, 280) == (2, 4) and pooling_factors(30, 50) == (1, 1)  # 2.5 -> 2, 3.5 -> 4
    assert pooling_factors(1024, 2048, grid=224) == (5, 9)
    parts = [inputs(4, 24, 32, seed=s) for s in (1, 2)]
    batch = [torch.cat([p[i] for p in parts]) for i in (0, 1)]
    together = tlp(batch[0], batch[1], parts[0][2], grid=8)
    alone = torch.cat([tlp(p[0], p[1], parts[0][2], grid=8) for p in parts])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
