"""Build the fused pixel-stencil kernel for NVIDIA GPUs ahead of time, without one, and read its resources.

    python -m benchmarks.kernel_build [--archs 80 90] [--json kernel_build.json]

Triton compiles on the host: Python -> Triton IR -> LLVM -> PTX -> cubin (NVIDIA's ptxas ships in the
triton wheel). Only loading the cubin needs a GPU. So every variant `stencil_triton.stencil_product`
launches (unit or colour weights, with or without the D^-1/2 scaling, float32 or float64, each channel
block size) can be built here for the A100 (sm_80) and H100/H200 (sm_90), which
- proves the kernel compiles (the test suite's interpreter runs Python, and accepts code the compiler
  rejects), and
- reads from the cubin what decides occupancy: registers per thread, spills to local memory, shared
  memory; from those, how many of the kernel's blocks an SM holds (64k registers, 2048 threads per SM on
  both archs). A tile whose registers spill (255 registers and a stack frame) is a bad default.
How fast each variant runs stays for a GPU (`benchmarks.speed --device cuda` times the tiles).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from typing import Any

REGISTERS_PER_SM, THREADS_PER_SM, WARP = 65536, 2048, 32
DTYPES = {"float32": "fp32", "float64": "fp64"}


def build(arch: int, dtype: str = "float32", unit: bool = False, scale: bool = True, block_c: int | None = None,
          block_y: int | None = None, block_x: int | None = None, num_warps: int | None = None,
          residual: bool = False, dot: bool = False) -> Any:
    """The compiled stencil kernel (triton's CompiledKernel, cubin included) for sm_<arch>; defaults: the
    module's tile."""
    from lposs.kernels import stencil_triton as st

    constants = {"UNIT": unit, "SCALE": scale, "RESIDUAL": residual, "DOT": dot, "BLOCK_C": block_c or st.MAX_BLOCK_C, "BLOCK_Y": block_y or st.BLOCK_Y,
                 "BLOCK_X": block_x or st.BLOCK_X}
    return _compile(st._kernel(), arch, dtype, constants, floats=("alpha",), num_warps=num_warps or st.NUM_WARPS)


def build_weights(arch: int, dtype: str = "float32") -> Any:
    """The compiled colour-weights kernel (`stencil_triton.colour_weights`) for sm_<arch>."""
    from lposs.kernels import stencil_triton as st

    return _compile(st._weights_kernel(), arch, dtype, {"BLOCK": st.WEIGHTS_BLOCK}, floats=("tau", "tiny"),
                    num_warps=4)


def build_cg_update(arch: int, dtype: str = "float32") -> Any:
    """The compiled CG update kernel (`cg_triton.update_`) for sm_<arch>."""
    from lposs.kernels import cg_triton as cg

    return _compile(cg._update_kernel(), arch, dtype, {"BLOCK_N": cg.BLOCK_N, "BLOCK_C": cg.BLOCK_C}, floats=(),
                    num_warps=cg.NUM_WARPS)


def _compile(kernel: Any, arch: int, dtype: str, constants: dict[str, Any], floats: tuple[str, ...],
             num_warps: int) -> Any:
    """triton.compile for sm_<arch>: pointers of `dtype` (off_ptr int32), `floats` fp32, other scalars i32,
    the accumulator type ACC as the launch picks it for `dtype` (`stencil_triton.accumulator`)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lposs.kernels.stencil_triton import accumulator

    constants = {**constants, "ACC": accumulator(getattr(torch, dtype))}
    signature = {name: ("constexpr" if name in constants else "*i32" if name == "off_ptr"
                        else "*" + DTYPES[dtype] if name.endswith("_ptr") else "fp32" if name in floats
                        else "i32") for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, WARP), options={"num_warps": num_warps})


def resources(compiled: Any) -> dict[str, int]:
    """Registers per thread, spilled bytes per thread (ptxas puts spills in the stack frame, STACK, or in
    LOCAL memory; the kernel itself keeps nothing there) and shared memory, read from the cubin."""
    import tempfile

    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        report = subprocess.run([cuobjdump, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                                check=True).stdout
    fields = dict(re.findall(r"(REG|LOCAL|SHARED|STACK):(\d+)", report))
    return {"registers": int(fields["REG"]), "spill_bytes": int(fields["STACK"]) + int(fields["LOCAL"]),
            "shared_bytes": int(fields["SHARED"])}


def blocks_per_sm(registers: int, num_warps: int) -> int:
    """Resident blocks of this kernel on one SM, by registers and threads (no shared memory is used)."""
    threads = num_warps * WARP
    by_registers = REGISTERS_PER_SM // (registers * threads) if registers else THREADS_PER_SM // threads
    return min(by_registers, THREADS_PER_SM // threads)


def occupancy(registers: int, num_warps: int) -> float:
    """The share of an SM's threads that resident blocks of this kernel keep busy."""
    return blocks_per_sm(registers, num_warps) * num_warps * WARP / THREADS_PER_SM


def variants(block_cs: list[int], tiles: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """The launched variants: (I - alpha S) X with and without its dot, S X, W Z, unit weights; float32 and 64."""
    kinds = [{"unit": False, "scale": True, "residual": True, "dot": True},
             {"unit": False, "scale": True, "residual": True, "dot": False},
             {"unit": False, "scale": True, "residual": False, "dot": False},
             {"unit": False, "scale": False, "residual": False, "dot": False},
             {"unit": True, "scale": False, "residual": False, "dot": False}]
    return [{"dtype": dtype, **kind, "block_c": c, "block_y": y, "block_x": x, "num_warps": warps}
            for dtype in DTYPES for kind in kinds for c in block_cs for y, x, warps in tiles]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lposs.io import write_json
    from lposs.kernels import cg_triton as cg
    from lposs.kernels import stencil_triton as st

    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--block-c", nargs="+", type=int, default=[4, 8, 16, 32])
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)
    tiles = sorted({(st.BLOCK_Y, st.BLOCK_X, st.NUM_WARPS), (4, 64, 4), (8, 32, 4), (16, 32, 4), (16, 32, 8),
                    (8, 64, 8), (16, 16, 4)})
    rows = []
    for arch in args.archs:
        for variant in variants(args.block_c, tiles):
            row = {"arch": f"sm_{arch}", **variant, **resources(build(arch, **variant))}
            row["blocks_per_sm"] = blocks_per_sm(row["registers"], variant["num_warps"])
            row["occupancy"] = occupancy(row["registers"], variant["num_warps"])
            rows.append(row)
            print(f"sm_{arch} {variant['dtype']:<7} unit={variant['unit']:d} scale={variant['scale']:d} "
                  f"residual={variant['residual']:d} dot={variant['dot']:d} "
                  f"C{variant['block_c']:<2} {variant['block_y']}x{variant['block_x']} w{variant['num_warps']}: "
                  f"{row['registers']:>3} regs, spill {row['spill_bytes']} B, occupancy {row['occupancy']:.2f}")
        for name, other, warps in (("colour weights", build_weights, 4), ("cg update", build_cg_update, cg.NUM_WARPS)):
            for dtype in DTYPES:
                row = {"arch": f"sm_{arch}", "kernel": name, "dtype": dtype, "num_warps": warps,
                       **resources(other(arch, dtype))}
                row["occupancy"] = occupancy(row["registers"], warps)
                rows.append(row)
                print(f"sm_{arch} {dtype:<7} {name}: {row['registers']:>3} regs, spill {row['spill_bytes']} B, "
                      f"occupancy {row['occupancy']:.2f}")
    result = {"default": {"block_c": st.MAX_BLOCK_C, "block_y": st.BLOCK_Y, "block_x": st.BLOCK_X,
                          "num_warps": st.NUM_WARPS, "cg_update": [cg.BLOCK_N, cg.BLOCK_C, cg.NUM_WARPS]},
              "rows": rows}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
