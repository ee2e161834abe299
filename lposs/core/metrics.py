"""Segmentation metrics: dataset-level mIoU and Boundary IoU (docs/method.md section 7).

mIoU follows MMSegmentation: one confusion matrix accumulated over the whole dataset, pixels whose ground
truth is the ignore label are skipped, IoU per class, mean over the classes whose union is not empty.

Boundary IoU follows Cheng et al. (CVPR 2021) as the LPOSS reference computes it: for every class, the
boundary of a binary mask is the mask minus its erosion by a 3x3 square repeated
``d = max(1, round(0.02 * image_diagonal))`` times, after padding the mask with one zero pixel so that the
image border counts as boundary. Prediction pixels on ignored ground truth are set to ignore first.
Boundary intersections and unions are summed per class over the dataset, then averaged over classes.

Implementation note: ``d`` iterations of a 3x3 erosion of a zero-padded mask equal one erosion by a
``(2d+1) x (2d+1)`` square with zeros outside the image (the square is the d-fold Minkowski sum of the
3x3 square). For a whole label map this means: a pixel of class ``c`` is interior to the mask of ``c`` iff
every pixel in its ``(2d+1)``-window lies in the image and has label ``c``, i.e. iff the window holds no
label change once the map is padded with a value no class uses. Counting changes with cumulative sums
gives the boundaries of all classes at once in O(1) per pixel, whatever ``d`` is (tests/test_metrics.py
checks this against a plain loop over 3x3 erosions). It is written in torch, so the same code counts on
a GPU without a host wait (`DeviceMetrics`, the evaluation loop's accumulator) and on the CPU
(`SegmentationMetrics.update`).
"""

from __future__ import annotations

from typing import Iterable, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ArrayLike = Union[np.ndarray, torch.Tensor]

_PAD_VALUE = -1  # a label value no class (and no ignore label) uses


def to_numpy_labels(array: ArrayLike, name: str) -> np.ndarray:
    """A 2-D integer numpy array (int64) from a numpy array or a torch tensor."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [H, W] label map, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def reduce_zero(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """MMSegmentation's reduce_zero_label: 0 -> ignore, every other class shifts down by one."""
    reduced = label - 1
    reduced[(label == 0) | (label == ignore_index)] = ignore_index
    return reduced


def boundary_dilation(height: int, width: int, ratio: float = 0.02) -> int:
    """Erosion iterations of Boundary IoU: max(1, round(ratio * image diagonal))."""
    return max(1, int(round(ratio * float(np.sqrt(height**2 + width**2)))))


def sliding_sum(values: Tensor, width: int, dim: int) -> Tensor:
    """Sums over every run of `width` consecutive entries along `dim` (length n - width + 1), in int32."""
    csum = values.to(torch.int32).cumsum(dim, dtype=torch.int32)
    csum = torch.cat([torch.zeros_like(csum.narrow(dim, 0, 1)), csum], dim=dim)
    n = csum.shape[dim]
    return csum.narrow(dim, width, n - width) - csum.narrow(dim, 0, n - width)


def interior_mask(label_map: ArrayLike, dilation: int) -> ArrayLike:
    """Pixels whose (2*dilation+1)-window lies inside the image and holds only their own label.

    For any class c, ``(label_map == c) & interior`` is the erosion of the mask of c by ``dilation``
    iterations of a 3x3 square with zeros outside the image; the rest of the mask is its boundary.
    A window is constant iff each of its rows is constant and its centre column is constant; "constant"
    along a line means no label change inside the window, counted with cumulative sums (O(1) per pixel).
    Takes and returns a numpy array or a tensor (on any device, no host wait).
    """
    is_numpy = not isinstance(label_map, Tensor)
    labels = torch.from_numpy(np.asarray(label_map, dtype=np.int64)) if is_numpy else label_map.long()
    d, width = dilation, labels.shape[1]
    padded = F.pad(labels, (d, d, d, d), value=_PAD_VALUE)  # [H+2d, W+2d]; the pad differs from all labels
    row_changes = padded[:, 1:] != padded[:, :-1]  # [H+2d, W+2d-1]
    row_constant = sliding_sum(row_changes, 2 * d, dim=1) == 0  # [H+2d, W]: row segment of the window
    rows_ok = sliding_sum(~row_constant, 2 * d + 1, dim=0) == 0  # [H, W]: every row of the window
    column = padded[:, d : d + width]  # [H+2d, W]
    column_ok = sliding_sum(column[1:] != column[:-1], 2 * d, dim=0) == 0  # [H, W]: centre column of the window
    inside = rows_ok & column_ok
    return inside.numpy() if is_numpy else inside


