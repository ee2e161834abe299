"""Time every LPOSS stage, reference mode against our fast path, in one process.

    python -m benchmarks.speed [--device cpu|cuda] [--json OUT.json] [--repeats 3] [--backbones]

Cases (docs/method.md section 10): 448x597 with 46 and 171 seed columns (VOC- and COCO-Stuff-size), 448x896 with
19 (Cityscapes-size). Inputs are synthetic (random image, random unit vision features and seeds) of the
real sizes; the label propagation cost does not depend on the values.

- reference: the released code's path: sparse kNN patch graph, one CG per class column on it; the pixel
  graph assembled as a generic sparse matrix, again one CG per column.
- fast: dense patch graph + batched CG; matrix-free pixel stencil + batched CG (on CUDA the fused Triton
  stencil; the torch stencil's pixel solve is timed beside it as `pixel_solve_torch_stencil`).

On CUDA the fused kernel's tile sizes (`TILES`) are also timed on one VOC-size product, with the
bandwidth of its one-pass traffic, so the defaults of lposs/kernels/stencil_triton.py can be chosen from data;
and every fast stage is set against its memory floor: the traffic `benchmarks.launches` models for it
divided by this GPU's measured copy bandwidth (`fraction_of_floor`: 1 = as fast as memory allows).

With --backbones, each case also runs end to end: a random-weight OpenCLIP ViT-B/16 + DINO ViT-B/16 pair
(bf16 on CUDA, fp32 on CPU) on a random image of the original size (VOC 375x500, Cityscapes 1024x2048),
`segment.extract_features` + LPOSS+ `propagate_features` + argmax at the original size: seconds per image,
images/s and peak GPU memory. From those, the 8 benchmarks' LPOSS+ wall clock is estimated: each
benchmark's images times the end-to-end time of the case with the same image size and at least as many
seed columns (an upper bound; decoding is left out, as the evaluator's workers overlap it with the GPU).

On CPU the reference pixel column loop takes minutes per case, so by default it runs on the first
`--ref-columns` columns (2 on CPU) and its time is scaled by C / ref_columns (each column is an
independent CG of the same length); the JSON marks this as "extrapolated". The largest relative
difference of the outputs is measured on those columns.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lposs.core.graphs import PixelGraph, patch_graph
from lposs.core.propagation import propagate
from lposs.core.windows import merge_windows, patch_centers, window_layout
from lposs.io import write_json

CASES = [(448, 597, 46), (448, 597, 171), (448, 896, 19)]
ORIGINAL_SIZE = {(448, 597): (375, 500), (448, 896): (1024, 2048)}  # an image each case's size comes from
# The paper's 8 benchmarks (docs/method.md section 8): images, seed columns C' (synonyms included), resized size
BENCHMARKS = {"voc21": (1449, 46, (448, 597)), "voc20": (1449, 20, (448, 597)),
              "context60": (5104, 60, (448, 597)), "context59": (5104, 59, (448, 597)),
              "coco_object": (5000, 97, (448, 597)), "coco_stuff": (5000, 171, (448, 597)),
              "cityscapes": (500, 19, (448, 896)), "ade20k": (2000, 150, (448, 597))}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeats: int) -> tuple[float, Any]:
    """Median wall time of fn over `repeats` runs (after one warm-up on CUDA) and its last result."""
    if device.startswith("cuda"):
        fn()
    times, result = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def synthetic_case(height: int, width: int, classes: int, device: str, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    layout = window_layout(height, width)
    n = len(layout) * 196
    feats = torch.nn.functional.normalize(torch.randn(n, 768, generator=g), dim=1)
    return {
        "image": torch.rand(3, height, width, generator=g).to(device),
        "seeds": torch.randn(n, classes, generator=g).to(device),
        "feats": feats.to(device),
        "centers": patch_centers(layout).to(device),
        "layout": layout,
        "size": (height, width),
    }


def run_path(case: dict[str, Any], reference: bool, device: str, repeats: int, columns: int | None) -> dict[str, Any]:
    """Stage times of one path; `columns` limits the reference pixel solve to the first columns."""
    solver = "cg_reference" if reference else "cg"
    form = "sparse" if reference else "dense"
    t: dict[str, float] = {}
    t["patch_graph"], S = timed(lambda: patch_graph(case["feats"], case["centers"], form=form), device, repeats)
    t["patch_solve"], F = timed(lambda: propagate(S, case["seeds"], method=solver), device, repeats)
    blocks = F.T.reshape(F.shape[1], len(case["layout"]), 14, 14).transpose(0, 1)
    t["merge"], canvas = timed(lambda: merge_windows(blocks, case["layout"], *case["size"]), device, repeats)

    def pixel_graph() -> Any:
        graph = PixelGraph(case["image"], r=13, tau=0.01)
        return graph.to_sparse() if reference else graph

    t["pixel_graph"], P = timed(pixel_graph, device, repeats)
    channels = canvas.shape[0] if columns is None else min(columns, canvas.shape[0])
    Y = canvas[:channels].reshape(channels, -1).T  # [H*W, C], a channel-first view, as lposs.core.refine passes it
    t["pixel_solve"], out = timed(lambda: propagate(P, Y, method=solver), device, repeats)
    if channels < canvas.shape[0]:
        t["pixel_solve"] *= canvas.shape[0] / channels
    t["total_lp"] = sum(t.values())
    if not reference and isinstance(P, PixelGraph) and P.fused:  # the fallback, for the kernel's ratio
        plain = PixelGraph(case["image"], r=13, tau=0.01, backend="torch")
        t["pixel_solve_torch_stencil"], _ = timed(lambda: propagate(plain, Y, method=solver), device, repeats)
    return {"seconds": t, "output": out, "pixel_columns_run": channels}


def benchmark_case(height: int, width: int, classes: int, device: str, repeats: int, ref_columns: int | None) -> dict:
    case = synthetic_case(height, width, classes, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fast = run_path(case, reference=False, device=device, repeats=repeats, columns=None)
    fast_peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    ref = run_path(case, reference=True, device=device, repeats=1 if ref_columns else repeats, columns=ref_columns)
    c = ref["pixel_columns_run"]
    diff = (fast["output"][:, :c] - ref["output"]).abs().max() / ref["output"].abs().max()
    return {
        "case": f"{height}x{width}, C'={classes}",
        "reference_s": ref["seconds"],
        "fast_s": fast["seconds"],
        "speedup": {k: ref["seconds"][k] / max(fast["seconds"][k], 1e-9) for k in ref["seconds"]},
        "max_relative_difference": float(diff),
        "reference_pixel_columns_run": c,
        "extrapolated": c < classes,
        "fast_peak_gpu_gib": fast_peak,
    }


FLOOR_STAGES = {"patch_graph": "patch_graph", "patch_solve": "propagate", "merge": "merge_windows",
                "pixel_graph": "refine_pixels/__init__", "pixel_solve": "refine_pixels/propagate_scores"}


def copy_bandwidth(device: str, repeats: int, gib: float = 1.0) -> float:
    """Bytes per second of a plain device copy (read + write of `gib` GiB): what memory can do here."""
    source = torch.empty(int(gib * 2**28), device=device)  # float32
    target = torch.empty_like(source)
    seconds, _ = timed(lambda: target.copy_(source), device, max(repeats, 5))
    return 2 * source.numel() * 4 / seconds


def memory_floor(height: int, width: int, classes: int, bandwidth: float) -> dict[str, float]:
    """Milliseconds each fast stage would take if it moved its modelled traffic (`benchmarks.launches`,
    the CUDA path with the fused kernels) at `bandwidth`: a floor to set the measured times against."""
    from benchmarks.launches import audit_image

    traffic = audit_image(*ORIGINAL_SIZE[(height, width)], columns=classes, refiner="reference")["bytes_by_stage"]
    floor = {stage: traffic.get(key, 0) / bandwidth * 1e3 for stage, key in FLOOR_STAGES.items()}
    floor["total_lp"] = sum(floor.values())
    return floor


def add_memory_floors(results: list[dict[str, Any]], cases: list[tuple[int, int, int]], bandwidth: float) -> None:
    """Each case's stage floors (`memory_floor`) and the fraction of them its fast stages reach, printed."""
    for result, (h, w, c) in zip(results, cases):
        result["memory_floor_ms"] = memory_floor(h, w, c, bandwidth)
        result["fraction_of_floor"] = {stage: floor_ms / max(result["fast_s"][stage] * 1e3, 1e-9)
                                       for stage, floor_ms in result["memory_floor_ms"].items()}
        print(f"{result['case']:<22}memory floor at {bandwidth / 1e9:.0f} GB/s (copy): "
              + ", ".join(f"{stage} {ms:.2f} ms ({result['fraction_of_floor'][stage]:.0%} of it reached)"
                          for stage, ms in result["memory_floor_ms"].items()))


