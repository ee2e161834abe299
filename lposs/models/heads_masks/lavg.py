"""LaVG (Kang and Cho, "In defense of lazy visual grounding for open-vocabulary semantic segmentation", ECCV 2024;
dahyun-kang/lavg@2db88e5): object masks first, labels second.

  1. Panoptic Cut, offline and vocabulary-free (`lposs.models.panoptic_cut`, the mask model "panoptic_cut"):
     up to 8 object masks per image from normalized cuts on DINO ViT-B/8's keys and a dense CRF, plus their
     complement; the masks overlap where the CRF grew them;
  2. the dense head: SCLIP's last block exactly (clip/model.py:249-257, 297-303; `lposs.models.heads_2024.sclip`,
     reused here, not copied), OpenAI ViT-B/16;
  3. lazy grounding, per 224 window BEFORE the windows are averaged (clip_segmentor.py:62-97): each mask's pixels
     in the window take the mean logits of the mask's pixels there, the complement first and mask 0 last; on
     VOC21 the complement can only be background. In `lposs` this is the own step `lavg_vote`
     (`lposs.core.mask_vote`), a window step: it replaces the plain merge of the windows for the row "+ own step",
     reading the masks the features stage stored with the seeds.

Its protocol is SCLIP's configs (LaVG's configs/cfg_*.py differ only in their data roots) and SCLIP's class files
(byte for byte); PAMR is off (eval.py:14). Training-free; the DINO of step 1 is self-supervised, not trained for
segmentation. Not reproduced: CLIP runs in float32 here (the release: float16, `clip.load` on CUDA).
"""

from __future__ import annotations

from ..heads_2024.sclip import sclip
from ..protocol_bases import SOFTMAX
from ..records import HeadRecord, Published, register_head

PROTOCOL = {
    "base": {**SOFTMAX, "logit_scale": 40.0, "crop": 224, "stride": 112, "short_side": 336, "classes": "sclip",
             "post": "lavg_vote", "post_params": {"complement_to_background": False},
             "source": "dahyun-kang/lavg 2db88e5 configs/cfg_*.py, clip_segmentor.py"},
    "datasets": {"voc21": {"logit_scale": 65.0, "prob_thd": 0.1, "area_thd": 0.1,
                           "post_params": {"complement_to_background": True}},  # clip_segmentor.py:36, 92-95
                 "context60": {"logit_scale": 50.0, "prob_thd": 0.1},
                 "coco_object": {"logit_scale": 50.0, "prob_thd": 0.1},
                 "cityscapes": {"short_side": 560}, "coco_stuff": {"short_side": 448}},
}

register_head(HeadRecord(
    name="lavg", title="LaVG", function=sclip, kind="last_block", defaults={"interpolation": "sclip"},
    masks="panoptic_cut", protocol=PROTOCOL, release="dahyun-kang/lavg@2db88e5", year=2024,
    published=(Published("LaVG (OpenAI CLIP + Panoptic Cut masks from DINO ViT-B/8, training-free)",
                         (62.1, 31.6, 34.2, 82.5, 26.2, 34.7, 15.8, 23.2), 38.8,
                         "LaVG's README (dahyun-kang/lavg 2db88e5 README.md, its results table)"),),
))
