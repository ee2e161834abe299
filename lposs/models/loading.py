"""Backbone weights: which weights go with which model, and loading them (or failing fast) offline.

- `CLIP_WEIGHTS`: the CLIP weight choices of the field (docs/field.md section 1), name -> (open_clip model,
  pretrained tag). LPOSS uses OpenCLIP laion2b; most other training-free heads OpenAI's; CorrCLIP MetaCLIP's.
- `VISION_MODELS`: short names of the graph / proxy vision models -> timm names (docs/field.md section 4).
- `load_open_clip` / `load_timm`: random (seeded), cached, downloaded or local-file weights. When weights are
  neither cached nor downloadable, they raise `BackboneUnavailable` within seconds with the fix (the libraries
  themselves retry for about a minute).

The GELU trap: open_clip >= 2.29 builds `ViT-B-16` with GELU even for `pretrained='openai'`, whose weights
were trained with QuickGELU, and only warns. `load_open_clip` builds QuickGELU whenever the tag's config
says so (and on request for random weights), so OpenAI weights always run in the activation they were
trained with.
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
from torch import nn

PROBE_TIMEOUT_S = 4.0

CLIP_WEIGHTS: dict[str, tuple[str, str]] = {
    "openclip-laion2b": ("ViT-B-16", "laion2b_s34b_b88k"),  # LPOSS (GELU)
    "openai": ("ViT-B-16", "openai"),  # SCLIP, ClearCLIP, NACLIP, ProxyCLIP and the 2025 heads (QuickGELU)
    # MetaCLIP ViT-B/16 on the 2.5B full CommonCrawl curation: CorrCLIP's weights (zdk258/CorrCLIP@103bc18,
    # CorrCLIPv1: open_clip 'ViT-B-16-quickgelu' + 'metaclip_fullcc'). open_clip's config for the tag says
    # QuickGELU, so load_open_clip builds it so under the plain 'ViT-B-16' name too.
    "metaclip-fullcc": ("ViT-B-16", "metaclip_fullcc"),
}

VISION_MODELS: dict[str, str] = {
    "dino_vitb16": "vit_base_patch16_224.dino",  # LPOSS default
    "dino_vitb8": "vit_base_patch8_224.dino",  # ProxyCLIP default
    "dino_vits16": "vit_small_patch16_224.dino",  # LPOSS `vit_small`
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",  # ProxyCLIP option, 4 registers
    # DINOv3 (timm 1.0.31 timm/models/eva.py:1951-2001): /16, CLS + 4 registers, RoPE instead of an absolute
    # position embedding; features q, k (before RoPE), q_rope, k_rope (after), v, tokens
    "dinov3_vits16": "vit_small_patch16_dinov3.lvd1689m",
    "dinov3_vitb16": "vit_base_patch16_dinov3.lvd1689m",
    "dinov3_vitl16": "vit_large_patch16_dinov3.lvd1689m",
}


class BackboneUnavailable(RuntimeError):
    """Backbone weights cannot be loaded (not cached and no network, or a bad checkpoint file).

    str(error) gives every fix, a local weight file among them (the API's `checkpoint=PATH`, the CLI's
    `--clip-checkpoint` / `--dino-checkpoint`); `without_files()` gives only the ones that work where no
    weight file can be passed (the pipeline, `make paper`): what is missing, and the command that caches it.
    """

    def __init__(self, message: str, missing: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.missing = list(missing)  # [(what cannot be loaded and why, the command that caches it)]

    def without_files(self) -> str:
        if not self.missing:
            return str(self)
        return "\n".join(f"{what}.\n  Fix: run once with network access to cache them:\n       {fetch}"
                         for what, fetch in self.missing)


# ----------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------


def resolve_clip_weights(choice: str) -> tuple[str, str]:
    """A `CLIP_WEIGHTS` name -> (open_clip model name, pretrained tag)."""
    if choice not in CLIP_WEIGHTS:
        raise ValueError(f"unknown CLIP weights {choice!r}; choose one of {sorted(CLIP_WEIGHTS)}")
    return CLIP_WEIGHTS[choice]


def timm_name(model: str) -> str:
    """A `VISION_MODELS` short name or a timm name -> the timm name (unknown names pass through to timm)."""
    return VISION_MODELS.get(model, model)


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


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


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


def _unavailable_message(what: str, where: str, reason: str, fetch_cmd: str, files: str, cli_flag: str | None) -> str:
    return (
        f"Cannot load the weights of {what}: they are not in the local cache ({where}) and cannot be "
        f"downloaded ({reason}).\nFix, either:\n"
        f"  1. run once with network access to cache them, e.g.\n       {fetch_cmd}\n"
        f"  2. or download {files} yourself and pass checkpoint=PATH{_cli(cli_flag)}."
    )


def _cli(cli_flag: str | None) -> str:
    """The CLI's option for a weight file, as the messages name it; None: a head's parameter (`--head-param`)."""
    if cli_flag:
        return f" (CLI: {cli_flag} PATH)"
    return " as the head's parameter (head_params={'checkpoint': PATH}; CLI: --head-param checkpoint=PATH)"


def _resolve_download(
    what: str,
    repo_id: str | None,
    filenames: Sequence[str],
    url: str | None,
    url_cache: Path | None,
    fetch_cmd: str,
    cli_flag: str | None,
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
    summary = (f"Cannot load the weights of {what}: they are not in the local cache ({where}) and cannot be "
               f"downloaded ({reason})")
    raise BackboneUnavailable(_unavailable_message(what, where, reason, fetch_cmd, files, cli_flag),
                              [(summary, fetch_cmd)])


def _check_checkpoint(checkpoint: str | os.PathLike, what: str, cli_flag: str | None) -> str:
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise BackboneUnavailable(
            f"checkpoint file {path} for {what} does not exist: pass the path of a .bin/.pt/.pth/.safetensors "
            f"weight file (checkpoint=PATH{_cli(cli_flag) if cli_flag is None else ', CLI ' + cli_flag + ' PATH'})."
        )
    return str(path)


def torch_hub_weights(checkpoint: str | os.PathLike | None, url: str, what: str, cli_flag: str | None) -> str:
    """The local path of a weight file published at `url`: `checkpoint` when given, else torch hub's cached copy
    (`$TORCH_HOME/hub/checkpoints`, where `torch.hub.load_state_dict_from_url` puts it), downloaded there when the
    network answers. Offline without it: BackboneUnavailable at once, naming the file, the folder and the command
    that fetches it (the mask models' SAM ViT-B and SAM 2 weights, CLIP-DINOiser's convolutions). cli_flag: the CLI
    option that takes such a file, or None (a head parameter, `checkpoint=PATH`)."""
    if checkpoint is not None:
        return _check_checkpoint(checkpoint, what, cli_flag)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    fetch = f"python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\""
    path = _resolve_download(what, None, [], url, cache, fetch, cli_flag)
    if path is None:  # downloadable: into the same cache
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cache))
        path = str(cache)
    return path


def weights_label(pretrained: str | None, checkpoint: str | os.PathLike | None, seed: int) -> str:
    """The weights part of a backbone id: the tag, the checkpoint file name, or random<seed>."""
    if checkpoint is not None:
        return "file-" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(checkpoint).stem)
    return pretrained if pretrained else f"random{seed}"


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with the global RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# ----------------------------------------------------------------------------------------------------
# open_clip
# ----------------------------------------------------------------------------------------------------


def open_clip_quick_gelu(model_name: str, pretrained: str | None, quick_gelu: bool | None = None) -> bool:
    """Whether the model is built with QuickGELU: as asked, else as the tag's config says (openai: yes)."""
    import open_clip

    if quick_gelu is not None:
        return quick_gelu
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    return bool(cfg.get("quick_gelu", False))


