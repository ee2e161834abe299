"""Backbones: dense CLIP seeds from any training-free head (open_clip), vision-model graph features (timm).

The classes follow the interface of the rest of the package (docs/method.md section 2):

    .id: str                      stable identifier (used in feature-store paths)
    .patch_size: int              pixels per output feature along each side (16 for ViT-B/16)
    .embed_dim: int               feature size D
    .dense_features(windows [B, 3, h, w] in [0, 1]) -> [B, h/p, w/p, D], L2-normalised per patch
    .text_embeddings(class_names) -> (emb [C', D], owner [C'])      (DenseCLIP only)

- `DenseCLIP` (alias `MaskCLIP`): an open_clip ViT with one of the dense heads of `lposs.models.heads.HEADS`, with
  a prompt-ensemble text classifier. What a head reads besides the windows comes from its record
  (lposs.models.records): the class list's query embeddings (`dense_features(windows, text=emb)`), each window's
  mask regions (`regions=`), a proxy vision model, SAM's tensors; a "whole_image" head reads the whole image
  instead of windows (`whole_image_features`).
- `VisionFeatures` (alias `DinoFeatures`): any timm ViT of `VISION_MODELS` (or a timm name); features are the
  last block's attention q, k or v, or the final normalised tokens; several of them from one forward. As a
  proxy it also gives "k_raw": CASS's raw last-block keys on the window resized to a square.
- `ClipGraphFeatures`: the VLM's own dense features used as graph features (no second model).

Weights (lposs.models.loading): open_clip / timm pretrained tags from the Hugging Face hub cache, or a local file
(`checkpoint=PATH`); offline, construction fails within seconds with `BackboneUnavailable`. Random weights
(`pretrained=None` / `pretrained=False`) are seeded, so they are the same in every run.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.color import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 - re-exported
from ..hardware import cpu_has_native_bf16
from .head_registry import HEADS, head_record, heads_reading
from .heads import dense_clip_features, positional_embedding, tokens_before_last_block
from .loading import (  # noqa: F401 - BackboneUnavailable, CLIP_WEIGHTS, VISION_MODELS, hf_cache_dir re-exported
    CLIP_WEIGHTS,
    VISION_MODELS,
    BackboneUnavailable,
    hf_cache_dir,
    load_open_clip,
    load_timm,
    open_clip_quick_gelu,
    resolve_clip_weights,
    timm_name,
    weights_label,
)
from .records import DEFAULT_HEAD, SAM_INPUTS
from .rope import apply_rope
from .text import CONTEXTS, imagenet_templates, split_synonyms  # noqa: F401 - imagenet_templates re-exported
from .text_cache import TextCache, cached_prompt_ensembles, weights_digest

DEFAULT_CLIP_MODEL = "ViT-B-16"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b88k"
DEFAULT_DINO_MODEL = "vit_base_patch16_224.dino"
DEFAULT_PROXY_MODEL = "dino_vitb8"
VM_FEATURES = ("q", "k", "v", "tokens", "q_rope", "k_rope", "qk")  # graph features (unit norm); qk = q + k
ROPE_FEATURES = {"q_rope": "q", "k_rope": "k"}  # after RoPE (models with rotary embeddings: DINOv3)
RAW_FEATURES = ("k_raw",)  # proxy features, not normalised (CASS's keys)


def _normalise_input(windows: Tensor, mean: Sequence[float], std: Sequence[float], patch: int) -> Tensor:
    if windows.ndim != 4 or windows.shape[1] != 3:
        raise ValueError(f"windows must be [B, 3, h, w] RGB in [0, 1], got shape {tuple(windows.shape)}")
    if windows.shape[2] % patch or windows.shape[3] % patch:
        raise ValueError(
            f"window size {tuple(windows.shape[2:])} is not a multiple of the patch size {patch}: "
            f"crop windows to multiples of {patch} (e.g. 224)"
        )
    mean_t = torch.tensor(mean, dtype=windows.dtype, device=windows.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=windows.dtype, device=windows.device).view(1, 3, 1, 1)
    return (windows - mean_t) / std_t


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast is worth it on this device: CUDA, or a CPU with native bfloat16."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def _autocast(device: torch.device, bf16: bool):
    """bf16 autocast where `native_bf16` (callers pass bf16 already checked); a no-op otherwise (float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type in ("cuda", "cpu"))


