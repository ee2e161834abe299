"""A photo on a CPU: every stage of `segment` timed on today's path (reference mode) and the new one in the
same run, with its FLOPs and the fraction of this machine's matrix-multiply throughput it reaches.

    python -m benchmarks.cpu [--json cpu.json] [--image PHOTO] [--threads N] [--skip-bf16]

Backbones: OpenCLIP ViT-B/16 (MaskCLIP head) and DINO ViT-B/16 with random weights (the same FLOPs as the real
ones; no download). The photo: a CamVid test frame (960 x 720) from the shared data folder when present
(`LPOSS_SHARED_DATA`), else a generated demo scene of that size; 448 short side -> 15 windows of 224; six
classes. Paths, in one process:
- reference: what `segment` did before (the text tower over its whole 77-token context, no cache);
- fast: the text tower run only up to each batch's last end-of-text token, the persistent cache cold
  (an empty folder); `cached`: the same call again in a fresh state (weights digest + disk reads).
Both photo paths run `lposs.segment` end to end (backbones built beforehand, as a served model is) and
their label maps are compared pixel by pixel. The text side is also timed alone for VOC's 21 classes and
FoodSeg103's 104 (MESS). FLOPs: torch's FlopCounterMode for the matrix products of the backbones, the text
tower and the patch solve; the pixel solve's stencil by count (2 x 168 multiply-adds per pixel and class per
product, the 13 x 13 window). `floor_fraction` = FLOPs / seconds / the float32 `torch.matmul` probe of this
run: 1.0 would be a stage running as fast as one big matrix product can.
With native bfloat16 (AVX-512 BF16 or AMX), `bf16` times both backbones under bf16 autocast and measures
what it does to the seeds and the label map (the `--bf16` flag of the CLI and web app).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lposs.core import graphs
from lposs.core.refine import refine_pixels
from lposs.core.windows import crop_windows, resize_image, resized_size, window_layout
from lposs.datasets.registry import shared_data_dir
from lposs.image_features import as_image_tensor, extract_features, merge_patches
from lposs.io import write_json
from lposs.models.backbones import DenseCLIP, VisionFeatures, cpu_has_native_bf16
from lposs.models.text_cache import TextCache
from lposs.segmentation import propagate_patches, segment
from lposs.settings import Setting, WindowSettings

PHOTO_CLASSES = ["sky", "building", "road", "tree", "car", "pedestrian"]
CAMVID_PHOTO = "camvid_segnet/CamVid/test/0001TP_008550.png"
CLASS_FILES = {"text_21": "voc21.txt", "text_104": "mess_foodseg103.txt"}
WINDOWS = WindowSettings(crop=224, stride=112, short_side=448, long_side=2048)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed_counted(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    """(seconds, the matrix-product FLOPs torch counts while fn runs, fn's result). The counter looks at each
    op as it is dispatched: microseconds per op, nothing next to the products these stages run."""
    with FlopCounterMode(display=False) as counter:
        seconds, out = timed(fn)
    return seconds, int(counter.get_total_flops()), out


def matmul_probe(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """This machine's FLOP/s for one big torch.matmul (best of `repeats`)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b))[0] for _ in range(repeats))
    return 2 * size**3 / best


def class_file(name: str) -> list[str]:
    path = Path(__file__).resolve().parents[1] / "lposs" / "datasets" / "classes" / name
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_photo(path: str | None) -> tuple[np.ndarray, str]:
    from lposs.datasets.base import read_image

    candidate = Path(path) if path else shared_data_dir() / CAMVID_PHOTO
    if candidate.is_file():
        return read_image(candidate), str(candidate)
    if path:
        raise FileNotFoundError(f"--image {path} does not exist")
    from lposs.demo.scenes import render_scene  # a generated scene of CamVid's size

    return render_scene(np.random.RandomState(0), (720, 960))[0], "generated demo scene 720x960"


class TextModes:
    """One DenseCLIP switched between the reference text path and the new one (sharing the weights)."""

    def __init__(self, vlm: DenseCLIP, cache_root: Path) -> None:
        self.vlm, self.cache_root = vlm, cache_root

    def set(self, mode: str, cache: str = "none") -> DenseCLIP:
        """mode reference|fast; cache none|cold|warm. Clears the in-memory state, as a new process has it."""
        self.vlm.text_context = "full" if mode == "reference" else "fit"
        if cache == "cold":
            self.cache_root = Path(tempfile.mkdtemp(prefix="lposs-bench-cache-"))
        self.vlm.text_cache = None if cache == "none" else TextCache(self.cache_root)
        self.vlm._text_cache, self.vlm._text_identity = {}, None
        return self.vlm


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def text_case(modes: TextModes, names: list[str]) -> dict[str, Any]:
    """Cold reference, cold fast, then cached (fresh state, warm disk): seconds, FLOPs, max difference."""
    ref_s, ref_flops, (ref, _) = timed_counted(lambda: modes.set("reference").text_embeddings(names))
    fast_s, fast_flops, (fast, _) = timed_counted(lambda: modes.set("fast", "cold").text_embeddings(names))
    cached_s, (cached, _) = timed(lambda: modes.set("fast", "warm").text_embeddings(names))
    assert torch.equal(cached, fast), "the cache served something other than what it stored"
    return {"classes": len(names), "synonyms": int(ref.shape[0]), "reference_s": ref_s, "fast_s": fast_s,
            "cached_s": cached_s, "speedup": ref_s / fast_s, "cached_fraction_of_fast": cached_s / fast_s,
            "max_rel_diff": relative_difference(fast, ref), "reference_flops": ref_flops, "fast_flops": fast_flops}


def pixel_products(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(stencil passes fn runs, one per channel; fn's result): every PixelGraph product goes through weighted_sum."""
    calls, real = [0], graphs.PixelGraph.weighted_sum

    def counting(self, Z):
        calls[0] += Z.shape[0]  # one stencil pass per channel
        return real(self, Z)

    graphs.PixelGraph.weighted_sum = counting
    try:
        out = fn()
    finally:
        graphs.PixelGraph.weighted_sum = real
    return calls[0], out


def photo_windows(photo: np.ndarray) -> torch.Tensor:
    """The photo's windows as `extract_features` cuts them: [B, 3, crop, crop]."""
    image = as_image_tensor(photo)
    resized = resize_image(image, resized_size(*image.shape[1:], short_side=WINDOWS.short_side,
                                               long_side=WINDOWS.long_side))  # [3, H', W']
    layout = window_layout(*resized.shape[1:], crop=WINDOWS.crop, stride=WINDOWS.stride)
    return crop_windows(resized, layout, crop=WINDOWS.crop)


def segment_photo(photo: np.ndarray, vlm: DenseCLIP, vm: VisionFeatures) -> torch.Tensor:
    """`lposs.segment` on the photo: LPOSS+, six classes, the benchmark's windows -> labels [H, W]."""
    return segment(photo, PHOTO_CLASSES, mode="lposs+", vlm=vlm, vm=vm, **asdict(WINDOWS))


def photo_stages(photo: np.ndarray, vlm: DenseCLIP, vm: VisionFeatures, modes: TextModes) -> dict[str, Any]:
    """Each stage of `segment` on its own, reference and fast (text: cold cache), with FLOPs."""
    crops = photo_windows(photo)  # [15, 3, 224, 224]
    stages: dict[str, dict[str, Any]] = {}
    stages["text"] = {}
    for mode, cache in (("reference", "none"), ("fast", "cold")):
        seconds, flops, text = timed_counted(lambda m=mode, c=cache: modes.set(m, c).text_embeddings(PHOTO_CLASSES))
        stages["text"].update({f"{mode}_s": seconds, f"{mode}_flops": flops})
    for name, model in (("clip_image", vlm), ("graph_image", vm)):
        seconds, flops, _ = timed_counted(lambda m=model: m.dense_features(crops))
        stages[name] = {"reference_s": seconds, "fast_s": seconds, "flops": flops}
    features = extract_features(photo, PHOTO_CLASSES, vlm, vm, WINDOWS, text=text)
    setting = Setting.from_flat(mode="lposs+")
    seconds, flops, patch = timed_counted(lambda: propagate_patches(features, features.seeds, setting, "cpu"))
    stages["patch_lp"] = {"reference_s": seconds, "fast_s": seconds, "flops": flops}
    canvas = merge_patches(features, patch)  # [C', H', W']
    seconds, (passes, _) = timed(lambda: pixel_products(lambda: refine_pixels(features.image_resized, canvas)))
    height, width = canvas.shape[1:]
    stages["pixel_lp"] = {"reference_s": seconds, "fast_s": seconds, "stencil_channel_passes": passes,
                          "flops": passes * 2 * 168 * height * width}
    for stage in stages.values():
        stage.setdefault("reference_flops", stage.get("flops"))
        stage.setdefault("fast_flops", stage.get("flops"))
        stage["speedup"] = stage["reference_s"] / stage["fast_s"]
    return stages


def photo_end_to_end(photo: np.ndarray, vlm: DenseCLIP, vm: VisionFeatures, modes: TextModes) -> dict[str, Any]:
    """`segment` on both paths with a cold cache: seconds, and the fraction of pixels labelled alike."""
    modes.set("reference")
    reference_s, reference = timed(lambda: segment_photo(photo, vlm, vm))
    modes.set("fast", "cold")
    fast_s, fast = timed(lambda: segment_photo(photo, vlm, vm))
    return {"reference_s": reference_s, "fast_s": fast_s, "speedup": reference_s / fast_s,
            "labels_agreement": float((fast == reference).float().mean()), "pixels": int(reference.numel()),
            "reference_labels": reference}


def bf16_effect(photo: np.ndarray, vlm: DenseCLIP, vm: VisionFeatures,
                reference_labels: torch.Tensor) -> dict[str, Any]:
    """Both backbones under bfloat16 autocast: their seconds against float32, the seeds and the labels."""
    crops = photo_windows(photo)
    out: dict[str, Any] = {}
    for precision in ("float32", "bf16"):
        vlm.bf16 = vm.bf16 = precision == "bf16"
        clip_s, clip = timed(lambda: vlm.dense_features(crops))
        graph_s, graph = timed(lambda: vm.dense_features(crops))
        labels = segment_photo(photo, vlm, vm)
        out[precision] = {"clip_image_s": clip_s, "graph_image_s": graph_s, "clip": clip, "graph": graph,
                          "labels": labels}
    vlm.bf16 = vm.bf16 = False
    f32, bf = out["float32"], out["bf16"]
    return {
        "clip_image_speedup": f32["clip_image_s"] / bf["clip_image_s"],
        "graph_image_speedup": f32["graph_image_s"] / bf["graph_image_s"],
        "clip_image_s": {"float32": f32["clip_image_s"], "bf16": bf["clip_image_s"]},
        "graph_image_s": {"float32": f32["graph_image_s"], "bf16": bf["graph_image_s"]},
        "clip_min_cosine": float((f32["clip"] * bf["clip"]).sum(-1).min()),
        "graph_min_cosine": float((f32["graph"] * bf["graph"]).sum(-1).min()),
        "labels_agreement_with_float32": float((bf["labels"] == f32["labels"]).float().mean()),
        "labels_agreement_with_reference": float((bf["labels"] == reference_labels).float().mean()),
    }


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def add_floor_fractions(stages: dict[str, dict[str, Any]], probe: float) -> None:
    for stage in stages.values():
        for mode in ("reference", "fast"):
            flops = stage.get(f"{mode}_flops")
            if flops:
                stage[f"{mode}_floor_fraction"] = flops / stage[f"{mode}_s"] / probe


def print_table(result: dict[str, Any]) -> None:
    print(f"{'stage':>12} {'reference s':>12} {'fast s':>8} {'x':>6} {'GFLOP':>8} {'of matmul':>10}")
    for name, stage in result["stages"].items():
        print(f"{name:>12} {stage['reference_s']:12.2f} {stage['fast_s']:8.2f} {stage['speedup']:6.2f} "
              f"{stage['fast_flops'] / 1e9:8.1f} {stage.get('fast_floor_fraction', 0):10.2f}")
    for key in CLASS_FILES:
        t = result[key]
        print(f"{key}: reference {t['reference_s']:.2f} s, fast {t['fast_s']:.2f} s ({t['speedup']:.1f}x), "
              f"cached {t['cached_s']:.3f} s ({100 * t['cached_fraction_of_fast']:.1f}% of fast), "
              f"max rel diff {t['max_rel_diff']:.1e}")
    p = result["photo"]
    print(f"photo: reference {p['reference_s']:.1f} s, fast {p['fast_s']:.1f} s ({p['speedup']:.2f}x), "
          f"labels agree on {100 * p['labels_agreement']:.4f}% of pixels")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="the photo (default: a CamVid test frame, else a generated scene)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--skip-bf16", action="store_true", help="do not measure bfloat16 autocast")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    photo, source = load_photo(args.image)
    vlm = DenseCLIP("ViT-B-16", pretrained=None, text_cache=None)
    vm = VisionFeatures("dino_vitb16", pretrained=False, feature="v")
    modes = TextModes(vlm, Path(tempfile.mkdtemp(prefix="lposs-bench-cache-")))
    with torch.no_grad():
        probe = matmul_probe()
        result: dict[str, Any] = {
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "native_bf16": cpu_has_native_bf16(),
                        "matmul_float32_flops_per_s": probe},
            "photo_source": source, "photo_size": list(photo.shape[:2]), "classes": PHOTO_CLASSES,
        }
        progress(f"photo end to end, both paths ({source})")
        result["photo"] = photo_end_to_end(photo, vlm, vm, modes)
        progress("photo stage by stage")
        result["stages"] = photo_stages(photo, vlm, vm, modes)
        add_floor_fractions(result["stages"], probe)
        for key, name in CLASS_FILES.items():
            progress(f"{key}: the classes of {name}, reference then fast then cached")
            result[key] = text_case(modes, class_file(name))
        reference_labels = result["photo"].pop("reference_labels")
        if cpu_has_native_bf16() and not args.skip_bf16:
            progress("bfloat16 autocast against float32")
            modes.set("fast", "cold")
            result["bf16"] = bf16_effect(photo, vlm, vm, reference_labels)
    print_table(result)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
