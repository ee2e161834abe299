"""The two graphs of LPOSS: patches (kNN appearance x spatial) and pixels (13x13 Lab-colour stencil).

Both are returned normalised, S = D^-1/2 W D^-1/2, ready for `propagation.propagate`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .color import scaled_lab
from .propagation import normalize_adjacency


def patch_graph(
    feats: Tensor,
    centers: Tensor,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    p: float = 1.0,
    form: str = "auto",
) -> Tensor:
    """Normalised patch graph: w_ij = max(cos_ij, 0)^gamma * exp(-sigma * d_ij^p) on the kNN edges.

    feats [N, D] L2-normalised vision features; centers [N, 2] patch centres in pixels.
    kNN by inner product with the node itself included (k capped at N); W <- W + W^T; zero diagonal.
    form: "dense" [N, N] tensor, "sparse" COO tensor, or "auto" (dense up to 20k nodes).
    """
    n = feats.shape[0]
    if centers.shape != (n, 2):
        raise ValueError(f"centers must be [N, 2] = [{n}, 2], got {tuple(centers.shape)}")
    if form == "auto":
        form = "dense" if n <= 20_000 else "sparse"
    k = min(k, n)
    sims, nbrs = (feats @ feats.T).topk(k, dim=1)  # [N, k]
    dist = (centers[:, None, :] - centers[nbrs]).norm(dim=-1)  # [N, k]
    weights = sims.clamp(min=0).pow(gamma) * torch.exp(-sigma * dist.pow(p))  # [N, k]
    if form == "dense":
        W = torch.zeros(n, n, dtype=feats.dtype, device=feats.device)
        W.scatter_(1, nbrs, weights)
        W = W + W.T
        W.fill_diagonal_(0)
        return normalize_adjacency(W)
    if form != "sparse":
        raise ValueError(f"form must be 'dense', 'sparse' or 'auto', got {form!r}")
    rows = torch.arange(n, device=feats.device).repeat_interleave(k)
    cols = nbrs.reshape(-1)
    keep = rows != cols  # the diagonal is set to zero anyway
    rows, cols, vals = rows[keep], cols[keep], weights.reshape(-1)[keep]
    indices = torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])])
    W = torch.sparse_coo_tensor(indices, torch.cat([vals, vals]), (n, n)).coalesce()
    return normalize_adjacency(W)


def stencil_offsets(r: int) -> list[tuple[int, int]]:
    """Half of the r x r neighbourhood offsets: (dy, dx) with dy > 0, or dy == 0 and dx > 0.

    The other half are their negatives; the weight of (p, p + o) is the weight of (p + o, p).
    """
    if r < 3 or r % 2 == 0:
        raise ValueError(f"the pixel neighbourhood r must be an odd number >= 3, got {r}")
    h = r // 2
    return [(dy, dx) for dy in range(0, h + 1) for dx in range(-h, h + 1) if dy > 0 or dx > 0]


def _regions(dy: int, dx: int, height: int, width: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of the pixels p whose partner p + (dy, dx) lies inside the image, and of those partners."""
    ys, xs = slice(0, height - dy), slice(max(0, -dx), width - max(0, dx))
    yt, xt = slice(dy, height), slice(max(0, dx), width - max(0, -dx))
    return (ys, xs), (yt, xt)


class PixelGraph:
    """The LPOSS+ pixel graph as a matrix-free operator: a fixed r x r stencil with per-pixel weights.

    Every pixel is joined to the pixels of its r x r neighbourhood (clipped at the border) with
    w_ij = exp(-||lab_i - lab_j||_2 / tau), Lab scaled by (100, 128, 128). Only half of the offsets are
    stored (the graph is symmetric), so memory is (r*r - 1) / 2 weights per pixel, never a sparse matrix.
    """

    def __init__(self, image: Tensor, r: int = 13, tau: float = 0.01):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W] RGB in [0, 1], got shape {tuple(image.shape)}")
        self.height, self.width = image.shape[1:]
        self.offsets = stencil_offsets(r)
        lab = scaled_lab(image)  # [3, H, W]
        self.weights: list[Tensor] = []  # per offset: [H - dy, W - |dx|]
        degree = torch.zeros(self.height, self.width, dtype=image.dtype, device=image.device)
        for dy, dx in self.offsets:
            src, dst = _regions(dy, dx, self.height, self.width)
            w = torch.exp(-(lab[:, src[0], src[1]] - lab[:, dst[0], dst[1]]).norm(dim=0) / tau)
            self.weights.append(w)
            degree[src] += w
            degree[dst] += w
        degree = torch.where(degree == 0, torch.ones_like(degree), degree)
        self.inv_sqrt_degree = degree.rsqrt()  # [H, W]

    @property
    def shape(self) -> tuple[int, int]:
        n = self.height * self.width
        return (n, n)

    def matmul(self, X: Tensor) -> Tensor:
        """S @ X for X [H*W, C] (pixels in row-major order) -> [H*W, C]."""
        scale = self.inv_sqrt_degree[..., None]  # [H, W, 1]
        Xs = X.reshape(self.height, self.width, -1) * scale  # [H, W, C]
        out = torch.zeros_like(Xs)
        for (dy, dx), w in zip(self.offsets, self.weights):
            src, dst = _regions(dy, dx, self.height, self.width)
            w = w[..., None]
            out[src].addcmul_(w, Xs[dst])
            out[dst].addcmul_(w, Xs[src])
        return (out * scale).reshape(X.shape)

    def to_sparse(self) -> Tensor:
        """The same operator as an explicit sparse COO matrix (for tests; ~45 M entries at 448x597)."""
        index = torch.arange(self.height * self.width, device=self.inv_sqrt_degree.device)
        index = index.reshape(self.height, self.width)
        rows, cols, vals = [], [], []
        for (dy, dx), w in zip(self.offsets, self.weights):
            src, dst = _regions(dy, dx, self.height, self.width)
            i, j = index[src].reshape(-1), index[dst].reshape(-1)
            rows += [i, j]
            cols += [j, i]
            vals += [w.reshape(-1), w.reshape(-1)]
        W = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), self.shape)
        return normalize_adjacency(W.coalesce())

    def to_dense(self) -> Tensor:
        return self.to_sparse().to_dense()
