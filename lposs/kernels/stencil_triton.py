"""The pixel stencil as one fused Triton kernel per product (the CUDA path of `graphs.PixelGraph`).

The torch stencil of `PixelGraph.weighted_sum` is 2K multiply-adds over the whole [C, H, W] tensor
(K = (r*r - 1) / 2 stored offsets, 168 passes at r = 13), each a full trip through memory. Here one
program owns a tile of BLOCK_Y x BLOCK_X pixels and BLOCK_C channels, keeps its sum in registers and
walks the K offsets: for offset o it reads the tile's weights to p + o and from p - o and the scores at
p + o and p - o (neighbouring offsets read overlapping windows, so these come from cache), and writes
its tile once. Memory traffic is about one read of the weights per channel block and one read and one
write of the scores per product.

Triton (the compiler torch.compile itself uses) is the natural tool: a portable GPU kernel in Python,
and with TRITON_INTERPRET=1 (set before triton is imported) the same kernel runs on CPU tensors, which
is how the test suite checks it without a GPU.

Inputs follow `PixelGraph`'s layout: weights [K, H + 2h, W + 2h] zero-padded (entry [k, h + y, h + x]
joins pixel (y, x) to (y + dy_k, x + dx_k), zero where that partner is outside the image), offsets the
K half-offsets (dy, dx) already multiplied by the dilation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

BLOCK_Y, BLOCK_X, MAX_BLOCK_C, NUM_WARPS = 8, 32, 8, 4  # untuned defaults (no GPU measured them yet)
WEIGHTS_BLOCK = 1024  # weights per program of the colour-weights kernel


def accumulator(dtype: torch.dtype) -> Any:
    """The Triton type the kernels sum in for tensors of `dtype`: float64 for float64, float32 otherwise."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


