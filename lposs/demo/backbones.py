"""The demo's two stand-in backbones (the backbone interface of `lposs.models.backbones`); see `lposs.demo`.

- `DemoVLM` stands in for CLIP: noisy per-patch class evidence from colour and contrast.
- `DemoVM` stands in for DINO: random Fourier features of patch appearance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .scenes import ALIASES, CLASS_INDEX, CONTRAST, DEMO_CLASSES, PALETTE


def _canonical(name: str) -> str:
    """A demo class name (or alias) -> the vocabulary class it means; ValueError otherwise."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in CLASS_INDEX:
        known = ", ".join(DEMO_CLASSES + tuple(ALIASES))
        raise ValueError(f"the demo VLM only knows the demo vocabulary ({known}); got class name {name!r}. "
                         "Other classes need a real VLM (backbone.vlm in params.yaml; without --demo-backbones on "
                         "the command line).")
    return key


def _patch_stats(windows: torch.Tensor, patch: int) -> dict[str, torch.Tensor]:
    """Per-patch statistics of windows [B, 3, h, w] in [0, 1]: each [B, h/p, w/p, ...]."""
    b, _, h, w = windows.shape
    rows, cols = h // patch, w // patch
    x = windows[:, :, : rows * patch, : cols * patch].float()
    blocks = x.reshape(b, 3, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)  # [B, r, c, 3, p, p]
    mean = blocks.mean(dim=(-1, -2))  # [B, r, c, 3]
    std = blocks.std(dim=(-1, -2))  # [B, r, c, 3]
    grey = blocks.mean(dim=3)  # [B, r, c, p, p]
    grad_y = (grey[..., 1:, :] - grey[..., :-1, :]).abs().mean(dim=(-1, -2))  # [B, r, c]
    grad_x = (grey[..., :, 1:] - grey[..., :, :-1]).abs().mean(dim=(-1, -2))
    detail = grey - grey.mean(dim=(-1, -2), keepdim=True)  # [B, r, c, p, p]
    return {"mean": mean, "std": std, "grad": torch.stack([grad_y, grad_x], dim=-1), "detail": detail}


def _orthonormal(rows: int, dim: int, seed: int) -> torch.Tensor:
    """A fixed [rows, dim] matrix with orthonormal rows."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, rows, generator=gen, dtype=torch.float64))
    return q.T.float().contiguous()


class DemoVLM:
    """Stand-in for a dense CLIP: noisy per-patch class evidence from colour and contrast (see the module docstring)."""

    id = "demo-vlm-1"
    patch_size = 16
    dim = 32

    def __init__(self, temperature: float = 0.06, context: float = 0.1, contrast_weight: float = 2.0,
                 jitter: float = 4.0, device: str | torch.device = "cpu"):
        self.temperature = temperature  # softness of the appearance -> class assignment
        self.context = context  # weight of the window's mean appearance in each patch's
        self.contrast_weight = contrast_weight  # weight of patch contrast against mean colour
        self.jitter = jitter  # strength of the patch-to-patch noise drawn from each patch's fine detail
        self.device = torch.device(device)
        self.basis = _orthonormal(len(DEMO_CLASSES), self.dim, seed=1).to(self.device)  # [K, D]
        self.prototypes = torch.tensor([PALETTE[c] + (contrast_weight * CONTRAST[c],) for c in DEMO_CLASSES],
                                       device=self.device)  # [K, 4]
        gen = torch.Generator().manual_seed(3)
        self.detail_keys = torch.randn(self.patch_size ** 2, len(DEMO_CLASSES), generator=gen).to(self.device)  # [p*p, K]

    def text_embeddings(self, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class names (synonyms split on ';') -> (embeddings [C', D] L2-normalised, owner [C'])."""
        if not class_names:
            raise ValueError("class_names is empty: give at least one class name")
        rows, owner = [], []
        for index, name in enumerate(class_names):
            for synonym in (s for s in name.split(";") if s.strip()):
                rows.append(self.basis[CLASS_INDEX[_canonical(synonym)]])
                owner.append(index)
            if not owner or owner[-1] != index:
                raise ValueError(f"class {index} ({name!r}) has no name in it")
        return torch.stack(rows), torch.tensor(owner, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def dense_features(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, 3, h, w] in [0, 1] -> [B, h/16, w/16, D] L2-normalised."""
        stats = _patch_stats(windows.to(self.device), self.patch_size)
        contrast = self.contrast_weight * stats["std"].mean(-1, keepdim=True)  # [B, r, c, 1]
        look = torch.cat([stats["mean"], contrast], dim=-1)  # [B, r, c, 4]
        look = (1 - self.context) * look + self.context * look.mean(dim=(1, 2), keepdim=True)
        dist = ((look[..., None, :] - self.prototypes) ** 2).sum(-1)  # [B, r, c, K]
        detail = F.normalize(stats["detail"].flatten(-2), dim=-1)  # [B, r, c, p*p]
        logits = -dist / self.temperature ** 2 / 2 + self.jitter * detail @ self.detail_keys  # [B, r, c, K]
        evidence = torch.softmax(logits, dim=-1)  # [B, r, c, K]
        return F.normalize(evidence @ self.basis, dim=-1)  # [B, r, c, D]


class DemoVM:
    """Stand-in for DINO: random Fourier features of patch appearance (see the module docstring).

    feature: "v" (colour + texture, the default), "k" (colour only) or "q" (texture only): three
    descriptor choices playing the role of DINO's value / key / query features in the ablation.
    """

    patch_size = 16
    dim = 256
    features = ("q", "k", "v")

    def __init__(self, feature: str = "v", length_scale: float = 0.7, texture_weight: float = 0.3,
                 device: str | torch.device = "cpu"):
        if feature not in self.features:
            raise ValueError(f"DemoVM feature must be one of {self.features}, got {feature!r}")
        self.feature = feature
        self.texture_weight = texture_weight
        self.id = f"demo-vm-1-{feature}"
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(2)
        width = {"v": 8, "k": 3, "q": 5}[feature]
        self.omega = (torch.randn(width, self.dim, generator=gen) / length_scale).to(self.device)  # [d, D]
        self.phase = (2 * math.pi * torch.rand(self.dim, generator=gen)).to(self.device)  # [D]

    def descriptor(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, 3, h, w] -> appearance descriptors [B, h/16, w/16, d], each component about unit range."""
        stats = _patch_stats(windows.to(self.device), self.patch_size)
        colour = stats["mean"] / 0.1  # [B, r, c, 3]
        texture = torch.cat([stats["std"], stats["grad"]], dim=-1) / 0.1  # [B, r, c, 5]
        if self.feature == "k":
            return colour
        if self.feature == "q":
            return texture
        return torch.cat([colour, self.texture_weight * texture], dim=-1)

    @torch.no_grad()
    def dense_features(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, 3, h, w] in [0, 1] -> [B, h/16, w/16, D] L2-normalised."""
        desc = self.descriptor(windows)  # [B, r, c, d]
        return F.normalize(torch.cos(desc @ self.omega + self.phase), dim=-1)  # [B, r, c, D]
