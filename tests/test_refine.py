"""Pixel refinement: shapes, the reference solve, the pieces of the tempered ("best") and relaxed refiners
against explicit matrices, a synthetic boundary they must find, best's invariance to how scores are shifted,
scaled and noised, clear errors, and the refinement benchmark's coarse scores."""

import math

import numpy as np
import pytest
import torch

from benchmarks.refine import coarse_scores, patch_average, resize_pair
from lposs.core.graphs import PixelGraph
from lposs.core.propagation import propagate
from lposs.core.refine import (
    REFINERS,
    SUPPORT_EPS,
    _Rescaled,
    class_probabilities,
    colour_average,
    colour_relaxation,
    confidence_propagate,
    margin_confidence,
    refine_pixels,
    tempered_probabilities,
)


def explicit_weights(graph: PixelGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, B): the graph's dense affinity matrix and its unit-weight neighbourhood matrix."""
    S = graph.to_dense()
    sqrt_degree = 1 / graph.inv_sqrt_degree.reshape(-1)
    W = sqrt_degree[:, None] * S * sqrt_degree[None, :]
    h, w = graph.height, graph.width
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy, dx = ys[:, None] - ys[None, :], xs[:, None] - xs[None, :]
    reach = graph.pad
    d = graph.dilation
    B = (dy.abs() <= reach) & (dx.abs() <= reach) & (dy % d == 0) & (dx % d == 0) & ((dy != 0) | (dx != 0))
    return W, B.to(W.dtype)


