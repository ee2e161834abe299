"""Resize rule, window layout and the window -> canvas merge."""

import pytest
import torch

from lposs.core.windows import crop_windows, merge_windows, patch_centers, resized_size, window_layout


@pytest.mark.parametrize(
    "size, resized, windows",
    [((375, 500), (448, 597), 15), ((1024, 2048), (448, 896), 21), ((360, 480), (448, 597), 15)],
)
def test_spec_sizes(size, resized, windows):
    assert resized_size(*size) == resized
    assert len(window_layout(*resized)) == windows


def test_layout_pushes_last_window_inside_and_covers_image():
    layout = window_layout(448, 597)
    assert layout[0] == (0, 224, 0, 224)
    assert layout[4] == (0, 224, 373, 597)  # last column pushed back inside
    assert layout[-1] == (224, 448, 373, 597)
    covered = torch.zeros(448, 597)
    for y1, y2, x1, x2 in layout:
        assert (y2 - y1, x2 - x1) == (224, 224)
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1


def test_long_side_rule_limits_very_wide_images():
    h, w = resized_size(100, 1000)  # 448/100 would make the long side 4480 > 2048
    assert w == 2048 and h == 205


def test_patch_centers_follow_the_spec():
    layout = window_layout(448, 597)
    centers = patch_centers(layout)
    assert centers.shape == (15 * 196, 2)
    assert centers[0].tolist() == [8.0, 8.0]
    assert centers[13].tolist() == [8.0, 8.0 + 16 * 13]
    assert centers[196 * 4].tolist() == [8.0, 373.0 + 8.0]


def test_merge_of_a_constant_is_that_constant_and_crop_roundtrip():
    layout = window_layout(300, 400)
    scores = torch.full((len(layout), 2, 14, 14), 3.0)
    canvas = merge_windows(scores, layout, 300, 400)
    torch.testing.assert_close(canvas, torch.full((2, 300, 400), 3.0))
    image = torch.rand(3, 300, 400)
    windows = crop_windows(image, layout)
    y1, y2, x1, x2 = layout[-1]
    assert torch.equal(windows[-1], image[:, y1:y2, x1:x2])


def test_merge_averages_overlaps():
    layout = [(0, 224, 0, 224), (0, 224, 112, 336)]
    scores = torch.stack([torch.zeros(1, 14, 14), torch.ones(1, 14, 14)])
    canvas = merge_windows(scores, layout, 224, 336)
    assert canvas[0, 5, 50] == 0 and canvas[0, 5, 300] == 1 and canvas[0, 5, 150] == 0.5


def test_small_image_windows_are_padded():
    layout = window_layout(100, 150)
    assert layout == [(0, 100, 0, 150)]
    assert crop_windows(torch.rand(3, 100, 150), layout).shape == (1, 3, 224, 224)
