"""Mask-model regions in LPOSS's graphs (issue 19, beyond the releases): the factor is off at beta = 1 and keeps
label mass inside its region below it."""

import pytest
import torch

from lposs.core.graphs import PixelGraph, patch_graph
from lposs.core.propagation import propagate
from lposs.core.regions import patch_region_fractions, region_factor, region_vote
from lposs.core.windows import patch_centers

LAYOUT = [(0, 32, 0, 32), (0, 32, 16, 48)]  # two 32-pixel windows, 4 x 4 patches of 8 pixels each


def two_regions(height: int = 32, width: int = 48, cut: int = 24) -> torch.Tensor:
    regions = torch.zeros(height, width, dtype=torch.long)
    regions[:, cut:] = 1  # left region 0, right region 1
    return regions


def test_patch_fractions_are_each_patchs_share_of_each_region():
    regions = two_regions(cut=20)  # the cut runs through patches
    fractions = patch_region_fractions(regions, LAYOUT, grid=4, crop=32)  # [2 * 16, 2]
    assert fractions.shape == (32, 2) and torch.allclose(fractions.sum(dim=1), torch.ones(32))
    first_row = fractions[:4]  # window 0, patches at x 0-8, 8-16, 16-24, 24-32
    assert torch.equal(first_row, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    assert torch.equal(fractions[16:20, 1], torch.tensor([0.5, 1.0, 1.0, 1.0]))  # window 1 starts at x 16
    # an image shorter than the crop: its one window is padded, as its pixels are, so N still counts g x g
    padded = patch_region_fractions(regions[:20], [(0, 20, 0, 32)], grid=4, crop=32)  # rows 20-32 past the image
    assert padded.shape == (16, 2) and torch.equal(padded[12:].sum(dim=1), torch.zeros(4))
    assert torch.allclose(padded[8:12].sum(dim=1), torch.full((4,), 0.5))  # patch rows 16-24: half inside


def test_region_factor_is_one_inside_a_region_and_beta_across():
    fractions = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    factor = region_factor(fractions, torch.tensor([[1, 2, 3]] * 4), beta=0.2)
    assert torch.allclose(factor[0], torch.tensor([1.0, 0.2, 0.6]))
    with pytest.raises(ValueError, match="beta must lie in"):
        region_factor(fractions, torch.tensor([[1]] * 4), beta=0.0)


def _patch_inputs(seed: int = 0):
    torch.manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(32, 8) + 2.0, dim=-1)  # every pair similar
    return feats, patch_centers(LAYOUT, grid=4, patch=8)


def test_patch_graph_with_beta_one_is_todays_graph_exactly():
    feats, centers = _patch_inputs()
    fractions = patch_region_fractions(two_regions(), LAYOUT, grid=4, crop=32)
    plain = patch_graph(feats, centers, k=10)
    assert torch.equal(patch_graph(feats, centers, k=10, regions=fractions, region_beta=1.0), plain)
    one_region = patch_region_fractions(torch.zeros(32, 48, dtype=torch.long), LAYOUT, grid=4, crop=32)
    assert torch.allclose(patch_graph(feats, centers, k=10, regions=one_region, region_beta=0.3), plain, atol=1e-6)
    with pytest.raises(ValueError, match="needs the patches' region fractions"):
        patch_graph(feats, centers, k=10, region_beta=0.5)


def test_label_mass_stays_inside_its_region_on_the_patch_graph():
    feats, centers = _patch_inputs()
    fractions = patch_region_fractions(two_regions(), LAYOUT, grid=4, crop=32)
    left = fractions[:, 0] == 1  # patches wholly in region 0
    seeds = torch.zeros(32, 1)
    seeds[0] = 1.0  # one labelled patch at the top left
    leaked = {}
    for beta in (1.0, 0.3, 0.01):
        S = patch_graph(feats, centers, k=32, sigma=0.0, regions=fractions, region_beta=beta)
        mass = propagate(S, seeds, alpha=0.95, maxiter=50)[:, 0].clamp_min(0)
        leaked[beta] = float(mass[~left].sum() / mass.sum())
    # without regions about half the mass crosses (16 patches a side, all alike); the factor holds it back
    assert leaked[1.0] > 0.4 and leaked[0.01] < leaked[0.3] < leaked[1.0] and leaked[0.01] < 0.4 * leaked[1.0], leaked


