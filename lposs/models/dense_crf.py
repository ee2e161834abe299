"""Krähenbühl and Koltun's fully connected CRF on a binary mask, through pydensecrf, as Panoptic Cut runs it
(dahyun-kang/lavg@2db88e5 panoptic_cut/crf.py:12-47, from CutLER/TokenCut).

    refined = dense_crf(pixels, mask)     # pixels uint8 [H, W, 3], mask [H, W] in {0, 1} -> float32 [H, W] in {0, 1}

Labels (background, foreground) with unary -log softmax([1 - m, m]) (0.269 / 0.731 for m in {0, 1}; the
package's `unary_from_softmax`, clipped at 1e-5), a Gaussian kernel (sxy 3, compat 7) and a bilateral one
(sxy 50, srgb 5, compat 10), 10 mean-field iterations, then the argmax. The release resizes the labels'
logits bilinearly to the image first, a no-op here: Panoptic Cut's mask already has the image's size.

pydensecrf is the field's package (the release installs it from lucasb-eyer/pydensecrf's repository); PyPI's
`pydensecrf2` 1.1 ships that repository's sources (the same C++ and Cython files) as an sdist that builds with a
C++ compiler: `pip install -e .[masks]`. No other implementation is used: a torch CRF gives other masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ITERATIONS, GAUSSIAN_SXY, GAUSSIAN_COMPAT = 10, 3, 7  # crf.py:12-14
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_COMPAT = 50, 5, 10  # crf.py:15-17
PACKAGE = "pydensecrf2==1.1"  # the `pydensecrf` import; lucasb-eyer/pydensecrf's sources


def import_pydensecrf() -> tuple[Any, Any]:
    """(pydensecrf.densecrf, pydensecrf.utils), or ImportError naming the package and how to install it."""
    try:
        from pydensecrf import densecrf, utils
    except ImportError as error:
        raise ImportError(f"Panoptic Cut's dense CRF needs the pydensecrf package ({PACKAGE}, built from its sdist "
                          "with a C++ compiler): pip install -e .[masks]  (or: pip install "
                          f"'{PACKAGE}') ({error})") from error
    return densecrf, utils


def dense_crf(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """pixels uint8 [H, W, 3] (RGB), mask [H, W] in {0, 1} -> the CRF's labels float32 [H, W] (1 = foreground)."""
    densecrf, utils = import_pydensecrf()
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[:2] != mask.shape:
        raise ValueError(f"dense_crf: pixels must be uint8 [H, W, 3] and the mask [H, W], got {pixels.dtype} "
                         f"{pixels.shape} and {mask.shape}")
    height, width = mask.shape
    foreground = mask.astype(np.float64)[None]  # [1, H, W]
    logits = torch.from_numpy(np.concatenate([1 - foreground, foreground]))  # [2, H, W]
    probs = logits.softmax(dim=0).numpy()  # torch's float64 softmax over the two labels, as the release
    crf = densecrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=np.ascontiguousarray(pixels),
                             compat=BILATERAL_COMPAT)
    q = np.array(crf.inference(ITERATIONS)).reshape(2, height, width)
    return np.argmax(q, axis=0).astype(np.float32)
