"""CASS's text side (MICV-yonsei/CASS cass_segmentor.py:98-212 @228ecdd): queries adjusted to the image.

    global_emb = clip_image_embedding(visual, whole_image)                      # [1, D], vanilla CLIP's CLS
    logits = cass_logits(features, text, global_emb, h_threshold=0.10, mean_vector_weight=0.03,
                         global_semantics_weight=0.1)                            # [B, h, w, Q]

The queries (unit rows of text) are Ward-clustered once on cosine distances, the tree cut at h_threshold. In each
cluster, the query most similar to the global embedding moves to unit((1 - a) t + a m), m = unit(mean of the 2
patch features most similar to it), a = mean_vector_weight; then logits = (1 - g) f . t' + g global . t,
g = global_semantics_weight. The release's per-dataset values (gsw, mvw, h): VOC21 .1, .03, .10; PC60 .25, .04,
.09; Object .25, .01, .10; VOC20 .4, .02, .10; PC59 .25, .04, .09; Stuff .2, .02, .02; City .1, .03, .14;
ADE .3, .05, .06. The global embedding comes from the whole resized image (on Cityscapes from the window).

    scores = cass_query_scores(visual, features, text, windows, image, TEXT_PARAMS-like dict)   # what DenseCLIP runs
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..vit import block_as_released, hidden_states_as_released


def clip_image_embedding(visual: nn.Module, image: Tensor, interpolation: str = "sclip") -> Tensor:
    """Vanilla CLIP's image embedding ln_post(CLS) proj of ONE CLIP-normalised image [1, 3, H, W] -> [1, D], unit."""
    tokens = hidden_states_as_released(visual, image, interpolation)[-1][:, None]  # [L, 1, W], entering block L
    out = block_as_released(visual.transformer.resblocks[-1], tokens)[0]  # CLS row [1, W]
    return F.normalize(visual.ln_post(out) @ visual.proj, dim=-1)


def query_clusters(text: Tensor, h_threshold: float) -> np.ndarray:
    """[Q, D] -> cluster ids [Q] (0-based): Ward linkage on cosine distances, cut at distance h_threshold."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    unit = F.normalize(text.detach().float().cpu(), dim=-1).numpy()
    distances = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="ward")
    return fcluster(tree, t=h_threshold, criterion="distance") - 1


def adjusted_queries(features: Tensor, text: Tensor, global_sim: Tensor, clusters: np.ndarray, weight: float) -> Tensor:
    """One window: patch features [N, D] (unit), text [Q, D], global similarities [Q] -> adjusted text [Q, D]."""
    adjusted = text.clone()
    for cluster in range(len(set(clusters.tolist()))):
        members = torch.as_tensor(np.where(clusters == cluster)[0], device=text.device)
        query = int(members[global_sim[members].argmax()])
        t = F.normalize(text[query], dim=0)
        top = torch.topk(F.normalize(features, dim=1) @ t, min(2, len(features))).indices
        mean = F.normalize(features[top].mean(dim=0), dim=0)
        adjusted[query] = F.normalize((1 - weight) * t + weight * mean, dim=0)
    return adjusted


def cass_logits(features: Tensor, text: Tensor, global_embedding: Tensor, h_threshold: float,
                mean_vector_weight: float, global_semantics_weight: float) -> Tensor:
    """features [B, h, w, D] (the cass head's), text [Q, D] unit, global_embedding [B or 1, D] unit -> [B, h, w, Q]."""
    clusters = query_clusters(text, h_threshold)
    global_sim = global_embedding.expand(len(features), -1) @ text.T  # [B, Q]
    out = []
    for feats, sim in zip(features.flatten(1, 2), global_sim):  # [N, D], [Q]
        logits = feats @ adjusted_queries(feats, text, sim, clusters, mean_vector_weight).T  # [N, Q]
        out.append(logits * (1 - global_semantics_weight) + sim * global_semantics_weight)
    return torch.stack(out).reshape(*features.shape[:3], -1)


TEXT_PARAMS = ("global_semantics_weight", "mean_vector_weight", "h_threshold", "global_from")
GLOBAL_FROM = ("image", "window")  # CASS: the whole resized image, on Cityscapes each window


def check_text_params(params: dict) -> None:
    """ValueError naming any unknown or missing name of CASS's text step, or a wrong global_from."""
    unknown, missing = set(params) - set(TEXT_PARAMS), set(TEXT_PARAMS[:3]) - set(params)
    if unknown or missing:
        raise ValueError(f"CASS's text step takes {', '.join(TEXT_PARAMS)} (global_from optional); "
                         f"unknown {sorted(unknown)}, missing {sorted(missing)}")
    if params.get("global_from", "image") not in GLOBAL_FROM:
        raise ValueError(f"global_from={params['global_from']!r}: choose one of {', '.join(GLOBAL_FROM)}")


def cass_query_scores(visual: nn.Module, features: Tensor, text: Tensor, windows: Tensor, image: Tensor,
                      params: dict, interpolation: str = "sclip") -> Tensor:
    """CASS's scores: features [B, h, w, D] (the head's, unit), text [Q, D] unit, the CLIP-normalised windows
    [B, 3, s, s] and whole resized image [3, H, W] -> [B, h, w, Q]. The global embedding is the image's (cropped to
    whole patches, as the patch convolution drops the rest) or, with global_from "window", each window's."""
    patch = int(visual.patch_size[0])
    if params.get("global_from", "image") == "window":
        global_embedding = torch.cat([clip_image_embedding(visual, w[None], interpolation) for w in windows])  # [B, D]
    else:
        whole = image[:, : image.shape[1] // patch * patch, : image.shape[2] // patch * patch]
        global_embedding = clip_image_embedding(visual, whole[None], interpolation)  # [1, D]
    weights = {k: v for k, v in params.items() if k != "global_from"}
    return cass_logits(features.float(), text.float(), global_embedding.float(), **weights)
