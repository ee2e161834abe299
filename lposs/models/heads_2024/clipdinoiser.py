"""CLIP-DINOiser (Wysoczańska, Siméoni, Ramamonjisoa, Bursuc, Trzciński, Pérez, ECCV 2024;
wysoczanska/clip_dinoiser@a954aae): MaskCLIP's features pooled by a correlation that two small TRAINED convolutions
learnt from DINO. Not training-free: 1,770,497 parameters trained on 1000 ImageNet images (train.py).

Per window (models/clip_dinoiser/clip_dinoiser.py:228-295, models/maskclip/maskclip.py), x_l the output of CLIP
block l, the blocks run sequence-first as open_clip 2.24 ran them (lposs.models.vit.block_as_released):

    F  = proj(ln_post(y + MLP(ln_2 y)))[patches],  y = x_11 + W_o v + b_o       our `maskclip` head exactly; NOT unit
    G  = ln_2(x_9 + Attn(ln_1 x_9))[patches]       block 10's ln_2 output (the hook on resblocks[-3].ln_2), [W, h, w]
    P  = unit_channels(obj_proj(G))                 Conv2d(W, 256, 3 x 3, padding 1, REPLICATE padding, bias)
    C  = P^T P, then C[C < 0.2] = 0                 cosines between patches, thresholded (gamma) before any sum
    F' = sum_j C_ij F_j / (sum_j C_ij + 1e-6)       the self-weight C_ii = 1 included
    b  = sigmoid(bkg_decoder(unit_channels(G)))     Conv2d(W, 1, 1 x 1, bias): the background probability

then softmax(100 cos(F', T)) over the classes. On VOC21 and COCO-Object (main_eval.py:38-40) FOUND's rule overrides
it: where b <= 0.5 and max_K P < 0.99, P[background] = 1.0 (:286-293). Here that rule is part of the head (parameter
`found`, on in the protocol where the release applies it): such a patch's feature becomes the background query's
embedding (the first query of the class list), so its cosine with it is 1 and the softmax at scale 100 gives
background the top probability, the label the release gives that patch. Only the probability values differ at those
patches (the release keeps the others and writes 1.0 beside them); they matter where windows and pixels are blended.

The two convolutions come from the release's checkpoints/last.pt ({'epoch', 'model_state_dict'} with exactly
obj_proj.weight [256, 768, 3, 3], obj_proj.bias [256], bkg_decoder.weight [1, 768, 1, 1], bkg_decoder.bias [1];
train.py:31-37, 89-92), served by GitHub at the release commit; torch hub caches it as `last.pt`. A file with another
key or shape is refused, naming it (the release loads with strict=False, which would keep random weights). Parameter
`checkpoint`: None = that file, a local file, or "random" (seeded random weights of the same shapes, what random
CLIP weights get).

Not reproduced: the release averages the windows' PROBABILITIES (448 windows, stride 224, short side 448; mmseg
0.27's slide inference); the package averages the windows' cosines, then takes the softmax (recorded as a deviation).
The release's demo turns FOUND on whenever a prompt is 'background' and runs the whole image as one window.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..heads_2025.common import aggregate, threshold
from ..loading import BackboneUnavailable, seeded, torch_hub_weights
from ..protocol_bases import SOFTMAX
from ..records import Published, TrainedWeights, register_head
from ..vit import attention_as_released, block_as_released, embedded_tokens
from .maskclip import maskclip

COMMIT = "a954aae6fb61f5ff18834e50a0c78a2258cd9afb"
CHECKPOINT_URL = f"https://raw.githubusercontent.com/wysoczanska/clip_dinoiser/{COMMIT}/checkpoints/last.pt"
WHAT = "CLIP-DINOiser's two trained convolutions (the release's checkpoints/last.pt)"
CHECKPOINT_SHAPES = {"obj_proj.weight": (256, 768, 3, 3), "obj_proj.bias": (256,),
                     "bkg_decoder.weight": (1, 768, 1, 1), "bkg_decoder.bias": (1,)}
GUIDE_BLOCK = -3  # clip_dinoiser.yaml feats_idx: resblocks[-3], block 10 of 12
TRAINING = "trained (light): 2 convolutions, 1.77 M parameters, on 1k ImageNet images"
DEFAULTS: dict[str, Any] = {"interpolation": "lposs", "checkpoint": None, "gamma": 0.2, "found": False,
                            "delta": 0.99, "logit_scale": 100.0, "text": None}


class Convolutions(nn.Module):
    """The release's two trained layers (CLIP_DINOiser.__init__, clip_dinoiser.py:228-239)."""

    def __init__(self, width: int = 768, channels: int = 256, kernel: int = 3) -> None:
        super().__init__()
        self.bkg_decoder = nn.Conv2d(width, 1, (1, 1))
        self.obj_proj = nn.Conv2d(width, channels, (kernel, kernel), padding=kernel // 2, padding_mode="replicate")


def load_convolutions(path: str | os.PathLike) -> Convolutions:
    """The release's checkpoint file -> its convolutions; BackboneUnavailable naming any key or shape that is not
    the release's."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file: name it
        raise BackboneUnavailable(f"{path} is not a torch checkpoint of {WHAT}: {error}") from error
    weights = state.get("model_state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise BackboneUnavailable(f"{path} is not {WHAT}: it holds no 'model_state_dict' "
                                  f"(keys: {sorted(state) if isinstance(state, dict) else type(state).__name__})")
    problems = [f"missing key {key!r}" for key in CHECKPOINT_SHAPES if key not in weights]
    problems += [f"unexpected key {key!r}" for key in weights if key not in CHECKPOINT_SHAPES]
    problems += [f"{key} has shape {list(weights[key].shape)}, the release's {list(shape)}"
                 for key, shape in CHECKPOINT_SHAPES.items()
                 if key in weights and tuple(getattr(weights[key], "shape", ())) != shape]
    if problems:
        raise BackboneUnavailable(f"{path} is not {WHAT}: " + "; ".join(problems))
    convolutions = Convolutions()
    convolutions.load_state_dict(weights, strict=True)
    return convolutions.eval()


@functools.lru_cache(maxsize=4)
def release_convolutions(checkpoint: str | os.PathLike | None = None, width: int = 768) -> Convolutions:
    """The convolutions the `checkpoint` parameter names (None: the release's published file; "random": seeded
    random weights of the release's shapes, reading `width` channels: 768 for ViT-B, the release's only width),
    loaded once. Offline without the file: BackboneUnavailable within seconds, naming the file, torch hub's folder
    and the command that fetches it."""
    if checkpoint == "random":
        return seeded(0, lambda: Convolutions(width)).eval()
    convolutions = load_convolutions(torch_hub_weights(checkpoint, CHECKPOINT_URL, WHAT, None))
    if width != convolutions.obj_proj.in_channels:
        raise ValueError(f"{WHAT} read {convolutions.obj_proj.in_channels} channels (a ViT-B's); this CLIP's blocks "
                         f"are {width} wide: use a ViT-B CLIP, or checkpoint='random'")
    return convolutions


# ----------------------------------------------------------------------------------------------------
# The head's steps
# ----------------------------------------------------------------------------------------------------


def guide_and_last_input(visual: nn.Module, windows: Tensor, interpolation: str) -> tuple[Tensor, Tensor]:
    """CLIP-normalised windows [B, 3, H, W] -> (G = block 10's ln_2 output, x_11 entering the last block), each
    [B, 1 + N, W]; every block run sequence-first with torch's unfused attention, as the release's open_clip 2.24."""
    blocks = visual.transformer.resblocks
    guide_index = len(blocks) + GUIDE_BLOCK
    x = embedded_tokens(visual, windows, interpolation).transpose(0, 1)  # [L, B, W]
    for index, block in enumerate(blocks[:-1]):
        if index == guide_index:
            y = attention_as_released(block, x)
            guide = block.ln_2(y)
            x = y + block.ls_2(block.mlp(guide))
        else:
            x = block_as_released(block, x)
    return guide.transpose(0, 1), x.transpose(0, 1)


def correlations(convolutions: Convolutions, guide: Tensor, gamma: float) -> Tensor:
    """G [B, W, h, w] -> C [B, N, N]: cosines of obj_proj(G) between patches, entries < gamma set to 0."""
    projected = convolutions.obj_proj(guide).flatten(2)  # [B, 256, N]
    projected = projected / projected.norm(dim=1, keepdim=True)
    return threshold(projected.transpose(1, 2) @ projected, gamma)


def background_probability(convolutions: Convolutions, guide: Tensor) -> Tensor:
    """G [B, W, h, w] -> sigmoid(bkg_decoder(G / ||G||)) [B, N]."""
    return torch.sigmoid(convolutions.bkg_decoder(guide / guide.norm(dim=1, keepdim=True))).flatten(1)


def found_override(pooled: Tensor, background: Tensor, text: Tensor, logit_scale: float, delta: float) -> Tensor:
    """FOUND's rule on pooled features [B, N, D]: where background [B, N] <= 0.5 and the top class probability of
    softmax(logit_scale cos(F', T)) is < delta, the feature becomes the first query's (text [C', D], unit rows)."""
    probabilities = torch.softmax(logit_scale * F.normalize(pooled, dim=-1) @ text.T.to(pooled.dtype), dim=-1)
    found = (probabilities.amax(dim=-1) < delta) & (background <= 0.5)  # [B, N]
    return torch.where(found[..., None], text[0].to(pooled.dtype), pooled)


def clipdinoiser_features(visual: nn.Module, windows: Tensor, convolutions: Convolutions,
                          settings: dict[str, Any]) -> Tensor:
    """CLIP-normalised windows [B, 3, H, W] -> F' [B, h, w, D] after proj, not normalised (FOUND's rule applied when
    settings["found"], reading the query embeddings settings["text"])."""
    batch, patch = windows.shape[0], int(visual.patch_size[0])
    grid = (windows.shape[2] // patch, windows.shape[3] // patch)
    guide, x_last = guide_and_last_input(visual, windows, settings["interpolation"])  # [B, 1 + N, W] each
    tokens, _ = maskclip(visual.transformer.resblocks[-1], x_last, grid, settings, None)  # [B, N, W]
    feats = visual.ln_post(tokens) @ visual.proj  # F [B, N, D]
    guide = guide[:, 1:].transpose(1, 2).reshape(batch, -1, *grid)  # G [B, W, h, w], CLS dropped
    convolutions = convolutions.to(device=guide.device)
    pooled = aggregate(correlations(convolutions, guide, float(settings["gamma"])), feats)  # [B, N, D]
    if settings["found"]:
        if settings["text"] is None:
            raise ValueError("head 'clipdinoiser' with found=True needs the class list's query embeddings (text=, "
                             "the first query being the background's)")
        pooled = found_override(pooled, background_probability(convolutions, guide), settings["text"],
                                float(settings["logit_scale"]), float(settings["delta"]))
    return pooled.reshape(batch, *grid, -1)


def check(settings: dict[str, Any]) -> None:
    if not isinstance(settings["found"], bool):
        raise ValueError(f"found={settings['found']!r}: True or False (FOUND's background rule)")
    if not -1.0 <= float(settings["gamma"]) <= 1.0:
        raise ValueError(f"gamma={settings['gamma']!r}: a cosine threshold in [-1, 1]")
    if not 0.0 < float(settings["delta"]) <= 1.0 or not float(settings["logit_scale"]) > 0:
        raise ValueError(f"delta={settings['delta']!r} must be in (0, 1] and logit_scale={settings['logit_scale']!r} "
                         "positive")
    if settings["checkpoint"] is not None and not isinstance(settings["checkpoint"], (str, os.PathLike)):
        raise ValueError(f"checkpoint={settings['checkpoint']!r}: None (the release's file), a path, or 'random'")


# segmentation/configs/_base_/datasets/*.py: short side 448 (img_scale (2048, 448)), slide 448 / 224; cls_seg's
# softmax(100 cos); no thresholds; the datasets' CLASSES verbatim (protocol_classes/clipdinoiser); OpenCLIP laion2b
WINDOW_AVERAGE = ("the release averages its windows' softmax(100 cos) probabilities; here the windows' cosines are "
                  "averaged, then the softmax")
FOUND = {"head_params": {"found": True},
         "deviation": WINDOW_AVERAGE + "; FOUND's background rule runs in the head, per window: a patch it sends to "
                                       "background gets the background query's feature (the release's label there, "
                                       "not its probabilities)"}
PROTOCOL = {
    "base": {**SOFTMAX, "logit_scale": 100.0, "crop": 448, "stride": 224, "short_side": 448, "classes": "clipdinoiser",
             "clip": "laion2b_s34b_b88k", "post": None, "head_params": {}, "deviation": WINDOW_AVERAGE,
             "source": "wysoczanska/clip_dinoiser a954aae segmentation/configs/_base_/datasets/*.py, main_eval.py"},
    "datasets": {"voc21": FOUND, "coco_object": FOUND},
}


@register_head(
    "clipdinoiser", title="CLIP-DINOiser", kind="window", defaults=DEFAULTS, check=check, reads=("text",),
    trained=TrainedWeights(release_convolutions), training=TRAINING, protocol=PROTOCOL,
    release="wysoczanska/clip_dinoiser@a954aae", year=2024,
    published=(Published(f"CLIP-DINOiser (OpenCLIP laion2b; {TRAINING})",
                         (62.1, 32.4, 34.8, 80.9, 31.7, 35.9, 20.0, 24.6), 40.3,
                         "the CLIP-DINOiser paper (arXiv 2312.12359) as others quote it: VOC20, PC59, Stuff, ADE20K as "
                         "in yasserben/FLOSS's README (which gives Cityscapes 31.1), Cityscapes 31.7 and ADE20K 20.0 "
                         "on wizwand's page; VOC21, PC60 and COCO-Object without a second source"),),
)
def clipdinoiser(visual: nn.Module, windows: Tensor, **settings: Any) -> Tensor:
    """Windows [B, 3, H, W] (CLIP-normalised) -> F' [B, h, w, D] after proj, with the convolutions the `checkpoint`
    parameter names."""
    width = int(visual.transformer.width)
    return clipdinoiser_features(visual, windows, release_convolutions(settings["checkpoint"], width), settings)
