#!/usr/bin/env bash
# Issue 9's GPU check, in ONE run of the device tool (about 6-8 minutes of a 10-minute budget).
#
# What it measures: the CUDA tests (fused Triton stencil compiled, CG with no host sync, LPOSS+ and the
# streaming evaluator on CUDA vs CPU reference mode), the rest of the fast suite on CUDA (best effort), then
# `python -m benchmarks.speed --device cuda --backbones` (per-stage times, fused vs torch stencil, reference
# mode in the same run, end-to-end images/s, peak memory, 8-benchmark estimate) and the streaming evaluator
# on a generated demo set with random-weight ViT-B/16 backbones in bf16 (images/s, peak memory).
#
# The device image has torch, triton, timm, pytest, pytest-xdist, PIL, tqdm, but not open_clip (nor ftfy).
# Before the run, HERE in the repository root (pure-Python wheels, any platform):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0
# Then call the device tool's run with:
#   command: bash benchmarks/gpu_check.sh      carry: [".whl"]      timeout_s: 600
# Results come back under $OUT (at most 8 files): speed_cuda.json, evaluate_demo.json, and the logs.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/environment.txt"

# 1. The CUDA tests of issue 9 (~1-2 min: Triton compiles a few kernel variants).
timeout 150 python3 -m pytest -q -rs -m gpu -p no:cacheprovider \
  tests/test_triton_stencil.py tests/test_propagation.py tests/test_evaluate.py tests/test_graphs.py \
  tests/test_launches.py 2>&1 \
  | tee "$OUT/pytest_gpu.txt"

# 2. The speed benchmark, reference mode in the same run (~2-3 min).
timeout 240 python3 -m benchmarks.speed --device cuda --backbones --json "$OUT/speed_cuda.json" 2>&1 \
  | tee "$OUT/speed_cuda.txt"

# 3. The streaming evaluator end to end: 96 generated scenes (256x352, resized to 448x616 like VOC),
#    random-weight OpenCLIP ViT-B/16 + DINO ViT-B/16 in bf16, LPOSS+ (C' = 8 here).
python3 -m lposs.demo --out /tmp/data/demo --count 96 >/dev/null 2>&1
timeout 90 python3 -m lposs.experiment.streaming demo --data-dir /tmp/data --vlm ViT-B-16 --vlm-pretrained random \
  --vm dino_vitb16 --vm-pretrained random --bf16 --device cuda --modes lposs+ --workers 8 --batch-images 8 \
  --json "$OUT/evaluate_demo.json" 2>&1 | tail -5 | tee "$OUT/evaluate_demo.txt"

# 4. With what time is left: the rest of the fast suite on CUDA (modules needing dvc/papermill/gradio fail
#    to import there; those are not GPU questions).
timeout 90 python3 -m pytest -q -n 8 -m "not slow" -p no:cacheprovider --continue-on-collection-errors \
  tests 2>&1 | tail -25 > "$OUT/pytest_fast_suite.txt"
echo "done: $(ls "$OUT")"
