"""The Triton kernels of the CUDA path: the fused pixel stencil (`stencil_triton`) and the CG update
(`cg_triton`). They import nothing else of lposs; the torch code in `lposs.core` is the reference they are
tested against (under Triton's interpreter on a CPU)."""
