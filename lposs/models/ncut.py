"""Panoptic Cut's cut loop (LaVG, Kang and Cho, ECCV 2024; dahyun-kang/lavg@2db88e5 panoptic_cut/panoptic_cut.py
:20-113, after CutLER's MaskCut): iterated normalized cuts on the patches that no mask holds yet.

    patch_masks = cut_masks(keys, (80, 80))          # keys [C, N] -> up to 8 masks [gh, gw] bool, discovery order

One cut on the set U of unoccupied patches:
  * f = the keys of U, unit norm per patch; A = [f^T f > tau] (tau 0.3), its zeros set to 1e-5 (the diagonal is 1);
    D = diag(rowsum A); the second smallest generalized eigenvector v of (D - A) v = l D v from torch.lobpcg
    (k 2, smallest), which starts from torch.randn: the global RNG decides it;
  * fg = v > mean(v) on U. Scattered to the grid, occupied patches get fg False and v = min |v| over U. The cut
    is reversed (v -> -v, fg -> not fg on U) when 3 or 4 grid corners are fg, else when fg is False at argmax |v|;
  * the mask is the 4-connected component of fg (scipy.ndimage.label's default structure) holding the seed
    argmax v; a seed outside fg (label 0) takes the whole background of the labelling, as released;
  * U loses the mask. Up to 8 masks; the loop stops once U has 5 patches or fewer (lobpcg needs 3 k = 6 rows).

`seed`: the loop runs under torch.manual_seed(seed) on a forked RNG (the caller's stream is untouched), so an
image's masks depend on it alone. The release seeds nothing: each image's random starts continue the stream of
the images before it in the process, on the GPU's generator. A near-degenerate second eigenvalue lets the start
move a mask (`benchmarks/parity_panoptic_cut.py --seeds` measures how much).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

TAU = 0.3  # predict.py:175 (--tau; its cog default 0.15 is overridden)
EPS = 1e-5  # panoptic_cut.py:20
MAX_MASKS = 8  # predict.py:173 (--N)
MIN_UNOCCUPIED = 5  # panoptic_cut.py:109


def ncut_affinity(keys: Tensor, tau: float = TAU, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """keys [C, n] -> (A [n, n] the thresholded cosine graph with eps for its zeros, D [n, n] its degree matrix)."""
    feats = F.normalize(keys, p=2, dim=0)
    affinity = ((feats.T @ feats) > tau).float()
    affinity[affinity == 0] = eps
    return affinity, torch.diag(affinity.sum(dim=1))


def second_eigenvector(affinity: Tensor, degree: Tensor) -> Tensor:
    """The second smallest generalized eigenvector of (D - A) v = l D v, [n], by torch.lobpcg as released."""
    _, vectors = torch.lobpcg(A=degree - affinity, B=degree, k=2, largest=False)
    return vectors[:, 1]


def seed_component(foreground: Tensor, seed: int) -> Tensor:
    """The connected component (4-neighbours) of foreground [gh, gw] bool that holds patch `seed` (flat index)."""
    from scipy import ndimage

    labelled, _ = ndimage.label(foreground.cpu().numpy())
    component = labelled[np.unravel_index(seed, labelled.shape)]
    return torch.from_numpy(labelled == component)


def cut_once(keys: Tensor, unoccupied: Tensor, grid: tuple[int, int], tau: float = TAU) -> Tensor:
    """One normalized cut of the unoccupied patches (unoccupied [N] bool) -> the new mask [gh, gw] bool."""
    vector_u = second_eigenvector(*ncut_affinity(keys[:, unoccupied], tau))  # [n]
    fg_u = vector_u > vector_u.mean()
    vector = torch.full(unoccupied.shape, float(vector_u.abs().min()), dtype=vector_u.dtype)  # [N]
    vector[unoccupied] = vector_u
    foreground = torch.zeros_like(unoccupied)
    foreground[unoccupied] = fg_u
    corners = foreground.view(grid)[[0, 0, -1, -1], [0, -1, 0, -1]].sum()
    if corners >= 3 or not foreground[torch.argmax(vector.abs())]:  # object-centric bias, then the peak's side
        vector = -vector
        foreground = torch.zeros_like(unoccupied)
        foreground[unoccupied] = ~fg_u
    return seed_component(foreground.view(grid), int(torch.argmax(vector)))


def cut_masks(keys: Tensor, grid: tuple[int, int], tau: float = TAU, max_masks: int = MAX_MASKS,
              min_unoccupied: int = MIN_UNOCCUPIED, seed: int | None = 0) -> list[Tensor]:
    """keys [C, gh * gw] (patches row-major) -> the patch masks [gh, gw] bool in the order found (at most
    max_masks). seed: torch.manual_seed for lobpcg's random starts, on a forked RNG; None draws from the caller's
    global RNG as the release does."""
    if keys.dim() != 2 or keys.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"keys must be [C, {grid[0] * grid[1]}] for a {grid[0]} x {grid[1]} grid, got "
                         f"{tuple(keys.shape)}")
    keys = keys.detach().float().cpu()  # lobpcg's start from the CPU generator wherever the keys were computed
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        unoccupied = torch.ones(keys.shape[1], dtype=torch.bool)
        masks: list[Tensor] = []
        for _ in range(max_masks):
            masks.append(cut_once(keys, unoccupied, grid, tau))
            unoccupied &= ~masks[-1].flatten()
            if int(unoccupied.sum()) <= min_unoccupied:
                break
    return masks
