"""Kernel launches, host waits and device copies of one image on a GPU, counted on a machine without one.

    python -m benchmarks.launches [--refiners reference best] [--json launches.json]

On an H100 the arithmetic of one VOC-size image's label propagation takes a few milliseconds at most;
the host can cost more. Every kernel launch costs the CPU a few microseconds (issue 9's 3 ms budget is
about 600 of them), and a host wait (`.item()`, `bool(t)`, a boolean mask index, a copy to the CPU)
drains the GPU's queue. Both are properties of the code path, not of the device, so they can be counted
here: the path runs on fake CUDA tensors (torch's FakeTensorMode: shapes, dtypes and devices, no data,
no arithmetic), and a dispatch mode sees every ATen call on its way down and counts
- launches: calls that produce a CUDA tensor and are not views or bare allocations (one call is one
  kernel, an upper bound for the few that torch fuses; the fused Triton stencil is one launch);
- waits: calls that need a CUDA tensor's value on the host (`aten._local_scalar_dense`) or have an output
  size that depends on the data (boolean masks, nonzero, unique), and copies after which torch waits for
  the stream (every device-to-host copy, and host-to-device ones without non_blocking); with their lposs
  source lines;
- copies: host-to-device and device-to-host transfers, with their bytes.

From the bytes each launch reads and writes (each tensor once; the fused stencil: scores, weights and
scaling in, output out) the run also gives a memory floor: bytes / HBM bandwidth (H100 SXM 3.35 TB/s,
H200 4.8 TB/s), a lower bound of the GPU time of the path as written, to compare with issue 9's budgets.

The image is the streaming evaluator's: backbone outputs on the device (stand-ins of the real shapes,
ViT-B/16 windows at short side 448), then `segment.extract_features` (seeds, graph features),
`segment.propagate_features` in LPOSS+ mode and the labels. The numbers are exact counts of this code
path; what a launch or a wait costs in time stays for a GPU to measure (`benchmarks.speed --device cuda`).
"""

from __future__ import annotations

import argparse
import traceback
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from lposs import segmentation as segment  # noqa: E402 - the module of one image end to end
from lposs.core.scoring import labels_from_scores
from lposs.io import write_json
from lposs.kernels import cg_triton, stencil_triton
from lposs.models.protocols import resolve

BANDWIDTH_GB_S = {"H100 SXM": 3350, "H200": 4800}  # HBM bandwidth from NVIDIA's data sheets
LP_STAGES = ("patch_graph", "propagate", "refine_pixels")  # issue 9's "label propagation": graphs and solves
CASES = {"voc": (375, 500, 46), "coco_stuff": (375, 500, 171), "cityscapes": (1024, 2048, 19)}
NO_KERNEL = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
             "aten::_unsafe_view", "aten::lift_fresh", "aten::detach", "prim::device", "aten::alias",
             "aten::sym_size", "aten::sym_stride", "aten::sym_numel", "aten::is_same_size"}
STAGES = ("extract_features", "propagate_features", "labels_from_scores")
TRANSFERS = {"aten::_to_copy", "aten::copy_", "aten::to"}


def _is_cuda(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cuda"


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _traffic(tensors: list[torch.Tensor]) -> int:
    """Bytes a kernel moves if it reads each input and writes each output once (distinct tensors)."""
    seen = {id(t): t for t in tensors if t.device.type == "cuda"}
    return sum(t.numel() * t.element_size() for t in seen.values())


def _lposs_frames() -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_stack() if "/lposs/" in f.filename.replace("\\", "/")]


def _site(frames: list[traceback.FrameSummary]) -> str:
    f = frames[-1] if frames else None
    return f"{f.filename.replace(chr(92), '/').split('/lposs/')[-1]}:{f.lineno} {f.name}" if f else "?"


