"""Patch and pixel graphs: symmetric, zero diagonal, normalised, equal to a direct computation."""

import pytest
import torch
import torch.nn.functional as F

from lposs.core.color import rgb_to_lab
from lposs.core.graphs import PixelGraph, patch_graph, stencil_offsets
from lposs.core.propagation import propagate


def direct_patch_graph(feats, centers, k, gamma, sigma, p):
    """LPOSS's patch graph, written out with loops over nodes."""
    n = feats.shape[0]
    W = torch.zeros(n, n, dtype=feats.dtype)
    sims = feats @ feats.T
    for i in range(n):
        for j in sims[i].topk(min(k, n)).indices.tolist():
            d = (centers[i] - centers[j]).norm()
            W[i, j] = max(float(sims[i, j]), 0.0) ** gamma * torch.exp(-sigma * d**p)
    W = W + W.T
    W.fill_diagonal_(0)
    deg = W.sum(1)
    deg[deg == 0] = 1
    return W / deg.sqrt()[:, None] / deg.sqrt()[None, :]


@pytest.fixture
def patches():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    centers = torch.rand(40, 2, generator=g, dtype=torch.float64) * 200
    return feats, centers


@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_patch_graph_equals_direct_computation(patches, form):
    feats, centers = patches
    S = patch_graph(feats, centers, k=7, gamma=3.0, sigma=0.01, p=1.0, form=form)
    S = S.to_dense()
    expected = direct_patch_graph(feats, centers, 7, 3.0, 0.01, 1.0)
    torch.testing.assert_close(S, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(S, S.T)
    assert torch.all(S.diagonal() == 0)
    assert torch.all(S >= 0)


def test_patch_graph_k_larger_than_nodes_and_bad_centers(patches):
    feats, centers = patches
    S = patch_graph(feats, centers, k=400)  # k capped at N = 40
    torch.testing.assert_close(S, direct_patch_graph(feats, centers, 40, 3.0, 0.01, 1.0), atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="centers"):
        patch_graph(feats, centers[:5])


def test_spectral_radius_of_normalised_graph_is_at_most_one(patches):
    S = patch_graph(*patches, k=10)
    eig = torch.linalg.eigvalsh(S)
    assert eig.max() <= 1 + 1e-9 and eig.min() >= -1 - 1e-9


def direct_pixel_graph(image, r, tau):
    """The pixel graph as a dense matrix, built pixel pair by pixel pair from Lab colours."""
    _, h, w = image.shape
    lab = rgb_to_lab(image) / torch.tensor([100.0, 128.0, 128.0], dtype=image.dtype)[:, None, None]
    n = h * w
    W = torch.zeros(n, n, dtype=image.dtype)
    half = r // 2
    for y in range(h):
        for x in range(w):
            for dy in range(-half, half + 1):
                for dx in range(-half, half + 1):
                    yy, xx = y + dy, x + dx
                    if (dy, dx) != (0, 0) and 0 <= yy < h and 0 <= xx < w:
                        W[y * w + x, yy * w + xx] = torch.exp(-(lab[:, y, x] - lab[:, yy, xx]).norm() / tau)
    deg = W.sum(1)
    return W / deg.sqrt()[:, None] / deg.sqrt()[None, :]


@pytest.mark.parametrize("r", [3, 5])
def test_matrix_free_pixel_graph_equals_explicit_matrix(r):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 6, 7, generator=g, dtype=torch.float64)
    graph = PixelGraph(image, r=r, tau=0.1)
    expected = direct_pixel_graph(image, r, 0.1)
    torch.testing.assert_close(graph.to_dense(), expected, atol=1e-12, rtol=1e-10)
    X = torch.randn(42, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(graph.matmul(X), expected @ X, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(graph.to_sparse() @ X, expected @ X, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(graph.residual(X, 0.9), X - 0.9 * expected @ X, atol=1e-12, rtol=1e-10)
    s = torch.rand(42, 1, generator=g, dtype=torch.float64)  # a per-pixel scale: s * S (s * X)
    torch.testing.assert_close(graph.with_node_scale(s).matmul(X), s * (expected @ (s * X)), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(graph.matmul(X), expected @ X, atol=1e-12, rtol=1e-10)  # the graph is unchanged


def test_pixel_graph_propagation_matrix_free_equals_sparse():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(3, 20, 24, generator=g, dtype=torch.float64)
    graph = PixelGraph(image, r=13, tau=0.01)
    Y = torch.randn(20 * 24, 3, generator=g, dtype=torch.float64)
    ours = propagate(graph, Y)
    sparse = propagate(graph.to_sparse(), Y, method="cg_reference")
    torch.testing.assert_close(ours, sparse, atol=1e-10, rtol=1e-8)


def test_stencil_offsets_cover_each_neighbour_pair_once():
    half = stencil_offsets(13)
    assert len(half) == 84
    full = set(half) | {(-dy, -dx) for dy, dx in half}
    assert len(full) == 168 and (0, 0) not in full
    with pytest.raises(ValueError, match="odd"):
        stencil_offsets(4)


def test_lab_matches_kornia():
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 16, 16, generator=g)
    image[0, :, 0, 0] = 0  # black and white corners
    image[0, :, 0, 1] = 1
    ours = rgb_to_lab(image)
    theirs = kornia.color.rgb_to_lab(image)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rgb_to_lab(torch.ones(3, 1, 1)).flatten(), torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)
