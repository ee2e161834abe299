"""Parity of lposs.models.heads_masks.corrclip with CorrCLIP's own VisionTransformer.forward (not a test).

The release's vendored open_clip (zdk258/CorrCLIP CorrCLIPv1/open_clip) is imported from a checkout under another
package name, so the installed open_clip stays ours. Both models are ViT-B-16-quickgelu with the same random state
dict; both get the same CLIP-normalised window, the same random DINO q + k (the release gets it L2-normalised, as
corrclip_segmentor.py:110-112 passes it) and the same synthetic pixel mask (ids 0 = unsegmented, then regions, two
of them with the same DINO features so DBSCAN merges them). Prints the max abs error per window size.

    git -C /work/.mirror/zdk258+CorrCLIP/repo archive HEAD CorrCLIPv1 | tar -x -C /tmp/corrclip_release
    PYTHONPATH=. python benchmarks/parity_corrclip.py /tmp/corrclip_release/CorrCLIPv1

The release needs cv2 and scikit-learn (imported by its transformer.py) and tqdm; nothing else is shimmed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lposs.models.heads_masks.corrclip import DEFAULTS, corrclip, merge_regions, regions_at_grid

SIZES = [(224, 224), (336, 336), (112, 160), (224, 112)]  # native grid, the release crop, off-grid (the "sclip" rule)


def import_release(checkout: Path):
    """The vendored open_clip as the package `corrclip_open_clip` (its imports are relative, bar one)."""
    folder = checkout / "open_clip"
    spec = importlib.util.spec_from_file_location(
        "corrclip_open_clip", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["corrclip_open_clip"] = module
    spec.loader.exec_module(module)
    return module


def synthetic_mask(height: int, width: int) -> torch.Tensor:
    """[H, W] int ids: 0 unsegmented, regions 1..4 (as a mask model's ascending-area rule numbers them)."""
    mask = torch.zeros(height, width, dtype=torch.long)
    mask[: height // 2, : width // 2] = 1
    mask[: height // 2, width // 2 :] = 2
    mask[height // 2 :, : width // 3] = 3
    mask[height // 2 : height - 16, width // 3 : width - 24] = 4
    return mask


def two_regions(height: int, width: int) -> torch.Tensor:
    """[H, W] ids {3, 7}, no unsegmented pixel: the lowest real region is treated as unsegmented, no merging."""
    mask = torch.full((height, width), 7, dtype=torch.long)
    mask[:, : width // 3] = 3
    return mask


MASKS = {"five ids": synthetic_mask, "two ids": two_regions}


def synthetic_proxy(regions: torch.Tensor, channels: int, seed: int) -> torch.Tensor:
    """DINO q + k [h', w', C]: one random direction per region (regions 1 and 2 share one), plus noise."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(int(regions.max()) + 1, channels, generator=g)
    bases[2] = bases[1]  # DBSCAN merges regions 1 and 2
    noise = 0.3 * torch.randn(*regions.shape, channels, generator=g)
    return bases[regions] + noise


def run(release, ours, size: tuple[int, int], seed: int, masks: str = "five ids") -> float:
    torch.manual_seed(seed)
    window = torch.randn(1, 3, *size)
    pixel_mask = MASKS[masks](*size)
    grid = (size[0] // 8, size[1] // 8)  # DINO B/8
    regions = regions_at_grid(pixel_mask, grid)
    proxy = synthetic_proxy(regions, 768, seed)
    with torch.no_grad():
        dino_feats = F.normalize(proxy.flatten(0, 1), dim=-1)[None]  # [1, N', C], corrclip_segmentor.py:110-112
        expected = release.visual(window, dino_feats, grid, pixel_mask[None, None].int())[0]  # [N', D]
        got = corrclip(ours.visual, window, proxy, regions, dict(DEFAULTS)).flatten(0, 1)
    error = (got - expected).abs().max().item()
    merged = merge_regions(regions, dino_feats[0], DEFAULTS["dbscan_eps"], DEFAULTS["dbscan_min_samples"])
    print(f"{size[0]}x{size[1]}, {masks}: ids {regions.unique().tolist()} -> merged {merged.unique().tolist()}")
    print(f"    DINO grid {grid}, output {tuple(got.shape)}, |release| max "
          f"{expected.abs().max().item():.3f}, max abs error {error:.2e}")
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="the release's CorrCLIPv1 folder (holding open_clip/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import open_clip

    release_clip = import_release(args.checkout)
    torch.manual_seed(args.seed)
    release = release_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    ours = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    theirs, mine = release.state_dict(), ours.state_dict()
    if set(theirs) != set(mine):
        raise SystemExit(f"state dict keys differ: release only {sorted(set(theirs) - set(mine))}, "
                         f"ours only {sorted(set(mine) - set(theirs))}")
    ours.load_state_dict(theirs, strict=True)
    print(f"same {len(theirs)} state-dict keys; activations: release "
          f"{type(release.visual.transformer.resblocks[0].mlp.gelu).__name__}, "
          f"ours {type(ours.visual.transformer.resblocks[0].mlp.gelu).__name__}")
    errors = [run(release, ours, size, args.seed) for size in SIZES]
    worst = max(errors + [run(release, ours, SIZES[0], args.seed, "two ids")])
    print(f"worst max abs error {worst:.2e} ({'within' if worst <= 1e-5 else 'OVER'} 1e-5)")


if __name__ == "__main__":
    main()
