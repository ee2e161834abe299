"""A fused CPU kernel (numba) for the pixel stencil: one pass over the pixels instead of one per offset.

The torch operator in graphs.py streams the whole [C, H, W] array through memory twice per stored
offset (168 times for r = 13), which makes it memory-bound on CPU. This kernel visits each pixel once,
gathers its neighbours while they are in cache, and works channel-last so the innermost loop runs over
contiguous class scores; rows run in parallel. It reads the same padded half-offset weights as
`PixelGraph` and equals its torch path to float rounding (tests/test_stencil_cpu.py).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor


@numba.njit(parallel=True, cache=True)
def _weighted_sum(weights, offsets, Zp, pad, height, width):
    """out[y, x] = sum_k w[k, y, x] Z[y + dy_k, x + dx_k] + w[k, y - dy_k, x - dx_k] Z[y - dy_k, x - dx_k].

    weights [K, H + 2 pad, W + 2 pad] (zero where the partner is outside), Zp [H + 2 pad, W + 2 pad, C]
    zero-padded and channel-last -> out [H, W, C].
    """
    channels = Zp.shape[2]
    out = np.zeros((height, width, channels), dtype=Zp.dtype)
    for y in numba.prange(height):
        for x in range(width):
            for k in range(offsets.shape[0]):
                dy, dx = offsets[k, 0], offsets[k, 1]
                w_ahead = weights[k, pad + y, pad + x]
                w_behind = weights[k, pad + y - dy, pad + x - dx]
                for c in range(channels):
                    out[y, x, c] += (w_ahead * Zp[pad + y + dy, pad + x + dx, c]
                                     + w_behind * Zp[pad + y - dy, pad + x - dx, c])
    return out


def weighted_sum(weights: Tensor, offsets: list[tuple[int, int]], Z: Tensor, pad: int) -> Tensor:
    """The unnormalised stencil W Z for Z [C, H, W] on CPU -> [C, H, W] (see PixelGraph.weighted_sum)."""
    channels, height, width = Z.shape
    Zp = torch.nn.functional.pad(Z, (pad, pad, pad, pad)).permute(1, 2, 0).contiguous()  # [H+2p, W+2p, C]
    weights = weights.to(Z.dtype).contiguous()
    out = _weighted_sum(weights.numpy(), np.asarray(offsets, dtype=np.int64), Zp.numpy(), pad, height, width)
    return torch.from_numpy(out).permute(2, 0, 1)  # [C, H, W] view of the channel-last result
