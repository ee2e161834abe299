"""The text classifier: class names -> synonyms -> prompt ensembles -> one unit embedding per synonym.

    synonyms, owner = split_synonyms(["sky", "cow; calf"])        # ['sky', 'cow', 'calf'], [0, 1, 1]
    emb = prompt_ensembles(model, tokenizer, synonyms)            # [C', D], unit norm

Each synonym is put into the 80 OpenAI ImageNet templates; every prompt is encoded by CLIP's text tower and
L2-normalised; the 80 are averaged and normalised again (CLIP's zero-shot recipe, as LPOSS and its peers use).

Where the time goes, and why it need not: CLIP's text tower runs every prompt over its whole context (77 tokens
for OpenAI's tokenizer), padding included. The transformer is causal and the embedding is read at the
end-of-text token, so nothing after that token can change it: running a batch only up to its longest real prompt
gives the same embeddings (equal up to float summation order, ~1e-7 relative). Our templates end by token 20 at
most, so this is ~5x less work. `context="full"` keeps the full context (reference mode, as open_clip's
`encode_text`); `context="fit"` (default) truncates, and sorts the prompts by length so each batch carries little
padding. Models that are not causal or not pooled at the end-of-text token are always run in full.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TEXT_BATCH_SIZE = 256
CONTEXTS = ("fit", "full")


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


def ensemble_prompts(synonym: str, templates: Sequence[Callable[[str], str]] | None = None) -> list[str]:
    """The prompts of one synonym: every template filled with it."""
    return [template(synonym) for template in (templates or imagenet_templates())]


# ----------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------


def can_truncate(model: nn.Module) -> bool:
    """True for open_clip's CLIP text tower: causal mask, pooled at the end-of-text token."""
    mask = getattr(model, "attn_mask", None)
    return (
        getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and isinstance(mask, Tensor)
        and bool(torch.isneginf(mask[torch.ones_like(mask, dtype=torch.bool).triu(1)]).all())  # causal
        and hasattr(model, "token_embedding")
    )


def end_positions(model: nn.Module, tokens: Tensor) -> Tensor:
    """[n] index of each prompt's end-of-text token, where open_clip's pooling reads the embedding."""
    if model.text_pool_type == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)  # OpenAI's tokenizer: end-of-text has the largest id


def encode_tokens(model: nn.Module, tokens: Tensor, context: str = "fit") -> Tensor:
    """tokens [n, 77] -> unit text embeddings [n, D]; "fit" runs only up to the batch's last end-of-text."""
    if context not in CONTEXTS:
        raise ValueError(f"context={context!r}: use one of {CONTEXTS}")
    if context == "full" or not can_truncate(model):
        return F.normalize(model.encode_text(tokens).float(), dim=-1)
    length = int(end_positions(model, tokens).max()) + 1
    tokens = tokens[:, :length]  # [n, L]: later positions cannot reach the end-of-text token (causal)
    # open_clip CLIP.encode_text with the position embedding and the causal mask cut to L
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)  # [n, L, W]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))  # [n, L, W]
    x = x[torch.arange(x.shape[0], device=x.device), end_positions(model, tokens)]  # [n, W]
    projection = model.text_projection
    x = projection(x) if isinstance(projection, nn.Linear) else x if projection is None else x @ projection
    return F.normalize(x.float(), dim=-1)  # [n, D]


def encode_prompts(model: nn.Module, tokenizer: Callable, prompts: list[str], device: torch.device,
                   context: str = "fit") -> Tensor:
    """prompts -> unit embeddings [n, D] in the prompts' order, in batches of TEXT_BATCH_SIZE.

    "fit" batches the prompts by length (shortest first) so that each batch is cut short of little padding.
    """
    tokens = tokenizer(prompts).to(device)  # [n, context]
    order = torch.arange(len(prompts), device=device)
    if context == "fit" and can_truncate(model):
        order = torch.argsort(end_positions(model, tokens), stable=True)
    encoded = torch.cat([encode_tokens(model, tokens[batch], context)
                         for batch in order.split(TEXT_BATCH_SIZE)])  # [n, D] in batch order
    out = torch.empty_like(encoded)
    out[order] = encoded  # back to the prompts' order
    return out


def prompt_ensembles(model: nn.Module, tokenizer: Callable, synonyms: list[str], device: torch.device,
                     context: str = "fit", templates: Sequence[Callable[[str], str]] | None = None) -> Tensor:
    """synonyms -> [C', D]: per synonym, the mean of its unit prompt embeddings (the 80 templates by
    default), L2-normalised."""
    templates = list(templates or imagenet_templates())
    prompts = [prompt for name in synonyms for prompt in ensemble_prompts(name, templates)]
    per_prompt = encode_prompts(model, tokenizer, prompts, device, context)  # [C' * T, D]
    per_prompt = per_prompt.reshape(len(synonyms), len(templates), -1)  # [C', T, D]
    return F.normalize(per_prompt.mean(dim=1), dim=-1)  # [C', D]
