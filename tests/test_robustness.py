"""The robustness protocol of the refinement benchmark: transforms on hand-made maps, and the run itself."""

import math
import zlib

import numpy as np
import pytest
import torch

from benchmarks.refine import coarse_scores, patch_average, robustness_table, run_robustness
from benchmarks.robustness import (
    SMOOTH_CELL,
    TRANSFORMS,
    affine,
    coarse_map,
    cosine_softmax,
    gaussian_noise,
    patch_label_noise,
    smooth_noise,
    transform_seed,
)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_affine_and_cosine_softmax_by_hand():
    scores = torch.tensor([[[1.0, 0.5]], [[0.0, 0.5]]])  # [2, 1, 2]: a pure pixel and a tie
    torch.testing.assert_close(affine(scores, 0.1, -0.5), torch.tensor([[[-0.4, -0.45]], [[-0.5, -0.45]]]))
    probs = cosine_softmax(scores, 40.0)  # logits 40 * (0.2 + 0.1 s): a gap of 4 for the pure pixel
    top = 1 / (1 + math.exp(-4))
    torch.testing.assert_close(probs, torch.tensor([[[top, 0.5]], [[1 - top, 0.5]]]))


def test_gaussian_noise_has_the_asked_spread_and_repeats_with_the_seed():
    scores = torch.zeros(4, 100, 100)
    noisy = gaussian_noise(scores, 0.03, generator(1))
    assert abs(float(noisy.mean())) < 0.03 * 0.02
    assert abs(float(noisy.std()) / 0.03 - 1) < 0.01
    torch.testing.assert_close(noisy, gaussian_noise(scores, 0.03, generator(1)))
    assert not torch.equal(noisy, gaussian_noise(scores, 0.03, generator(2)))


def test_smooth_noise_takes_its_node_values_every_cell_and_is_linear_between():
    scores = torch.zeros(2, 100, 150, dtype=torch.float64)
    noisy = smooth_noise(scores, 0.2, generator(3))
    nodes = 0.2 * torch.randn(2, 3, 4, generator=generator(3), dtype=torch.float64)  # rows 0, 64, 128; cols 0..192
    torch.testing.assert_close(noisy[:, ::SMOOTH_CELL, ::SMOOTH_CELL], nodes[:, :2, :3])
    # halfway between two nodes along a row: their mean
    torch.testing.assert_close(noisy[:, 64, 32], (nodes[:, 1, 0] + nodes[:, 1, 1]) / 2)
    # low frequency: neighbouring pixels differ by at most the node spread over one cell
    step = noisy.diff(dim=2).abs().max()
    assert step <= 2 * nodes.abs().max() / SMOOTH_CELL + 1e-12


def test_patch_label_noise_relabels_exactly_the_asked_fraction_with_wrong_classes():
    pooled = torch.zeros(3, 2, 5)
    pooled[0, :, :2] = 1.0  # class 0 on the left, class 2 (0.75) / class 1 (0.25) on the right
    pooled[2, :, 2:] = 0.75
    pooled[1, :, 2:] = 0.25
    noisy = patch_label_noise(pooled, 0.3, generator(4))  # round(0.3 * 10) = 3 patches
    changed = (noisy != pooled).any(0)  # [2, 5]
    assert int(changed.sum()) == 3
    assert torch.all(noisy[:, changed].sum(0) == 1) and torch.all(noisy[:, changed].max(0).values == 1)
    assert torch.all(noisy[:, changed].argmax(0) != pooled[:, changed].argmax(0))
    torch.testing.assert_close(patch_label_noise(pooled, 0.0, generator(4)), pooled)
    assert bool((patch_label_noise(pooled, 1.0, generator(5)).argmax(0) != pooled.argmax(0)).all())
    with pytest.raises(ValueError, match="fraction"):
        patch_label_noise(pooled, 1.5, generator(4))


def test_coarse_map_applies_the_named_transform_to_the_protocols_scores():
    label = torch.zeros(40, 40, dtype=torch.long)
    label[5:30, 10:22] = 1
    pooled = patch_average(label, 2)
    clean = coarse_scores(label, 2)
    torch.testing.assert_close(coarse_map(pooled, (40, 40), "clean", generator()), clean)
    torch.testing.assert_close(coarse_map(pooled, (40, 40), "affine", generator()), 0.1 * clean - 0.5)
    torch.testing.assert_close(coarse_map(pooled, (40, 40), "softmax100", generator()), cosine_softmax(clean, 100))
    noisy = coarse_map(pooled, (40, 40), "noise0.1", generator(6))
    torch.testing.assert_close(noisy, gaussian_noise(clean, 0.1, generator(6)))
    relabelled = coarse_map(pooled, (40, 40), "patches0.1", generator(7))
    assert relabelled.shape == (2, 40, 40) and not torch.equal(relabelled, clean)  # 1 of 9 patches
    with pytest.raises(ValueError, match="unknown transform 'blur'"):
        coarse_map(pooled, (40, 40), "blur", generator())


def test_transform_seeds_are_stable_across_runs():
    assert transform_seed("noise0.01", 3) == zlib.crc32(b"noise0.01:3")
    assert transform_seed("noise0.01", 3) != transform_seed("noise0.01", 4)
    assert {"clean", "affine", "softmax40", "softmax100"} <= set(TRANSFORMS)


class TinyDataset:
    """Two 24x32 images (a blue box on red) with their labels, shaped like the package's datasets."""

    num_classes, ignore_index = 2, 255

    def __init__(self):
        self.items = []
        for shift in (0, 6):
            label = np.zeros((24, 32), dtype=np.int64)
            label[4 + shift : 14 + shift, 8:20] = 1
            image = np.where(label[..., None] == 1, [40, 70, 200], [200, 70, 40]).astype(np.uint8)
            self.items.append((f"img{shift}", image, label))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __repr__(self):
        return "TinyDataset()"


def test_robustness_run_fills_every_cell_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.refine.resized_size", lambda h, w: (h, w))  # keep the tiny images tiny
    dataset = TinyDataset()
    refiners, transforms = ["reference", "pamr"], ["clean", "affine"]
    whole = run_robustness(dataset, refiners, transforms, progress=False)
    assert whole["images"] == 2 and len(whole["cells"]) == 4
    cells = {(c["transform"], c["refiner"]): c for c in whole["cells"]}
    for refiner in refiners:  # both refiners are affine-equivariant: the affine map changes nothing
        assert cells["affine", refiner]["refined"] == pytest.approx(cells["clean", refiner]["refined"])
    checkpoint = tmp_path / "rob.json.partial"
    first = run_robustness(dataset, refiners, transforms, limit=1, progress=False, checkpoint=checkpoint)
    assert first["images"] == 1
    resumed = run_robustness(dataset, refiners, transforms, progress=False, checkpoint=checkpoint)
    assert resumed["cells"] == whole["cells"]
    with pytest.raises(ValueError, match="raise --limit"):
        run_robustness(dataset, refiners, transforms, limit=1, progress=False, checkpoint=checkpoint)
    table = robustness_table([{**whole, "dataset": "tiny"}]).splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| tiny (2) | clean | reference |")
