"""What the releases' protocols share, for the records that declare them (lposs.models.protocols merges them).

    SOFTMAX      the SCLIP family's scoring (softmax over queries, thresholds, OpenAI weights, long side 2048)
    WINDOWS_2025 the 2025 releases' base: SOFTMAX at logit scale 40, windows 224 / 112, short side 336, SCLIP's
                 class files, no post-step, no head parameters
    PROTOCOL_KEYS what every protocol's base names
    WHOLE_IMAGE  a dataset a release runs as one whole-image window (slide_crop=0): recorded, and named as a
                 deviation, since here the windows stay crop / stride
"""

from __future__ import annotations

from typing import Any

# what every protocol's base names (lposs.models.records checks a record's protocol against it)
PROTOCOL_KEYS = ("background", "logit_scale", "prob_thd", "area_thd", "crop", "stride", "short_side", "long_side",
                 "classes", "clip", "post", "source")
SOFTMAX: dict[str, Any] = {"background": "softmax", "prob_thd": 0.0, "area_thd": None, "long_side": 2048,
                           "clip": "openai"}
WINDOWS_2025: dict[str, Any] = {**SOFTMAX, "logit_scale": 40.0, "crop": 224, "stride": 112, "short_side": 336,
                                "classes": "sclip", "post": None, "head_params": {}, "whole_image": False}
WHOLE_IMAGE: dict[str, Any] = {"whole_image": True,
                               "deviation": "release: whole-image inference (slide_crop=0); here 224/112 windows"}