# ----------------------------------------------------------------------------------------------------
# Dense CLIP (open_clip) with any head of lposs.models.heads
# ----------------------------------------------------------------------------------------------------


def head_label(head: str, head_params: dict[str, Any] | None) -> str:
    """The head part of an id: the name, then every parameter that differs from the head's default (as
    DenseCLIP fills it in: the record's caller_defaults); the query embeddings (`text`) are per class list, never
    part of an id."""
    record = head_record(head)
    defaults = {**record.defaults, **record.caller_defaults}
    settings = record.settings({**record.caller_defaults, **(head_params or {})})
    changed = sorted(name for name in settings if name != "text" and settings[name] != defaults[name])
    return head + "".join(f"-{name}_{_label_value(settings[name])}" for name in changed)


def _label_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(_label_value, value))
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


class DenseCLIP:
    """open_clip ViT with a training-free dense head (lposs.models.heads) and a prompt-ensemble text classifier.

    pretrained: an open_clip tag ("laion2b_s34b_b88k", "openai"), or None for seeded random weights.
    head, head_params: a name of `lposs.models.heads.HEADS` and overrides of its defaults (e.g. {"sigma": 3.0});
        what the head's record leaves to its caller is filled in here (`caller_defaults`: resclip's temp_thd 0.5).
        A head that reads the class list's queries gets them with each call of `dense_features(windows,
        text=emb)` (`.needs_text` says so; `extract_features` passes it).
    proxy: the vision model of a head that reads one (record.reads "proxy", e.g. VisionFeatures("dino_vitb8")):
        the head reads its `record.proxy_feature`; when the record's output_grid is "proxy" (proxyclip,
        corrclip, trident) `.patch_size` is the proxy's.
    quick_gelu: None = as the tag says (QuickGELU for "openai"); True builds random weights like OpenAI's.
    checkpoint: a local weight file (.bin/.pt/.safetensors) used instead of downloading the tag.
    bf16: bfloat16 autocast on CUDA, and on a CPU with native bfloat16 (`native_bf16`); elsewhere
        the flag is ignored and everything runs in float32.
    text_context: "fit" runs each prompt batch up to its longest prompt (same embeddings, ~5x faster), "full"
        the whole 77-token context as open_clip does (reference mode); see `lposs.models.text`.
    text_cache: where class embeddings persist across runs (`lposs.models.text_cache`); "env" = the
        LPOSS_CACHE rule (default ~/.cache/lposs), None = no persistent cache.
    text_params: the parameters of a head's text step (record.text_step; CASS's `cass_text.TEXT_PARAMS`): the
        seeds become `query_scores(...)`, the queries adjusted to each image; `extract_features` calls it.
    sam: SAM's last block (`lposs.models.sam_attention.SamAttention`) for a head that reads its tensors
        (trident). A "whole_image" head reads the whole image (`whole_image_features`), not windows; a head that
        reads regions gets each window's mask regions: `dense_features(windows, regions=...)` (`.reads_regions`).
    """

    def __init__(
        self,
        model_name: str = DEFAULT_CLIP_MODEL,
        pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        device: str | torch.device = "cpu",
        checkpoint: str | os.PathLike | None = None,
        bf16: bool = False,
        seed: int = 0,
        *,
        head: str = DEFAULT_HEAD,
        head_params: dict[str, Any] | None = None,
        proxy: Any = None,
        quick_gelu: bool | None = None,
        text_context: str = "fit",
        text_cache: TextCache | str | None = "env",
        text_params: dict[str, Any] | None = None,
        sam: Any = None,
    ) -> None:
        import open_clip

        if text_context not in CONTEXTS:
            raise ValueError(f"text_context={text_context!r}: use one of {CONTEXTS}")
        self.text_context = text_context
        self.text_cache = TextCache.from_env() if text_cache == "env" else text_cache
        self._text_identity: dict[str, Any] | None = None

        if "text" in (head_params or {}):
            raise ValueError(f"head {head!r}: pass the query embeddings with each call, dense_features(windows, "
                             "text=emb), not in head_params (they change with the class list)")
        self.record = record = head_record(head)
        if pretrained is None and checkpoint is None:  # random CLIP: the head's own trained weights random too
            head_params = record.random_trained(head_params) or None
        self.head, self.head_params = head, {**record.caller_defaults, **(head_params or {})}
        self.settings = record.settings(self.head_params)
        reads = set(record.reads)
        if ("proxy" in reads) != (proxy is not None):
            raise ValueError(f"head {head!r} needs proxy=a vision model (e.g. VisionFeatures('{record.proxy}'))"
                             if "proxy" in reads else f"head {head!r} takes no proxy (got "
                             f"{getattr(proxy, 'id', proxy)!r}); only {', '.join(heads_reading('proxy'))} do")
        self.proxy = proxy
        if record.reads_sam != (sam is not None):
            raise ValueError(f"head {head!r} needs sam=SamAttention() (SAM's last block)" if record.reads_sam
                             else f"head {head!r} takes no sam; only {', '.join(heads_reading(*SAM_INPUTS))} do")
        self.sam = sam
        self.needs_text = "text" in reads
        self.reads_regions = "regions" in reads
        self.whole_image = record.kind == "whole_image"
        if text_params and record.text_step is None:
            steps = [name for name, other in HEADS.items() if other.text_step is not None]
            raise ValueError(f"text_params are a text step's (heads {', '.join(steps)}); head {head!r} has none")
        if text_params:
            record.text_step.check(text_params)
        self.text_params = dict(text_params or {})
        self.device = torch.device(device)
        self.bf16 = bf16 and native_bf16(self.device)
        quick = open_clip_quick_gelu(model_name, pretrained, quick_gelu)
        self.model = load_open_clip(model_name, pretrained, checkpoint, seed, quick).to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model_name = model_name
        self._check_visual(model_name)
        self.clip_patch_size = int(self.model.visual.patch_size[0])
        self.patch_size = int(proxy.patch_size) if record.output_grid == "proxy" else self.clip_patch_size
        self.embed_dim = int(self.model.visual.proj.shape[1])
        gelu = "-quickgelu" if quick and "quickgelu" not in model_name else ""
        weights = weights_label(pretrained, checkpoint, seed)
        proxy_label = f"-proxy_{proxy.id}" if proxy is not None else ""
        proxy_label += f"-sam_{sam.id}" if sam is not None else ""
        text_label = "".join(f"-{name}_{_label_value(v)}" for name, v in sorted(self.text_params.items()))
        self.id = f"openclip-{model_name}{gelu}-{weights}-{head_label(head, head_params)}{text_label}{proxy_label}"
        self.id += "-bf16" if self.bf16 else ""
        self._text_cache: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}

    def _check_visual(self, model_name: str) -> None:
        visual = self.model.visual
        if visual.proj is None or visual.attn_pool is not None:
            raise ValueError(f"open_clip model {model_name} has no plain projection head; dense heads need one")
        if not isinstance(visual.transformer.resblocks[-1].attn, nn.MultiheadAttention):
            raise ValueError(
                f"open_clip model {model_name} uses a custom attention block; dense heads need nn.MultiheadAttention"
            )

    # --- image ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def dense_features(self, windows: Tensor, text: Tensor | None = None, regions: Tensor | None = None) -> Tensor:
        """windows [B, 3, h, w] in [0, 1] -> the head's patch features [B, h/p, w/p, D], unit norm.

        text: the current class list's query embeddings [C', D] (`text_embeddings(...)[0]`, every synonym in
        order); resclip needs them (its first pass labels the patches), the other heads ignore them.
        regions: each window's mask-region ids [B, h, w] (pixels; 0 = no mask) for a head that reads them
        (corrclip, which samples them at its proxy's grid as released); the other heads take none.
        """
        if self.needs_text and text is None:
            raise ValueError(f"head {self.head!r} needs the class list's query embeddings: "
                             "dense_features(windows, text=vlm.text_embeddings(class_names)[0])")
        if self.whole_image:
            raise ValueError(f"head {self.head!r} reads the whole image: whole_image_features(image, resized)")
        if self.reads_regions and (regions is None or regions.shape != (windows.shape[0], *windows.shape[2:])):
            raise ValueError(f"head {self.head!r} needs each window's mask regions [B, h, w] = "
                             f"{(windows.shape[0], *windows.shape[2:])}: compute features with a mask model "
                             f"(backbone.masks), got {None if regions is None else tuple(regions.shape)}")
        windows = windows.to(self.device, torch.float32)
        x = _normalise_input(windows, CLIP_MEAN, CLIP_STD, self.clip_patch_size)
        params = {**self.head_params, **({"text": text.to(self.device)} if self.needs_text else {})}
        with _autocast(self.device, self.bf16):
            proxy = None if self.proxy is None else self._proxy_features(windows)
            if self.reads_regions:
                params["regions"] = regions.to(self.device)
            return dense_clip_features(self.model.visual, x, self.head, proxy, **params)

    @torch.no_grad()
    def whole_image_features(self, image: Tensor, resized: Tensor) -> Tensor:
        """A "whole_image" head (trident): the image [3, H, W] and its resized copy [3, H', W'] in [0, 1] -> the
        resized image's features [1, h, w, D] (trident's: at SAM's grid), unit norm. The head's record cuts the
        resized image into its release's windows (`image_windows`); SAM, for a head that reads it, sees the image as
        given (Trident's release reads the image file)."""
        windows, cells, canvas = self.record.image_windows(resized.to(self.device, torch.float32), self.settings,
                                                            self.clip_patch_size)
        inputs: dict[str, Any] = {"cells": cells, "canvas": canvas}
        if self.sam is not None:
            inputs["sam_attn"], inputs["sam_v"] = (t.to(self.device) for t in self.sam(image))
        x = _normalise_input(windows, CLIP_MEAN, CLIP_STD, self.clip_patch_size)
        with _autocast(self.device, self.bf16):
            proxy = None if self.proxy is None else self._proxy_features(windows)
            return dense_clip_features(self.model.visual, x, self.head, proxy, **inputs, **self.head_params)

    @property
    def adjusts_queries(self) -> bool:
        """True when the seeds are not plain cosines: a text step adjusts the queries (CASS's; `query_scores`)."""
        return bool(self.text_params)

    @torch.no_grad()
    def query_scores(self, dense: Tensor, text: Tensor, windows: Tensor, image: Tensor) -> Tensor:
        """The head's text step (record.text_step; CASS's: the queries [C', D] adjusted to this image, blended with
        its global embedding, `cass_text.cass_query_scores`) on its features [B, h, w, D], with the windows
        [B, 3, s, s] and the whole resized image [3, H, W] in [0, 1] -> [B, h, w, C']."""
        x = _normalise_input(windows.to(self.device, torch.float32), CLIP_MEAN, CLIP_STD, self.clip_patch_size)
        whole = _normalise_input(image[None].to(self.device, torch.float32), CLIP_MEAN, CLIP_STD, 1)[0]
        with _autocast(self.device, self.bf16):
            return self.record.text_step.scores(self.model.visual, dense.to(self.device), text.to(self.device), x,
                                                whole, self.text_params, self.interpolation)

    def _proxy_features(self, windows: Tensor) -> Tensor:
        """windows [B, 3, h, w] in [0, 1] -> what this head reads of its proxy, [B, h', w', Dv]."""
        feature = self.record.proxy_feature
        return self.proxy.dense_features_multi(windows, (feature,))[feature]

    @property
    def interpolation(self) -> str:
        """The head's position-embedding rule (lposs.models.vit; "lposs" for a head without one)."""
        return self.settings.get("interpolation", "lposs")

    def tokens_before_last_block(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, h, w] -> the token sequence entering the last block, [B, L, W]."""
        return tokens_before_last_block(self.model.visual, x, self.interpolation)

    def positional_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """[1 + gh*gw, W], resized off the native grid by this head's rule."""
        return positional_embedding(self.model.visual, (grid_h, grid_w), self.interpolation)

    # --- text ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Class names -> (emb [C', D] unit norm, owner LongTensor [C']), one row per ';' synonym.

        Each synonym: the 80 OpenAI ImageNet templates, each encoded and L2-normalised, averaged, and
        L2-normalised again (`lposs.models.text`). Kept in memory per class list (returned as copies) and on
        disk per synonym (`text_cache`).
        """
        key = tuple(class_names) if not isinstance(class_names, str) else (class_names,)
        if key not in self._text_cache:
            synonyms, owner = split_synonyms(class_names)
            with _autocast(self.device, self.bf16):
                emb = cached_prompt_ensembles(self.model, self.tokenizer, synonyms, self.device,
                                              self.text_identity, self.text_cache, self.text_context)  # [C', D]
            self._text_cache[key] = (emb, torch.tensor(owner, dtype=torch.long, device=self.device))
        emb, owner = self._text_cache[key]
        return emb.clone(), owner.clone()

    def text_identity(self) -> dict[str, Any]:
        """What determines a class embedding besides its prompts: the persistent cache's key. Computed once per
        instance, as the in-memory cache assumes too: to change the weights, build a new DenseCLIP."""
        if self._text_identity is None:
            self._text_identity = {
                "model": self.model_name, "weights": weights_digest(self.model), "device": self.device.type,
                "dtype": "bfloat16-autocast" if self.bf16 else str(next(self.model.parameters()).dtype),
                "context": self.text_context,
            }
        return self._text_identity


MaskCLIP = DenseCLIP  # LPOSS's name; the head defaults to DEFAULT_HEAD, MaskCLIP's


# ----------------------------------------------------------------------------------------------------
# Vision models for the graph (timm), and the VLM's own features
# ----------------------------------------------------------------------------------------------------

QKV_PARTS = {"q": 0, "k": 1, "v": 2}


class VisionFeatures:
    """timm ViT whose dense features are the last block's attention q, k or v (all heads), or "tokens" (the
    final normalised tokens, `forward_features(x)`), with CLS and register tokens dropped, each unit norm.
    On models with rotary embeddings (DINOv3: `.has_rope`), q and k are taken before RoPE and "q_rope" /
    "k_rope" after it, as the block rotates them (`lposs.models.rope`); v is never rotated.

    "qk" is q + k of the last block, then normalised (CorrCLIP's proxy, corrclip_segmentor.py:92-115).
    "k_raw" (a proxy feature, CASS's: MICV-yonsei/CASS@228ecdd clip/model.py:107-112, dino/dino_attention.py
    :74-94) is the last block's keys as they are: not normalised, heads concatenated head-major [.., heads*d],
    computed on the window resized (bicubic) to a square of side min(h, w), so at grid min(h, w)/p squared.
    Not reproduced: the release rebuilds that image by inverting CLIP's normalisation with ImageNet statistics
    (with a 0.255 typo, cass_segmentor.py:78-81) and rounding to uint8 before PIL's resize; here the window
    itself is resized, ImageNet-normalised.

    model_name: a short name of `VISION_MODELS` ("dino_vitb8") or a timm name; the id uses the timm name.
    pretrained: True for the timm tag's weights, False for seeded random weights.
    checkpoint: a local weight file used instead of downloading (loaded through timm's own filter).
    bf16: bfloat16 autocast on CUDA or a CPU with native bfloat16 (`native_bf16`); else ignored (float32).
    """

    def __init__(
        self,
        model_name: str = DEFAULT_DINO_MODEL,
        pretrained: bool = True,
        feature: str = "v",
        device: str | torch.device = "cpu",
        checkpoint: str | os.PathLike | None = None,
        bf16: bool = False,
        seed: int = 0,
    ) -> None:
        _check_features((feature,), raw=True)
        self.device = torch.device(device)
        self.bf16 = bf16 and native_bf16(self.device)
        self.model_name = timm_name(model_name)
        self.model = load_timm(self.model_name, pretrained, checkpoint, seed).to(self.device).eval()
        attn = self.model.blocks[-1].attn
        if getattr(attn, "qkv", None) is None:
            raise ValueError(f"timm model {self.model_name} has no fused qkv projection in its last block")
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.embed_dim = attn.qkv.out_features // 3
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)  # CLS + registers
        self.has_rope = getattr(self.model, "rope", None) is not None
        self.num_heads = int(attn.num_heads)
        self.weights = weights_label("pretrained" if pretrained else None, checkpoint, seed)
        self.feature = feature
        self._check_rope((feature,))
        self.id = self.feature_id(feature)

    def feature_id(self, feature: str) -> str:
        """The id of this model's `feature` ("timm-<name>-<weights>-<feature>[-bf16]")."""
        return f"timm-{self.model_name}-{self.weights}-{feature}" + ("-bf16" if self.bf16 else "")

    def with_feature(self, feature: str) -> "VisionFeatures":
        """The same model (shared, not copied) serving another feature (a graph or a proxy feature)."""
        _check_features((feature,), raw=True)
        self._check_rope((feature,))
        other = copy.copy(self)
        other.feature, other.id = feature, self.feature_id(feature)
        return other

    @torch.no_grad()
    def dense_features(self, windows: Tensor) -> Tensor:
        """windows [B, 3, h, w] in [0, 1] -> this model's feature [B, h/p, w/p, D], unit norm."""
        return self.dense_features_multi(windows, (self.feature,))[self.feature]

    @torch.no_grad()
    def dense_features_multi(self, windows: Tensor, features: Sequence[str] = ("q", "k", "v")) -> dict[str, Tensor]:
        """windows [B, 3, h, w] in [0, 1] -> {feature: [B, h/p, w/p, D]}, the window's features from one forward
        (unit norm); "k_raw" from a second forward on the square window when the window is not square."""
        _check_features(features, raw=True)
        self._check_rope(features)
        windows = windows.to(self.device, torch.float32)
        on_window = [f for f in features if f not in RAW_FEATURES]
        out = self._unit_features(windows, on_window) if on_window else {}
        if "k_raw" in features:
            out["k_raw"] = self._raw_keys(windows)
        return {feature: out[feature] for feature in features}

    def _check_rope(self, features: Sequence[str]) -> None:
        if not self.has_rope and any(f in ROPE_FEATURES for f in features):
            raise ValueError(f"timm model {self.model_name} has no rotary position embedding: its q and k are "
                             f"the features 'q' and 'k' (got {list(features)!r})")

    def _forward(self, windows: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """windows [B, 3, h, w] in [0, 1] -> (final tokens [B, prefix + N, D], the last block's fused qkv
        [B, prefix + N, 3*D] laid out (3, heads, head_dim) on the last axis, grid (gh, gw)), float32.
        Also keeps the RoPE embedding the last block received ([N, 2 d], or None) as `self._rope`."""
        x = _normalise_input(windows, IMAGENET_MEAN, IMAGENET_STD, self.patch_size)
        captured: list[Tensor] = []
        ropes: list[Tensor | None] = []
        attn = self.model.blocks[-1].attn
        hooks = [attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out)),
                 attn.register_forward_pre_hook(lambda _m, _a, kwargs: ropes.append(kwargs.get("rope")),
                                                with_kwargs=True)]
        try:
            with _autocast(self.device, self.bf16):
                tokens = self.model.forward_features(x)  # [B, prefix + N, D], final norm applied
        finally:
            for hook in hooks:
                hook.remove()
        self._rope = ropes[0] if ropes else None
        return tokens.float(), captured[0].float(), (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)

    def _qkv_part(self, qkv: Tensor, part: str) -> Tensor:
        """[B, L, 3*D] -> q, k or v [B, L, D] (heads concatenated head-major); q_rope / k_rope rotated."""
        index, dim = QKV_PARTS[ROPE_FEATURES.get(part, part)], self.embed_dim
        feats = qkv[..., index * dim : (index + 1) * dim]
        if part in ROPE_FEATURES:
            feats = apply_rope(feats, self._rope.float(), self.num_prefix_tokens, self.num_heads)
        return feats

    def _unit_features(self, windows: Tensor, features: Sequence[str]) -> dict[str, Tensor]:
        tokens, qkv, grid = self._forward(windows)
        out = {}
        for feature in features:
            feats = (tokens if feature == "tokens" else
                     self._qkv_part(qkv, "q") + self._qkv_part(qkv, "k") if feature == "qk" else  # CorrCLIP's
                     self._qkv_part(qkv, feature))
            feats = F.normalize(feats[:, self.num_prefix_tokens :], dim=-1)  # [B, gh*gw, D]
            out[feature] = feats.reshape(windows.shape[0], grid[0], grid[1], -1)
        return out

    def _raw_keys(self, windows: Tensor) -> Tensor:
        """CASS's proxy: windows [B, 3, h, w] -> raw keys [B, s/p, s/p, D] of the window resized to s = min(h, w)."""
        side = min(windows.shape[-2:])
        if windows.shape[2] != windows.shape[3]:
            windows = F.interpolate(windows, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
        _, qkv, grid = self._forward(windows)
        keys = self._qkv_part(qkv, "k")[:, self.num_prefix_tokens :]  # [B, N', D], CLS and registers dropped
        return keys.reshape(windows.shape[0], grid[0], grid[1], -1)


DinoFeatures = VisionFeatures  # the earlier name (DINO ViT-B/16 v by default)


def _check_features(features: Sequence[str], raw: bool = False) -> None:
    allowed = VM_FEATURES + (RAW_FEATURES if raw else ())
    if isinstance(features, str) or not features or any(f not in allowed for f in features):
        raise ValueError(f"vision-model features must be among {allowed} (got {features!r})")


class ClipGraphFeatures:
    """The VLM's own dense features as graph features (the talk's 38.3 setting: no second model)."""

    feature = "clip"

    def __init__(self, vlm: DenseCLIP) -> None:
        self.vlm = vlm
        self.id = f"clip:{vlm.id}"
        self.patch_size, self.embed_dim, self.device = vlm.patch_size, vlm.embed_dim, vlm.device

    def dense_features(self, windows: Tensor) -> Tensor:
        """windows [B, 3, h, w] in [0, 1] -> the VLM's features [B, h/p, w/p, D]."""
        return self.vlm.dense_features(windows)

    def dense_features_multi(self, windows: Tensor, features: Sequence[str] = ("clip",)) -> dict[str, Tensor]:
        if list(features) != ["clip"]:
            raise ValueError(f"ClipGraphFeatures has the one feature 'clip' (got {features!r})")
        return {"clip": self.dense_features(windows)}
