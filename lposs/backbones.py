"""Backbones: MaskCLIP dense features and text classifier (open_clip), DINO q/k/v features (timm).

Both classes follow the interface of the rest of the package (shared/spec/lposs.md, section 2):

    .id: str                      stable identifier (used in feature-store paths)
    .patch_size: int              16 for ViT-B/16
    .embed_dim: int               feature size D
    .dense_features(windows [B, 3, h, w] in [0, 1]) -> [B, h/p, w/p, D], L2-normalised per patch
    .text_embeddings(class_names) -> (emb [C', D], owner [C'])      (MaskCLIP only)

Weights: real weights come from the open_clip / timm pretrained tags (Hugging Face hub cache), or from a
local file (`checkpoint=PATH`). When they are neither cached nor downloadable, construction fails within
seconds with `BackboneUnavailable` (the libraries themselves retry for about a minute).
Random weights (`pretrained=None` / `pretrained=False`) are seeded, so they are the same in every run.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CLIP_MODEL = "ViT-B-16"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b88k"
DEFAULT_DINO_MODEL = "vit_base_patch16_224.dino"
PROBE_TIMEOUT_S = 4.0
TEXT_BATCH_SIZE = 256


class BackboneUnavailable(RuntimeError):
    """Backbone weights cannot be loaded (not cached and no network, or a bad checkpoint file)."""


# ----------------------------------------------------------------------------------------------------
# Weight resolution: cache lookup, fast network probe, actionable errors
# ----------------------------------------------------------------------------------------------------


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder (honours HF_HOME / HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _cached_hf_file(repo_id: str, filenames: Sequence[str]) -> str | None:
    """Path of the first of `filenames` present in the local hub cache for `repo_id`, else None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _hf_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "true", "yes", "on"}


def _probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """One HEAD request to `url`, no retries. None if a server answered, else the reason it failed.

    Runs in a daemon thread so that a hanging DNS lookup cannot block for longer than `timeout`.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            outcome.append(None)
        except urllib.error.HTTPError:  # the server answered (401, 404, ...): the network works
            outcome.append(None)
        except Exception as error:  # noqa: BLE001 - any failure means "unreachable"
            outcome.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


def _unavailable_message(what: str, where: str, reason: str, fetch_cmd: str, files: str, cli_flag: str) -> str:
    return (
        f"Cannot load the weights of {what}: they are not in the local cache ({where}) and cannot be "
        f"downloaded ({reason}).\nFix, either:\n"
        f"  1. run once with network access to cache them, e.g.\n       {fetch_cmd}\n"
        f"  2. or download {files} yourself and pass checkpoint=PATH (CLI: {cli_flag} PATH)."
    )


def _resolve_download(
    what: str,
    repo_id: str | None,
    filenames: Sequence[str],
    url: str | None,
    url_cache: Path | None,
    fetch_cmd: str,
    cli_flag: str,
) -> str | None:
    """A cached weight file, or None when the library may download it; raise if neither is possible."""
    if repo_id:
        cached = _cached_hf_file(repo_id, filenames)
        if cached:
            return cached
        where = f"Hugging Face hub cache {hf_cache_dir()}, repo {repo_id}"
        files = f"{' or '.join(filenames)} from https://huggingface.co/{repo_id}"
        reason = "HF_HUB_OFFLINE is set" if _hf_offline() else _probe(_hf_endpoint())
    elif url and url_cache is not None:
        if url_cache.is_file():
            return str(url_cache)
        where, files, reason = str(url_cache), url, _probe(url)
    else:
        raise BackboneUnavailable(f"{what}: no download source is known; pass checkpoint=PATH ({cli_flag}).")
    if reason is None:
        return None
    raise BackboneUnavailable(_unavailable_message(what, where, reason, fetch_cmd, files, cli_flag))


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _check_checkpoint(checkpoint: str | os.PathLike, what: str, cli_flag: str) -> str:
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise BackboneUnavailable(
            f"checkpoint file {path} for {what} does not exist: pass the path of a .bin/.pt/.pth/.safetensors "
            f"weight file (checkpoint=PATH, CLI {cli_flag} PATH)."
        )
    return str(path)


def _weights_label(pretrained: str | None, checkpoint: str | None, seed: int) -> str:
    """The weights part of a backbone id: the tag, the checkpoint file name, or random<seed>."""
    if checkpoint is not None:
        return "file-" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(checkpoint).stem)
    return pretrained if pretrained else f"random{seed}"


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with the global RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


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


def _autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs in float32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


# ----------------------------------------------------------------------------------------------------
# Text: class names -> synonyms -> prompt ensembles
# ----------------------------------------------------------------------------------------------------


def split_synonyms(class_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """'a; b' -> synonyms ['a', 'b'] both owned by that class. Raises ValueError on empty input."""
    if isinstance(class_names, str) or len(class_names) == 0:
        raise ValueError(
            f"class_names must be a non-empty list of class names (got {class_names!r}); "
            "write synonyms of one class as 'a; b; c'"
        )
    synonyms, owner = [], []
    for index, name in enumerate(class_names):
        parts = [part.strip() for part in str(name).split(";")]
        if any(not part for part in parts):
            raise ValueError(
                f"class {index} ({name!r}) has an empty name or synonym: give every class a name, "
                "and separate synonyms with ';' without empty entries"
            )
        synonyms += parts
        owner += [index] * len(parts)
    return synonyms, owner


def imagenet_templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates, in open_clip's order."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


# ----------------------------------------------------------------------------------------------------
# MaskCLIP (open_clip)
# ----------------------------------------------------------------------------------------------------


def maskclip_last_block(block: nn.Module, x: Tensor) -> Tensor:
    """MaskCLIP's last residual block: attention replaced by its value path. x: [B, L, W] batch-first."""
    attn = block.attn
    width = x.shape[-1]
    if attn.in_proj_weight is not None:
        weight = attn.in_proj_weight[2 * width :]  # value third, [W, W]
    else:
        weight = attn.v_proj_weight
    bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    value = F.linear(block.ln_1(x), weight, bias)  # [B, L, W]
    v = x + block.ls_1(attn.out_proj(value))
    return v + block.ls_2(block.mlp(block.ln_2(v)))  # [B, L, W]


