"""CASS's spectral attention (Kim et al., CVPR 2025; MICV-yonsei/CASS clip/model.py:240-481 @228ecdd,
set_params('reduced', 'spectral', 5)), one window. Needs a DINO proxy: its last block's keys.

With k, v of ln_1(x_11) on the patches only, s = d^-1/2 and k_d the proxy keys (float16, bilinear to the CLIP grid,
then mapped affinely so their global min / max equal those of k):
    A_c = s k k^T,  A_d = s k_d k_d^T per head (A_d in float16, as released)
    spectra: top-`k_eigen` eigenvalues (float64), L2- then L1-normalised; W_ij = sum |sort(e_d,i) - sort(e_c,j)|;
             cost = 1 - W (float32); scipy's linear_sum_assignment(cost) -> col
    CLIP head h takes DINO head j = col[h] with weight w = 1 - cost[h, j] (the cost's rows are DINO heads, its
             columns CLIP heads: the release swaps them here, :405-410)
    D = rank-`rank` torch.svd_lowrank of A_d[j] (float64, niter 2; random: one call per CLIP head, in head
        order); singular values mapped [min, max] -> [0.5 min, 1.5 max] when rescale_singular (the release
        skips it on VOC20 and Cityscapes); diag(D) = 0; D min-max mapped onto [min A_c[h], max A_c[h]]
    A_h = (scale_factor w D + A_c[h]) / (scale_factor w + 1);  output softmax(A + Omega) . v (CLS-free)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..protocol_bases import WHOLE_IMAGE, WINDOWS_2025
from ..records import Published, TextStep, register_head
from ..vit import attend, neighbourhood_prior, qkv_per_head
from .cass_text import cass_query_scores, check_text_params
from .common import WindowTrace, last_block


def _dataset(gsw: float, mvw: float, h: float, global_from: str = "image", **more: Any) -> dict:
    text = {"global_semantics_weight": gsw, "mean_vector_weight": mvw, "h_threshold": h, "global_from": global_from}
    return {"text_params": text, **more}


# text side: global semantic weight, mean vector weight, cluster cut h (cass_segmentor.py:98-212);
# singular values not rescaled on voc20 and city_scapes (clip/model.py:465-473)
PROTOCOL = {
    "base": {**WINDOWS_2025, "text_params": {}, "source": "MICV-yonsei/CASS 228ecdd configs/cfg_*.py"},
    "datasets": {"voc21": _dataset(0.1, 0.03, 0.10, prob_thd=0.1, **WHOLE_IMAGE),
                 "context60": _dataset(0.25, 0.04, 0.09, prob_thd=0.1),
                 "coco_object": _dataset(0.25, 0.01, 0.10, prob_thd=0.1),
                 "voc20": _dataset(0.4, 0.02, 0.10, head_params={"rescale_singular": False}),
                 "context59": _dataset(0.25, 0.04, 0.09), "coco_stuff": _dataset(0.2, 0.02, 0.02),
                 "cityscapes": _dataset(0.1, 0.03, 0.14, "window", short_side=560,  # its global: each window
                                        head_params={"rescale_singular": False}),
                 "ade20k": _dataset(0.3, 0.05, 0.06)},
}
_PEARL_FIGURE = "PEARL's results figure (PGSmall/PEARL c26062b assets/results.png)"


DEFAULTS: dict[str, Any] = {"interpolation": "sclip", "scale_factor": 10.0, "k_eigen": 20, "rank": 10,
                            "rescale_singular": True, "sigma": 5.0}


def proxy_keys(proxy: Tensor, heads: int, grid: tuple[int, int], k: Tensor) -> Tensor:
    """DINO keys [h', w', heads * d] (head-major) -> float16 [heads, N, d] at the CLIP grid, in k's range (:324-351)."""
    keys = proxy.to(torch.float16).reshape(*proxy.shape[:2], heads, -1).permute(2, 3, 0, 1).contiguous()
    keys = F.interpolate(keys, size=grid, mode="bilinear", align_corners=False)  # [heads, d, gh, gw]
    keys = keys.flatten(2).transpose(1, 2)  # [heads, N, d]
    unit = (keys - keys.min()) / (keys.max() - keys.min())
    return unit * (k.max() - k.min()) + k.min()  # still float16, as released


