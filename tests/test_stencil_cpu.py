"""The fused CPU stencil kernel equals the plain-torch pixel stencil and the explicit matrix."""

import pytest
import torch

from lposs.graphs import PixelGraph


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r, dilation", [(3, 1), (7, 1), (5, 2)])
def test_fused_kernel_equals_torch_stencil(dtype, r, dilation):
    g = torch.Generator().manual_seed(r)
    image = torch.rand(3, 17, 23, generator=g, dtype=dtype)
    graph = PixelGraph(image, r=r, tau=0.05, dilation=dilation)
    Z = torch.randn(4, 17, 23, generator=g, dtype=dtype)
    fused = graph.weighted_sum(Z)
    torch_ops = graph.weighted_sum_torch(Z)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fused, torch_ops, rtol=tol, atol=tol)
    X = Z.reshape(4, -1).T
    torch.testing.assert_close(graph.matmul(X), graph.to_sparse() @ X, rtol=tol, atol=tol)


def test_single_channel_and_tiny_images():
    image = torch.rand(3, 2, 3, dtype=torch.float64)
    graph = PixelGraph(image, r=13)
    Z = torch.randn(1, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(graph.weighted_sum(Z), graph.weighted_sum_torch(Z))