class MaskCLIP:
    """open_clip ViT with MaskCLIP dense features (spec section 2) and a prompt-ensemble text classifier.

    pretrained: an open_clip tag ("laion2b_s34b_b88k"), or None for seeded random weights (tests, demo).
    checkpoint: a local weight file (.bin/.pt/.safetensors) used instead of downloading the tag.
    bf16: bfloat16 autocast on CUDA only; on CPU the flag is ignored and everything runs in float32.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_CLIP_MODEL,
        pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        device: str | torch.device = "cpu",
        checkpoint: str | os.PathLike | None = None,
        bf16: bool = False,
        seed: int = 0,
    ) -> None:
        import open_clip

        self.device = torch.device(device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.model = _load_open_clip(model_name, pretrained, checkpoint, seed).to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        visual = self.model.visual
        if visual.proj is None or visual.attn_pool is not None:
            raise ValueError(f"open_clip model {model_name} has no plain projection head; MaskCLIP needs one")
        if not isinstance(visual.transformer.resblocks[-1].attn, nn.MultiheadAttention):
            raise ValueError(
                f"open_clip model {model_name} uses a custom attention block; MaskCLIP needs nn.MultiheadAttention"
            )
        self.patch_size = int(visual.patch_size[0])
        self.embed_dim = int(visual.proj.shape[1])
        weights = _weights_label(pretrained, checkpoint, seed)
        self.id = f"openclip-{model_name}-{weights}-maskclip" + ("-bf16" if self.bf16 else "")
        self._text_cache: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}

    # --- image ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def dense_features(self, windows: Tensor) -> Tensor:
        """windows [B, 3, h, w] in [0, 1] -> MaskCLIP patch features [B, h/p, w/p, D], unit norm."""
        x = _normalise_input(windows.to(self.device, torch.float32), CLIP_MEAN, CLIP_STD, self.patch_size)
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        visual = self.model.visual
        with _autocast(self.device, self.bf16):
            tokens = self.tokens_before_last_block(x)  # [B, 1 + gh*gw, W]
            tokens = maskclip_last_block(visual.transformer.resblocks[-1], tokens)
            tokens = visual.ln_post(tokens)[:, 1:]  # CLS dropped, [B, gh*gw, W]
            feats = tokens @ visual.proj  # [B, gh*gw, D]
        feats = F.normalize(feats.float(), dim=-1)
        return feats.reshape(x.shape[0], grid[0], grid[1], -1)  # [B, gh, gw, D]

    def tokens_before_last_block(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, h, w] -> the token sequence entering the last block, [B, L, W]."""
        visual = self.model.visual
        patches = visual.conv1(x)  # [B, W, gh, gw]
        grid = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)  # [B, gh*gw, W]
        cls = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # [B, 1, W]
        tokens = torch.cat([cls, patches], dim=1) + self.positional_embedding(*grid).to(patches.dtype)
        tokens = visual.ln_pre(tokens)  # [B, L, W]
        blocks = visual.transformer.resblocks
        batch_first = getattr(visual.transformer, "batch_first", blocks[-1].attn.batch_first)
        if not batch_first:  # older open_clip: blocks take [L, B, W]
            tokens = tokens.transpose(0, 1)
        for block in blocks[:-1]:
            tokens = block(tokens)
        return tokens if batch_first else tokens.transpose(0, 1)  # [B, L, W]

    def positional_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """[1 + gh*gw, W]; the patch part resized bicubically when the grid differs from the native one."""
        visual = self.model.visual
        pos = visual.positional_embedding  # [1 + g0*g1, W]
        native = tuple(int(g) for g in visual.grid_size)
        if (grid_h, grid_w) == native:
            return pos
        patch_pos = pos[1:].reshape(1, native[0], native[1], -1).permute(0, 3, 1, 2)  # [1, W, g0, g1]
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)  # [gh*gw, W]
        return torch.cat([pos[:1], patch_pos], dim=0)

    # --- text ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Class names -> (emb [C', D] unit norm, owner LongTensor [C']), one row per ';' synonym.

        Each synonym: the 80 OpenAI ImageNet templates, each encoded and L2-normalised, averaged, and
        L2-normalised again. Results are kept in memory per class list (returned as copies).
        """
        key = tuple(class_names) if not isinstance(class_names, str) else (class_names,)
        if key not in self._text_cache:
            synonyms, owner = split_synonyms(class_names)
            emb = self._prompt_ensembles(synonyms)  # [C', D]
            self._text_cache[key] = (emb, torch.tensor(owner, dtype=torch.long, device=self.device))
        emb, owner = self._text_cache[key]
        return emb.clone(), owner.clone()

    def _prompt_ensembles(self, synonyms: list[str]) -> Tensor:
        templates = imagenet_templates()
        prompts = [template(name) for name in synonyms for template in templates]
        batches = [prompts[i : i + TEXT_BATCH_SIZE] for i in range(0, len(prompts), TEXT_BATCH_SIZE)]
        encoded = [self._encode_prompts(batch) for batch in batches]  # [n, D] each
        per_prompt = torch.cat(encoded).reshape(len(synonyms), len(templates), -1)  # [C', T, D]
        return F.normalize(per_prompt.mean(dim=1), dim=-1)  # [C', D]

    def _encode_prompts(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts).to(self.device)  # [n, context]
        with _autocast(self.device, self.bf16):
            emb = self.model.encode_text(tokens)  # [n, D]
        return F.normalize(emb.float(), dim=-1)


def _load_open_clip(model_name: str, pretrained: str | None, checkpoint, seed: int) -> nn.Module:
    """open_clip model with random (seeded), cached, downloaded or file weights."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r}; choose one of open_clip.list_models(), e.g. 'ViT-B-16'"
        )
    what = f"open_clip {model_name}" + (f" (pretrained tag {pretrained!r})" if pretrained else "")
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if pretrained and not cfg and checkpoint is None:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"unknown pretrained tag {pretrained!r} for open_clip {model_name}; known tags: {tags}")
    quick_gelu = bool(cfg.get("quick_gelu", False))
    if checkpoint is not None:
        path = _check_checkpoint(checkpoint, what, "--clip-checkpoint")
    elif pretrained:
        fetch_cmd = _open_clip_fetch_cmd(model_name, pretrained)
        path = _resolve_download(what, *_open_clip_source(cfg), fetch_cmd, "--clip-checkpoint")
    else:
        return _seeded(seed, lambda: open_clip.create_model(model_name, pretrained=None))
    try:
        return open_clip.create_model(model_name, pretrained=path or pretrained, force_quick_gelu=quick_gelu)
    except Exception as error:  # noqa: BLE001 - wrap with what was being loaded
        raise BackboneUnavailable(f"loading {what} from {path or 'the network'} failed: {error}") from error


