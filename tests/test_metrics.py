"""Tests of lposs.core.metrics: hand-computed mIoU / Boundary IoU and a slow reference for Boundary IoU."""

import math

import numpy as np
import pytest
import torch

from lposs.core.metrics import SegmentationMetrics, boundary_dilation, interior_mask, mean_iou, reduce_zero


# --------------------------------------------------------------------------- slow reference (docs/method.md section 7)
def erode_3x3_once(mask: np.ndarray) -> np.ndarray:
    """One 3x3 erosion; pixels beyond the array do not erode (as cv2.erode's default border)."""
    h, w = mask.shape
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.ones_like(mask)
            ys, ye = max(0, -dy), min(h, h - dy)
            xs, xe = max(0, -dx), min(w, w - dx)
            shifted[ys:ye, xs:xe] = mask[ys + dy : ye + dy, xs + dx : xe + dx]
            out = np.minimum(out, shifted)
    return out


def reference_boundary(mask: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    """mask minus its erosion: pad by one zero pixel, erode `iterations` times with 3x3, crop."""
    h, w = mask.shape
    iterations = max(1, int(round(ratio * math.sqrt(h * h + w * w))))
    padded = np.pad(mask, 1, constant_values=0)
    for _ in range(iterations):
        padded = erode_3x3_once(padded)
    return mask - padded[1 : h + 1, 1 : w + 1]


def reference_boundary_counts(gt, dt, num_classes, ignore_index=255):
    """Per-class boundary intersection and union of one image, class by class as the reference does."""
    dt = dt.copy()
    dt[gt == ignore_index] = ignore_index
    inter = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    for c in (set(np.unique(gt)) | set(np.unique(dt))) - {ignore_index}:
        gb = reference_boundary((gt == c).astype(np.uint8))
        db = reference_boundary((dt == c).astype(np.uint8))
        inter[c] += ((gb * db) > 0).sum()
        union[c] += ((gb + db) > 0).sum()
    return inter, union


def blob_labels(rng, h, w, num_classes, ignore_fraction=0.0):
    """A label map of a few rectangles and discs (blobby, like real masks), with optional ignore."""
    label = np.full((h, w), rng.integers(num_classes), dtype=np.int64)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(8):
        c = rng.integers(num_classes)
        cy, cx = rng.integers(h), rng.integers(w)
        r = rng.integers(3, max(4, min(h, w) // 2))
        if rng.random() < 0.5:
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
        else:
            label[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r // 2] = c
    if ignore_fraction:
        label[rng.random((h, w)) < ignore_fraction] = 255
        label[h // 3 : h // 3 + 4, :] = 255
    return label


# --------------------------------------------------------------------------- mIoU by hand
def test_miou_by_hand():
    gt = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    m = SegmentationMetrics(3)
    m.update(pred, gt)
    # class 0: inter 1 (0,0); gt 2, pred 2 (0,0),(1,2) -> union 3 -> 1/3
    # class 1: inter 2; gt 2, pred 3 -> union 3 -> 2/3
    # class 2: inter 1 (1,1); gt 2, pred 1 -> union 2 -> 1/2
    expected = [100 / 3, 200 / 3, 50.0]
    np.testing.assert_allclose(m.per_class_iou(), expected)
    assert m.miou() == pytest.approx((100 / 3 + 200 / 3 + 50) / 3)  # = 50
    assert m.miou() == pytest.approx(50.0)
    np.testing.assert_array_equal(m.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_ignore_label_pixels_do_not_count():
    gt = np.array([[0, 255, 1, 1]])
    pred = np.array([[0, 1, 1, 0]])  # the wrong 1 sits on an ignored pixel
    m = SegmentationMetrics(2)
    m.update(pred, gt)
    # valid pixels: (0,0) gt0/p0, (0,2) gt1/p1, (0,3) gt1/p0
    # class 0: inter 1, gt 1, pred 2 -> 1/2 ; class 1: inter 1, gt 2, pred 1 -> 1/2
    np.testing.assert_allclose(m.per_class_iou(), [50.0, 50.0])
    assert m.confusion.sum() == 3


def test_reduce_zero_label():
    raw = np.array([[0, 1, 2], [3, 3, 0]])
    np.testing.assert_array_equal(reduce_zero(raw), [[255, 0, 1], [2, 2, 255]])
    np.testing.assert_array_equal(reduce_zero(np.array([[255, 1]])), [[255, 0]])
    pred = np.array([[2, 0, 1], [2, 1, 0]])
    m = SegmentationMetrics(3, reduce_zero_label=True)
    m.update(pred, raw)
    # valid: gt0/p0, gt1/p1, gt2/p2, gt2/p1
    # class 0: 1/1 ; class 1: inter 1, gt 1, pred 2 -> 1/2 ; class 2: inter 1, gt 2, pred 1 -> 1/2
    np.testing.assert_allclose(m.per_class_iou(), [100.0, 50.0, 50.0])
    assert m.miou() == pytest.approx(200 / 3)


def test_nan_mean_skips_absent_classes():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 0]])
    m = SegmentationMetrics(4)  # classes 2 and 3 appear nowhere
    m.update(pred, gt)
    # class 0: inter 2, gt 2, pred 3 -> 2/3 ; class 1: inter 1, gt 2, pred 1 -> 1/2 ; 2, 3: nan
    per_class = m.per_class_iou()
    assert np.isnan(per_class[2]) and np.isnan(per_class[3])
    assert m.miou() == pytest.approx((200 / 3 + 50) / 2)
    summary = m.summary()
    assert summary["per_class_iou"][2] is None
    assert summary["images"] == 1


def test_accumulates_over_the_dataset_not_per_image():
    m = SegmentationMetrics(2)
    m.update(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))
    m.update(np.array([[1, 1, 1, 1]]), np.array([[0, 1, 1, 1]]))
    # class 0: inter 4, gt 5, pred 4 -> 4/5 ; class 1: inter 3, gt 3, pred 4 -> 3/4 ; mean 77.5
    # (the mean of per-image mIoUs would be (100 + 37.5) / 2 = 68.75)
    assert m.miou() == pytest.approx(77.5)


def test_accepts_torch_and_numpy_alike():
    rng = np.random.default_rng(0)
    gt = blob_labels(rng, 30, 40, 4, ignore_fraction=0.05)
    pred = blob_labels(rng, 30, 40, 4)
    a, b = SegmentationMetrics(4), SegmentationMetrics(4)
    a.update(pred, gt)
    b.update(torch.from_numpy(pred), torch.from_numpy(gt).to(torch.uint8))
    assert a.summary() == b.summary()


def test_mean_iou_convenience_matches_class():
    gt = [np.array([[0, 0, 1], [1, 2, 2]])]
    pred = [np.array([[0, 1, 1], [1, 2, 0]])]
    assert mean_iou(pred, gt, num_classes=3)["miou"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    "pred, label, message",
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), "same"),
        (np.array([[0, 3]]), np.array([[0, 1]]), "pred holds values \\[3\\]"),
        (np.array([[0, 1]]), np.array([[0, 7]]), "label holds values \\[7\\]"),
        (np.zeros((2, 2), float), np.zeros((2, 2), int), "integer"),
        (np.zeros((2, 2, 3), int), np.zeros((2, 2), int), "2-D"),
    ],
)
def test_bad_input_is_named(pred, label, message):
    with pytest.raises(ValueError, match=message):
        SegmentationMetrics(3).update(pred, label)


