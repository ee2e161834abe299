"""LPOSS and LPOSS+: training-free open-vocabulary segmentation by label propagation.

    import lposs
    S = lposs.patch_graph(feats, centers)              # normalised kNN x spatial patch graph
    F = lposs.propagate(S, Y, alpha=0.95)              # solve (I - alpha S) F = Y, batched CG
    scores = lposs.refine_pixels(image, scores)        # LPOSS+ pixel-level refinement
    labels = lposs.segment(image, ["cow", "grass", "sky"], mode="lposs+")

    @lposs.register_head("mine", title="My head")      # a head of your own, in any file (docs/heads.md)
    def mine(visual, windows, **params): ...           # CLIP-normalised windows -> features [B, h, w, D]

The package, room by room (each imports only the rooms above it in this list):

    io            files: atomic writes with the usual mode, JSON, md5, PNG label maps
    hardware      what the CPU offers: physical cores, native bfloat16
    import_graph  the package's imports read from its source (the feature store's code fingerprint, the tests)
    plugins       heads from outside the package: files or modules that call register_head
    kernels/      the Triton kernels of the CUDA path (stencil, CG update); the torch code is the reference
    core/         the maths: propagation, graphs, windows, metrics, refiners (LPOSS+, best, PAMR), scoring
    settings      the settings, declared once: graph, propagation, pixel refiner, windows
    datasets/     the benchmarks: registry, loaders, fetch and convert, MESS
    demo/         the embedded offline demo: generated scenes, stand-in backbones
    models/       heads (one record per release: records, heads_*/), backbones, weights, protocols, the factory
    image_features  one image's features: both backbones over its windows
    segmentation  one image end to end: backbones -> seeds -> patch LP -> canvas -> pixel LP -> classes
    experiment/   what the DVC stages run: parameters, staging, the feature store, the evaluation loop,
                  ablations, streaming evaluation, executors and shards, results tables, the paper command
    app/          the CLI and the web app, and what they share

The public names below are imported on first use, so `import lposs.core.propagation` loads only the maths.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "PixelGraph": "core.graphs", "patch_graph": "core.graphs",
    "dense_clip_features": "models.heads",
    "SegmentationMetrics": "core.metrics", "mean_iou": "core.metrics",
    "normalize_adjacency": "core.propagation", "propagate": "core.propagation",
    "refine_pixels": "core.refine",
    "ImageFeatures": "image_features", "extract_features": "image_features",
    "propagate_features": "segmentation", "segment": "segmentation",
    "merge_windows": "core.windows", "resized_size": "core.windows", "window_layout": "core.windows",
    "Setting": "settings", "WindowSettings": "settings",
    "BackboneSpec": "models.factory", "create_backbones": "models.factory",
    "register_head": "models.head_registry", "HeadRecord": "models.records", "Published": "models.records",
    "load_plugins": "plugins",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lposs' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
