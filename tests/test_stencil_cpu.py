"""The fused CPU stencil kernels equal the plain-torch pixel graph."""

import numpy as np
import torch

from lposs.color import scaled_lab
from lposs.graphs import PixelGraph, stencil_offsets
from lposs.stencil_cpu import stencil_matmul, stencil_weights


def full_offsets(r):
    half = stencil_offsets(r)
    return np.array(half + [(-dy, -dx) for dy, dx in half], dtype=np.int64)


def test_fused_kernels_equal_the_torch_operator():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 17, 23, generator=g, dtype=torch.float64)
    offsets = full_offsets(7)
    w = stencil_weights(scaled_lab(image).numpy(), offsets, 0.05)  # [H, W, K]
    degree = w.sum(-1)
    scale = 1 / np.sqrt(degree)[..., None]
    X = torch.randn(17, 23, 4, generator=g, dtype=torch.float64).numpy()
    ours = stencil_matmul(w, offsets, X * scale) * scale
    graph = PixelGraph(image, r=7, tau=0.05)
    expected = graph.matmul(torch.from_numpy(X).reshape(-1, 4)).reshape(17, 23, 4).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12)
    assert np.all(w[0, :, offsets[:, 0] < 0] == 0)  # no neighbour above the first row
