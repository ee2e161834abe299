"""Fused CPU kernels for stencil graphs (numba): one pass over the pixels instead of one per offset.

A stencil graph joins each pixel p to p + o for a fixed list of offsets o, with a weight per pixel and
offset, w[p, k] (zero where p + o_k falls outside the image). The plain-torch operator in graphs.py
streams the whole [H, W, C] array through memory once per offset (168 times for r = 13), which makes
it memory-bound on CPU. These kernels visit each output pixel once and gather its neighbours while
they are in cache; rows run in parallel. Results equal the torch operator to float rounding.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def stencil_weights(lab, offsets, tau):
    """w[y, x, k] = exp(-||lab[:, y, x] - lab[:, y + dy_k, x + dx_k]|| / tau), 0 outside: [H, W, K]."""
    _, height, width = lab.shape
    count = offsets.shape[0]
    w = np.zeros((height, width, count), dtype=lab.dtype)
    for y in numba.prange(height):
        for x in range(width):
            for k in range(count):
                yy, xx = y + offsets[k, 0], x + offsets[k, 1]
                if 0 <= yy < height and 0 <= xx < width:
                    d0 = lab[0, y, x] - lab[0, yy, xx]
                    d1 = lab[1, y, x] - lab[1, yy, xx]
                    d2 = lab[2, y, x] - lab[2, yy, xx]
                    w[y, x, k] = np.exp(-np.sqrt(d0 * d0 + d1 * d1 + d2 * d2) / tau)
    return w


@numba.njit(parallel=True, cache=True)
def stencil_matmul(w, offsets, X):
    """out[y, x, :] = sum_k w[y, x, k] * X[y + dy_k, x + dx_k, :] for X [H, W, C] -> [H, W, C]."""
    height, width, channels = X.shape
    count = offsets.shape[0]
    out = np.zeros_like(X)
    for y in numba.prange(height):
        for x in range(width):
            for k in range(count):
                weight = w[y, x, k]
                if weight != 0.0:
                    yy, xx = y + offsets[k, 0], x + offsets[k, 1]
                    for c in range(channels):
                        out[y, x, c] += weight * X[yy, xx, c]
    return out