def test_pred_out_of_range_on_ignored_pixels_is_fine():
    m = SegmentationMetrics(2)
    m.update(np.array([[0, 255]]), np.array([[0, 255]]))
    assert m.miou() == pytest.approx(100.0)


# --------------------------------------------------------------------------- Boundary IoU
def test_boundary_dilation_numbers():
    assert boundary_dilation(6, 6) == 1  # 0.02 * 8.5 rounds to 0, clamped to 1
    assert boundary_dilation(360, 480) == 12  # diagonal 600
    assert boundary_dilation(448, 597) == 15  # 0.02 * 746.4 = 14.93
    assert boundary_dilation(480, 854) == 20  # 0.02 * 979.6 = 19.59


def test_boundary_iou_by_hand():
    gt = np.zeros((6, 6), int)
    gt[1:5, 1:5] = 1  # 4x4 square
    pred = np.zeros((6, 6), int)
    pred[1:5, 2:6] = 1  # same square shifted right by one, touching the right border
    m = SegmentationMetrics(2)
    m.update(pred, gt)
    # dilation 1. class 1: gt boundary = 16 - 2x2 interior = 12; pred interior rows 2-3 cols 3-4
    # (col 5 is the image border) -> boundary 12. Shared: rows 1 and 4, cols 2-4 -> 6.
    # IoU = 6 / (12 + 12 - 6) = 1/3.
    # class 0: every class-0 pixel touches the border or the square -> 20 boundary pixels each;
    # shared: rows 0 and 5 (12) + col 0 rows 1-4 (4) = 16 -> 16 / (20 + 20 - 16) = 2/3.
    np.testing.assert_allclose(m.per_class_boundary_iou(), [200 / 3, 100 / 3])
    assert m.boundary_iou() == pytest.approx(50.0)
    # mIoU: class 1 inter 12, union 20 -> 60 ; class 0 inter 16, union 24 -> 66.67
    assert m.miou() == pytest.approx((60 + 200 / 3) / 2)


