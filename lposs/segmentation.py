"""One image, end to end: backbones -> seeds -> patch LP -> canvas -> pixel LP -> classes.

Split in two so the pipeline can cache the expensive half:
- `extract_features` (`lposs.image_features`) runs the backbones once over the windows
  (`settings.WindowSettings`): the head's seeds, the vision model's graph features, the layout;
- `propagate_features` runs one propagation setting (`settings.Setting`) on those features.
`segment` chains both and returns the label map. The settings' defaults live in `lposs.settings`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .core.graphs import patch_graph
from .core.own_steps import relabel, run_label_step, run_own_step, run_window_step, step_kind
from .core.propagation import propagate
from .core.refine import refine_pixels
from .core.refiners import REGION_REFINERS
from .core.regions import partition_masks, patch_region_fractions, resize_masks
from .core.scoring import class_scores, labels_from_scores, pool_synonyms  # noqa: F401 - pool_synonyms re-exported
from .core.windows import patch_centers
from .image_features import ImageFeatures, as_image_tensor, extract_features, merge_patches, to_graph_grid  # noqa: F401 - re-exported
from .settings import MODES, OWN_STEP, Setting, WindowSettings  # noqa: F401 - MODES re-exported


def propagate_features(
    features: ImageFeatures,
    mode: str = "lposs+",
    *,
    device: str | torch.device = "cpu",
    background: dict[str, Any] | None = None,
    setting: Setting | None = None,
    own_step: dict[str, Any] | None = None,
    **values: Any,
) -> Tensor:
    """Class scores [K, H, W] at the original image size for one propagation setting.

    setting: a `settings.Setting`, or its values by name: mode ("maskclip" seeds only, "lposs" patch LP,
    "lposs+" patch LP then pixel LP, "own" the seeds then `own_step`), the graph's k, gamma, sigma, p,
    region_beta, the propagation's alpha, maxiter, tol, solver ("cg" batched, "cg_reference" one column at a
    time as the released code), the pixel refiner (a name of `lposs.core.refine.REFINERS`) and its r, tau,
    boundary_beta (`PixelSettings.refiner_overrides` says what the refiner takes from the setting). Unknown names raise ValueError.
    background: a rule of `lposs.core.scoring` (e.g. `lposs.models.protocols.resolve("sclip", "voc21")`);
    None or "synonyms" gives the max over synonyms (LPOSS); "softmax" gives class probabilities (SCLIP
    family), to be turned into labels by `scoring.labels_from_scores`.
    own_step: the head's release's post-step for mode "own" (`lposs.models.protocols.own_step`; None: the
    release has none, and "own" gives the seeds' scores).
    """
    setting = setting_from(setting, mode, values)
    # host -> device copies are non_blocking: a blocking one makes torch wait for the GPU's whole queue
    seeds = features.seeds.to(device, non_blocking=True)  # [N, C']
    cosine_scale = 1.0  # what brings the scores back to the size of cosines (see scoring.class_scores)
    if setting.mode in ("maskclip", OWN_STEP):  # the head's scores, as they are or for its own step
        patch_scores = seeds
    else:
        patch_scores = propagate_patches(features, seeds, setting, device)  # [N, C']
        cosine_scale *= 1 - setting.lp.alpha
    kind = step_kind(own_step) if setting.mode == OWN_STEP and own_step is not None else None
    if kind == "window":  # LaVG's vote: on each window's scores, in place of the plain merge
        canvas = _window_step(features, patch_scores, own_step, device)  # [C', H', W']
    else:
        canvas = merge_patches(features, patch_scores)  # [C', H', W']
    if kind == "canvas":
        canvas = run_own_step(canvas, _resized_image(features, "the own step", device), own_step,
                              features.text_affinity)
    if setting.mode == "lposs+":
        pixel = setting.pixel
        needs_regions = pixel.refiner in REGION_REFINERS or pixel.boundary_beta != 1.0
        regions = _regions(features, "the regions refiner or pixel.boundary_beta") if needs_regions else None
        canvas = refine_pixels(_resized_image(features, "LPOSS+", device), canvas, refiner=pixel.refiner,
                               regions=regions, boundary_beta=pixel.boundary_beta,
                               **pixel.refiner_overrides(setting.lp))
        if setting.pixel.refiner == "reference":  # linear in the scores: (1 - alpha) brings them back to
            cosine_scale *= 1 - setting.lp.alpha  # cosine size; PAMR averages, best/relaxed give probabilities
    rule = background or {"background": "synonyms"}
    if rule.get("background") == "softmax":  # the releases resize the query logits, then softmax
        canvas = F.interpolate(canvas[None], size=features.original_hw, mode="bilinear", align_corners=False)[0]
        scores = class_scores(canvas, features.owner, rule, cosine_scale)  # [K, H, W]
    else:
        scores = class_scores(canvas, features.owner, rule)  # [K, H', W']
        scores = F.interpolate(scores[None], size=features.original_hw, mode="bilinear", align_corners=False)[0]
    if kind == "label":  # CorrCLIP's map correction, Trident's SAM refinement: on the labels at the original size
        scores = _label_step(features, scores, own_step, rule)
    return scores


def _label_step(features: ImageFeatures, scores: Tensor, step: dict[str, Any], rule: dict[str, Any]) -> Tensor:
    if step["name"] == "sam_refine":  # SAM on the resized image, prompted by the label map's regions
        from .models.sam_refine import refine_with_sam

        labels = labels_from_scores(scores, rule)
        image = _resized_image(features, "own step sam_refine", "cpu")
        return relabel(scores, labels, refine_with_sam(image, labels.cpu(), scores.float().cpu(), step))
    return run_label_step(scores, _regions(features, f"own step {step['name']}").to(scores.device), step, rule)


def _window_step(features: ImageFeatures, patch_scores: Tensor, step: dict[str, Any],
                 device: str | torch.device) -> Tensor:
    """A window step (LaVG's vote) on the patch scores [N, C'] of every window -> the merged canvas [C', H', W']."""
    g, n_windows = features.grid, len(features.layout)
    blocks = patch_scores.T.reshape(-1, n_windows, g, g).transpose(0, 1)  # [B, C', g, g]
    masks = _window_masks(features, f"own step {step['name']}").to(device, non_blocking=True)  # [M, H', W']
    return run_window_step(blocks, features.layout, features.resized_hw, features.crop, masks,
                           features.owner.to(device), step)


def _window_masks(features: ImageFeatures, who: str) -> Tensor:
    """The masks a window step reads, at the resized size [M, H', W'] bool: the mask model's overlapping masks
    (Panoptic Cut's, kept at the original size) nearest-resized as LaVG does; for a model that makes a region map
    (SAM, the demo's), its regions as a partition (`partition_masks`: no overlap, what no mask covers last)."""
    if features.masks is not None:
        return resize_masks(features.masks, features.resized_hw)
    return partition_masks(_regions(features, who))


def _regions(features: ImageFeatures, who: str) -> Tensor:
    if features.regions is None:
        raise ValueError(f"{who} needs the image's mask regions: compute the features with a mask model "
                         "(params.yaml backbone.masks, e.g. demo, then re-run the features stage)")
    return features.regions  # [H', W']


def _resized_image(features: ImageFeatures, who: str, device: str | torch.device) -> Tensor:
    if features.image_resized is None:
        raise ValueError(f"{who} needs the resized image: features.image_resized is None")
    return features.image_resized.to(device, non_blocking=True)  # [3, H', W']


def setting_from(setting: Setting | None, mode: str, values: dict[str, Any]) -> Setting:
    """The setting given as an object or by name (mode and values; not both)."""
    if setting is None:
        return Setting.from_flat(mode=mode, **values)
    if values:
        raise ValueError(f"give the setting as a Setting or by name, not both (got {sorted(values)})")
    return setting


def propagate_patches(features: ImageFeatures, seeds: Tensor, setting: Setting, device: str | torch.device) -> Tensor:
    """LPOSS: the seeds [N, C'] propagated on the patch graph of all windows together -> [N, C']."""
    graph, lp = setting.graph, setting.lp
    centers = patch_centers(features.layout, grid=features.grid, patch=features.crop // features.grid)  # [N, 2]
    vm_feats = features.vm_feats.to(device, non_blocking=True)  # [N, D]
    fractions = None
    if graph.region_beta != 1.0:
        regions = _regions(features, "graph.region_beta")
        fractions = patch_region_fractions(regions, features.layout, features.grid, features.crop).to(device)  # [N, R]
    S = patch_graph(vm_feats, centers.to(device, non_blocking=True), k=graph.k, gamma=graph.gamma,
                    sigma=graph.sigma, p=graph.p, regions=fractions, region_beta=graph.region_beta)
    return propagate(S, seeds, alpha=lp.alpha, method=lp.solver, maxiter=lp.maxiter, tol=lp.tol)


def predict_labels(features: ImageFeatures, background: dict[str, Any] | None = None, **params: Any) -> Tensor:
    """Label map [H, W] of one propagation setting under a background rule (`propagate_features` params)."""
    scores = propagate_features(features, background=background, **params)
    return labels_from_scores(scores, background or {"background": "synonyms"})


def segment(
    image: Any,
    class_names: list[str],
    mode: str = "lposs+",
    vlm: Any = None,
    vm: Any = None,
    device: str | torch.device = "cpu",
    background: dict[str, Any] | None = None,
    masks: Any = None,
    own_step: dict[str, Any] | None = None,
    **values: Any,
) -> Tensor:
    """Label map [H, W] (class indices into class_names) for one image.

    vlm / vm default to the paper's backbones (`lposs.models.factory.BackboneSpec()`: OpenCLIP ViT-B-16
    laion2b_s34b_b88k with MaskCLIP, DINO ViT-B/16), which need their weights. values: the windows (crop,
    stride, short_side, long_side: `settings.WindowSettings`) and the propagation setting (k, gamma, sigma,
    p, alpha, ..., refiner, r, tau: `settings.Setting`) by name. background: a protocol's rule, e.g.
    `lposs.models.protocols.resolve("sclip", "voc21")`. masks: a mask model (`lposs.models.masks`), whose
    regions the corrclip head, graph.region_beta, pixel.boundary_beta and the regions refiner read. own_step: for
    mode "own", the head's release's post-step (`lposs.models.protocols.own_step(head, dataset)`).
    """
    if not class_names:
        raise ValueError("class_names is empty: give at least one class, e.g. ['cow', 'grass', 'sky']")
    window_names = WindowSettings.names()
    windows = WindowSettings.from_mapping({k: v for k, v in values.items() if k in window_names}, "segment")
    setting = Setting.from_flat(where="segment", mode=mode,
                                **{k: v for k, v in values.items() if k not in window_names})
    if vlm is None or vm is None:
        from .models.factory import BackboneSpec, create_backbones

        default = create_backbones(BackboneSpec(), device=str(device))
        vlm, vm = vlm or default.vlm, vm or default.vm
    image = as_image_tensor(image).to(device)
    features = extract_features(image, class_names, vlm, vm, windows, masks=masks)
    return predict_labels(features, background=background, device=device, setting=setting, own_step=own_step)
