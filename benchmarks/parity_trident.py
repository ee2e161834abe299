"""Parity of lposs.models.heads_masks.trident with Trident's own VisionTransformer.forward (not a test).

The release's vendored open_clip (YuHengsss/Trident@a93b346 open_clip/) is imported from a checkout under another
package name, so the installed open_clip stays ours. Both models are ViT-B-16-quickgelu with the same random state
dict; both get the same CLIP-normalised windows of one image (`trident.release_windows`: 336 px every 224, as
configs/base_config.py), the same random DINO B/16 tokens, and the same synthetic SAM attention [1, 12, n, n] and
values [1, 12, h_s, w_s, 64] (the release reads them from its modified segment-anything; ours come from
`lposs.models.sam_attention`, checked against segment-anything's own block in tests/test_trident.py). Prints the
max abs error of the features (after proj, before the L2 norm) per image size and cos_fac.

Second, SAM's side: the release's modified `segment_anything/modeling/image_encoder.py` (which keeps `last_attn`
and `last_v`) and pip segment-anything's ImageEncoderViT with `lposs.models.sam_attention.last_block_attention`
on its last block's input, both SAM ViT-B with the same random weights (relative position tables randomised too:
they start at zero) on the same 1024 x 1024 input.

    mkdir -p /tmp/trident_release
    git -C <Trident mirror> archive HEAD open_clip segment_anything | tar -x -C /tmp/trident_release
    PYTHONPATH=. python benchmarks/parity_trident.py /tmp/trident_release
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from lposs.models import loading
from lposs.models.heads_masks.trident import DEFAULTS, release_windows, trident

CASES = [((336, 560), (48, 80), 1.2), ((560, 336), (80, 48), 0.0), ((448, 448), (64, 64), 3.0)]  # image, SAM grid, cos_fac


def import_release(checkout: Path):
    """The vendored open_clip as the package `trident_open_clip` (its imports are relative)."""
    folder = checkout / "open_clip"
    spec = importlib.util.spec_from_file_location("trident_open_clip", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["trident_open_clip"] = module
    spec.loader.exec_module(module)
    return module


def import_release_encoder(checkout: Path):
    """The release's modified SAM image encoder module (it imports only `.common`, loaded beside it)."""
    folder = checkout / "segment_anything" / "modeling"
    package = importlib.util.module_from_spec(importlib.util.spec_from_loader("trident_sam_modeling", loader=None))
    package.__path__ = [str(folder)]
    sys.modules["trident_sam_modeling"] = package
    for name in ("common", "image_encoder"):
        spec = importlib.util.spec_from_file_location(f"trident_sam_modeling.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["trident_sam_modeling.image_encoder"]


def sam_parity(checkout: Path) -> float:
    """max abs error of (attention, values) of SAM ViT-B's last block: the release's hooks vs ours."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT

    from lposs.models.sam_attention import last_block_attention

    config = {"depth": 12, "embed_dim": 768, "img_size": 1024, "mlp_ratio": 4, "num_heads": 12, "patch_size": 16,
              "qkv_bias": True, "use_rel_pos": True, "global_attn_indexes": [2, 5, 8, 11], "window_size": 14,
              "out_chans": 256, "norm_layer": partial(torch.nn.LayerNorm, eps=1e-6)}
    torch.manual_seed(1)
    ours = ImageEncoderViT(**config).eval()
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            if "rel_pos" in name:
                parameter.normal_(0, 0.5)
    theirs = import_release_encoder(checkout).ImageEncoderViT(**config).eval()
    theirs.load_state_dict(ours.state_dict())
    image = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(2))
    seen = {}
    hook = ours.blocks[-1].attn.register_forward_hook(lambda _m, inputs, _o: seen.update(x=inputs[0]))
    with torch.no_grad():
        ours(image)
        theirs(image)
        attn, values = last_block_attention(ours.blocks[-1].attn, seen["x"])
    hook.remove()
    return max((attn - theirs.last_attn.reshape(attn.shape)).abs().max().item(),
               (values - theirs.last_v.reshape(values.shape)).abs().max().item())


def synthetic_sam(grid: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n = grid[0] * grid[1]
    attn = torch.softmax(4 * torch.randn(12, n, n, generator=generator), dim=-1)
    values = torch.randn(12, *grid, 64, generator=generator) + torch.randn(1, *grid, 64, generator=generator)
    return attn, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="folder holding the release's open_clip/")
    args = parser.parse_args()
    release = import_release(args.checkout)
    ours = loading.load_open_clip("ViT-B-16", None, None, seed=0, quick_gelu=True).visual.eval()
    theirs = release.create_model("ViT-B-16-quickgelu", pretrained=None).visual.eval()
    theirs.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)
    for (height, width), sam_grid, cos_fac in CASES:
        image = torch.randn(3, height, width, generator=generator)  # CLIP-normalised already
        windows, cells, canvas = release_windows(image, 336, 224, 16)
        dino = torch.randn(len(windows), 21, 21, 768, generator=generator)  # DINO B/16 tokens of 336 px windows
        attn, values = synthetic_sam(sam_grid, generator)
        settings = {**DEFAULTS, "cos_fac": cos_fac}
        with torch.no_grad():
            mine = trident(ours, windows, dino, cells, canvas, attn, values, **settings)  # [1, h_s, w_s, D]
            rows, cols = (max(len(set(cells[:, i].tolist())), 1) for i in (0, 1))
            reference = theirs(windows, dino.permute(0, 3, 1, 2), beta=1.2, gamma=3.0,
                               dst_coords=list(cells), win_sizes=(rows, cols), dst_vh=canvas[0], dst_vw=canvas[1],
                               sam_attn=attn[None], sam_v=values[None], cos_fac=cos_fac, vfm_token_size=(21, 21),
                               refine_neg_cos=True)  # [1, n, D]
        error = (mine.reshape(1, -1, mine.shape[-1]) - reference).abs().max().item()
        print(f"image {height}x{width}, {len(windows)} windows, SAM grid {sam_grid}, cos_fac {cos_fac}: "
              f"max abs error {error:.2e} (features of norm ~{reference.norm(dim=-1).mean():.1f})")
    if (args.checkout / "segment_anything").is_dir():
        print(f"SAM ViT-B last block, attention and values: max abs error {sam_parity(args.checkout):.2e}")


if __name__ == "__main__":
    main()
