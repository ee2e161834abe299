"""The settings, declared once (lposs.settings): defaults in one place, unknown names and bad values refused
with the valid choices, and the one rule of what a pixel refiner takes from the setting."""

from __future__ import annotations

import numpy as np
import pytest

from lposs.core.refiners import REFINERS
from lposs.segmentation import propagate_features, segment
from lposs.settings import GraphSettings, PixelSettings, PropagationSettings, Setting, WindowSettings


def test_defaults_are_the_released_lposs():
    setting = Setting()
    assert (setting.mode, setting.graph.k, setting.graph.gamma, setting.graph.sigma, setting.graph.p) == \
        ("lposs+", 400, 3.0, 0.01, 1.0)
    assert (setting.lp.alpha, setting.lp.maxiter, setting.lp.tol, setting.lp.solver) == (0.95, 10, 1e-6, "cg")
    assert setting.flat()["r"] == 13 and setting.flat()["tau"] == 0.01 and setting.pixel.refiner == "reference"
    assert WindowSettings().as_dict() == {"crop": 224, "stride": 112, "short_side": 448, "long_side": 2048}


@pytest.mark.parametrize("call, message", [
    (lambda: Setting.from_flat(alpah=0.9), r"unknown setting 'alpah' \(did you mean 'alpha'\?\)"),
    (lambda: GraphSettings.from_mapping({"kk": 3}), r"'kk' \(did you mean 'k'\?\) in params.yaml `graph`"),
    (lambda: WindowSettings.from_mapping({"crops": 3}, "the windows"), "valid settings: crop, stride, short_side"),
    (lambda: Setting.from_sections("lposs", {"lpp": {}}), "unknown setting 'lpp'"),
])
def test_unknown_names_are_refused_with_the_valid_ones(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("build, message", [
    (lambda: PropagationSettings(alpha=1.0), r"lp.alpha=1.0: alpha must lie in \(0, 1\)"),
    (lambda: PropagationSettings(maxiter=2.5), "lp.maxiter=2.5 should be an int"),
    (lambda: PropagationSettings(solver="gmres"), "lp.solver='gmres': choose one of cg, cg_reference"),
    (lambda: GraphSettings(k=True), "graph.k=True should be an int"),
    (lambda: GraphSettings(vm_feature="w"), "graph.vm_feature='w': choose one of q, k, v, tokens, clip"),
    (lambda: PixelSettings(r=4), "pixel.r=4: r must be an odd window size"),
    (lambda: PixelSettings(refiner="fast"), "pixel.refiner='fast': choose one of reference"),
    (lambda: Setting(mode="lposs++"), "mode='lposs\\+\\+': choose one of maskclip, lposs, lposs\\+"),
    (lambda: WindowSettings(stride=0), "windows.stride=0: stride must be positive"),
])
def test_bad_values_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_the_one_refiner_rule():
    lp = PropagationSettings(alpha=0.9, maxiter=7, tol=1e-5)
    assert PixelSettings().refiner_overrides(lp) == {"alpha": 0.9, "maxiter": 7, "tol": 1e-5}
    assert PixelSettings(r=9).refiner_overrides(lp) == {"alpha": 0.9, "maxiter": 7, "tol": 1e-5, "r": 9}
    assert PixelSettings(refiner="best").refiner_overrides(lp) == {}  # its own alpha, iterations, r, tau
    assert PixelSettings(refiner="best", tau=0.02).refiner_overrides(lp) == {"tau": 0.02}
    best = PixelSettings(refiner="best").resolved()
    assert (best.r, best.tau) == (REFINERS["best"]["r"], REFINERS["best"]["tau"])
    assert PixelSettings(refiner="pamr").resolved().r is None  # PAMR has no window size


def test_replace_and_flat_round_trip():
    setting = Setting.from_flat(mode="lposs", k=25, alpha=0.9, refiner="best")
    assert setting.replace(k=30).graph.k == 30 and setting.replace(k=30).lp.alpha == 0.9
    assert Setting.from_flat(**setting.flat_given()) == setting
    assert setting.flat()["tau"] == 0.015  # what ran, written beside the numbers


class _Colour:
    id, patch_size = "colour", 16

    def dense_features(self, windows):
        import torch.nn.functional as F

        return F.normalize(F.avg_pool2d(windows, 16).permute(0, 2, 3, 1) + 1e-3, dim=-1)

    def text_embeddings(self, names):
        import torch

        return torch.eye(3)[: len(names)], torch.arange(len(names))


def test_segment_and_propagate_features_refuse_a_typo():
    image = np.full((64, 64, 3), 200, np.uint8)
    with pytest.raises(ValueError, match=r"'alpah' \(did you mean 'alpha'\?\) in segment"):
        segment(image, ["a", "b"], vlm=_Colour(), vm=_Colour(), alpah=0.9, short_side=224)
    with pytest.raises(ValueError, match="not both"):
        propagate_features(None, setting=Setting(), k=3)
