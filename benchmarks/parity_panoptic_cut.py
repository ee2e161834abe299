"""Parity of lposs.models.panoptic_cut with Panoptic Cut's own code, and how its masks move with the seed (not a test).

The release's folder (dahyun-kang/lavg@2db88e5 panoptic_cut/: predict.py, panoptic_cut.py, crf.py, dino.py, utils.py)
is imported from a checkout, never vendored. Both sides get the same image file, the same random DINO ViT-B/8
(timm's, seeded, saved to a file that the release's `dino.ViTFeat` loads strictly) and the same seed
(torch.manual_seed just before the release's `Predictor.predict`, which draws nothing before lobpcg). Shims: a
module `cog` (the release's Replicate wrapper; only its names are imported) and `Tensor.cuda` as a no-op (the
release hard-codes `.cuda()`), so everything runs on the CPU.

    git -C /work/.mirror/dahyun-kang+lavg/repo archive HEAD panoptic_cut | tar -x -C /tmp/lavg_release
    PYTHONPATH=. python benchmarks/parity_panoptic_cut.py --release /tmp/lavg_release/panoptic_cut IMAGE ...
    PYTHONPATH=. python benchmarks/parity_panoptic_cut.py --release ... --size 160 --seeds 0 1 2 3 4 IMAGE ...
    PYTHONPATH=. python benchmarks/parity_panoptic_cut.py --seeds 0 1 2 3 4 IMAGE ...            # ours only
    PYTHONPATH=. python benchmarks/parity_panoptic_cut.py --keys demo --seeds 0 1 2 3 4 --demo 3  # the demo's

With --release it prints, per image: the largest difference between the two models' keys (and how far timm's own
antialiased resize of the position embedding is from DINO's rule), then per seed whether the masks are identical.
Without it, only ours runs. With several seeds it prints how the masks move from the first seed's: the best-match
IoU of each first-seed mask (mean, and the smallest), the share of pixels whose region id (1 + the first mask
covering it) changes, and the share outside their best-matching region (the partition, whatever the ids: a change
of discovery order renumbers the regions without moving them). Random DINO weights make masks of colour and texture, not objects: the movement measured
here is the eigen-solver's, not what trained DINO's masks would show. The same is printed for the cut's patch
masks before the CRF (the CRF's IoU check empties most masks of random keys, hiding the cut's movement).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lposs.core.regions import masks_to_regions
from lposs.image_features import as_image_tensor
from lposs.models.loading import load_timm
from lposs.models.ncut import cut_masks
from lposs.models.panoptic_cut import DINO, DemoKeys, DinoKeys, PanopticCut, dino_position_embedding, square_pixels


def import_release(folder: Path) -> types.ModuleType:
    """The release's predict.py (and through it panoptic_cut.py, crf.py, dino.py, utils.py) from `folder`."""
    cog = types.ModuleType("cog")
    cog.BasePredictor, cog.Input, cog.Path = object, (lambda **kwargs: None), str
    sys.modules.setdefault("cog", cog)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the release's hard-coded .cuda(): stay on the CPU
    sys.path.insert(0, str(folder))
    import predict

    return predict


def release_masks(predict: types.ModuleType, backbone: torch.nn.Module, image: Path, size: int, seed: int,
                  out: Path) -> torch.Tensor:
    """The release's masks file for `image` ([M + 1, H, W], read as bool as clip_segmentor.py:130 does)."""
    predictor = predict.Predictor()
    predictor.outputroot, predictor.logs, predictor.imgsize = str(out), "", size
    predictor.patch_size, predictor.backbone_base = 8, backbone
    torch.manual_seed(seed)
    predictor.predict(image=str(image), model="base", n_pseudo_masks=8, tau=0.3, vis=False)
    return torch.load(out / f"{image.name.split('.')[0]}.pth").bool()


class CachedKeys:
    """A key model that computes each image's keys once (the seeds change only the cut)."""

    def __init__(self, keys) -> None:
        self.keys, self.patch_size, self.id, self.cache = keys, keys.patch_size, keys.id, {}

    def __call__(self, image: torch.Tensor):
        key = hash(image.numpy().tobytes())
        if key not in self.cache:
            self.cache[key] = self.keys(image)
        return self.cache[key]


def best_match_iou(reference: torch.Tensor, other: torch.Tensor) -> list[float]:
    """For each non-empty mask of reference [M, H, W] (complement excluded), its best IoU among other's masks."""
    scores = []
    for mask in reference[:-1]:
        if mask.any():
            inter = (mask[None] & other[:-1]).flatten(1).sum(1).float()
            union = (mask[None] | other[:-1]).flatten(1).sum(1).float()
            scores.append(float((inter / union.clamp_min(1)).max()))
    return scores


def partition_moved(first: torch.Tensor, other: torch.Tensor) -> float:
    """The share of pixels outside the region of one id map [H, W] that best overlaps their region of the other,
    the larger of the two ways: 0 when the maps cut the image alike, whatever the ids (the discovery order may
    differ between seeds), and a split or a merge of regions counts."""
    def one_way(a: torch.Tensor, b: torch.Tensor) -> float:
        width = int(b.max()) + 1
        pairs = torch.bincount(a.flatten() * width + b.flatten(), minlength=(int(a.max()) + 1) * width)
        return 1.0 - float(pairs.view(-1, width).max(dim=1).values.sum()) / a.numel()

    return max(one_way(first, other), one_way(other, first))


