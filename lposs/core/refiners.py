"""The named pixel refiners of LPOSS+ and their settings, as data (`refine.refine_pixels` runs them).

Kept apart from the code that runs them so that what only names a refiner (the settings, the CLI, the
web page's choices) does not depend on how it runs. What each setting means: see `lposs.core.refine`.
"""

from __future__ import annotations

from typing import Any

from .defaults import ALPHA, MAXITER, PIXEL_R, PIXEL_TAU, TOL

PAMR_ITERATIONS = 10  # NACLIP's PAMR: 10 iterations at dilations (8, 16)
PAMR_DILATIONS = (8, 16)

_LP = {"method": "lp", "r": PIXEL_R, "alpha": ALPHA, "tol": TOL}
REFINERS: dict[str, dict[str, Any]] = {
    "reference": {**_LP, "tau": PIXEL_TAU, "maxiter": MAXITER, "evidence": "scores", "temperature": 1.0,
                  "smooth_steps": 0, "relax_steps": 0, "seed_confidence": 0.0},
    "relaxed": {**_LP, "tau": 0.015, "maxiter": 5, "evidence": "clipped", "temperature": 1.0,
                "smooth_steps": 0, "relax_steps": 4, "seed_confidence": 1.0},
    "tempered": {**_LP, "tau": 0.015, "maxiter": 5, "evidence": "tempered", "temperature": 0.25,
                 "smooth_steps": 2, "relax_steps": 3, "seed_confidence": 1.0},
    "pamr": {"method": "pamr", "iterations": PAMR_ITERATIONS, "dilations": PAMR_DILATIONS},
    "regions": {"method": "region_vote"},  # each mask region takes its mean scores (lposs.core.regions)
}
REFINERS["best"] = REFINERS["tempered"]
# the refiners that need an image's mask regions (a feature store with backbone.masks); the CLI and the web
# page segment a single image without a mask model, so they offer the others
REGION_REFINERS = tuple(name for name, settings in REFINERS.items() if settings["method"] == "region_vote")
IMAGE_REFINERS = tuple(name for name in REFINERS if name not in REGION_REFINERS)
EVIDENCE = ("scores", "clipped", "tempered")  # how an LP refiner reads the scores (see `class_evidence`)