def backbone_times(device: str, repeats: int) -> dict[str, float]:
    """Two ViT-B/16 forwards over the 15 windows of a VOC-size image (random weights: same cost)."""
    from lposs.models.factory import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, create_backbones, spec_from_clip_tag

    windows = torch.rand(15, 3, 224, 224, device=device)
    out = {}
    for bf16 in ([False, True] if device.startswith("cuda") else [False]):
        spec = spec_from_clip_tag(DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, True, bf16=bf16)
        backbones = create_backbones(spec, device)
        vlm, vm = backbones.vlm, backbones.vm
        seconds, _ = timed(lambda: (vlm.dense_features(windows), vm.dense_features(windows)), device, repeats)
        out["bf16" if bf16 else "fp32"] = seconds
    return out


TILES = [(8, 32, 8, 4), (8, 32, 16, 4), (16, 32, 8, 8), (4, 64, 8, 4), (8, 64, 16, 8), (16, 16, 16, 4)]


def stencil_tiles(device: str, repeats: int, height: int = 448, width: int = 597, channels: int = 46) -> list[dict]:
    """One normalised product of the fused kernel per tile (BLOCK_Y, BLOCK_X, MAX_BLOCK_C, NUM_WARPS):
    milliseconds and the bandwidth of its one-pass traffic (scores in and out, the weights and the scaling
    once: the channel blocks of a tile run as neighbouring programs, so they re-read the weights from L2).
    None of these tiles spills registers on sm_80 / sm_90 (`python -m benchmarks.kernel_build`)."""
    from lposs.kernels import stencil_triton

    graph = PixelGraph(torch.rand(3, height, width, device=device), r=13, tau=0.01, backend="triton")
    X = torch.randn(channels, height * width, device=device).T  # channel-first view
    default = stencil_triton.BLOCK_Y, stencil_triton.BLOCK_X, stencil_triton.MAX_BLOCK_C, stencil_triton.NUM_WARPS
    rows = []
    try:
        for tile in TILES:
            stencil_triton.BLOCK_Y, stencil_triton.BLOCK_X, stencil_triton.MAX_BLOCK_C, stencil_triton.NUM_WARPS = tile
            seconds, _ = timed(lambda: graph.matmul(X), device, max(repeats, 10))
            traffic = 4 * height * width * (2 * channels + graph.weights.shape[0] + 1)
            rows.append({"tile": tile, "ms": seconds * 1e3, "one_pass_gb_per_s": traffic / seconds / 1e9})
    finally:
        stencil_triton.BLOCK_Y, stencil_triton.BLOCK_X, stencil_triton.MAX_BLOCK_C, stencil_triton.NUM_WARPS = default
    return rows