@lru_cache(maxsize=1)
def available() -> bool:
    """True when triton can be imported (it ships with torch's CUDA wheels)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _kernel():
    """Compile-on-first-use: the jitted kernel (importing triton only when the stencil is asked for)."""
    import triton
    import triton.language as tl

    @triton.jit
    def stencil_kernel(z_ptr, w_ptr, s_ptr, off_ptr, out_ptr, dot_ptr, C, H, W, K, PAD,
                       z_sc, z_sy, z_sx, w_sk, w_sy, o_sc, o_sy, alpha,
                       UNIT: tl.constexpr, SCALE: tl.constexpr, RESIDUAL: tl.constexpr, DOT: tl.constexpr,
                       ACC: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
        tiles_x, channel_blocks = tl.cdiv(W, BLOCK_X), tl.cdiv(C, BLOCK_C)
        # the channel blocks of one tile are neighbouring programs: its weights come once from memory and
        # are read again from L2 (a grid with the tiles first reads all weights once per channel block)
        tile, block = tl.program_id(0) // channel_blocks, tl.program_id(0) % channel_blocks
        y0, x0 = (tile // tiles_x) * BLOCK_Y, (tile % tiles_x) * BLOCK_X
        c = block * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
        i = tl.arange(0, BLOCK_Y * BLOCK_X)
        y, x = y0 + i // BLOCK_X, x0 + i % BLOCK_X  # [BP] pixels of the tile
        inside = (y < H) & (x < W)
        channel = c < C
        z_rows = z_ptr + c.to(tl.int64)[:, None] * z_sc  # [BC, 1]
        acc = tl.zeros((BLOCK_C, BLOCK_Y * BLOCK_X), dtype=ACC)
        for k in range(K):
            dy = tl.load(off_ptr + 2 * k)
            dx = tl.load(off_ptr + 2 * k + 1)
            for sign in tl.static_range(2):  # partner p + o, then p - o
                qy = y + dy if sign == 0 else y - dy
                qx = x + dx if sign == 0 else x - dx
                partner = inside & (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
                z = tl.load(z_rows + (qy * z_sy + qx * z_sx)[None, :],
                            mask=channel[:, None] & partner[None, :], other=0.0).to(ACC)  # [BC, BP]
                if SCALE:  # the normalised graph: scores scaled by D^-1/2 at the partner
                    z = z * tl.load(s_ptr + qy * W + qx, mask=partner, other=0.0).to(ACC)[None, :]
                if UNIT:
                    acc += z
                else:
                    # the weight of the pair lives at the pixel the half-offset starts from: p, or p - o
                    wy = y + PAD if sign == 0 else qy + PAD
                    wx = x + PAD if sign == 0 else qx + PAD
                    w = tl.load(w_ptr + k * w_sk + wy * w_sy + wx, mask=inside, other=0.0).to(ACC)  # [BP]
                    acc += w[None, :] * z
        if SCALE:
            acc = acc * tl.load(s_ptr + y * W + x, mask=inside, other=0.0).to(ACC)[None, :]
        if RESIDUAL:  # (I - alpha S) Z: the solver's operator in the same pass (no second trip through memory)
            centre = tl.load(z_rows + (y * z_sy + x * z_sx)[None, :], mask=channel[:, None] & inside[None, :],
                             other=0.0).to(ACC)  # [BC, BP]
            acc = centre - alpha * acc
            if DOT:  # this tile's share of each column's <Z, (I - alpha S) Z>, summed over the tiles by torch
                tl.store(dot_ptr + tile * C + c, tl.sum(centre * acc, axis=1), mask=channel)
        out = out_ptr + c.to(tl.int64)[:, None] * o_sc + (y * o_sy + x)[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=channel[:, None] & inside[None, :])

    return stencil_kernel


@lru_cache(maxsize=1)
def _weights_kernel():
    """Compile-on-first-use: the kernel that writes the stencil's colour weights."""
    import triton
    import triton.language as tl

    @triton.jit
    def weights_kernel(lab_ptr, off_ptr, out_ptr, H, W, PAD, tau, tiny, lab_sc, out_sk,
                       ACC: tl.constexpr, BLOCK: tl.constexpr):
        k = tl.program_id(0)
        i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] positions of the padded [H+2P, W+2P] map
        padded_w = W + 2 * PAD
        y, x = i // padded_w - PAD, i % padded_w - PAD
        dy, dx = tl.load(off_ptr + 2 * k), tl.load(off_ptr + 2 * k + 1)
        qy, qx = y + dy, x + dx
        inside = (y >= 0) & (y < H) & (x >= 0) & (x < W) & (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
        squared = tl.zeros((BLOCK,), dtype=ACC)
        for channel in tl.static_range(3):  # squared Lab distance, summed in the order colour_weights sums
            a = tl.load(lab_ptr + channel * lab_sc + y * W + x, mask=inside, other=0.0).to(ACC)
            b = tl.load(lab_ptr + channel * lab_sc + qy * W + qx, mask=inside, other=0.0).to(ACC)
            squared += (a - b) * (a - b)
        w = tl.exp(tl.sqrt(squared) / -tau)
        w = tl.where(inside & (w > tiny), w, 0.0)  # outside pairs and subnormal weights are 0
        tl.store(out_ptr + k * out_sk + i, w.to(out_ptr.dtype.element_ty), mask=i < (H + 2 * PAD) * padded_w)

    return weights_kernel


def colour_weights(lab: Tensor, offsets: Tensor, pad: int, tau: float) -> Tensor:
    """The stencil's weights from scaled Lab [3, H, W] -> [K, H + 2 pad, W + 2 pad], as `PixelGraph`
    computes them on the CPU (graphs.colour_weights), in one kernel: Lab read once per offset, every weight
    written once (padding included), no [3, K, H, W] temporaries."""
    import triton

    lab = lab.contiguous()
    _, height, width = lab.shape
    out = torch.empty((offsets.shape[0], height + 2 * pad, width + 2 * pad), dtype=lab.dtype, device=lab.device)
    grid = (offsets.shape[0], triton.cdiv(out.shape[1] * out.shape[2], WEIGHTS_BLOCK))
    _weights_kernel()[grid](lab, offsets, out, height, width, pad, float(tau), torch.finfo(lab.dtype).tiny,
                            lab.stride(0), out.stride(0),
                            ACC=accumulator(lab.dtype), BLOCK=WEIGHTS_BLOCK)
    return out


def stencil_product(Z: Tensor, weights: Tensor | None, offsets: Tensor, pad: int,
                    scale: Tensor | None = None, residual_alpha: float | None = None) -> Tensor:
    """sum over the stencil's neighbours q of w_pq * Z[:, q] for Z [C, H, W] (any strides) -> [C, H, W].

    weights [K, H + 2 pad, W + 2 pad] as `PixelGraph.weights` (contiguous), or None for unit weights
    (the neighbour sum). offsets int32 [K, 2] on Z's device. scale [H, W] (e.g. D^-1/2): the normalised
    product s_p * sum_q w_pq s_q Z[:, q]. residual_alpha: return Z - alpha * (that product) instead, the
    operator (I - alpha S) of label propagation. One kernel launch, no host synchronisation.
    """
    return _launch(Z, weights, offsets, pad, scale, residual_alpha, dot=False)[0]


def residual_and_dot(Z: Tensor, weights: Tensor, offsets: Tensor, pad: int, scale: Tensor,
                     alpha: float) -> tuple[Tensor, Tensor]:
    """(Q, d) with Q = Z - alpha s * W(s * Z) [C, H, W] and d [C] = sum over pixels of Z * Q per channel:
    the operator and the dot product of one conjugate-gradient step in one pass (the dot as per-tile
    partial sums added by one torch call: deterministic, no atomics)."""
    return _launch(Z, weights, offsets, pad, scale, alpha, dot=True)


def _launch(Z: Tensor, weights: Tensor | None, offsets: Tensor, pad: int, scale: Tensor | None,
            residual_alpha: float | None, dot: bool) -> tuple[Tensor, Tensor | None]:
    import triton

    channels, height, width = Z.shape
    if weights is not None and (tuple(weights.shape) != (offsets.shape[0], height + 2 * pad, width + 2 * pad)
                                or not weights.is_contiguous()):
        raise ValueError(f"weights {tuple(weights.shape)} do not fit Z {tuple(Z.shape)} with pad {pad} and "
                         f"{offsets.shape[0]} offsets (expected a contiguous [K, H + 2 pad, W + 2 pad] tensor)")
    if scale is not None and (tuple(scale.shape) != (height, width) or not scale.is_contiguous()):
        raise ValueError(f"scale must be a contiguous [{height}, {width}] tensor, got {tuple(scale.shape)}")
    if Z.stride(2) != 1:
        Z = Z.contiguous()  # one copy beats strided reads along the rows on every one of the 2K offsets
    out = torch.empty((channels, height, width), dtype=Z.dtype, device=Z.device)
    tiles = triton.cdiv(height, BLOCK_Y) * triton.cdiv(width, BLOCK_X)
    partial = torch.empty((tiles, channels), dtype=Z.dtype, device=Z.device) if dot else None  # [tiles, C], all written
    if out.numel() == 0:
        return out, (partial.sum(0) if dot else None)
    block_c = min(MAX_BLOCK_C, triton.next_power_of_2(channels))
    grid = (tiles * triton.cdiv(channels, block_c),)
    w = Z if weights is None else weights  # placeholder pointers are never read (UNIT / SCALE / DOT off)
    s = Z if scale is None else scale
    _kernel()[grid](Z, w, s, offsets, out, out if partial is None else partial, channels, height, width,
                    offsets.shape[0], pad, Z.stride(0), Z.stride(1), Z.stride(2),
                    0 if weights is None else w.stride(0), 0 if weights is None else w.stride(1),
                    out.stride(0), out.stride(1), 0.0 if residual_alpha is None else float(residual_alpha),
                    UNIT=weights is None, SCALE=scale is not None, RESIDUAL=residual_alpha is not None, DOT=dot,
                    ACC=accumulator(Z.dtype), BLOCK_C=block_c, BLOCK_Y=BLOCK_Y, BLOCK_X=BLOCK_X, num_warps=NUM_WARPS)
    return out, (partial.sum(0) if dot else None)
