"""Panoptic Cut: LaVG's class-agnostic mask model (Kang and Cho, ECCV 2024; dahyun-kang/lavg@2db88e5
panoptic_cut/), with no SAM: normalized cuts on DINO ViT-B/8's keys, then a dense CRF per mask.

    masks = PanopticCut.dino()                   # DINO ViT-B/8 from the cache; PanopticCut.dino("random") for tests
    out = masks.masks(image)                     # image [3, H, W] in [0, 1] -> bool [M + 1, H, W], M <= 8
    regions = masks.regions(image)               # [H, W] ids: 1 + the first mask covering the pixel

As released (predict.py:71-134, panoptic_cut.py:115-131, dino.py:202-324, crf.py, utils.py):
  1. the image (RGB uint8) is resized to a SQUARE of 640 x 640 by PIL's LANCZOS (its aspect is lost), ImageNet
     mean / std;
  2. keys: DINO ViT-B/8's LAST block, from its qkv projection (heads concatenated head-major), CLS dropped ->
     [768, 80 * 80]. The position embedding is resized from 28 x 28 by DINO's own rule: bicubic with
     scale_factor (80 + 0.1) / 28 (`dino_position_embedding`; timm's dynamic resize is antialiased bicubic, other
     numbers), and the attention is computed as DINO's code does (softmax(q k^T / 8) explicitly: timm's fused
     kernel rounds otherwise), so the keys are DINO's to the last bit;
  3. the cut loop (`lposs.models.ncut`): up to 8 patch masks, nearest-upsampled to 640 x 640;
  4. per mask: the dense CRF (`lposs.models.dense_crf`) on the 640 x 640 image, scipy's binary_fill_holes; a mask
     whose IoU with its pre-CRF self is below 0.5 becomes EMPTY (its channel is kept); PIL's resize (mode L,
     Pillow's default BICUBIC) of the 0 / 255 mask to the image's size, thresholded at half its maximum (the
     release keeps the values {min, max}: a mask covering nearly all the image keeps its minimum where it fades,
     which is not 0, so it covers every pixel);
  5. the complement: the pixels no mask covers, appended last.
The release saves the stack [M + 1, H, W] of those uint8 values (masks 0 / 255, complement 0 / 1) and LaVG reads
it as bool (clip_segmentor.py:130): `masks` returns those bools, the same information.

Not reproduced on purpose: the release seeds nothing (lobpcg's starts continue the GPU's RNG stream across the
images of a run); here every image's cut runs under `seed` (default 0) on the CPU generator, so an image's masks
depend on it alone. The release draws on the GPU, whose generator gives other numbers for the same seed.

`keys`: what plays DINO's part, a callable image [1, 3, S, S] in [0, 1] -> (keys [C, N], grid), with
`patch_size` and `id`: `DinoKeys` (the release's), `DemoKeys` (the offline demo's stand-in, `lposs.demo`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.color import IMAGENET_MEAN, IMAGENET_STD
from ..core.regions import masks_to_regions
from .dense_crf import dense_crf, import_pydensecrf
from .loading import load_timm, weights_label
from .ncut import MAX_MASKS, TAU, cut_masks

SIZE = 640  # predict.py:174 (--imgsize)
MIN_IOU = 0.5  # predict.py:121
DINO = "vit_base_patch8_224.dino"  # the release's dino_vitbase8_pretrain.pth (facebookresearch/dino), in timm


def dino_position_embedding(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """DINO's interpolate_pos_encoding (dino.py:202-222): pos_embed [1, 1 + n * n, C] -> [1, 1 + gh * gw, C];
    the patch part resized bicubically with scale_factor ((gh + 0.1) / n, (gw + 0.1) / n), unchanged on the
    native square grid."""
    native = int(math.sqrt(pos_embed.shape[1] - 1))
    if tuple(grid) == (native, native):
        return pos_embed
    patch = pos_embed[:, 1:].reshape(1, native, native, -1).permute(0, 3, 1, 2)  # [1, C, n, n]
    patch = F.interpolate(patch, scale_factor=((grid[0] + 0.1) / native, (grid[1] + 0.1) / native), mode="bicubic")
    if tuple(patch.shape[-2:]) != tuple(grid):
        raise ValueError(f"DINO's rule resized the position embedding to {tuple(patch.shape[-2:])}, not {grid}")
    return torch.cat([pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


class DinoKeys:
    """DINO's last-block keys of a timm ViT (DINO ViT-B/8 as released; any timm ViT with a class token and an
    absolute position embedding, e.g. a tiny one in tests): image [1, 3, S, S] in [0, 1] -> ([C, N], grid)."""

    def __init__(self, model: nn.Module, label: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        for block in self.model.blocks:  # DINO's explicit softmax(q k^T / 8) (dino.py:70-80), not a fused kernel
            block.attn.fused_attn = False
        self.device = torch.device(device)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.id = label  # the model and its weights, e.g. "timm-vit_base_patch8_224.dino-pretrained"

    @torch.no_grad()
    def __call__(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        x = (image.to(self.device, torch.float32) - mean) / std
        model = self.model
        patches = model.patch_embed.proj(x)  # [1, C, gh, gw]; DINO's patch embedding has no norm
        grid = tuple(patches.shape[-2:])
        tokens = torch.cat([model.cls_token, patches.flatten(2).transpose(1, 2)], dim=1)  # [1, 1 + N, C]
        tokens = tokens + dino_position_embedding(model.pos_embed, grid)
        for block in model.blocks[:-1]:
            tokens = block(tokens)
        last = model.blocks[-1]
        qkv = last.attn.qkv(last.norm1(tokens))  # [1, 1 + N, 3 C]: (q, k, v) x heads x head_dim
        width = qkv.shape[-1] // 3
        return qkv[0, 1:, width : 2 * width].T.float(), grid  # [C, N]: keys, heads head-major, CLS dropped


class DemoKeys:
    """The offline demo's stand-in for DINO's keys: `lposs.demo.DemoVM`'s colour features ("k", random Fourier
    features of each 16-pixel patch's mean colour), so the cuts follow colour on the generated scenes."""

    def __init__(self, device: str = "cpu") -> None:
        from ..demo import DemoVM

        self.vm = DemoVM("k", device=device)
        self.patch_size, self.id = self.vm.patch_size, self.vm.id

    def __call__(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        feats = self.vm.dense_features(image)[0]  # [gh, gw, D]
        return feats.flatten(0, 1).T.float(), tuple(feats.shape[:2])  # [D, N]


def square_pixels(image: Tensor, size: int = SIZE) -> np.ndarray:
    """image [3, H, W] in [0, 1] -> uint8 [size, size, 3]: its pixels (rounded, as read from the file) resized by
    PIL's LANCZOS to a square (panoptic_cut.py:120)."""
    from PIL import Image

    pixels = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return np.array(Image.fromarray(pixels).resize((size, size), Image.LANCZOS))  # writable, as pydensecrf needs


def refine_mask(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One pre-CRF mask [S, S] float in {0, 1} on the square pixels -> the CRF's mask [S, S] bool with its holes
    filled, or all False when it overlaps the pre-CRF mask by an IoU below 0.5 (predict.py:112-122)."""
    from scipy.ndimage import binary_fill_holes

    refined = binary_fill_holes(dense_crf(pixels, mask) >= 0.5)
    before = torch.from_numpy(mask > 0.5)
    after = torch.from_numpy(refined)
    iou = (before & after).sum().float() / (before | after).sum().float()  # float32 division, as utils.py:16-20
    return refined if not bool(iou < MIN_IOU) else np.zeros_like(refined)


def to_image_size(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A square mask [S, S] bool -> [H, W] bool at the image's size (crf.py:49-63): the 0 / 255 mask resized by
    PIL (mode L, the default BICUBIC), thresholded at half its maximum into {min, max}; True where not 0."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0])))
    upper, lower = resized.max(), resized.min()
    return np.where(resized > upper / 2.0, upper, lower) != 0


class PanopticCut:
    """Panoptic Cut as a mask model (see the module docstring): `masks(image)` the release's overlapping masks,
    `regions(image)` their id map. size, tau, max_masks: the release's 640, 0.3, 8; seed: lobpcg's starts."""

    overlapping = True  # lposs.image_features keeps its masks, not only their id map

    def __init__(self, keys: Any, size: int = SIZE, tau: float = TAU, max_masks: int = MAX_MASKS, seed: int = 0):
        import_pydensecrf()  # a missing CRF package stops here, before any image
        if size % keys.patch_size:
            raise ValueError(f"Panoptic Cut's size {size} must be a multiple of the key model's patch size "
                             f"{keys.patch_size}")
        self.keys, self.size, self.tau, self.max_masks, self.seed = keys, size, tau, max_masks, seed
        self.id = f"panoptic_cut-{keys.id}-size{size}-tau{tau:g}-n{max_masks}-seed{seed}"

    @classmethod
    def dino(cls, checkpoint: str | None = None, device: str = "cpu", seed: int = 0, **settings: Any) -> PanopticCut:
        """With DINO ViT-B/8 as released: checkpoint "random" (seeded random weights), a local file, or None (the
        Hugging Face cache, downloaded when possible; offline without it: BackboneUnavailable at once)."""
        random = checkpoint == "random"
        model = load_timm(DINO, not random, None if random else checkpoint, seed)
        weights = weights_label(None if random else "pretrained", None if random else checkpoint, seed)
        return cls(DinoKeys(model, f"timm-{DINO}-{weights}", device), seed=seed, **settings)

    @torch.no_grad()
    def masks(self, image: Tensor) -> Tensor:
        """image [3, H, W] in [0, 1] -> bool [M + 1, H, W]: the masks in the order found (M <= max_masks; a mask
        the CRF moved too far is empty), then the complement (pixels in no mask)."""
        height, width = image.shape[1:]
        pixels = square_pixels(image, self.size)  # [S, S, 3] uint8
        keys, grid = self.keys(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255)  # [C, N]
        found = []
        for patch_mask in cut_masks(keys, grid, self.tau, self.max_masks, seed=self.seed):  # [gh, gw] each
            square = F.interpolate(patch_mask[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0]
            found.append(to_image_size(refine_mask(pixels, square.numpy()), (height, width)))
        masks = torch.from_numpy(np.stack(found))  # [M, H, W]
        return torch.cat([masks, ~masks.any(dim=0, keepdim=True)])

    def regions(self, image: Tensor) -> Tensor:
        """image [3, H, W] in [0, 1] -> region ids [H, W] (1 + the first mask covering the pixel; the complement
        M + 1), `lposs.core.regions.masks_to_regions`."""
        return masks_to_regions(self.masks(image))