def two_region_image(box, height=40, width=48, seed=0, noise=0.02):
    """A blue box (label 1, rows/cols box = (y0, y1, x0, x1)) on a red background, with colour noise."""
    g = torch.Generator().manual_seed(seed)
    y0, y1, x0, x1 = box
    label = torch.zeros(height, width, dtype=torch.long)
    label[y0:y1, x0:x1] = 1
    image = torch.empty(3, height, width, dtype=torch.float64)
    image[:] = torch.tensor([0.8, 0.3, 0.2], dtype=torch.float64)[:, None, None]
    image[:, label.bool()] = torch.tensor([0.2, 0.3, 0.8], dtype=torch.float64)[:, None]
    image = (image + noise * torch.randn(image.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return image, label


# --------------------------------------------------------------------------- refine_pixels
@pytest.mark.parametrize("refiner", ["reference", "best", "relaxed", "pamr"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtype_are_preserved(refiner, dtype):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 17, 23, generator=g).to(dtype)
    scores = torch.rand(4, 17, 23, generator=g).to(dtype)
    out = refine_pixels(image, scores, refiner=refiner)
    assert out.shape == scores.shape and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_reference_equals_column_by_column_cg_on_the_explicit_graph():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 9, 11, generator=g, dtype=torch.float64)
    scores = torch.rand(3, 9, 11, generator=g, dtype=torch.float64)
    S = PixelGraph(image, r=13, tau=0.01).to_dense()
    expected = propagate(S, scores.reshape(3, -1).T, method="cg_reference", maxiter=10, tol=1e-6)
    out = refine_pixels(image, scores)  # "reference" is the default
    torch.testing.assert_close(out, expected.T.reshape(3, 9, 11), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("refiner", ["reference", "best", "relaxed"])
def test_refinement_moves_a_blurred_boundary_to_the_colour_edge(refiner):
    image, label = two_region_image(box=(6, 35, 6, 35))  # corners cut by the 16x16 patch grid
    coarse = coarse_scores(label, 2).to(torch.float64)  # patch fractions, upsampled: a rounded blob
    coarse_errors = int((coarse.argmax(0) != label).sum())
    refined_errors = int((refine_pixels(image, coarse, refiner=refiner).argmax(0) != label).sum())
    assert coarse_errors > 300
    assert refined_errors <= coarse_errors // 4


def test_best_recovers_a_box_the_reference_loses():
    image, label = two_region_image(box=(5, 30, 9, 27))  # 18 px wide: about half of each patch it touches
    coarse = coarse_scores(label, 2).to(torch.float64)
    errors = {r: int((refine_pixels(image, coarse, refiner=r).argmax(0) != label).sum())
              for r in ("reference", "best")}
    coarse_errors = int((coarse.argmax(0) != label).sum())
    assert errors["best"] <= coarse_errors // 10
    assert errors["best"] < errors["reference"]


def test_best_is_the_tempered_refiner_at_no_more_cost_than_the_reference():
    assert REFINERS["best"] == REFINERS["tempered"] and REFINERS["best"]["evidence"] == "tempered"
    assert REFINERS["reference"]["relax_steps"] == 0 and REFINERS["reference"]["seed_confidence"] == 0
    best = REFINERS["best"]  # stencil products: smoothing + relaxation + CG, against the reference's 10 CG
    assert best["smooth_steps"] + best["relax_steps"] + best["maxiter"] <= REFINERS["reference"]["maxiter"]


def three_class_scene(seed=0):
    """A 3-class scene (red, blue box, green stripe at the bottom): image, label, coarse patch scores."""
    image, label = two_region_image(box=(6, 35, 6, 35), seed=seed)
    label[30:, :] = 2
    image[:, 30:, :] = torch.tensor([0.2, 0.8, 0.3], dtype=torch.float64)[:, None, None]
    return image, label, coarse_scores(label, 3).to(torch.float64)


@pytest.mark.parametrize("refiner", ["best", "reference", "pamr"])
def test_label_maps_do_not_change_with_a_shift_or_positive_scale_of_the_scores(refiner):
    image, _, coarse = three_class_scene()
    g = torch.Generator().manual_seed(7)
    scores = coarse + 0.05 * torch.randn(coarse.shape, generator=g, dtype=torch.float64)
    labels = refine_pixels(image, scores, refiner=refiner).argmax(0)
    for transformed in (scores + 0.5, scores - 3.0, 7.5 * scores, 0.01 * scores - 0.2):
        assert torch.equal(refine_pixels(image, transformed, refiner=refiner).argmax(0), labels)


def test_the_clipping_relaxed_refiner_is_not_shift_invariant():
    image, _, coarse = three_class_scene()  # why best no longer clips: all-negative scores carry nothing
    labels = refine_pixels(image, coarse, refiner="relaxed").argmax(0)
    assert not torch.equal(refine_pixels(image, coarse - 1.0, refiner="relaxed").argmax(0), labels)


def test_tiny_noise_on_absent_classes_changes_at_most_a_few_pixels():
    # a textured scene (colour noise 0.1): classes 0 and 1 of 4, so 2 and 3 are absent
    image, label = two_region_image(box=(5, 30, 9, 27), noise=0.1)
    coarse = coarse_scores(label, 4).to(torch.float64)
    g = torch.Generator().manual_seed(8)
    noisy = coarse.clone()
    noisy[2:] += 1e-3 * torch.randn(noisy[2:].shape, generator=g, dtype=torch.float64)

    def changed(refiner):
        clean_labels = refine_pixels(image, coarse, refiner=refiner).argmax(0)
        return int((refine_pixels(image, noisy, refiner=refiner).argmax(0) != clean_labels).sum())

    assert changed("best") <= 3
    assert changed("relaxed") > 3  # the clipping refiner reads the noise as evidence (issue 13)


# --------------------------------------------------------------------------- the relaxed refiner's pieces
@pytest.mark.parametrize("dilation", [1, 2])
def test_stencil_sums_equal_explicit_matrices(dilation):
    g = torch.Generator().manual_seed(2)
    image = torch.rand(3, 7, 9, generator=g, dtype=torch.float64)
    graph = PixelGraph(image, r=5, tau=0.1, dilation=dilation)
    W, B = explicit_weights(graph)
    Z = torch.rand(3, 7, 9, generator=g, dtype=torch.float64)
    flat = Z.reshape(3, -1).T  # [N, C]
    torch.testing.assert_close(graph.weighted_sum(Z), (W @ flat).T.reshape(3, 7, 9))
    torch.testing.assert_close(graph.neighbour_sum(Z), (B @ flat).T.reshape(3, 7, 9))
    torch.testing.assert_close(W, W.T)
    assert torch.all((W > 0) == (B > 0))  # the colour weights live exactly on the stencil


def test_colour_relaxation_equals_explicit_formula():
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 6, 8, generator=g, dtype=torch.float64)
    graph = PixelGraph(image, r=5, tau=0.05)
    W, B = explicit_weights(graph)
    P = class_probabilities(torch.rand(3, 6, 8, generator=g, dtype=torch.float64))
    expected = P.reshape(3, -1).T  # [N, C]
    for _ in range(2):
        expected = expected * (W @ expected) / (B @ expected + SUPPORT_EPS)
        expected = expected / expected.sum(1, keepdim=True)
    out = colour_relaxation(graph, P, steps=2)
    torch.testing.assert_close(out, expected.T.reshape(3, 6, 8))
    torch.testing.assert_close(out.sum(0), torch.ones(6, 8, dtype=torch.float64))


def test_confidence_operator_is_symmetric_and_normalised():
    g = torch.Generator().manual_seed(4)
    image = torch.rand(3, 5, 6, generator=g, dtype=torch.float64)
    graph = PixelGraph(image, r=3, tau=0.1)
    scale = torch.rand(30, 1, generator=g, dtype=torch.float64) + 0.5
    operator = _Rescaled(graph, scale)
    dense = operator.matmul(torch.eye(30, dtype=torch.float64))
    S = graph.to_dense()
    torch.testing.assert_close(dense, scale * S * scale.T)
    torch.testing.assert_close(dense, dense.T)
    sqrt_degree = 1 / graph.inv_sqrt_degree.reshape(-1)
    torch.testing.assert_close(S @ sqrt_degree, sqrt_degree)  # normalised: D^1/2 1 is its eigenvector for 1
    assert torch.linalg.eigvalsh(S).abs().max() <= 1 + 1e-12


def test_confidence_propagation_solves_the_weighted_fidelity_system():
    g = torch.Generator().manual_seed(5)
    image = torch.rand(3, 5, 6, generator=g, dtype=torch.float64)
    graph = PixelGraph(image, r=3, tau=0.1)
    seeds = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    confidence = torch.rand(5, 6, generator=g, dtype=torch.float64)
    alpha = 0.9
    F_out = confidence_propagate(graph, seeds, confidence, alpha, maxiter=200, tol=1e-12)
    # (M - alpha W) G = C D^1/2 Y with M = D (alpha + (1 - alpha) C), and F = D^1/2 G
    W, _ = explicit_weights(graph)
    d = W.sum(1)
    c = confidence.reshape(-1)
    Y = seeds.reshape(2, -1).T
    system = torch.diag(d * (alpha + (1 - alpha) * c)) - alpha * W
    G = torch.linalg.solve(system, c[:, None] * d.sqrt()[:, None] * Y)
    torch.testing.assert_close(F_out, (d.sqrt()[:, None] * G).T.reshape(2, 5, 6), atol=1e-9, rtol=1e-7)
    # full confidence is the reference solve
    ones = torch.ones(5, 6, dtype=torch.float64)
    reference = propagate(graph, Y, alpha=alpha, maxiter=10)
    full = confidence_propagate(graph, seeds, ones, alpha, 10, 1e-6)
    torch.testing.assert_close(full, reference.T.reshape(2, 5, 6))


def test_colour_average_equals_explicit_formula_and_keeps_constants():
    g = torch.Generator().manual_seed(9)
    image = torch.rand(3, 6, 8, generator=g, dtype=torch.float64)
    graph = PixelGraph(image, r=5, tau=0.05)
    W, _ = explicit_weights(graph)
    Z = torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    flat = Z.reshape(3, -1).T  # [N, C]
    expected = (flat + W @ flat) / (1 + W.sum(1, keepdim=True))
    torch.testing.assert_close(colour_average(graph, Z), expected.T.reshape(3, 6, 8))
    torch.testing.assert_close(colour_average(graph, torch.full_like(Z, 2.0)), torch.full_like(Z, 2.0))


def test_tempered_probabilities_by_hand_and_their_invariance():
    scores = torch.tensor([[[1.0, 1.0, 0.6]], [[0.0, 0.0, 0.4]]], dtype=torch.float64)  # [2, 1, 3]
    P = tempered_probabilities(scores, temperature=0.5)  # margins 1, 1, 0.2: median 1, logits (s - max) / 0.5
    top = 1 / (1 + math.exp(-2.0))
    close = 1 / (1 + math.exp(-0.4))
    torch.testing.assert_close(P[0, 0], torch.tensor([top, top, close], dtype=torch.float64))
    torch.testing.assert_close(P.sum(0), torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(tempered_probabilities(3.0 * scores - 2.0, 0.5), P)
    ties = torch.zeros(2, 1, 3, dtype=torch.float64)  # no margin anywhere: uniform, not NaN
    torch.testing.assert_close(tempered_probabilities(ties, 0.5), torch.full_like(ties, 0.5))
    torch.testing.assert_close(tempered_probabilities(scores[:1], 0.5), torch.ones_like(scores[:1]))


def test_margin_confidence_and_class_probabilities():
    scores = torch.tensor([[[0.9, 0.5, 0.0]], [[0.1, 0.5, 0.0]], [[-1.0, 0.0, 0.0]]])  # [3, 1, 3]
    P = class_probabilities(scores)
    torch.testing.assert_close(P[:, 0, 0], torch.tensor([0.9, 0.1, 0.0]))
    torch.testing.assert_close(P[:, 0, 2], torch.zeros(3))  # no evidence stays no evidence
    torch.testing.assert_close(margin_confidence(P)[0], torch.tensor([1.0, 0.0, 0.0]))


# --------------------------------------------------------------------------- errors
def test_bad_inputs_give_clear_errors():
    image, scores = torch.rand(3, 8, 8), torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="differ in H, W"):
        refine_pixels(image, torch.rand(2, 8, 9))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        refine_pixels(torch.rand(4, 8, 8), scores)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        refine_pixels(image, torch.rand(8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        refine_pixels(image, torch.ones(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown refiner 'bset'"):
        refine_pixels(image, scores, refiner="bset")
    with pytest.raises(ValueError, match="no setting"):
        refine_pixels(image, scores, refiner="best", sigma=3)
    with pytest.raises(ValueError, match="relax_steps"):
        refine_pixels(image, scores, refiner="best", relax_steps=-1)
    with pytest.raises(ValueError, match="smooth_steps"):
        refine_pixels(image, scores, refiner="best", smooth_steps=1.5)
    with pytest.raises(ValueError, match="evidence must be one of"):
        refine_pixels(image, scores, refiner="best", evidence="logits")
    with pytest.raises(ValueError, match="temperature"):
        refine_pixels(image, scores, refiner="best", temperature=0)
    with pytest.raises(ValueError, match="needs class probabilities"):
        refine_pixels(image, scores, refiner="reference", relax_steps=2)
    with pytest.raises(ValueError, match="no setting"):
        refine_pixels(image, scores, refiner="pamr", r=13)
    with pytest.raises(ValueError, match="odd"):
        refine_pixels(image, scores, r=4)
    with pytest.raises(ValueError, match="tau"):
        refine_pixels(image, scores, tau=0.0)


# --------------------------------------------------------------------------- the benchmark's coarse scores
def test_patch_average_divides_border_patches_by_their_real_pixels():
    label = torch.tensor([
        [0, 0, 1, 1, 1],
        [0, 255, 1, 0, 1],
        [1, 1, 1, 1, 0],
    ])  # 3 x 5, patches of 2: a 2 x 3 grid; the last row and column of patches are cut by the border
    pooled = patch_average(label, num_classes=2, patch=2)  # [2, 2, 3]
    expected_class0 = torch.tensor([[3 / 4, 1 / 4, 0 / 2], [0 / 2, 0 / 2, 1 / 1]])  # 255 counts for no class
    expected_class1 = torch.tensor([[0 / 4, 3 / 4, 2 / 2], [2 / 2, 2 / 2, 0 / 1]])
    torch.testing.assert_close(pooled, torch.stack([expected_class0, expected_class1]))


def test_coarse_scores_upsample_bilinearly_by_hand():
    label = torch.tensor([[0, 0, 1], [0, 0, 1]])  # patches of 2: left 2x2 all class 0, right 2x1 all class 1
    scores = coarse_scores(label, num_classes=2, patch=2)  # pooled [2, 1, 2] -> [2, 2, 3]
    # align_corners False: output x = 0, 1, 2 reads source x = -1/6 (clamped to 0), 1/2, 7/6 (clamped to 1)
    row0 = torch.tensor([1.0, 0.5, 0.0])
    torch.testing.assert_close(scores[0], row0.expand(2, 3))
    torch.testing.assert_close(scores[1], (1 - row0).expand(2, 3))


@pytest.mark.parametrize("size, resized", [((360, 480), (448, 597)), ((480, 854), (448, 797))])  # CamVid, DAVIS
def test_resize_pair_uses_the_reference_size_and_keeps_labels(size, resized):
    image = np.full((*size, 3), 255, dtype=np.uint8)
    label = np.zeros(size, dtype=np.int64)
    label[:, size[1] // 2 :] = 255  # an ignored right half stays ignored (nearest, no mixing)
    img, lab = resize_pair(image, label)
    assert img.shape == (3, *resized) and lab.shape == resized
    torch.testing.assert_close(img, torch.ones(3, *resized))
    assert set(lab.unique().tolist()) == {0, 255}