class DeviceAudit(TorchDispatchMode):
    """Counts launches, waits and transfers of the ATen calls under it, by lposs stage (see the module doc)."""

    active: "DeviceAudit | None" = None  # the audit in force (the fused-stencil stand-in reports to it)

    def __init__(self):
        super().__init__()
        self.launches: Counter[str] = Counter()  # stage -> launches
        self.bytes: Counter[str] = Counter()  # stage -> bytes the launches read and write (each tensor once)
        self.ops: Counter[str] = Counter()  # op name -> launches
        self.waits: list[dict[str, str]] = []
        self.copies: list[dict[str, Any]] = []

    @staticmethod
    def stage(frames: list[traceback.FrameSummary]) -> str:
        """extract_features, labels_from_scores, or the step of propagate_features (refine_pixels/<step>)."""
        names = [f.name for f in frames]
        outer = next((name for name in names if name in STAGES), None)
        below = names[names.index(outer) + 1:] if outer else []
        if outer != "propagate_features" or not below:
            return outer or "other"
        return f"refine_pixels/{below[1]}" if below[0] == "refine_pixels" and len(below) > 1 else below[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's protocol)
        kwargs = kwargs or {}
        name = func._schema.name
        inputs = _tensors(list(args) + list(kwargs.values()))
        to_cuda = any(isinstance(v, torch.device) and v.type == "cuda" for v in kwargs.values())
        if inputs and not to_cuda and not any(isinstance(t, FakeTensor) for t in inputs):  # host data: compute
            with _disable_current_modes():
                return func(*args, **kwargs)
        if name == "aten::_local_scalar_dense" and _is_cuda(args[0]):
            self.wait(name, _lposs_frames())
            return True if args[0].dtype == torch.bool else (1.0 if args[0].is_floating_point() else 1)
        try:
            out = func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException) as error:
            frames = _lposs_frames()
            self.wait(name, frames)
            raise RuntimeError(f"{name} at {_site(frames)} needs the data on the host (a GPU wait); "
                               "the audit cannot go past it") from error
        outputs = _tensors(out)
        if name in TRANSFERS:
            positional = args[2] if name == "aten::copy_" and len(args) > 2 else False  # copy_(self, src, non_blocking)
            self.transfer(name, inputs, outputs, bool(kwargs.get("non_blocking", positional)))
        elif any(_is_cuda(t) for t in outputs) and name not in NO_KERNEL and not func.is_view:
            self.kernel(name, _traffic(inputs + outputs))
        return out

    def kernel(self, name: str, traffic: int) -> None:
        """One launch of `name` that reads and writes `traffic` bytes, in the stage of the current stack."""
        stage = self.stage(_lposs_frames())
        self.launches[stage] += 1
        self.bytes[stage] += traffic
        self.ops[name] += 1

    def __enter__(self):
        DeviceAudit.active = self
        return super().__enter__()

    def __exit__(self, *exc):
        DeviceAudit.active = None
        return super().__exit__(*exc)

    def wait(self, name: str, frames: list[traceback.FrameSummary]) -> None:
        self.waits.append({"op": name, "stage": self.stage(frames), "site": _site(frames)})

    def transfer(self, name: str, inputs: list[torch.Tensor], outputs: list[torch.Tensor], non_blocking: bool) -> None:
        source = inputs[1] if name == "aten::copy_" else inputs[0]
        target = inputs[0] if name == "aten::copy_" else outputs[0]
        kinds = (source.device.type, target.device.type)
        if kinds[0] == kinds[1]:  # a dtype change or copy on one device: a kernel if on the GPU
            if kinds[0] == "cuda":
                self.kernel(name, _traffic([source, target]))
            return
        if "meta" in kinds:  # the audit's own fake inputs being made
            return
        frames = _lposs_frames()
        direction = "device->host" if kinds[0] == "cuda" else "host->device"
        self.copies.append({"direction": direction, "bytes": source.numel() * source.element_size(),
                            "non_blocking": non_blocking, "stage": self.stage(frames), "site": _site(frames)})
        if direction == "device->host" or not non_blocking:  # torch syncs the stream after a blocking copy
            self.wait(f"{name} ({direction}, blocking)" if not non_blocking else f"{name} ({direction})", frames)

    def summary(self) -> dict[str, Any]:
        return {"launches": sum(self.launches.values()), "launches_by_stage": dict(self.launches),
                "bytes": sum(self.bytes.values()), "bytes_by_stage": dict(self.bytes),
                "waits": self.waits, "copies": self.copies, "top_ops": dict(self.ops.most_common(12))}


# --------------------------------------------------------------------------------------------------
# Running lposs on fake CUDA tensors
# --------------------------------------------------------------------------------------------------

def _fused_stencil_standin(Z, weights, offsets, pad, scale=None, residual_alpha=None):  # noqa: ANN001 (as stencil_product)
    """The fused stencil as the audit sees it (a fake tensor cannot run Triton code): one launch that reads
    the scores, the weights and the scaling once and writes its output once (its ideal traffic)."""
    out = torch.empty_like(Z, memory_format=torch.contiguous_format)  # [C, H, W], no kernel
    if DeviceAudit.active is not None:
        DeviceAudit.active.kernel("triton::stencil_product", _traffic([t for t in (Z, weights, scale, out)
                                                                       if t is not None]))
    return out


def _fused_weights_standin(lab, offsets, pad, tau):  # noqa: ANN001 (as stencil_triton.colour_weights)
    """The colour-weights kernel as the audit sees it: one launch, Lab in, the padded weights out."""
    out = lab.new_empty(offsets.shape[0], lab.shape[1] + 2 * pad, lab.shape[2] + 2 * pad)  # [K, H+2p, W+2p]
    if DeviceAudit.active is not None:
        DeviceAudit.active.kernel("triton::colour_weights", _traffic([lab, out]))
    return out


