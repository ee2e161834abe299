"""SAM ViT's last-block attention and values on an image: what Trident's head reads of SAM.

    sam = SamAttention()                       # SAM ViT-B, the cached (or downloaded) sam_vit_b_01ec64.pth
    attn, v = sam(image)                       # image [3, H, W] in [0, 1] -> [heads, n, n], [heads, h_s, w_s, d]

Trident's release reads `image_encoder.last_attn` / `last_v`, which exist only in its modified copy of
segment-anything (`segment_anything/modeling/image_encoder.py:105-115, 226-244` there). This wrapper gets the
same two tensors from the pip package without copying it: a forward hook on the last block's attention
module keeps that module's input, and `last_block_attention` recomputes, from the module's own weights, what
its forward computes internally: q, k, v = qkv(x) split per head, softmax(scale q k^T + decomposed relative
position bias). The last block must use global attention (ViT-B's block 12 does).

As the release (`trident.py:117-132, 135-154`): the image's sides are first rounded up to multiples of 16,
`SamPredictor.set_image` resizes the long side to 1024 and pads, and only the patches of the image (not the
padding) are kept: h_s, w_s = the resized image's sides / 16. The release's Cityscapes rule (two halves, each
through SAM) is not reproduced: a Cityscapes image goes through SAM whole.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sam_masks import build_sam_vit_b, image_pixels

ROUND_TO = 16  # trident.py:138-140: the image's sides rounded up to multiples of this before SAM


def last_block_attention(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """segment-anything's `Attention` module and its input x [1, H, W, C] -> (softmaxed attention
    [heads, H W, H W], values [heads, H, W, d]), as its forward computes them."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    _, height, width, _ = x.shape
    qkv = attn.qkv(x).reshape(1, height * width, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, attn.num_heads, height * width, -1).unbind(0)  # [heads, H W, d] each
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # [heads, H W, H W]
    if attn.use_rel_pos:
        logits = add_decomposed_rel_pos(logits, q, attn.rel_pos_h, attn.rel_pos_w, (height, width), (height, width))
    return logits.softmax(dim=-1), v.view(attn.num_heads, height, width, -1)


def rounded_image(image: Tensor) -> np.ndarray:
    """image [3, H, W] in [0, 1] -> uint8 [H', W', 3], sides rounded up to multiples of 16 (bilinear)."""
    height, width = (-(-side // ROUND_TO) * ROUND_TO for side in image.shape[1:])
    if (height, width) != tuple(image.shape[1:]):
        image = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    return image_pixels(image)


class SamAttention:
    """SAM's last-block attention and values (see the module docstring). checkpoint: SAM ViT-B's weight file;
    "random": seeded random weights; None: torch hub's cached copy (downloaded when online). model: a built
    `segment_anything.modeling.Sam` to use instead (tests build a small one)."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu", model: Any = None,
                 seed: int = 0):
        from segment_anything import SamPredictor

        if model is None:
            model, weights = build_sam_vit_b(checkpoint, seed)
            self.id = f"sam_vit_b-{weights}"
        else:
            self.id = f"custom-{type(model).__name__}"
        block = model.image_encoder.blocks[-1]
        if getattr(block, "window_size", 0):
            raise ValueError("Trident reads SAM's last block with global attention; this model's last block "
                             f"attends in windows of {block.window_size}")
        self.predictor = SamPredictor(model.to(device).eval())
        self.patch = int(model.image_encoder.patch_embed.proj.kernel_size[0])

    @torch.no_grad()
    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """image [3, H, W] in [0, 1] -> (attention [heads, n, n], values [heads, h_s, w_s, d]), n = h_s w_s."""
        captured: list[Tensor] = []
        attn = self.predictor.model.image_encoder.blocks[-1].attn
        hook = attn.register_forward_hook(lambda _module, inputs, _out: captured.append(inputs[0]))
        try:
            self.predictor.set_image(rounded_image(image))
        finally:
            hook.remove()
        weights, values = last_block_attention(attn, captured[0])  # [heads, G G', G G'], [heads, G, G', d]
        grid = values.shape[1:3]
        rows, cols = (side // self.patch for side in self.predictor.input_size)
        weights = weights.view(-1, *grid, *grid)[:, :rows, :cols, :rows, :cols].reshape(-1, rows * cols, rows * cols)
        return weights.float(), values[:, :rows, :cols].float()
