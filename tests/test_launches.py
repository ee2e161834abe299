"""On a GPU, LPOSS+ never waits for the device and launches a fixed number of kernels per image.

Counted without a GPU by `benchmarks.launches` (fake CUDA tensors under a dispatch mode; see its doc).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.launches import DeviceAudit, audit_image, fake_cuda, on_device
from lposs.core.propagation import conjugate_gradient
from lposs.models.protocols import resolve

VOC = (375, 500)  # resized to 448x597: 15 windows
RULES = {"synonyms": None, "softmax": resolve("sclip", "voc21")}


def audit(fn) -> dict:
    with fake_cuda() as mode:
        counter = DeviceAudit()
        with counter:
            fn(mode)
    return counter.summary()


def test_the_audit_counts_launches_waits_and_copies():
    def work(mode):
        x = on_device(mode, 4, 5)
        y = (x + 1).T.reshape(-1)  # one kernel; a view; a copy (reshape of a transposed tensor)
        bool(y.sum() > 0)  # two kernels (sum, gt), one wait
        x.cpu()  # device -> host: a wait
        torch.ones(3).to("cuda")  # blocking host -> device: a wait
        torch.ones(3).to("cuda", non_blocking=True)  # no wait

    counts = audit(work)
    assert counts["launches"] == 4
    assert [w["op"].split(" ")[0] for w in counts["waits"]] == ["aten::_local_scalar_dense", "aten::_to_copy",
                                                                "aten::_to_copy"]
    assert [(c["direction"], c["bytes"]) for c in counts["copies"]] == [("device->host", 80), ("host->device", 12),
                                                                       ("host->device", 12)]


@pytest.mark.parametrize("refiner", ["reference", "best", "pamr"])
@pytest.mark.parametrize("rule", RULES)
def test_lposs_plus_on_a_gpu_never_waits_for_it(refiner, rule):
    counts = audit_image(*VOC, columns=46, refiner=refiner, background=RULES[rule])
    assert counts["waits"] == [], f"host waits on the GPU path: {counts['waits']}"
    assert all(c["direction"] == "host->device" and c["non_blocking"] for c in counts["copies"]), counts["copies"]


@pytest.mark.parametrize("refiner", ["reference", "best"])
def test_launches_do_not_grow_with_the_classes_or_the_pixels(refiner):
    """No per-class loops (the released code solves one CG per class) and no per-row loops: the launches of
    an image depend on its number of windows only."""
    voc = audit_image(*VOC, columns=46, refiner=refiner)["launches"]
    assert audit_image(*VOC, columns=171, refiner=refiner)["launches"] == voc
    assert audit_image(380, 510, columns=46, refiner=refiner)["launches"] == voc  # 448x601: 15 windows too


def test_a_conjugate_gradient_iteration_is_a_few_fused_calls():
    """Launches per CG iteration on a dense graph: the product, the fused update (X - alpha S X), then 13 element-wise and reduction calls.

    The count is this code's (a regression guard): each extra call is one more kernel launch and one more
    pass over [N, C] per iteration on a GPU.
    """
    def run(iterations):
        def work(mode):
            S, B = on_device(mode, 300, 300), on_device(mode, 300, 46)
            conjugate_gradient(lambda X: torch.add(X, S @ X, alpha=-0.9), B, maxiter=iterations)
        return audit(work)

    few, more = run(3), run(8)
    assert few["waits"] == more["waits"] == []  # no convergence check on CUDA: no wait
    assert (more["launches"] - few["launches"]) / 5 == 15


def test_a_pixel_solve_iteration_on_cuda_is_eleven_launches():
    """The fused steps: stencil with residual and dot, the CG update kernel, and 9 calls on [C] vectors
    (two sums of per-block shares, step, beta, the stopping mask, P = R + beta P)."""
    from lposs.core.graphs import PixelGraph
    from lposs.core.propagation import propagate

    def run(iterations):
        def work(mode):
            graph = PixelGraph(on_device(mode, 3, 40, 50))
            assert graph.fused
            propagate(graph, on_device(mode, 46, 40 * 50).T, maxiter=iterations)
        return audit(work)

    few, more = run(3), run(8)
    assert few["waits"] == more["waits"] == []
    assert (more["launches"] - few["launches"]) / 5 == 11


@pytest.mark.parametrize("keep_on_device", [True, False])
def test_a_streaming_shard_stays_on_the_gpu_and_a_stored_one_comes_to_the_host(keep_on_device):
    """The evaluator without a feature store keeps an image's features on the device (no copy, no wait)."""
    from benchmarks.launches import _StandInBackbone
    from lposs.experiment.extraction import extract_shard
    from lposs.settings import WindowSettings

    owner = torch.arange(6) // 2
    with fake_cuda() as mode:
        counter = DeviceAudit()
        with counter:
            text = (on_device(mode, 6, 512), owner)
            shard = extract_shard("x", on_device(mode, 3, *VOC), ["a", "b", "c"], _StandInBackbone(mode, 512),
                                  {"v": _StandInBackbone(mode, 768)}, WindowSettings(), text=text,
                                  keep_on_device=keep_on_device)
    back = [c for c in counter.summary()["copies"] if c["direction"] == "device->host"]
    assert shard["seeds"].device.type == ("cuda" if keep_on_device else "cpu")
    assert len(back) == (0 if keep_on_device else 3)  # seeds, graph features, the text self-affinity


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("refiner", ["reference", "best"])
def test_lposs_plus_on_a_real_gpu_never_synchronises(refiner):
    """What the audit counts, checked by CUDA itself: torch raises on any synchronising call."""
    from lposs.core.windows import window_layout
    from lposs.segmentation import ImageFeatures, propagate_features

    layout = window_layout(448, 597)
    n = len(layout) * 196
    feats = ImageFeatures(seeds=torch.randn(n, 46, device="cuda"),
                          vm_feats=torch.nn.functional.normalize(torch.randn(n, 768, device="cuda"), dim=1),
                          owner=torch.arange(46) // 2, layout=layout, resized_hw=(448, 597), original_hw=(375, 500),
                          grid=14, image_resized=torch.rand(3, 448, 597, device="cuda"))
    propagate_features(feats, mode="lposs+", device="cuda", refiner=refiner)  # warm-up: compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        scores = propagate_features(feats, mode="lposs+", device="cuda", refiner=refiner)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert scores.shape == (23, 375, 500) and bool(torch.isfinite(scores).all())
