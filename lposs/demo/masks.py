"""The demo's stand-in for a class-agnostic mask model (SAM, SAM 2): regions of similar colour.

    masks = DemoMasks()
    regions = masks.regions(image)   # image [3, H, W] in [0, 1] -> LongTensor [H, W], 0 where no region

Like the other stand-ins (`lposs.demo.backbones`) it reads only the image, never the labels: the image is
smoothed (a box filter of `smooth` pixels), its colours are clustered (k-means with `colours` centres from a fixed
seed), and every connected component of one colour that covers at least `min_area` of the image becomes a
region, numbered by decreasing area from 1; smaller pieces stay 0, as a mask generator leaves gaps between masks.
On the generated scenes the regions follow most object boundaries and merge look-alike neighbours (grass and
trees of similar green), which is what a real mask model's errors look like too. It says nothing about SAM.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class DemoMasks:
    """Colour-segment regions of an image (see the module docstring)."""

    def __init__(self, colours: int = 8, smooth: int = 5, min_area: float = 0.002, iterations: int = 10,
                 seed: int = 0):
        self.colours, self.smooth, self.min_area, self.iterations, self.seed = colours, smooth, min_area, iterations, seed
        self.id = f"demo-masks-k{colours}-s{smooth}-a{min_area:g}-i{iterations}-seed{seed}"

    @torch.no_grad()
    def regions(self, image: Tensor) -> Tensor:
        """image [3, H, W] in [0, 1] -> region ids [H, W] (int64; 0 = no region)."""
        from scipy import ndimage

        smooth = F.avg_pool2d(image[None].float().cpu(), self.smooth, stride=1, padding=self.smooth // 2,
                              count_include_pad=False)[0]  # [3, H, W]
        colour = self._cluster(smooth.reshape(3, -1).T).reshape(image.shape[1:]).numpy()  # [H, W]
        out = np.zeros(colour.shape, dtype=np.int64)
        pieces = []
        for c in range(self.colours):
            labelled, count = ndimage.label(colour == c)
            sizes = np.bincount(labelled.ravel(), minlength=count + 1)
            pieces += [(int(sizes[i]), c, i, labelled) for i in range(1, count + 1)
                       if sizes[i] >= self.min_area * colour.size]
        for region, (_, _, i, labelled) in enumerate(sorted(pieces, key=lambda p: (-p[0], p[1], p[2])), start=1):
            out[labelled == i] = region
        return torch.from_numpy(out)

    def _cluster(self, pixels: Tensor) -> Tensor:
        """k-means of pixels [P, 3] from `colours` pixels drawn with the fixed seed -> assignments [P]."""
        generator = torch.Generator().manual_seed(self.seed)
        centres = pixels[torch.randperm(len(pixels), generator=generator)[: self.colours]].clone()  # [k, 3]
        for _ in range(self.iterations):
            assign = torch.cdist(pixels, centres).argmin(dim=1)  # [P]
            for c in range(len(centres)):
                members = pixels[assign == c]
                if len(members):
                    centres[c] = members.mean(dim=0)
        return torch.cdist(pixels, centres).argmin(dim=1)