def end_to_end(height: int, width: int, classes: int, device: str, repeats: int) -> dict[str, Any]:
    """One image of the case's original size through both backbones (bf16 on CUDA), LPOSS+ and argmax."""
    from lposs.models.factory import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, create_backbones, spec_from_clip_tag
    from lposs.segmentation import extract_features, propagate_features

    cuda = device.startswith("cuda")
    backbones = create_backbones(spec_from_clip_tag(DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, True, bf16=cuda), device)
    vlm, vm = backbones.vlm, backbones.vm
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, *ORIGINAL_SIZE[(height, width)], generator=g).to(device)  # [3, H0, W0]
    dim = vlm.dense_features(torch.rand(1, 3, 224, 224, device=device)).shape[-1]
    emb = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1).to(device)  # [C', D]
    text = (emb, torch.arange(classes))  # random class embeddings (the cost is the same); owner on the host
    names = [f"class {i}" for i in range(classes)]

    def run() -> Any:
        features = extract_features(image, names, vlm, vm, text=text, keep_on_device=True)  # as the evaluator
        return propagate_features(features, mode="lposs+", device=device).argmax(0)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, labels = timed(run, device, repeats)
    if tuple(labels.shape) != ORIGINAL_SIZE[(height, width)]:
        raise RuntimeError(f"end to end gave labels {tuple(labels.shape)}, not the original size")
    return {"seconds_per_image": seconds, "images_per_second": 1 / seconds, "bf16": cuda,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def benchmark_estimate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The 8 benchmarks' LPOSS+ wall clock from the cases' end-to-end seconds per image (see the docstring)."""
    per_image = {(r["size"], r["columns"]): r["end_to_end"]["seconds_per_image"] for r in results}
    rows = {}
    for name, (images, columns, size) in BENCHMARKS.items():
        fits = sorted(c for s, c in per_image if s == size and c >= columns)
        if not fits:
            return {"missing": f"no measured case of size {size} with >= {columns} columns (run --cases all)"}
        seconds = images * per_image[(size, fits[0])]
        rows[name] = {"images": images, "columns": columns, "case_columns": fits[0], "seconds": seconds}
    total = sum(r["seconds"] for r in rows.values())
    return {"benchmarks": rows, "total_seconds": total, "total_minutes": total / 60}


def print_table(results: list[dict]) -> None:
    stages = ["patch_graph", "patch_solve", "merge", "pixel_graph", "pixel_solve", "total_lp"]
    print(f"{'case':<22}{'path':<11}" + "".join(f"{s:>13}" for s in stages))
    for r in results:
        for name in ("reference", "fast"):
            row = r[f"{name}_s"]
            print(f"{r['case']:<22}{name:<11}" + "".join(f"{row[s] * 1e3:>11.1f}ms" for s in stages))
        print(f"{'':<22}{'speedup':<11}" + "".join(f"{r['speedup'][s]:>12.1f}x" for s in stages))
        torch_stencil = r["fast_s"].get("pixel_solve_torch_stencil")
        if torch_stencil is not None:
            print(f"{'':<22}pixel solve with the torch stencil {torch_stencil * 1e3:.1f}ms: the fused kernel is "
                  f"{torch_stencil / max(r['fast_s']['pixel_solve'], 1e-9):.1f}x faster")
        note = " (reference pixel solve extrapolated)" if r["extrapolated"] else ""
        print(f"{'':<22}max relative difference {r['max_relative_difference']:.2e}{note}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per stage (median); 3 CUDA, 1 CPU")
    parser.add_argument("--ref-columns", type=int, default=None, help="reference pixel columns to run (CPU: 2)")
    parser.add_argument("--backbones", action="store_true", help="also time the two ViT-B/16 forwards")
    parser.add_argument("--cases", default="all", help="'all' or indices into the case list, e.g. 0,2")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    repeats = args.repeats or (1 if cpu else 3)
    ref_columns = args.ref_columns if args.ref_columns is not None else (2 if cpu else None)
    cases = CASES if args.cases == "all" else [CASES[int(i)] for i in args.cases.split(",")]
    results = [benchmark_case(h, w, c, args.device, repeats, ref_columns) for h, w, c in cases]
    print_table(results)
    report_tiles = stencil_tiles(args.device, repeats) if args.device.startswith("cuda") else None
    bandwidth = copy_bandwidth(args.device, repeats) if args.device.startswith("cuda") else None
    if bandwidth:
        add_memory_floors(results, cases, bandwidth)
    for row in report_tiles or []:
        print(f"fused stencil tile {row['tile']}: {row['ms']:.3f} ms per product, "
              f"{row['one_pass_gb_per_s']:.0f} GB/s of one-pass traffic")
    if args.backbones:
        for result, (h, w, c) in zip(results, cases):
            result.update({"size": (h, w), "columns": c, "end_to_end": end_to_end(h, w, c, args.device, repeats)})
            lp = result["fast_s"]["total_lp"]
            result["end_to_end"]["reference_lp_in_its_place_s"] = (
                result["end_to_end"]["seconds_per_image"] - lp + result["reference_s"]["total_lp"])
            print(f"{result['case']:<22}end to end {result['end_to_end']['seconds_per_image'] * 1e3:.1f} ms/img, "
                  f"{result['end_to_end']['images_per_second']:.1f} img/s, peak {result['end_to_end']['peak_gpu_gib']}")
    report = {
        "device": torch.cuda.get_device_name() if not cpu else f"CPU: {platform.processor() or platform.machine()}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "cases": results,
        "stencil_tiles": report_tiles,
        "copy_gb_per_s": bandwidth / 1e9 if bandwidth else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if args.backbones:
        report["backbones_s"] = backbone_times(args.device, repeats)
        print("backbones (two ViT-B/16 forwards, 15 windows):", report["backbones_s"])
        report["estimate_8_benchmarks"] = benchmark_estimate(results)
        print("8-benchmark LPOSS+ estimate:", {k: v for k, v in report["estimate_8_benchmarks"].items()
                                               if k != "benchmarks"})
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