def image_counts(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int,
                 dilation_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """One prepared image -> (confusion [n*n], boundary intersection [n], boundary union [n]), int64 tensors.

    label: the evaluation encoding (reduced, checked); pred: class indices 0..n-1. Counted with scatters
    into one spare bin (a boolean index would wait for a GPU), so the device never waits for the host.
    """
    n = num_classes
    valid = label != ignore_index
    pred = torch.where(valid, pred, ignore_index)
    confusion = _count(label * n + pred, valid, n * n)
    d = boundary_dilation(*label.shape, ratio=dilation_ratio)
    label_edge = ~interior_mask(label, d) & valid
    pred_edge = ~interior_mask(pred, d) & (pred != ignore_index)
    both = label_edge & pred_edge & (label == pred)
    intersection = _count(label, both, n)
    union = _count(label, label_edge, n) + _count(pred, pred_edge, n) - intersection
    return confusion, intersection, union


def _count(index: Tensor, where: Tensor, bins: int) -> Tensor:
    """How often each of `bins` values occurs in index[where]: [bins] int64 (a scatter into bins + 1)."""
    index = torch.where(where, index, bins).reshape(-1)
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=index.device)
    return counts.scatter_add_(0, index, torch.ones_like(index))[:bins]


class SegmentationMetrics:
    """Accumulates the confusion matrix and per-class boundary counts over a dataset.

    ``update(pred, label)`` takes one image: ``pred`` the predicted class indices in ``0..num_classes-1``,
    ``label`` the ground truth exactly as the dataset stores it (``reduce_zero_label`` is applied here).
    Scores are reported in percent.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        boundary_dilation: float = 0.02,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index (0..{num_classes - 1})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.dilation_ratio = boundary_dilation
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # [gt, pred]
        self.boundary_intersection = np.zeros(num_classes, dtype=np.int64)
        self.boundary_union = np.zeros(num_classes, dtype=np.int64)
        self.images = 0

    def prepare(self, pred: ArrayLike, label: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Validated int64 (pred, label) in the evaluation encoding, pred set to ignore where label is."""
        pred = to_numpy_labels(pred, "pred")
        label = to_numpy_labels(label, "label")
        if pred.shape != label.shape:
            raise ValueError(f"pred {pred.shape} and label {label.shape} must have the same [H, W] shape")
        if self.reduce_zero_label:
            label = reduce_zero(label, self.ignore_index)
        valid = label != self.ignore_index
        bad = valid & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"label holds values {np.unique(label[bad])[:10].tolist()} outside 0..{self.num_classes - 1} "
                f"that are not the ignore label {self.ignore_index}"
                + (" (after reduce_zero_label)" if self.reduce_zero_label else "")
            )
        bad = valid & ((pred < 0) | (pred >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"pred holds values {np.unique(pred[bad])[:10].tolist()} outside 0..{self.num_classes - 1}"
            )
        pred = np.where(valid, pred, self.ignore_index)
        return pred, label

    def prepare_label(self, label: ArrayLike) -> np.ndarray:
        """The ground truth as the dataset stores it -> checked int64 labels in the evaluation encoding."""
        return self.prepare(np.zeros(np.shape(label), dtype=np.int64), label)[1]

    def update(self, pred: ArrayLike, label: ArrayLike) -> None:
        """Add one image: pred [H, W] class indices, label [H, W] raw ground truth."""
        pred, label = self.prepare(pred, label)
        confusion, intersection, union = image_counts(torch.from_numpy(pred), torch.from_numpy(label),
                                                      self.num_classes, self.ignore_index, self.dilation_ratio)
        self.confusion += confusion.numpy().reshape(self.num_classes, self.num_classes)
        self.boundary_intersection += intersection.numpy()
        self.boundary_union += union.numpy()
        self.images += 1

    def counts(self) -> dict[str, np.ndarray]:
        """The integer state (copies): confusion [n, n], boundary_intersection [n], boundary_union [n], images []."""
        return {"confusion": self.confusion.copy(), "boundary_intersection": self.boundary_intersection.copy(),
                "boundary_union": self.boundary_union.copy(), "images": np.array(self.images, dtype=np.int64)}

    def add_counts(self, counts: dict[str, np.ndarray]) -> "SegmentationMetrics":
        """Add another accumulator's `counts()`: sums of integers, so the result does not depend on the split."""
        n = self.num_classes
        shapes = {"confusion": (n, n), "boundary_intersection": (n,), "boundary_union": (n,), "images": ()}
        for name, shape in shapes.items():
            if np.shape(counts[name]) != shape:
                raise ValueError(f"cannot add counts with {name} of shape {np.shape(counts[name])} to metrics of "
                                 f"{n} classes (expected {shape})")
        self.confusion += counts["confusion"]
        self.boundary_intersection += counts["boundary_intersection"]
        self.boundary_union += counts["boundary_union"]
        self.images += int(counts["images"])
        return self

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Add the images another accumulator saw (same classes, ignore label, encoding and boundary ratio)."""
        mine = (self.num_classes, self.ignore_index, self.reduce_zero_label, self.dilation_ratio)
        theirs = (other.num_classes, other.ignore_index, other.reduce_zero_label, other.dilation_ratio)
        if mine != theirs:
            raise ValueError(f"cannot merge metrics of (classes, ignore, reduce_zero_label, boundary) {theirs} "
                             f"into {mine}")
        return self.add_counts(other.counts())

    __iadd__ = merge

    def per_class_iou(self) -> np.ndarray:
        """IoU per class in percent; nan where the class has an empty union."""
        inter = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - np.diag(self.confusion)
        return _ratio_percent(inter, union)

    def per_class_boundary_iou(self) -> np.ndarray:
        """Boundary IoU per class in percent; nan where the class has an empty boundary union."""
        return _ratio_percent(self.boundary_intersection.astype(np.float64), self.boundary_union)

    def miou(self) -> float:
        """Mean IoU (percent) over classes with a non-empty union."""
        return _nanmean(self.per_class_iou())

    def boundary_iou(self) -> float:
        """Mean Boundary IoU (percent) over classes with a non-empty boundary union."""
        return _nanmean(self.per_class_boundary_iou())

    def summary(self) -> dict:
        """{"miou", "biou", "per_class_iou", "per_class_biou", "images"}; scores in percent (nan as None)."""
        return {
            "miou": self.miou(),
            "biou": self.boundary_iou(),
            "per_class_iou": _as_list(self.per_class_iou()),
            "per_class_biou": _as_list(self.per_class_boundary_iou()),
            "images": self.images,
        }


class DeviceMetrics:
    """`SegmentationMetrics`' counts accumulated on a device (a GPU, or the CPU), with no host wait.

    update(pred, label): [H, W] int64 tensors on one device, label already prepared (`prepare_label`) and
    pred in 0..K-1. `to_metrics()` copies the counts back once.
    """

    def __init__(self, like: SegmentationMetrics, device: str | torch.device):
        self.like, n = like, like.num_classes
        self.confusion = torch.zeros(n * n, dtype=torch.int64, device=device)
        self.intersection = torch.zeros(n, dtype=torch.int64, device=device)
        self.union = torch.zeros(n, dtype=torch.int64, device=device)
        self.images = 0

    def update(self, pred: Tensor, label: Tensor) -> None:
        like = self.like
        confusion, intersection, union = image_counts(pred, label, like.num_classes, like.ignore_index,
                                                      like.dilation_ratio)
        self.confusion += confusion
        self.intersection += intersection
        self.union += union
        self.images += 1

    def to_metrics(self) -> SegmentationMetrics:
        like, n = self.like, self.like.num_classes
        out = SegmentationMetrics(n, like.ignore_index, like.reduce_zero_label, like.dilation_ratio)
        out.confusion = self.confusion.reshape(n, n).cpu().numpy()
        out.boundary_intersection = self.intersection.cpu().numpy()
        out.boundary_union = self.union.cpu().numpy()
        out.images = self.images
        return out


def _ratio_percent(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(numerator.shape, np.nan)
    nonzero = denominator > 0
    out[nonzero] = 100.0 * numerator[nonzero] / denominator[nonzero]
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _as_list(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


def mean_iou(
    preds: Iterable[ArrayLike],
    labels: Iterable[ArrayLike],
    num_classes: int,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
    boundary_dilation: float = 0.02,
) -> dict:
    """Summary (see SegmentationMetrics.summary) of paired predictions and labels."""
    metrics = SegmentationMetrics(num_classes, ignore_index, reduce_zero_label, boundary_dilation)
    for pred, label in zip(preds, labels, strict=True):
        metrics.update(pred, label)
    return metrics.summary()
