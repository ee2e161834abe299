"""The conjugate-gradient update of a pixel solve as one Triton kernel (the CUDA path of `propagation`).

A CG iteration of `lposs.core.propagation.conjugate_gradient` moves [N, C] tensors through memory in five
element-wise and reduction calls besides the operator: X += step P, R -= step Q, sum(R * R). Here one
program owns BLOCK_C columns x BLOCK_N rows, updates X and R in registers and writes its share of each
column's sum of R^2; torch adds the shares (deterministic: no atomics). Together with the stencil
kernel's residual-and-dot (`stencil_triton.residual_and_dot`) an iteration reads and writes about 60% of
the memory the plain torch calls do (`python -m benchmarks.launches` counts it).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .stencil_triton import accumulator

# Untimed (no GPU yet); chosen from the sm_90 build (benchmarks.kernel_build): 40 registers, 75% occupancy,
# where 512 x 4 needs 156 registers (19%).
BLOCK_N, BLOCK_C, NUM_WARPS = 256, 2, 4


@lru_cache(maxsize=1)
def _update_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def cg_update_kernel(x_ptr, r_ptr, p_ptr, q_ptr, step_ptr, part_ptr, N, C, s_n, s_c,
                         ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
        mask = (cols < C)[:, None] & (rows < N)[None, :]  # [BC, BN]
        at = cols.to(tl.int64)[:, None] * s_c + rows.to(tl.int64)[None, :] * s_n
        step = tl.load(step_ptr + cols, mask=cols < C, other=0.0).to(ACC)[:, None]  # [BC, 1]
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(ACC) + step * tl.load(p_ptr + at, mask=mask, other=0.0)
        r = tl.load(r_ptr + at, mask=mask, other=0.0).to(ACC) - step * tl.load(q_ptr + at, mask=mask, other=0.0)
        tl.store(x_ptr + at, x.to(x_ptr.dtype.element_ty), mask=mask)
        tl.store(r_ptr + at, r.to(r_ptr.dtype.element_ty), mask=mask)
        tl.store(part_ptr + tl.program_id(0) * C + cols, tl.sum(r * r, axis=1), mask=cols < C)

    return cg_update_kernel


def same_layout(*tensors: Tensor) -> bool:
    """True when all are [N, C] tensors of one shape, dtype, device and strides (what the kernel indexes)."""
    first = tensors[0]
    return all(t.shape == first.shape and t.stride() == first.stride() and t.dtype == first.dtype
               and t.device == first.device for t in tensors) and first.dim() == 2


def update_(X: Tensor, R: Tensor, P: Tensor, Q: Tensor, step: Tensor) -> Tensor:
    """X += step * P and R -= step * Q in place (step [C] per column of the [N, C] tensors) -> sum(R^2, 0) [C]."""
    import triton

    if not same_layout(X, R, P, Q):
        raise ValueError("X, R, P and Q must be [N, C] tensors of one shape, dtype, device and strides")
    n, c = X.shape
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(c, BLOCK_C))
    partial = torch.empty((grid[0], c), dtype=X.dtype, device=X.device)  # [row blocks, C], all written
    _update_kernel()[grid](X, R, P, Q, step.contiguous(), partial, n, c, X.stride(0), X.stride(1),
                           ACC=accumulator(X.dtype), BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return partial.sum(0)