def _residual_and_dot_standin(Z, weights, offsets, pad, scale, alpha):  # noqa: ANN001 (as the kernel's)
    """The stencil kernel with its residual and dot epilogue: one launch (plus torch's sum of the shares)."""
    out = _fused_stencil_standin(Z, weights, offsets, pad, scale, alpha)
    tiles = -(-Z.shape[1] // stencil_triton.BLOCK_Y) * -(-Z.shape[2] // stencil_triton.BLOCK_X)
    return out, Z.new_empty(tiles, Z.shape[0]).sum(0)  # [tiles, C] shares -> [C]


def _cg_update_standin(X, R, P, Q, step):  # noqa: ANN001 (as cg_triton.update_)
    """The CG update kernel: reads X, R, P, Q and step, writes X and R and its shares of sum(R^2)."""
    shares = X.new_empty(-(-X.shape[0] // cg_triton.BLOCK_N), X.shape[1])  # [row blocks, C]
    if DeviceAudit.active is not None:
        DeviceAudit.active.kernel("triton::cg_update", _traffic([X, R, P, Q, step, shares]) + _traffic([X, R]))
    return shares.sum(0)


@contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """FakeTensorMode with the Triton kernels replaced by one-launch stand-ins, CUDA or not."""
    kernels = {(stencil_triton, "stencil_product"): _fused_stencil_standin,
               (stencil_triton, "colour_weights"): _fused_weights_standin,
               (stencil_triton, "residual_and_dot"): _residual_and_dot_standin,
               (cg_triton, "update_"): _cg_update_standin,
               (stencil_triton, "available"): lambda: True}  # the path a CUDA machine with triton takes
    real = {key: getattr(*key) for key in kernels}
    for (module, name), standin in kernels.items():
        setattr(module, name, standin)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode
    finally:
        for (module, name), function in real.items():
            setattr(module, name, function)


def on_device(mode: FakeTensorMode, *shape: int) -> torch.Tensor:
    """A fake float32 CUDA tensor of `shape`, made without any call the audit would see."""
    with _disable_current_modes():
        meta = torch.empty(shape, device="meta")
    return FakeTensor(mode, meta, torch.device("cuda"))


class _StandInBackbone:
    """A backbone of the real output shape whose features are already on the device (fake)."""

    def __init__(self, mode: FakeTensorMode, width: int, grid: int = 14):
        self.mode, self.width, self.grid = mode, width, grid

    def dense_features(self, windows: torch.Tensor) -> torch.Tensor:
        return on_device(self.mode, windows.shape[0], self.grid, self.grid, self.width)  # [B, g, g, D]


def audit_image(height: int, width: int, columns: int, refiner: str = "reference",
                background: dict[str, Any] | None = None, mode: str = "lposs+") -> dict[str, Any]:
    """Launches, waits and copies of one image of the given original size with `columns` seed columns."""
    owner = torch.arange(columns) // 2  # [C'] class of each seed column (two synonyms a class), on the host
    with fake_cuda() as fake:
        image = on_device(fake, 3, height, width)  # decoded and on the device, as the evaluator has it
        text = (on_device(fake, columns, 512), owner)  # [C', D] text embeddings, owner
        audit = DeviceAudit()
        with audit:
            feats = segment.extract_features(image, [], _StandInBackbone(fake, 512), _StandInBackbone(fake, 768),
                                             text=text, keep_on_device=True)
            scores = segment.propagate_features(feats, mode=mode, device="cuda", refiner=refiner,
                                                background=background)
            labels = labels_from_scores(scores, background or {})
        assert labels.device.type == "cuda"
    return audit.summary()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.launches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--refiners", nargs="+", default=["reference", "best"])
    parser.add_argument("--json", help="write the counts here")
    args = parser.parse_args(argv)
    rows = []
    print("case        C'   refiner    scores    launches waits   GB   LP GB  memory floor ms (LP): "
          + ", ".join(BANDWIDTH_GB_S))
    for case, (height, width, columns) in CASES.items():
        for refiner in args.refiners:
            for rule_name, rule in (("synonyms", None), ("softmax", resolve("sclip", "voc21"))):
                counts = audit_image(height, width, columns, refiner, rule)
                lp = sum(v for stage, v in counts["bytes_by_stage"].items() if stage.split("/")[0] in LP_STAGES)
                floors = {gpu: {"all_ms": counts["bytes"] / bw / 1e6, "lp_ms": lp / bw / 1e6}
                          for gpu, bw in BANDWIDTH_GB_S.items()}
                rows.append({"case": case, "size": [height, width], "columns": columns, "refiner": refiner,
                             "background": rule_name, "lp_bytes": lp, "memory_floor": floors, **counts})
                print(f"{case:<11} {columns:<4} {refiner:<10} {rule_name:<9} {counts['launches']:>5} "
                      f"{len(counts['waits']):>5} {counts['bytes'] / 1e9:>6.1f} {lp / 1e9:>6.1f}  "
                      + ", ".join(f"{f['all_ms']:.1f} ({f['lp_ms']:.1f})" for f in floors.values()))
    result = {"rows": rows, "torch": torch.__version__, "bandwidth_gb_s": BANDWIDTH_GB_S,
              "note": "memory floor = bytes the launches read and write once / HBM bandwidth: a lower bound "
                      "of GPU time from this model, not a measurement"}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
