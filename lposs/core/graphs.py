"""The two graphs of LPOSS: patches (kNN appearance x spatial) and pixels (13x13 Lab-colour stencil).

Both are returned normalised, S = D^-1/2 W D^-1/2, ready for `propagation.propagate`.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import Tensor

from ..kernels import cg_triton, stencil_triton
from .color import scaled_lab
from .defaults import GAMMA, PIXEL_R, PIXEL_TAU, SIGMA, K, P
from .propagation import TorchSteps, normalize_adjacency
from .regions import check_regions, region_factor

STENCIL_BACKENDS = ("auto", "torch", "triton")


def patch_graph(
    feats: Tensor,
    centers: Tensor,
    k: int = K,
    gamma: float = GAMMA,
    sigma: float = SIGMA,
    p: float = P,
    form: str = "auto",
    regions: Tensor | None = None,
    region_beta: float = 1.0,
) -> Tensor:
    """Normalised patch graph: w_ij = max(cos_ij, 0)^gamma * exp(-sigma * d_ij^p) on the kNN edges.

    feats [N, D] L2-normalised vision features; centers [N, 2] patch centres in pixels.
    kNN by inner product with the node itself included (k capped at N); W <- W + W^T; zero diagonal.
    form: "dense" [N, N] tensor, "sparse" COO tensor, or "auto" (dense up to 20k nodes).
    regions: [N, R] each patch's share of each mask region (`lposs.core.regions.patch_region_fractions`);
    with region_beta < 1 the weights get a third factor beta + (1 - beta) <f_i, f_j> (`regions.region_factor`);
    region_beta = 1 (the default) leaves the graph as it is.
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
    if region_beta != 1.0:
        if regions is None or regions.shape[0] != n:
            raise ValueError(f"region_beta={region_beta} needs the patches' region fractions [N={n}, R], got "
                             f"{None if regions is None else tuple(regions.shape)}")
        weights = weights * region_factor(regions.to(weights), nbrs, region_beta)  # [N, k]
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
    W = torch.sparse_coo_tensor(indices, torch.cat([vals, vals]), (n, n), check_invariants=False).coalesce()
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
    `weights [K, H + 2h, W + 2h]` (h = dilation * (r // 2); entry [k, h + y, h + x] joins pixel (y, x) to
    (y + dy_k, x + dx_k), zero where that partner is outside the image), and the torch stencil works
    channel-first on a zero-padded [C, H + 2h, W + 2h] copy of its input, so every offset is one
    multiply-add over long contiguous rows with no border cases. On CPU the output is accumulated in bands
    of rows small enough to stay in cache (`band_elements`).

    backend: "torch" (the stencil above, the CPU path and the fallback), "triton" (the weights and every
    product are one kernel each of lposs/kernels/stencil_triton.py, and CG runs on lposs/kernels/cg_triton.py), or "auto"
    (triton for an image on CUDA when triton imports, torch otherwise); None reads the environment
    variable LPOSS_STENCIL (default "auto"), which reaches the graphs callers build (lposs/core/refine.py).
    The results agree to rounding.

    `matmul(X)` is the normalised S @ X, `residual(X, alpha)` = (I - alpha S) X and `cg_steps(alpha)` the
    fused CG steps that `propagate` uses; `with_node_scale(s)` the operator s * S(s * X) on the same weights;
    `weighted_sum(Z)` the unnormalised W Z and `neighbour_sum(Z)` the same stencil with unit weights, both
    channel-first [C, H, W] (the colour relaxation of lposs/core/refine.py uses them).
    """

    band_elements = 2**19  # CPU accumulator size (floats) per band of rows: 2 MB, stays in cache

    def __init__(self, image: Tensor, r: int = PIXEL_R, tau: float = PIXEL_TAU, dilation: int = 1,
                 backend: str | None = None, regions: Tensor | None = None, region_beta: float = 1.0):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W] RGB in [0, 1], got shape {tuple(image.shape)}")
        if not tau > 0:
            raise ValueError(f"the colour bandwidth tau must be positive, got {tau}")
        if dilation < 1:
            raise ValueError(f"the stencil dilation must be a positive integer, got {dilation}")
        self.fused = use_fused_stencil(backend, image.device)
        self.height, self.width = height, width = image.shape[1:]
        self.dilation = dilation
        self.offsets = [(dy * dilation, dx * dilation) for dy, dx in stencil_offsets(r)]
        self.pad = h = (r // 2) * dilation
        lab = scaled_lab(image)  # [3, H, W]
        if self.fused:
            table = torch.tensor(self.offsets, dtype=torch.int32)  # [K, 2]
            self.offset_table = table.to(image.device, non_blocking=True)  # no stream sync (blocking copies wait)
            self.weights = stencil_triton.colour_weights(lab, self.offset_table, h, tau)  # [K, H+2h, W+2h]
            degree = self.weighted_sum(image.new_ones(1, height, width))[0]  # [H, W]
        else:
            self.weights, degree = self._banded_weights(lab, tau)
        if region_beta != 1.0:  # edges across a mask-region boundary damped (lposs.core.regions)
            self._damp_across_regions(regions, region_beta)
            degree = self.weighted_sum(image.new_ones(1, height, width))[0]  # [H, W]
        degree = torch.where(degree == 0, torch.ones_like(degree), degree)
        self.inv_sqrt_degree = degree.rsqrt()  # [H, W]

    def _banded_weights(self, lab: Tensor, tau: float) -> tuple[Tensor, Tensor]:
        """(weights [K, H+2h, W+2h], degree [H, W]) one offset at a time (small temporaries: the CPU path)."""
        height, width, h = self.height, self.width, self.pad
        weights = lab.new_zeros(len(self.offsets), height + 2 * h, width + 2 * h)  # [K, H+2h, W+2h]
        degree = lab.new_zeros(height, width)
        for k, (dy, dx) in enumerate(self.offsets):
            if dy >= height or abs(dx) >= width:
                continue  # no pixel pair of the image is this far apart: the weights stay zero
            src, dst = _regions(dy, dx, height, width)
            w = colour_weights(lab[:, src[0], src[1]], lab[:, dst[0], dst[1]], tau)  # [H - dy, W - |dx|]
            weights[k, _shift(src[0], h), _shift(src[1], h)] = w
            degree[src] += w
            degree[dst] += w
        return weights, degree

    def _damp_across_regions(self, regions: Tensor | None, beta: float) -> None:
        """weights of pairs (p, p + o) whose pixels lie in different regions [H, W] times beta, in (0, 1)."""
        if not 0 < beta < 1:
            raise ValueError(f"the pixel graph's region_beta must lie in (0, 1], got {beta}")
        if regions is None:
            raise ValueError(f"region_beta={beta} needs the region map [{self.height}, {self.width}]")
        check_regions(regions, self.height, self.width)
        regions, h = regions.to(self.weights.device), self.pad
        for k, (dy, dx) in enumerate(self.offsets):
            if dy >= self.height or abs(dx) >= self.width:
                continue
            src, dst = _regions(dy, dx, self.height, self.width)
            damp = torch.where(regions[src] == regions[dst], 1.0, beta).to(self.weights.dtype)
            self.weights[k, _shift(src[0], h), _shift(src[1], h)] *= damp

    @property
    def shape(self) -> tuple[int, int]:
        n = self.height * self.width
        return (n, n)

    def matmul(self, X: Tensor) -> Tensor:
        """S @ X = D^-1/2 W D^-1/2 X for X [H*W, C] (pixels in row-major order) -> [H*W, C].

        Fastest when X is a channel-first view (`X = Z.reshape(C, H*W).T`): then no copy is made and the
        result comes back in the same layout (a transposed view of a contiguous [C, H*W] tensor).
        """
        channels = X.shape[1]
        if self.fused:  # one kernel: the D^-1/2 scalings are applied inside it
            Z = X.T.reshape(channels, self.height, self.width)  # [C, H, W], a view when X is channel-first
            out = stencil_triton.stencil_product(Z, self.weights, self.offset_table, self.pad,
                                                 scale=self.inv_sqrt_degree)
            return out.reshape(channels, self.height * self.width).T
        Z = X.T.reshape(channels, self.height, self.width) * self.inv_sqrt_degree  # [C, H, W]
        out = self.weighted_sum(Z).mul_(self.inv_sqrt_degree)  # [C, H, W]
        return out.reshape(channels, self.height * self.width).T

    def residual(self, X: Tensor, alpha: float) -> Tensor:
        """(I - alpha S) X for X [H*W, C], the operator label propagation solves with; on CUDA one kernel."""
        if self.fused:
            channels = X.shape[1]
            Z = X.T.reshape(channels, self.height, self.width)  # [C, H, W]
            out = stencil_triton.stencil_product(Z, self.weights, self.offset_table, self.pad,
                                                 scale=self.inv_sqrt_degree, residual_alpha=alpha)
            return out.reshape(channels, self.height * self.width).T
        return torch.add(X, self.matmul(X), alpha=-alpha)

    def residual_and_dot(self, X: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        """((I - alpha S) X, column dots <X, (I - alpha S) X>) for X [H*W, C]; on CUDA one kernel."""
        if not self.fused:
            Q = self.residual(X, alpha)
            return Q, (X * Q).sum(0)
        channels = X.shape[1]
        Z = X.T.reshape(channels, self.height, self.width)  # [C, H, W]
        out, dots = stencil_triton.residual_and_dot(Z, self.weights, self.offset_table, self.pad,
                                                    self.inv_sqrt_degree, alpha)
        return out.reshape(channels, self.height * self.width).T, dots

    def cg_steps(self, alpha: float) -> Any:
        """The fused CG steps (`FusedPixelSteps`) on CUDA; None (torch calls) otherwise."""
        return FusedPixelSteps(self, alpha) if self.fused else None

    def with_node_scale(self, scale: Tensor) -> "PixelGraph":
        """The operator X -> scale * S (scale * X) for a per-pixel scale [H*W, 1] or [H, W]: this graph with
        D^-1/2 multiplied by scale (same weights, no copy), so it stays one stencil product."""
        scaled = copy.copy(self)
        scaled.inv_sqrt_degree = self.inv_sqrt_degree * scale.reshape(self.height, self.width)
        return scaled

    def weighted_sum(self, Z: Tensor) -> Tensor:
        """W Z, the unnormalised stencil: sum over neighbours q of w_pq * Z[:, q], for Z [C, H, W] -> [C, H, W]."""
        if self.fused:
            return stencil_triton.stencil_product(Z, self.weights, self.offset_table, self.pad)
        height, width, h = self.height, self.width, self.pad
        channels = Z.shape[0]
        Zp = Z.new_zeros(channels, height + 2 * h, width + 2 * h)  # [C, H+2h, W+2h], zero outside the image
        Zp[:, h : h + height, h : h + width] = Z
        out = Z.new_empty(channels, height, width)  # [C, H, W]
        band = height if Z.is_cuda else max(1, self.band_elements // (channels * width))
        for y0 in range(0, height, band):
            y1 = min(y0 + band, height)
            acc = out[:, y0:y1].zero_()  # [C, band, W]
            for k, (dy, dx) in enumerate(self.offsets):
                # p joined to p + o with weights[k] at p, and to p - o with weights[k] at p - o
                acc.addcmul_(self.weights[k, h + y0 : h + y1, h : h + width],
                             Zp[:, h + y0 + dy : h + y1 + dy, h + dx : h + dx + width])
                acc.addcmul_(self.weights[k, h + y0 - dy : h + y1 - dy, h - dx : h - dx + width],
                             Zp[:, h + y0 - dy : h + y1 - dy, h - dx : h - dx + width])
        return out

    def neighbour_sum(self, Z: Tensor) -> Tensor:
        """The same stencil with unit weights: sum of Z [C, H, W] over each pixel's neighbours -> [C, H, W].

        The neighbourhood is a (dilated) square, so this is a separable box sum (two cumulative sums)
        minus the centre; pixels outside the image count as zero.
        """
        if self.fused:
            return stencil_triton.stencil_product(Z, None, self.offset_table, self.pad)
        half = self.pad // self.dilation
        box = _strided_window_sum(_strided_window_sum(Z, -1, half, self.dilation), -2, half, self.dilation)
        return box - Z

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
        indices, values = torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals)
        W = torch.sparse_coo_tensor(indices, values, self.shape, check_invariants=False)
        return normalize_adjacency(W.coalesce())

    def to_dense(self) -> Tensor:
        return self.to_sparse().to_dense()


def colour_weights(lab_a: Tensor, lab_b: Tensor, tau: float) -> Tensor:
    """exp(-||lab_a - lab_b||_2 / tau) for two [3, h, w] colour maps -> [h, w], with few temporaries.

    Weights below the smallest normal float are set to 0: they change no sum they enter (their share is
    below the float's resolution), but x86 CPUs compute with such subnormal numbers ~10x slower. At
    tau = 0.01 a colour distance above 0.87 (float32) is enough: 11% of the pairs of a random image,
    0.01% of a CamVid frame; the stencil product on the random image took 13.7 s with them, 1.2 s without.
    """
    diff = (lab_a - lab_b).square_()  # [3, h, w]
    dist = diff[0].add_(diff[1]).add_(diff[2]).sqrt_()  # [h, w]
    return torch.nn.functional.threshold_(dist.div_(-tau).exp_(), torch.finfo(dist.dtype).tiny, 0.0)


def use_fused_stencil(backend: str | None, device: torch.device) -> bool:
    """Whether the pixel graph runs the fused Triton stencil: "auto" on CUDA when triton imports."""
    if backend is None:
        backend = os.environ.get("LPOSS_STENCIL", "auto")
    if backend not in STENCIL_BACKENDS:
        raise ValueError(f"unknown stencil backend {backend!r} (argument or LPOSS_STENCIL); "
                         f"choose one of {', '.join(STENCIL_BACKENDS)}")
    if backend == "triton" and not stencil_triton.available():
        raise ValueError("backend='triton' asked for, but triton cannot be imported: pip install triton, "
                         "or use backend='torch'")
    return backend == "triton" or (backend == "auto" and device.type == "cuda" and stencil_triton.available())


def _strided_window_sum(x: Tensor, dim: int, half: int, step: int) -> Tensor:
    """Sum of x[i + k * step] for k = -half..half along dim (zero outside), by cumulative sums per residue."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    pad = (half + 1) * step
    extra = -(n + 2 * pad) % step  # make the padded length a multiple of step
    xp = torch.nn.functional.pad(x, (pad, pad + extra))  # [..., L]
    csum = xp.unflatten(-1, (-1, step)).cumsum(-2).flatten(-2)  # running sums over i, i - step, i - 2 step, ...
    ahead = csum[..., pad + half * step : pad + half * step + n]
    behind = csum[..., pad - (half + 1) * step : pad - (half + 1) * step + n]
    return (ahead - behind).movedim(-1, dim)


def _shift(s: slice, by: int) -> slice:
    return slice(s.start + by, s.stop + by)


class FusedPixelSteps(TorchSteps):
    """The two data-heavy steps of a CG iteration on a fused `PixelGraph`, each one kernel."""

    def __init__(self, graph, alpha: float):  # noqa: ANN001 - a PixelGraph
        super().__init__(lambda X: graph.residual(X, alpha))
        self.graph, self.alpha = graph, alpha

    def operator_and_dot(self, P: Tensor) -> tuple[Tensor, Tensor]:
        """(Q, <P, Q> per column) with Q = (I - alpha S) P, P [H*W, C] -> ([H*W, C], [C])."""
        return self.graph.residual_and_dot(P, self.alpha)

    def update_(self, X: Tensor, R: Tensor, P: Tensor, Q: Tensor, step: Tensor) -> Tensor:
        if cg_triton.same_layout(X, R, P, Q):
            return cg_triton.update_(X, R, P, Q, step)
        return super().update_(X, R, P, Q, step)  # a layout the kernel does not index