def load_open_clip(
    model_name: str,
    pretrained: str | None,
    checkpoint: str | os.PathLike | None,
    seed: int,
    quick_gelu: bool | None = None,
) -> nn.Module:
    """open_clip model with random (seeded), cached, downloaded or file weights.

    quick_gelu: None = as the pretrained tag's config says (True for 'openai', the GELU trap of open_clip
    >= 2.29); True/False forces it (random weights built like an OpenAI model need True).
    """
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
    quick = open_clip_quick_gelu(model_name, pretrained, quick_gelu)
    if checkpoint is not None:
        path = _check_checkpoint(checkpoint, what, "--clip-checkpoint")
    elif pretrained:
        fetch_cmd = _open_clip_fetch_cmd(model_name, pretrained)
        path = _resolve_download(what, *_open_clip_source(cfg), fetch_cmd, "--clip-checkpoint")
    else:
        return seeded(seed, lambda: open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick))
    try:
        return open_clip.create_model(model_name, pretrained=path or pretrained, force_quick_gelu=quick)
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
# timm
# ----------------------------------------------------------------------------------------------------


def load_timm(model_name: str, pretrained: bool, checkpoint: str | os.PathLike | None, seed: int) -> nn.Module:
    """timm model with dynamic image size and random (seeded), cached, downloaded or file weights."""
    import timm

    if not timm.is_model(model_name):
        raise ValueError(
            f"unknown timm model {model_name!r}; use one of {sorted(VISION_MODELS)} or a timm name such as "
            "'vit_base_patch16_224.dino' (see timm.list_models)"
        )
    what = f"timm {model_name}"
    if checkpoint is not None:
        path = _check_checkpoint(checkpoint, what, "--dino-checkpoint")
    elif pretrained:
        path = _resolve_download(what, *_timm_source(model_name), _timm_fetch_cmd(model_name), "--dino-checkpoint")
    else:
        return seeded(seed, lambda: timm.create_model(model_name, pretrained=False, dynamic_img_size=True))
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
