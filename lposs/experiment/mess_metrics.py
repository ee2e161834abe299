"""MESS's per-dataset scores from a confusion matrix: mIoU, class-of-interest mIoU, accuracies, and
sensitivity / specificity for two-class sets.

Follows ``MESSSemSegEvaluator.evaluate`` (mess/evaluation/sem_seg_evaluation.py, mess-benchmark 0.2):
IoU of a class = tp / (gt + pred - tp) over pixels whose label is not 255; mIoU averages the classes with a
non-empty union; CoI-mIoU averages the dataset's ``classes_of_interest`` the same way (a class of interest
absent from the labels but predicted counts as 0, one absent from both is left out); mACC averages the
per-class recall over classes present in the labels; pACC is the pixel accuracy. For datasets with exactly
two classes, Specificity = recall of class 0 and Sensitivity = recall of class 1. Scores are in percent;
``None`` where MESS would compute NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..datasets.mess import mess_spec


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def _percent(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def mess_scores(result: Any, name: str, split: str | None = None) -> dict[str, Any]:
    """MESS's scores of one evaluated split of MESS dataset ``name``.

    ``result``: a ``lposs.core.metrics.SegmentationMetrics`` (or anything with ``.confusion``), a confusion
    matrix [C, C] (rows = ground truth, columns = prediction, ignored pixels left out), or a metrics summary
    dict: with a ``"confusion"`` entry it is used, otherwise only ``per_class_iou`` is (mIoU and CoI-mIoU).
    """
    spec = mess_spec(name)
    num_classes = len(spec.class_names(split))
    confusion = getattr(result, "confusion", None)
    if confusion is None and isinstance(result, dict):
        confusion = result.get("confusion")
        if confusion is None:
            return scores_from_iou(result, spec.interest(num_classes), num_classes)
    if confusion is None:
        confusion = result
    confusion = np.asarray(confusion, dtype=np.float64)  # [C, C] gt x pred
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"{name}: confusion matrix of shape {confusion.shape} for {num_classes} MESS classes; "
                         f"expected ({num_classes}, {num_classes})")
    return scores_from_confusion(confusion, spec.interest(num_classes))


def scores_from_confusion(confusion: np.ndarray, interest: list[int]) -> dict[str, Any]:
    """The scores of a [C, C] (gt x pred) confusion matrix with the given classes of interest."""
    tp = np.diag(confusion)
    gt, pred = confusion.sum(1), confusion.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(gt + pred > 0, 100 * tp / (gt + pred - tp), np.nan)
        acc = np.where(gt > 0, 100 * tp / gt, np.nan)
    coi = np.zeros(len(iou), dtype=bool)
    coi[interest] = True
    scores = {"mIoU": _mean(iou), "CoI-mIoU": _mean(np.where(coi, iou, np.nan)), "mACC": _mean(acc),
              "pACC": float(100 * tp.sum() / gt.sum()) if gt.sum() else None,
              "per_class_iou": _percent(iou), "per_class_acc": _percent(acc)}
    if len(iou) == 2:
        scores["Specificity"], scores["Sensitivity"] = _percent(acc)
    return scores


def scores_from_iou(summary: dict[str, Any], interest: list[int], num_classes: int) -> dict[str, Any]:
    """mIoU and CoI-mIoU from a summary's ``per_class_iou`` (percent, None = empty union)."""
    per_class = summary.get("per_class_iou")
    if per_class is None or len(per_class) != num_classes:
        raise ValueError(f"a metrics summary needs 'per_class_iou' with {num_classes} entries (or a 'confusion' "
                         f"matrix); got {None if per_class is None else len(per_class)}")
    iou = np.array([np.nan if v is None else v for v in per_class], dtype=np.float64)
    coi = np.full(num_classes, np.nan)
    coi[interest] = iou[interest]
    return {"mIoU": _mean(iou), "CoI-mIoU": _mean(coi), "per_class_iou": _percent(iou)}
