"""Colour: sRGB -> CIELAB (D65), the colour space of the LPOSS+ pixel graph (same formulas as kornia's
rgb_to_lab), and the per-channel normalisation constants of the models whose inputs the maths reads."""

import torch
from torch import Tensor

_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])  # kornia's D65 white
LAB_SCALE = (100.0, 128.0, 128.0)  # LPOSS+ divides L, a, b by these
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's input normalisation (PAMR reads it too)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's DINO models
IMAGENET_STD = (0.229, 0.224, 0.225)


def rgb_to_lab(image: Tensor) -> Tensor:
    """[3, H, W] (or [B, 3, H, W]) sRGB in [0, 1] -> L in [0, 100], a and b in about [-128, 127]."""
    if image.shape[-3] != 3:
        raise ValueError(f"expected RGB with 3 channels in dim -3, got shape {tuple(image.shape)}")
    linear = torch.where(image > 0.04045, ((image + 0.055) / 1.055).pow(2.4), image / 12.92)
    matrix = _RGB_TO_XYZ.to(image.device, image.dtype, non_blocking=True)  # no stream sync on a GPU
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear)
    xyz = xyz / _WHITE_D65.to(image.device, image.dtype, non_blocking=True)[:, None, None]
    threshold = 0.008856
    f = torch.where(xyz > threshold, xyz.clamp(min=threshold).pow(1.0 / 3.0), 7.787 * xyz + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-3)
    L = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack([L, a, b], dim=-3)


def scaled_lab(image: Tensor) -> Tensor:
    """Lab with each channel divided by (100, 128, 128), as the LPOSS+ colour distance uses it."""
    scale = torch.tensor(LAB_SCALE, dtype=image.dtype).to(image.device, non_blocking=True)
    return rgb_to_lab(image) / scale[:, None, None]
