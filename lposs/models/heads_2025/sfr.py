"""ResCLIP's semantic feedback matrix (yvhangyang/ResCLIP clip/model.py:106-240 @0e085f7), from patch labels.

    labels = patch_labels(pixel_labels, patch=16)            # [gh, gw]: the mode of each patch's pixels
    sfr = sfr_matrix(labels, sigma=5.0)                      # [1 + N, 1 + N], CLS row and column 0

M_ij = [label_i == label_j]. With delete_same_entity, a pair whose straight path leaves label_i keeps only
M_ij exp(-steps_ij / max_steps) (steps = Chebyshev distance, max over all pairs). The path check samples
start + (end - start) m / max_steps for m = 0..steps_ij, rounded half-to-even: the step uses the GLOBAL
max_steps, so only a prefix of the segment is checked (clip/model.py:130-148) - kept as released. Each row is
then blurred along the flattened j index by a 1-D Gaussian (size min(N, 6 sigma + 1) made odd, zero padding),
clipped at 0 and divided by its sum (+1e-8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_STARTS_PER_CHUNK = 256  # path checks for this many start patches at a time (memory ~ chunk x N x max_steps)


def patch_labels(pixel_labels: Tensor, patch: int) -> Tensor:
    """[H, W] integer labels -> [H / patch, W / patch]: torch.mode over each patch's pixels (clip/model.py:106-126)."""
    patches = pixel_labels.unfold(0, patch, patch).unfold(1, patch, patch)  # [gh, gw, patch, patch]
    return torch.mode(patches.flatten(2), dim=-1).values


def paths_stay_on_label(labels: Tensor, starts: Tensor, ends: Tensor, max_steps: int) -> Tensor:
    """labels [gh, gw]; starts [P, 2], ends [P, 2] (row, col) -> [P]: every checked path point has the start's label."""
    steps = (ends - starts).abs().max(dim=1).values  # [P] Chebyshev distance
    t = torch.linspace(0, 1, steps=max_steps + 1, device=labels.device)[None, :, None]  # [1, M + 1, 1]
    points = (starts[:, None] * (1 - t) + ends[:, None] * t).round().long()  # [P, M + 1, 2], as released
    on_label = labels[points[..., 0], points[..., 1]] == labels[starts[:, 0], starts[:, 1]][:, None]
    beyond = torch.arange(max_steps + 1, device=labels.device)[None] > steps[:, None]  # points past the pair's steps
    return (on_label | beyond).all(dim=1)


def same_label_matrix(labels: Tensor, delete_same_entity: bool = True) -> Tensor:
    """[gh, gw] -> [N, N] float: 1 for same-label pairs, decayed by distance where their path leaves the label."""
    gh, gw = labels.shape
    flat = labels.flatten()
    same = (flat[:, None] == flat[None, :]).float()  # [N, N], diagonal 1
    if not delete_same_entity:
        return same
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"), -1).reshape(-1, 2)
    coords = coords.to(labels.device)  # [N, 2] (row, col), long
    steps = (coords[None] - coords[:, None]).abs().max(dim=-1).values  # [N, N]
    max_steps = int(steps.max())
    valid = torch.cat([
        paths_stay_on_label(labels, coords[i : i + _STARTS_PER_CHUNK].repeat_interleave(len(coords), 0),
                            coords.repeat(len(coords[i : i + _STARTS_PER_CHUNK]), 1), max_steps)
        for i in range(0, len(coords), _STARTS_PER_CHUNK)
    ]).reshape(len(coords), len(coords))
    return torch.where(valid, same, same * torch.exp(-steps / max_steps))


def gaussian_row_blur(matrix: Tensor, sigma: float) -> Tensor:
    """Each row of [N, N] convolved with a normalised 1-D Gaussian along its (flattened) index, zero padding."""
    size = min(matrix.shape[-1], int(6 * sigma + 1))
    size = size if size % 2 == 1 else size + 1
    x = torch.arange(size, device=matrix.device) - size // 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return F.conv1d(matrix[:, None], kernel.view(1, 1, -1), padding=size // 2)[:, 0]


def sfr_matrix(labels: Tensor, sigma: float = 5.0, delete_same_entity: bool = True) -> Tensor:
    """Patch labels [gh, gw] -> the SFR matrix [1 + N, 1 + N] (rows of the patch block sum to 1; CLS row/col 0)."""
    blurred = torch.relu(gaussian_row_blur(same_label_matrix(labels, delete_same_entity), sigma))
    normalised = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
    return F.pad(normalised, (1, 0, 1, 0))