def test_pixel_graph_damps_only_edges_across_a_region_boundary():
    torch.manual_seed(1)
    image = torch.rand(3, 12, 16) * 0.1 + 0.45  # near-uniform colour: every edge strong
    regions = two_regions(12, 16, cut=9)
    plain = PixelGraph(image, r=3, tau=0.5, backend="torch")
    damped = PixelGraph(image, r=3, tau=0.5, backend="torch", regions=regions, region_beta=0.1)
    h = plain.pad
    for k, (dy, dx) in enumerate(plain.offsets):
        for y in range(12 - dy):
            for x in range(max(0, -dx), 16 - max(0, dx)):
                across = regions[y, x] != regions[y + dy, x + dx]
                expected = plain.weights[k, h + y, h + x] * (0.1 if across else 1.0)
                assert torch.isclose(damped.weights[k, h + y, h + x], expected), (k, y, x)
    dense = damped.to_dense()
    assert torch.allclose(dense, dense.T, atol=1e-6)
    seeds = torch.zeros(12 * 16, 1)
    seeds[0] = 1.0
    strong = PixelGraph(image, r=3, tau=0.5, backend="torch", regions=regions, region_beta=0.01)
    right = {}
    for name, graph in (("plain", plain), ("0.1", damped), ("0.01", strong)):
        spread = propagate(graph, seeds, alpha=0.99, maxiter=200)[:, 0].reshape(12, 16)
        right[name] = float(spread[:, 9:].sum() / spread.sum())  # the share that crossed into region 1
    assert right["0.01"] < 0.2 * right["plain"] and right["0.01"] < right["0.1"] < right["plain"], right
    zeros = PixelGraph(image, r=3, tau=0.5, backend="torch", regions=torch.zeros(12, 16, dtype=torch.long),
                       region_beta=0.1)
    assert torch.allclose(zeros.to_dense(), plain.to_dense(), atol=1e-6)  # one region: nothing crosses
    with pytest.raises(ValueError, match="integer map"):
        PixelGraph(image, r=3, backend="torch", regions=regions.float(), region_beta=0.5)


def test_region_vote_gives_each_region_its_mean_and_leaves_uncovered_pixels():
    torch.manual_seed(2)
    scores = torch.rand(3, 6, 8)
    regions = torch.zeros(6, 8, dtype=torch.long)
    regions[:3, :4], regions[3:, 4:] = 1, 2
    voted = region_vote(scores, regions)
    for region in (1, 2):
        inside = regions == region
        assert torch.allclose(voted[:, inside], scores[:, inside].mean(dim=1, keepdim=True).expand(-1, 12))
    assert torch.equal(voted[:, regions == 0], scores[:, regions == 0])


def test_the_regions_refiner_and_the_region_settings_run_through_propagate_features():
    from lposs.image_features import ImageFeatures
    from lposs.segmentation import propagate_features

    torch.manual_seed(3)
    regions = two_regions() + 1  # [32, 48] at the resized size: regions 1 and 2, no uncovered pixel
    features = ImageFeatures(seeds=torch.randn(32, 3), vm_feats=torch.nn.functional.normalize(torch.randn(32, 8), dim=-1),
                             owner=torch.arange(3), layout=LAYOUT, resized_hw=(32, 48), original_hw=(32, 48), grid=4,
                             crop=32, image_resized=torch.rand(3, 32, 48), regions=regions)
    voted = propagate_features(features, "lposs+", refiner="regions", k=8)
    left = voted[:, :, :24].reshape(3, -1)
    assert torch.allclose(left, left[:, :1].expand_as(left), atol=1e-5)  # one region, one score per class
    plain = propagate_features(features, "lposs+", k=8)
    assert torch.equal(propagate_features(features, "lposs+", k=8, region_beta=1.0, boundary_beta=1.0), plain)
    assert not torch.allclose(propagate_features(features, "lposs+", k=8, region_beta=0.1, boundary_beta=0.1), plain)
    features.regions = None
    with pytest.raises(ValueError, match="backbone.masks"):
        propagate_features(features, "lposs", k=8, region_beta=0.5)