def movement(masks: dict[int, torch.Tensor]) -> str:
    """How the masks of every other seed differ from the first seed's."""
    seeds = list(masks)
    first = masks[seeds[0]]
    lines = [f"    seed {s}: {len(m) - 1} masks, {int(sum(c.any() for c in m[:-1]))} non-empty" for s, m in masks.items()]
    for seed in seeds[1:]:
        ious = best_match_iou(first, masks[seed])
        ids, other = masks_to_regions(first), masks_to_regions(masks[seed])
        lines.append(f"    seed {seed} vs {seeds[0]}: best-match IoU mean {np.mean(ious) if ious else float('nan'):.3f}"
                     f" min {min(ious) if ious else float('nan'):.3f}; region id changed on "
                     f"{100 * float((ids != other).float().mean()):.1f}% of pixels, the partition on "
                     f"{100 * partition_moved(ids, other):.1f}%")
    return "\n".join(lines)


def demo_images(count: int, folder: Path) -> list[Path]:
    """`count` scenes of the offline demo written as PNG files in `folder`."""
    from lposs.demo.scenes import render_scene

    paths = []
    for i in range(count):
        pixels, _ = render_scene(np.random.RandomState(i), (360, 480))
        paths.append(folder / f"demo{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="image files (e.g. CamVid frames)")
    parser.add_argument("--release", type=Path, help="the release's panoptic_cut/ folder (compare with it)")
    parser.add_argument("--size", type=int, default=640, help="the square side (the release's --imgsize, 640)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--keys", choices=("dino", "demo"), default="dino", help="random DINO B/8 or the demo's")
    parser.add_argument("--demo", type=int, default=0, help="also this many generated demo scenes")
    parser.add_argument("--weights-seed", type=int, default=0, help="the random DINO weights' seed")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    work = Path(tempfile.mkdtemp(prefix="parity_panoptic_cut_"))
    images = list(args.images) + demo_images(args.demo, work)
    if args.keys == "demo":
        keys = DemoKeys()
    else:
        model = load_timm(DINO, False, None, args.weights_seed)
        keys = DinoKeys(model, f"timm-{DINO}-random{args.weights_seed}")
    cached = CachedKeys(keys)
    predict = backbone = None
    if args.release is not None:
        if args.keys != "dino":
            raise SystemExit("--release compares DINO's keys: leave --keys at dino")
        predict = import_release(args.release)
        weights = work / "dino_random.pth"
        torch.save(model.state_dict(), weights)
        backbone = predict.dino.ViTFeat(str(weights), 768, "base", "k", 8).eval()  # strict load of timm's keys
    worst = 0
    for path in images:
        image = as_image_tensor(np.array(Image.open(path).convert("RGB")))
        print(f"{path.name}: {tuple(image.shape[1:])}, square {args.size}")
        if backbone is not None:
            square = torch.from_numpy(square_pixels(image, args.size)).permute(2, 0, 1)[None].float() / 255
            ours, grid = cached(square)
            normalised = predict.ToTensor(Image.fromarray(square_pixels(image, args.size)))[None]
            theirs = backbone(normalised)[0]  # [768, N]
            timm_pos = load_timm_resize(model, grid)
            print(f"    keys: max |ours - release| {float((ours - theirs).abs().max()):.2e} (|keys| max "
                  f"{float(theirs.abs().max()):.2f}); timm's antialiased position embedding differs from DINO's "
                  f"rule by {float((timm_pos - dino_position_embedding(model.pos_embed, grid)).abs().max()):.2e}")
        masks = {}
        for seed in args.seeds:
            start = time.perf_counter()
            masks[seed] = PanopticCut(cached, size=args.size, seed=seed).masks(image)  # [M + 1, H, W]
            line = f"    seed {seed}: {len(masks[seed]) - 1} masks in {time.perf_counter() - start:.1f} s"
            if predict is not None:
                theirs = release_masks(predict, backbone, path, args.size, seed, work)
                same = theirs.shape == masks[seed].shape and bool((theirs == masks[seed]).all())
                differing = "" if same or theirs.shape != masks[seed].shape else \
                    f", {int((theirs != masks[seed]).sum())} pixels differ"
                worst = max(worst, 0 if same else 1)
                line += f"; release {len(theirs) - 1} masks: {'IDENTICAL' if same else 'DIFFERENT'}{differing}"
            print(line)
        if len(args.seeds) > 1:
            print("  the masks (after the CRF, at the image's size):\n" + movement(masks))
            square = torch.from_numpy(square_pixels(image, args.size)).permute(2, 0, 1)[None].float() / 255
            keys_, grid = cached(square)
            cuts = {}
            for seed in args.seeds:  # the cut alone: lobpcg's start moves these first
                found = torch.stack(cut_masks(keys_, grid, seed=seed))  # [M, gh, gw]
                cuts[seed] = torch.cat([found, ~found.any(0, keepdim=True)])
            print("  the cut's patch masks (before the CRF):\n" + movement(cuts))
    if predict is not None:
        print("all masks identical to the release's" if worst == 0 else "SOME MASKS DIFFER from the release's")


def load_timm_resize(model: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """timm's own dynamic resize of the position embedding (what `forward_features` would add) at `grid`."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(model.pos_embed, new_size=list(grid), num_prefix_tokens=model.num_prefix_tokens)


if __name__ == "__main__":
    main()
