"""A persistent cache of class embeddings: a vocabulary is encoded once per machine, not on every run.

    cache = TextCache.from_env()                  # None when LPOSS_CACHE=off
    emb = cached_prompt_ensembles(model, tokenizer, synonyms, device, identity, cache)   # [C', D]

Where: `$LPOSS_CACHE/text/` if LPOSS_CACHE names a folder, else `$XDG_CACHE_HOME/lposs/text/` (by default
`~/.cache/lposs/text/`). `LPOSS_CACHE=off` turns it off. Deleting the folder is always safe.

What is cached: one file per synonym, the prompt ensemble's unit embedding [D] (float32). Its name is a
SHA-256 of everything that determines it: this format's version, the model's name, a digest of the text
tower's weights themselves (so other weights, fine-tuned or random, can never be served: one changed value
changes the digest), the device type and dtype it was computed in, the context rule (`text.CONTEXTS`) and
the prompt strings (so another template set or synonym is another entry).

Several processes may share one cache (the pipeline's workers, the web app, the CLI): entries are written
through `lposs.io.atomic_write` (a temp file, then an atomic rename), so a reader sees a whole entry or none,
and two writers of one key write the same bytes. An unreadable entry counts as a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..io import atomic_write_bytes
from .text import ensemble_prompts, imagenet_templates, prompt_ensembles

CACHE_ENV = "LPOSS_CACHE"
DISABLED = ("off", "none", "0", "false", "no")
FORMAT_VERSION = 1


def default_cache_root() -> Path:
    """$XDG_CACHE_HOME/lposs, or ~/.cache/lposs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lposs"


def cache_root() -> Path | None:
    """The cache folder LPOSS_CACHE names (None when it says off), else the default."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in DISABLED and value:
        return None
    return Path(value).expanduser() if value else default_cache_root()


def weights_digest(model: nn.Module, skip_prefixes: tuple[str, ...] = ("visual.",)) -> str:
    """BLAKE2b of the names, dtypes, shapes and bytes of every parameter and buffer outside `skip_prefixes`."""
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted([*model.named_parameters(), *model.named_buffers()], key=lambda item: item[0]):
        if name.startswith(skip_prefixes):
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


class TextCache:
    """Unit embeddings [D] on disk, one file per key, written atomically."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.folder = Path(root) / "text"

    @classmethod
    def from_env(cls) -> "TextCache | None":
        root = cache_root()
        return None if root is None else cls(root)

    @staticmethod
    def key(identity: dict[str, Any], prompts: list[str]) -> str:
        """SHA-256 of the format version, the identity (model, weights digest, device, dtype, context), prompts."""
        payload = json.dumps({"version": FORMAT_VERSION, **identity, "prompts": prompts}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str) -> Tensor | None:
        """The stored embedding, or None when absent or unreadable."""
        try:
            value = torch.load(self.path(key), map_location="cpu", weights_only=True)
        except Exception:  # absent, or damaged (a user's edit, a disk error): a miss either way
            return None
        ok = isinstance(value, Tensor) and value.ndim == 1 and value.dtype == torch.float32
        return value if ok and bool(torch.isfinite(value).all()) else None

    def put(self, key: str, value: Tensor) -> None:
        buffer = io.BytesIO()
        torch.save(value.detach().to("cpu", torch.float32).clone(), buffer)
        atomic_write_bytes(self.path(key), buffer.getvalue())


def cached_prompt_ensembles(
    model: nn.Module,
    tokenizer: Callable,
    synonyms: list[str],
    device: torch.device,
    identity: Callable[[], dict[str, Any]],
    cache: TextCache | None,
    context: str = "fit",
) -> Tensor:
    """`text.prompt_ensembles`, served from the cache where it can be; the misses encoded in one pass.

    identity: called only when a cache is in use (the weights digest costs ~0.1 s per 100 MB).
    """
    if cache is None:
        return prompt_ensembles(model, tokenizer, synonyms, device, context)
    ident, templates = identity(), imagenet_templates()
    keys = [cache.key(ident, ensemble_prompts(name, templates)) for name in synonyms]
    found = [cache.get(key) for key in keys]
    missing = [index for index, value in enumerate(found) if value is None]
    if missing:
        fresh = prompt_ensembles(model, tokenizer, [synonyms[i] for i in missing], device, context,
                                 templates)  # [m, D]
        for index, value in zip(missing, fresh):
            cache.put(keys[index], value)
            found[index] = value
    return torch.stack([value.to(device, torch.float32) for value in found])  # [C', D]
