"""Parity of the `gem` head (lposs.models.heads_2024.gem) with GEM's own code (not a test).

The release (WalBouss/GEM@5fa677c; PyPI gem-torch 1.0.1 ships the same gem/*.py) is imported from a folder holding
its `gem/` package, either of:

    git -C /work/.mirror/WalBouss+GEM/repo archive HEAD gem | tar -x -C /tmp/gem_release    (the fetch tool's mirror)
    pip install --target /tmp/gem_pkgs --no-deps gem-torch==1.0.1 einops
    PYTHONPATH=.:/tmp/gem_pkgs python benchmarks/parity_gem.py /tmp/gem_release

(its gem_wrapper imports einops, its gem.py cv2 and matplotlib). Both sides get the same random state dict: the
release's GEMWrapper is built directly (its create_gem_model passes open_clip.create_model's arguments by position,
which open_clip 3.x reads as other parameters) on a copy of the model; ours runs the head through the package's
traced runner. For each CLIP the release evaluates (OpenAI ViT-B/16 QuickGELU, MetaCLIP 400m's ViT-B-16-quickgelu,
LAION-400m's ViT-B-16 GELU, and ViT-L/14's 24 blocks) and each size (the native 224 grid; 448, the release's; a
non-square one; a batch of two 448 images, whose inverse temperatures are per image), prints the largest error of the
GEM features (after proj, before the wrapper's L2 normalisation, CLS dropped) relative to their largest magnitude.

The release's trap worked around HERE only: it feeds open_clip's transformer sequence-first ([L, B, W]), as open_clip
<= 2.23 ran every block; open_clip >= 2.24 builds batch-first attention, so the blocks GEM leaves untouched would
attend over the batch axis. This script switches those blocks' nn.MultiheadAttention to batch_first=False, which is
how open_clip 2.23 built them (torch's unfused attention, the one the traced runner uses too).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

MODELS = [  # (open_clip name, QuickGELU, what the release shows it with)
    ("ViT-B-16", True, "OpenAI ViT-B/16 (README)"),
    ("ViT-B-16-quickgelu", True, "MetaCLIP metaclip_400m (app.py, test_examples.py)"),
    ("ViT-B-16", False, "OpenCLIP laion400m_e32 (app.py)"),
    ("ViT-L-14", True, "OpenAI ViT-L/14 (gem.py _MODELS)"),
]
SIZES = [(1, 224, 224), (1, 448, 448), (1, 224, 336), (2, 448, 448)]


def release_wrapper(checkout: Path, model: torch.nn.Module, depth: int = 7):
    """The release's GEMWrapper around `model` (mutated), its untouched blocks made sequence-first."""
    sys.path.insert(0, str(checkout))
    from gem.gem_utils import GEMResidualBlock
    from gem.gem_wrapper import GEMWrapper

    wrapper = GEMWrapper(model, tokenizer=None, depth=depth, ss_attn_iter=1, ss_attn_temp=None).eval()
    for block in model.visual.transformer.resblocks:
        if not isinstance(block, GEMResidualBlock):
            block.attn.batch_first = False  # open_clip <= 2.23's blocks: [L, B, W]
    return wrapper


def run(name: str, quick: bool, checkout: Path, seed: int) -> float:
    """One CLIP (random weights seeded by `seed`) at every size -> the worst relative error."""
    import open_clip

    from lposs.models.heads import RUNNERS, head_record

    torch.manual_seed(seed)
    ours = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick).eval()
    release = release_wrapper(checkout, copy.deepcopy(ours))
    record = head_record("gem")
    settings = record.settings()
    worst = 0.0
    for batch, height, width in SIZES:
        images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed + height + width))
        with torch.no_grad():
            expected = release.model.visual(images)[0][:, 1:]  # [B, N, D], the GEM path, CLS dropped
            got = RUNNERS["traced"](record, ours.visual, images, settings, {}).flatten(1, 2)  # [B, N, D]
        relative = ((got - expected).abs().max() / expected.abs().max()).item()
        worst = max(worst, relative)
        print(f"  {batch} x {height}x{width} (grid {height // ours.visual.patch_size[0]}x"
              f"{width // ours.visual.patch_size[1]}): |release| max {expected.abs().max().item():.3f}, "
              f"max abs error / max |release| {relative:.2e}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a folder holding the release's gem/ package")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(str(i) for i in range(len(MODELS))),
                        help="indices into MODELS (default: all)")
    args = parser.parse_args()
    worst = 0.0
    for index in (int(i) for i in args.models.split(",")):
        name, quick, shown = MODELS[index]
        print(f"{name} {'QuickGELU' if quick else 'GELU'}, random weights (the architecture of {shown}):")
        worst = max(worst, run(name, quick, args.checkout, args.seed + index))
    print(f"worst relative error {worst:.2e} ({'within' if worst <= 1e-5 else 'OVER'} 1e-5)")


if __name__ == "__main__":
    main()
