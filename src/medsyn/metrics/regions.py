"""Region-wise evaluation: masks per region, metrics per region, summaries over subjects.

A *region* is a boolean mask with the image's shape. For a subject with a foreground (brain)
mask and, optionally, an integer label map (BraTS segmentation):

* ``foreground`` — the foreground mask as given;
* ``tumour`` — every labelled voxel, ``label > 0``, **not** clipped to the foreground: the
  annotation is the expert's and BraTS labels lie inside the brain, so clipping would only hide
  a foreground mask that misses dark tumour (necrosis) voxels; present (possibly empty) whenever
  a label map is given, so that every subject has the same region names;
* ``healthy`` — ``foreground & ~tumour``;
* ``label_<k>`` — ``label == k`` for each value k > 0 present in this subject (BraTS 2023 glioma:
  1 necrotic core, 2 oedema, 3 enhancing tumour; medsyn does not interpret the values).

:func:`evaluate_volume` gives ``{region: {metric: value}}`` for one subject, with NaN for an
empty region; :func:`summarize` pools subjects and skips NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

import numpy as np

from medsyn.errors import GeometryError
from medsyn.metrics.image import METRICS, multi_region

__all__ = ["region_masks", "evaluate_volume", "summarize"]


def region_masks(foreground: np.ndarray, label: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Boolean masks of the evaluation regions (see the module docstring for their meaning).

    Args:
        foreground: boolean (X, Y, Z) mask (any shape) of the brain / body.
        label: integer label map of the same shape, 0 = background; ``None`` when the subject
            has no segmentation. Floating-point maps are accepted if every value is a whole
            number (NIfTI segmentations are often stored as floats).

    Returns:
        ``{"foreground": …}`` and, with a label map, ``"tumour"``, ``"healthy"`` and one
        ``"label_<k>"`` per label value k > 0 present, in increasing k.

    Raises:
        ValueError: foreground is not boolean; label holds negative or non-integer values.
        GeometryError: shapes differ.
    """
    fg = np.asarray(foreground)
    if fg.dtype != np.bool_:
        raise ValueError(f"region_masks: foreground must be a boolean mask, got dtype {fg.dtype}")
    regions: dict[str, np.ndarray] = {"foreground": fg}
    if label is None:
        return regions
    lab = np.asarray(label)
    if lab.shape != fg.shape:
        raise GeometryError(f"region_masks: label has shape {lab.shape} but foreground has {fg.shape}")
    if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.number):
        raise ValueError(f"region_masks: label must be an integer label map, got dtype {lab.dtype}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.isfinite(lab).all() or not np.array_equal(lab, np.round(lab)):
            raise ValueError("region_masks: label holds non-integer values; expected an integer label map")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise ValueError(f"region_masks: label holds negative values (min {lab.min()}); expected labels ≥ 0")
    tumour = lab > 0
    regions["tumour"] = tumour
    regions["healthy"] = fg & ~tumour
    for k in np.unique(lab[tumour]):
        regions[f"label_{int(k)}"] = lab == k
    return regions


def evaluate_volume(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    data_range: float,
    regions: Mapping[str, Optional[np.ndarray]],
    metrics: Sequence[str],
    extra: Optional[Mapping[str, Callable[..., float]]] = None,
) -> dict[str, dict[str, float]]:
    """Every metric in every region of one subject.

    Args:
        pred, ref: (X, Y, Z) (or (X, Y)) arrays of the same shape, same units.
        data_range: passed to every metric (required; e.g. :func:`~medsyn.metrics.data_range_of`
            of the reference inside the foreground — one range per subject for all regions).
        regions: name → boolean mask of the image's shape (``None`` = the whole image), e.g.
            from :func:`region_masks`.
        metrics: names registered in :data:`~medsyn.metrics.METRICS`, or keys of ``extra``.
        extra: metrics that need more than the arrays, by name, in the same signature — e.g.
            ``{"lpips": medsyn.metrics.lpips.lpips_metric(model)}`` with user-supplied weights.

    Returns:
        ``{region: {metric: value}}`` in the given orders; NaN where a region is empty.
        Map metrics (ssim, ssim3d, uqi) compute their map once for all regions; the values are
        those of calling each metric with ``mask=regions[name]``.

    Raises:
        ConfigError: an unknown metric name (the message lists the known ones).
    """
    extra = extra or {}
    fns = {name: extra[name] if name in extra else METRICS.get(name, key="metrics") for name in metrics}
    p = np.asarray(pred, dtype=np.float64)  # convert once for all metrics
    r = np.asarray(ref, dtype=np.float64)
    names = list(regions)
    masks = [regions[n] for n in names]
    out: dict[str, dict[str, float]] = {n: {} for n in names}
    for metric, fn in fns.items():
        values = multi_region(fn)(p, r, data_range=data_range, masks=masks)
        for region, value in zip(names, values):
            out[region][metric] = float(value)
    return out


def summarize(
    per_subject: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Mean, std, median and count of each region's metrics over subjects.

    Args:
        per_subject: ``{subject: {region: {metric: value}}}``, e.g. :func:`evaluate_volume`
            results keyed by subject id. Subjects need not share regions (``label_<k>`` exist
            only where present).

    Returns:
        ``{region: {metric: {"mean", "std", "median", "n", "n_inf"}}}``, regions and metrics
        in order of first appearance. Only finite values are used:

        * NaN (empty region: e.g. no tumour) and absent entries are skipped;
        * ±inf (PSNR of a prediction equal to the reference on that region) are **left out of
          mean/std/median and counted in** ``n_inf`` — an infinite mean would hide every other
          subject; report ``n_inf`` next to the mean when it is not 0;
        * ``n`` is the number of finite values used; ``std`` is the sample standard deviation
          (ddof = 1), NaN when n < 2; mean and median are NaN when n = 0.
    """
    pooled: dict[str, dict[str, list[float]]] = {}
    for subject, regions in per_subject.items():
        for region, values in regions.items():
            slot = pooled.setdefault(region, {})
            for metric, value in values.items():
                slot.setdefault(metric, []).append(float(value))
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for region, metrics in pooled.items():
        out[region] = {}
        for metric, values in metrics.items():
            v = np.asarray(values, dtype=np.float64)
            finite = v[np.isfinite(v)]
            n = int(finite.size)
            out[region][metric] = {
                "mean": float(finite.mean()) if n else math.nan,
                "std": float(finite.std(ddof=1)) if n > 1 else math.nan,
                "median": float(np.median(finite)) if n else math.nan,
                "n": n,
                "n_inf": int(np.isinf(v).sum()),
            }
    return out
