"""Foreground (brain/body) masks: from the dataset when present, otherwise computed.

Masks are boolean arrays with the image's shape. They define where normalisation statistics
are taken, where training patches are centred, and the default region of the metrics.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsyn.errors import DatasetError


def compute_mask(image: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Foreground of a 3D image: threshold, largest connected component, holes filled.

    threshold: intensity above which a voxel is foreground. Default: for skull-stripped images
    whose background is exactly the minimum value, "above the minimum"; otherwise Otsu's
    threshold (scikit-image) — works for head MR/CT with air background.
    Returns a bool array of ``image.shape``; raises DatasetError if nothing is foreground.
    """
    x = np.asarray(image, dtype=np.float32)
    if threshold is None:
        lo = float(x.min())
        background_share = float((x == lo).mean())
        if background_share > 0.2:  # skull-stripped / zero-filled background
            threshold = lo
        else:
            from skimage.filters import threshold_otsu

            threshold = float(threshold_otsu(x)) if x.max() > lo else lo
    fg = x > threshold
    if not fg.any():
        raise DatasetError("computed foreground mask is empty (constant image?)")
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == sizes.argmax()
    # fill holes slice-wise (axial) and in 3D: dark ventricles/necrosis stay inside the mask
    fg = ndimage.binary_fill_holes(fg)
    for k in range(fg.shape[2]):
        fg[:, :, k] = ndimage.binary_fill_holes(fg[:, :, k])
    return fg.astype(bool)


def as_mask(array: np.ndarray, path: str = "") -> np.ndarray:
    """A mask file's values → bool (non-zero is inside). Raises DatasetError when empty."""
    m = np.asarray(array) != 0
    if not m.any():
        raise DatasetError(f"{path}: mask is empty (all zeros); fix the mask or remove it to have one computed")
    return m