@pytest.mark.parametrize("shape", [(20, 30), (60, 80), (90, 120), (37, 151)])
def test_interior_equals_iterated_3x3_erosion(shape):
    rng = np.random.default_rng(shape[0])
    label = blob_labels(rng, *shape, num_classes=5, ignore_fraction=0.02)
    d = boundary_dilation(*shape)
    interior = interior_mask(label, d)
    for c in np.unique(label):
        mask = (label == c).astype(np.uint8)
        np.testing.assert_array_equal(
            (mask.astype(bool) & ~interior).astype(np.uint8), reference_boundary(mask), err_msg=f"class {c}"
        )


def test_boundary_iou_matches_slow_reference_over_a_dataset():
    rng = np.random.default_rng(7)
    num_classes = 5
    m = SegmentationMetrics(num_classes)
    inter = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    for shape in [(60, 80), (75, 100), (48, 64), (100, 60)]:
        gt = blob_labels(rng, *shape, num_classes=num_classes, ignore_fraction=0.03)
        pred = blob_labels(rng, *shape, num_classes=num_classes)
        pred[rng.random(shape) < 0.02] = rng.integers(num_classes)  # salt noise
        m.update(pred, gt)
        i, u = reference_boundary_counts(gt, pred, num_classes)
        inter += i
        union += u
    np.testing.assert_array_equal(m.boundary_intersection, inter)
    np.testing.assert_array_equal(m.boundary_union, union)
    expected = np.nanmean(np.where(union > 0, 100 * inter / np.maximum(union, 1), np.nan))
    assert m.boundary_iou() == pytest.approx(expected)
    assert 0 < m.boundary_iou() < 100


def test_perfect_prediction_scores_100():
    rng = np.random.default_rng(3)
    gt = blob_labels(rng, 50, 70, 4, ignore_fraction=0.05)
    pred = np.where(gt == 255, 0, gt)
    m = SegmentationMetrics(4)
    m.update(pred, gt)
    assert m.miou() == pytest.approx(100.0)
    assert m.boundary_iou() == pytest.approx(100.0)


# --------------------------------------------------------------------------- docs/method.md section 11 on real data
def coarse_oracle_scores(dataset):
    """Spec section 11's coarse predictor: GT one-hot averaged over 16x16 patches (ceil mode), upsampled
    bilinearly, argmax; on the short-side-448 grid. Yields (pred, gt) pairs."""
    import torch.nn.functional as F

    from lposs.core.windows import resized_size

    for i in range(len(dataset)):
        label = torch.from_numpy(dataset[i].label)
        size = resized_size(*label.shape)
        gt = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()  # [H', W']
        valid = gt != dataset.ignore_index
        onehot = F.one_hot(torch.where(valid, gt, 0), dataset.num_classes).permute(2, 0, 1).float() * valid
        coarse = F.avg_pool2d(onehot[None], 16, 16, ceil_mode=True)  # [1, C, ceil(H'/16), ceil(W'/16)]
        up = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]  # [C, H', W']
        yield up.argmax(0), gt


@pytest.mark.slow
@pytest.mark.parametrize("name, fixture, expected", [
    ("camvid", "camvid_root", (73.06, 63.25)),
    ("davis2016", "davis_root", (94.48, 81.91)),
])
def test_reference_coarse_scores_on_real_data(name, fixture, expected, request):
    from lposs.datasets import get_dataset

    dataset = get_dataset(name, request.getfixturevalue(fixture))
    metrics = SegmentationMetrics(dataset.num_classes, dataset.ignore_index, dataset.reduce_zero_label)
    for pred, gt in coarse_oracle_scores(dataset):
        metrics.update(pred, gt)
    assert (round(metrics.miou(), 2), round(metrics.boundary_iou(), 2)) == expected