def _open_clip_source(cfg: dict) -> tuple[str | None, list[str], str | None, Path | None]:
    """(hf repo, candidate file names, url, url cache path) of an open_clip pretrained config."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" means the default file name
        if not filename:
            names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        elif filename.endswith((".bin", ".pth")):
            names = [filename[:-4] + ".safetensors", filename]  # open_clip prefers the safetensors twin
        else:
            names = [filename]
        return repo_id, names, None, None
    url = cfg.get("url") or None
    cache = Path("~/.cache/clip").expanduser() / os.path.basename(url) if url else None
    return None, [], url, cache


def _open_clip_fetch_cmd(model_name: str, pretrained: str) -> str:
    return f"python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{pretrained}')\""


# ----------------------------------------------------------------------------------------------------
# DINO (timm)
# ----------------------------------------------------------------------------------------------------

QKV_PARTS = {"q": 0, "k": 1, "v": 2}


class DinoFeatures:
    """timm ViT whose dense features are the last block's attention q, k or v (all heads), CLS dropped.

    pretrained: True for the timm tag's weights, False for seeded random weights.
    checkpoint: a local weight file used instead of downloading (loaded through timm's own filter).
    bf16: bfloat16 autocast on CUDA only; on CPU the flag is ignored and everything runs in float32.
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
        if feature not in QKV_PARTS:
            raise ValueError(f"feature must be one of 'q', 'k', 'v' (got {feature!r})")
        self.device = torch.device(device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.feature = feature
        self.model = _load_timm(model_name, pretrained, checkpoint, seed).to(self.device).eval()
        attn = self.model.blocks[-1].attn
        if getattr(attn, "qkv", None) is None:
            raise ValueError(f"timm model {model_name} has no fused qkv projection in its last block")
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.embed_dim = attn.qkv.out_features // 3
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        weights = _weights_label("pretrained" if pretrained else None, checkpoint, seed)
        self.id = f"timm-{model_name}-{weights}-{feature}" + ("-bf16" if self.bf16 else "")

    @torch.no_grad()
    def dense_features(self, windows: Tensor) -> Tensor:
        """windows [B, 3, h, w] in [0, 1] -> last-block q/k/v features [B, h/p, w/p, D], unit norm."""
        x = _normalise_input(windows.to(self.device, torch.float32), IMAGENET_MEAN, IMAGENET_STD, self.patch_size)
        captured: list[Tensor] = []
        hook = self.model.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with _autocast(self.device, self.bf16):
                self.model.forward_features(x)
        finally:
            hook.remove()
        qkv = captured[0].float()  # [B, N, 3*D], laid out (3, heads, head_dim) along the last axis
        part = QKV_PARTS[self.feature]
        feats = qkv[:, self.num_prefix_tokens :, part * self.embed_dim : (part + 1) * self.embed_dim]  # [B, gh*gw, D]
        feats = F.normalize(feats, dim=-1)
        return feats.reshape(x.shape[0], x.shape[2] // self.patch_size, x.shape[3] // self.patch_size, -1)


def _load_timm(model_name: str, pretrained: bool, checkpoint, seed: int) -> nn.Module:
    """timm model with dynamic image size and random (seeded), cached, downloaded or file weights."""
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}; e.g. 'vit_base_patch16_224.dino' (see timm.list_models)")
    what = f"timm {model_name}"
    if checkpoint is not None:
        path = _check_checkpoint(checkpoint, what, "--dino-checkpoint")
    elif pretrained:
        path = _resolve_download(what, *_timm_source(model_name), _timm_fetch_cmd(model_name), "--dino-checkpoint")
    else:
        return _seeded(seed, lambda: timm.create_model(model_name, pretrained=False, dynamic_img_size=True))
    overlay = {"file": path} if path else None
    try:
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, dynamic_img_size=True)
    except Exception as error:  # noqa: BLE001 - wrap with what was being loaded
        raise BackboneUnavailable(f"loading {what} from {path or 'the network'} failed: {error}") from error


def _timm_source(model_name: str) -> tuple[str | None, list[str], str | None, Path | None]:
    """(hf repo, candidate file names, url, url cache path) of a timm pretrained config."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(
            f"timm model {model_name!r} has no pretrained weights; use pretrained=False or checkpoint=PATH"
        )
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        return cfg.hf_hub_id, names, None, None
    url = cfg.url or None
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url) if url else None
    return None, [], url, cache


def _timm_fetch_cmd(model_name: str) -> str:
    return f"python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\""


# ----------------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------------


def load_backbones(
    clip_model: str = DEFAULT_CLIP_MODEL,
    clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    dino_model: str = DEFAULT_DINO_MODEL,
    dino_feature: str = "v",
    device: str | torch.device = "cpu",
    random_weights: bool = False,
    clip_checkpoint: str | os.PathLike | None = None,
    dino_checkpoint: str | os.PathLike | None = None,
    bf16: bool = False,
) -> tuple[MaskCLIP, DinoFeatures]:
    """(vlm, vm): the MaskCLIP seed model and the DINO graph model. random_weights: no download (demo, tests)."""
    vlm = MaskCLIP(
        clip_model,
        pretrained=None if random_weights else clip_pretrained,
        device=device,
        checkpoint=None if random_weights else clip_checkpoint,
        bf16=bf16,
    )
    vm = DinoFeatures(
        dino_model,
        pretrained=not random_weights,
        feature=dino_feature,
        device=device,
        checkpoint=None if random_weights else dino_checkpoint,
        bf16=bf16,
    )
    return vlm, vm
