"""The releases' own post-steps on a head's scores, run by name so that a table sets each beside LPOSS.

    refined = run_own_step(canvas, image, {"name": "tlp", "grid": 80}, text_affinity)
        canvas [C', H, W] query scores (cosines, before any logit scale), image [3, H, W] in [0, 1],
        text_affinity [C'] (`tlp.text_self_affinity` of the queries' embeddings; TLP reads only that) -> [C', H, W]

    tlp    PEARL's text-aware label propagation (`lposs.core.tlp`) on the CLIP-normalised image; params: grid
    pamr   NACLIP's PAMR (`lposs.core.pamr`, 10 iterations at dilations 8 and 16); params: iterations, dilations

Which release has which step, with its per-dataset values: `lposs.models.protocols.own_step`. Both steps return
scores of the size they were given, so the background rule and the argmax apply after them as after the head.
Here they run on the canvas that LPOSS+ refines (the windows' scores merged at the resized image size), so the
rows "head + own step" and "head + LPOSS+" start from the same scores; the releases resize the logits to the
original image first (PEARL pools them to about 80 x 80 for TLP either way).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .pamr import clip_normalise, pamr
from .tlp import tlp

OWN_STEPS = ("tlp", "pamr")


def run_own_step(canvas: Tensor, image: Tensor, step: dict[str, Any], text_affinity: Tensor | None = None) -> Tensor:
    """Apply step {"name": one of OWN_STEPS, **its params} to canvas [C', H, W] with image [3, H, W] in [0, 1]."""
    name, params = step.get("name"), {key: value for key, value in step.items() if key != "name"}
    if name not in OWN_STEPS:
        raise ValueError(f"unknown own step {name!r}; the steps are {', '.join(OWN_STEPS)}")
    if tuple(image.shape[1:]) != tuple(canvas.shape[1:]):
        raise ValueError(f"own step {name}: image {tuple(image.shape)} and scores {tuple(canvas.shape)} differ in size")
    if name == "pamr":
        return pamr(image.to(canvas.dtype), canvas, **params)
    if text_affinity is None or text_affinity.shape != canvas.shape[:1]:
        raise ValueError(f"TLP needs the queries' text self-affinity [{canvas.shape[0]}], got "
                         f"{None if text_affinity is None else tuple(text_affinity.shape)}: features stored "
                         "before it was kept must be recomputed (re-run the features stage)")
    normalised = clip_normalise(image.to(canvas.dtype))[None]  # [1, 3, H, W]
    return tlp(canvas[None], normalised, self_affinity=text_affinity.to(canvas), **params)[0]  # [C', H, W]