def spectra(adjacency: Tensor, count: int) -> Tensor:
    """[heads, N, N] -> [heads, count]: the top eigenvalues (float64), L2- then L1-normalised, sorted ascending."""
    values = torch.linalg.eigvalsh(adjacency.double()).flip(-1)[:, :count]  # descending
    values = F.normalize(F.normalize(values, p=2, dim=1), p=1, dim=-1)
    return values.sort(dim=-1).values


def pair_heads(dino: Tensor, clip: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """-> (DINO head of each CLIP head [heads], its weight [heads] float32) by optimal assignment (:379-410)."""
    from scipy.optimize import linear_sum_assignment

    distance = (spectra(dino, count)[:, None] - spectra(clip, count)[None]).abs().sum(-1)  # [dino, clip]
    cost = (1 - distance).float()
    _, col = linear_sum_assignment(cost.detach().cpu().numpy())  # also under autograd, as released (:396)
    col = torch.as_tensor(col, device=cost.device)
    return col, 1 - cost[torch.arange(len(col), device=cost.device), col]


def low_rank(adjacency: Tensor, rank: int, rescale: bool) -> Tensor:
    """torch.svd_lowrank of one head's A_d (float64), singular values rescaled, zero diagonal -> [N, N] (:412-420)."""
    u, s, v = torch.svd_lowrank(adjacency.double(), q=min(rank, *adjacency.shape))
    if rescale:  # [min, max] -> [0.5 min, 1.5 max] (:465-473)
        low, high = s.min(), s.max()
        s = (s - low) / (high - low) * (1.5 * high - 0.5 * low) + 0.5 * low
    approx = u @ torch.diag(s) @ v.T
    return approx.fill_diagonal_(0)


def blend(clip: Tensor, approx: Tensor, weight: Tensor, scale_factor: float) -> Tensor:
    """(scale_factor w D + A_c) / (scale_factor w + 1), D min-max mapped onto A_c's range (:421-426, 475-481)."""
    unit = (approx - approx.min()) / (approx.max() - approx.min())
    approx = unit * (clip.max() - clip.min()) + clip.min()
    return (weight * scale_factor * approx + clip) / (weight * scale_factor + 1)


# the proxy: DINO's raw last-block keys on the window resized to a square (cass_segmentor.py:72-76)
@register_head(
    "cass", title="CASS", kind="traced", defaults=DEFAULTS, reads=("proxy",), proxy_feature="k_raw",
    proxy="dino_vitb8", text_step=TextStep(check_text_params, cass_query_scores), protocol=PROTOCOL,
    release="MICV-yonsei/CASS@228ecdd", year=2025,
    published=(Published("CASS (OpenAI CLIP + DINOv2-reg B/14 proxy, training-free; PEARL's reproduction)",
                         (58.6, 32.1, 33.1, 86.1, 34.1, 35.3, 17.6, 23.9), 40.1, _PEARL_FIGURE),
               Published("CASS (OpenAI CLIP + DINOv3 B/16 proxy, training-free; PEARL's reproduction)",
                         (62.3, 34.0, 36.0, 87.6, 36.2, 37.6, 18.8, 25.4), 42.2, _PEARL_FIGURE)),
)
def cass(visual: nn.Module, window: WindowTrace, settings: dict[str, Any]) -> Tensor:
    """One window's patch tokens [N, W] before ln_post."""
    block = last_block(visual)
    _, k, v = qkv_per_head(block, window.hidden[-1])
    k, v = k[:, 1:], v[:, 1:]  # [heads, N, d], CLS dropped
    scale = k.shape[-1] ** -0.5
    dino_k = proxy_keys(window.proxy, k.shape[0], window.grid, k)
    clip_adj, dino_adj = (k @ k.transpose(-2, -1)) * scale, (dino_k @ dino_k.transpose(-2, -1)) * scale
    col, weight = pair_heads(dino_adj, clip_adj, int(settings["k_eigen"]))
    rank, rescale, factor = int(settings["rank"]), bool(settings["rescale_singular"]), float(settings["scale_factor"])
    combined = torch.stack([  # one svd_lowrank per CLIP head, in head order (the global RNG's draws)
        blend(clip_adj[h], low_rank(dino_adj[col[h]], rank, rescale), weight[h], factor)
        for h in range(k.shape[0])
    ]).to(clip_adj.dtype)
    omega = neighbourhood_prior(window.grid, float(settings["sigma"]), k.device, k.dtype)[1:, 1:]  # patches only
    return attend(block, torch.softmax(combined + omega, dim=-1), v)
