"""LPOSS and LPOSS+: training-free open-vocabulary segmentation by label propagation.

    import lposs
    S = lposs.patch_graph(feats, centers)              # normalised kNN x spatial patch graph
    F = lposs.propagate(S, Y, alpha=0.95)              # solve (I - alpha S) F = Y, batched CG
    scores = lposs.refine_pixels(image, scores)        # LPOSS+ pixel-level refinement
    labels = lposs.segment(image, ["cow", "grass", "sky"], mode="lposs+")
"""

from .graphs import PixelGraph, patch_graph
from .heads import dense_clip_features
from .metrics import SegmentationMetrics, mean_iou
from .propagation import normalize_adjacency, propagate
from .refine import refine_pixels
from .segment import ImageFeatures, extract_features, propagate_features, segment
from .windows import merge_windows, resized_size, window_layout

__version__ = "0.1.0"

__all__ = [
    "PixelGraph",
    "ImageFeatures",
    "SegmentationMetrics",
    "dense_clip_features",
    "extract_features",
    "mean_iou",
    "merge_windows",
    "normalize_adjacency",
    "patch_graph",
    "propagate",
    "propagate_features",
    "refine_pixels",
    "resized_size",
    "segment",
    "window_layout",
]
