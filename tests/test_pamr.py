"""PAMR (lposs/core/pamr.py) against a direct per-pixel loop of the released algorithm, and its properties."""

import math

import numpy as np
import pytest
import torch

from lposs.core.pamr import clip_normalise, pamr, pamr_affinity
from lposs.core.refine import REFINERS, refine_pixels


def pamr_by_loops(image: np.ndarray, scores: np.ndarray, iterations: int, dilations) -> np.ndarray:
    """PAMR pixel by pixel, as the released code computes it: replicate borders (clamped coordinates),
    unbiased std over the 3x3 windows of all dilations (centre included once per dilation), affinity =
    mean over channels of -|x_i - x_j| / (1e-8 + 0.1 std_i), softmax over the 8 * |dilations| neighbours."""
    _, height, width = image.shape
    units = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]

    def at(y, x):  # the replicate-padded lookup
        return min(max(y, 0), height - 1), min(max(x, 0), width - 1)

    neighbours, weights = {}, {}
    for y in range(height):
        for x in range(width):
            window = [at(y + dy * d, x + dx * d) for d in dilations for dy, dx in [(0, 0)] + units]
            spread = [np.std([image[k][p] for p in window], ddof=1) for k in range(3)]
            nbrs = [at(y + dy * d, x + dx * d) for d in dilations for dy, dx in units]
            logits = [np.mean([-abs(image[k, y, x] - image[k][q]) / (1e-8 + 0.1 * spread[k]) for k in range(3)])
                      for q in nbrs]
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            neighbours[y, x], weights[y, x] = nbrs, [e / sum(exps) for e in exps]
    for _ in range(iterations):
        new = np.zeros_like(scores)
        for (y, x), nbrs in neighbours.items():
            for q, w in zip(nbrs, weights[y, x]):
                new[:, y, x] += w * scores[:, q[0], q[1]]
        scores = new
    return scores


def random_inputs(seed=0, classes=3, height=20, width=23):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=g, dtype=torch.float64)
    scores = torch.randn(classes, height, width, generator=g, dtype=torch.float64)
    return image, scores


@pytest.mark.parametrize("dilations", [(8, 16), (1, 3)])
def test_pamr_equals_a_per_pixel_loop(dilations):
    image, scores = random_inputs()
    expected = pamr_by_loops(clip_normalise(image).numpy(), scores.numpy(), iterations=10, dilations=dilations)
    out = pamr(image, scores, iterations=10, dilations=dilations)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_pamr_is_the_named_refiner_with_naclips_settings():
    assert REFINERS["pamr"]["iterations"] == 10 and tuple(REFINERS["pamr"]["dilations"]) == (8, 16)
    image, scores = random_inputs(seed=1)
    torch.testing.assert_close(refine_pixels(image, scores, refiner="pamr"), pamr(image, scores, 10, (8, 16)))
    one_step = refine_pixels(image, scores, refiner="pamr", iterations=1, dilations=(1,))
    torch.testing.assert_close(one_step, pamr(image, scores, 1, (1,)))


def test_affinities_are_a_softmax_and_uniform_on_a_flat_image():
    image, _ = random_inputs(seed=2)
    affinity = pamr_affinity(clip_normalise(image))
    assert affinity.shape == (16, 20, 23) and (affinity > 0).all()
    torch.testing.assert_close(affinity.sum(0), torch.ones(20, 23, dtype=torch.float64))
    flat = pamr_affinity(torch.full((3, 20, 23), 0.3, dtype=torch.float64))  # no colour differences anywhere
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / 16))


def test_pamr_is_convex_and_commutes_with_affine_maps():
    image, scores = random_inputs(seed=3)
    out = pamr(image, scores)
    low, high = scores.amin(dim=(1, 2)), scores.amax(dim=(1, 2))
    assert (out >= low[:, None, None] - 1e-12).all() and (out <= high[:, None, None] + 1e-12).all()
    torch.testing.assert_close(pamr(image, 2.5 * scores - 1.0), 2.5 * out - 1.0)
    constant = torch.full_like(scores, 0.7)
    torch.testing.assert_close(pamr(image, constant), constant)
    torch.testing.assert_close(pamr(image, scores, iterations=0), scores)


def test_pamr_pulls_a_blurred_edge_to_the_colour_edge():
    image = torch.zeros(3, 24, 24, dtype=torch.float64)
    image[:, :, 12:] = 1.0  # black left half, white right half
    ramp = torch.linspace(-1, 1, 24, dtype=torch.float64).expand(24, 24)  # a soft edge centred on x = 12
    scores = torch.stack([-(ramp - 0.3), ramp - 0.3])  # class 1 wins right of x = 15: 3 columns too far
    label = torch.zeros(24, 24, dtype=torch.long)
    label[:, 12:] = 1
    before = int((scores.argmax(0) != label).sum())
    after = int((pamr(image, scores, dilations=(1, 2)).argmax(0) != label).sum())
    assert before == 24 * 3 and after == 0


def test_bad_pamr_settings_give_clear_errors():
    image, scores = random_inputs()
    with pytest.raises(ValueError, match="dilations"):
        pamr(image, scores, dilations=(0, 8))
    with pytest.raises(ValueError, match="iterations"):
        pamr(image, scores, iterations=-1)
