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
    w_ij = exp(-||lab_i - lab_j||_2 / tau), Lab scaled by (100, 128, 128); with `dilation` d > 1 the
    neighbours are every d-th pixel of a (d*(r-1)+1)-wide window (same cost). Only half of the offsets are
    stored (the graph is symmetric), so memory is (r*r - 1) / 2 weights per pixel, never a sparse matrix.

    Layout, chosen for speed on CPU and GPU alike: the weights live in one zero-padded tensor
    `weights [K, H + 2h, W + 2h]` (h = r // 2; entry [k, h + y, h + x] joins pixel (y, x) to
    (y + dy_k, x + dx_k), zero where that partner is outside the image), and `matmul` works channel-first
    on a zero-padded [C, H + 2h, W + 2h] copy of X, so every offset is one multiply-add over long
    contiguous rows with no border cases. On CPU the output is accumulated in bands of rows small enough to
    stay in cache (`band_elements`); on GPU in one band.
    """

    band_elements = 2**19  # CPU accumulator size (floats) per band of rows: 2 MB, stays in cache

    def __init__(self, image: Tensor, r: int = 13, tau: float = 0.01, dilation: int = 1):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W] RGB in [0, 1], got shape {tuple(image.shape)}")
        if not tau > 0:
            raise ValueError(f"the colour bandwidth tau must be positive, got {tau}")
        if dilation < 1:
            raise ValueError(f"the stencil dilation must be a positive integer, got {dilation}")
        self.height, self.width = height, width = image.shape[1:]
        self.offsets = [(dy * dilation, dx * dilation) for dy, dx in stencil_offsets(r)]
        self.pad = h = (r // 2) * dilation
        lab = scaled_lab(image)  # [3, H, W]
        self.weights = image.new_zeros(len(self.offsets), height + 2 * h, width + 2 * h)  # [K, H+2h, W+2h]
        degree = image.new_zeros(height, width)
        for k, (dy, dx) in enumerate(self.offsets):
            if dy >= height or abs(dx) >= width:
                continue  # no pixel pair of the image is this far apart: the weights stay zero
            src, dst = _regions(dy, dx, height, width)
            w = colour_weights(lab[:, src[0], src[1]], lab[:, dst[0], dst[1]], tau)  # [H - dy, W - |dx|]
            self.weights[k, _shift(src[0], h), _shift(src[1], h)] = w
            degree[src] += w
            degree[dst] += w
        degree = torch.where(degree == 0, torch.ones_like(degree), degree)
        self.inv_sqrt_degree = degree.rsqrt()  # [H, W]

    @property
    def shape(self) -> tuple[int, int]:
        n = self.height * self.width
        return (n, n)

    def matmul(self, X: Tensor) -> Tensor:
        """S @ X for X [H*W, C] (pixels in row-major order) -> [H*W, C].

        Fastest when X is a channel-first view (`X = Z.reshape(C, H*W).T`): then no copy is made and the
        result comes back in the same layout (a transposed view of a contiguous [C, H*W] tensor).
        """
        height, width, h = self.height, self.width, self.pad
        channels = X.shape[1]
        Xp = X.new_zeros(channels, height + 2 * h, width + 2 * h)  # [C, H+2h, W+2h], zero outside the image
        Xp[:, h : h + height, h : h + width] = X.T.reshape(channels, height, width) * self.inv_sqrt_degree
        out = X.new_empty(channels, height, width)  # [C, H, W]
        band = height if X.is_cuda else max(1, self.band_elements // (channels * width))
        for y0 in range(0, height, band):
            y1 = min(y0 + band, height)
            acc = X.new_zeros(channels, y1 - y0, width)  # [C, band, W]
            for k, (dy, dx) in enumerate(self.offsets):
                # p joined to p + o with weights[k] at p, and to p - o with weights[k] at p - o
                acc.addcmul_(self.weights[k, h + y0 : h + y1, h : h + width],
                             Xp[:, h + y0 + dy : h + y1 + dy, h + dx : h + dx + width])
                acc.addcmul_(self.weights[k, h + y0 - dy : h + y1 - dy, h - dx : h - dx + width],
                             Xp[:, h + y0 - dy : h + y1 - dy, h - dx : h - dx + width])
            torch.mul(acc, self.inv_sqrt_degree[y0:y1], out=out[:, y0:y1])
        return out.reshape(channels, height * width).T

    def to_sparse(self) -> Tensor:
        """The same operator as an explicit sparse COO matrix (for tests; ~45 M entries at 448x597)."""
        height, width, h = self.height, self.width, self.pad
        device = self.inv_sqrt_degree.device
        index = torch.arange(height * width, device=device).reshape(height, width)
        padded_index = torch.nn.functional.pad(index, (h, h, h, h), value=-1)  # -1 outside the image
        rows, cols, vals = [], [], []
        for k, (dy, dx) in enumerate(self.offsets):
            partner = padded_index[h + dy : h + dy + height, h + dx : h + dx + width]  # [H, W]
            w = self.weights[k, h : h + height, h : h + width]
            inside = partner >= 0
            i, j, v = index[inside], partner[inside], w[inside]
            rows += [i, j]
            cols += [j, i]
            vals += [v, v]
        W = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), self.shape)
        return normalize_adjacency(W.coalesce())

    def to_dense(self) -> Tensor:
        return self.to_sparse().to_dense()


def colour_weights(lab_a: Tensor, lab_b: Tensor, tau: float) -> Tensor:
    """exp(-||lab_a - lab_b||_2 / tau) for two [3, h, w] colour maps -> [h, w], with few temporaries."""
    diff = (lab_a - lab_b).square_()  # [3, h, w]
    dist = diff[0].add_(diff[1]).add_(diff[2]).sqrt_()  # [h, w]
    return dist.div_(-tau).exp_()


def _shift(s: slice, by: int) -> slice:
    return slice(s.start + by, s.stop + by)
