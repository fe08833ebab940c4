"""Image metrics, region-wise evaluation and summaries.

>>> from medsyn.metrics import METRICS, data_range_of, region_masks, evaluate_volume, summarize
>>> dr = data_range_of(ref, brain)                                # doctest: +SKIP
>>> regions = region_masks(brain, seg)                            # doctest: +SKIP
>>> evaluate_volume(pred, ref, data_range=dr, regions=regions,
...                 metrics=["mae", "psnr", "ssim"])               # doctest: +SKIP
{'foreground': {'mae': …, 'psnr': …, 'ssim': …}, 'tumour': {…}, 'healthy': {…}, …}

Every registered metric is ``fn(pred, ref, *, data_range, mask=None) -> float`` on (X, Y, Z)
volumes (axial slices ``[:, :, k]``) or (X, Y) images; see :mod:`medsyn.metrics.image` for each
metric's definition, its mask handling and why empty masks give NaN.
"""

from medsyn.metrics.image import (
    METRICS,
    MS_SSIM_BETAS,
    data_range_of,
    mae,
    ms_ssim,
    ms_ssim_min_side,
    mse,
    multi_region,
    psnr,
    ssim,
    ssim3d,
    uqi,
    uqi_wb,
    vif,
)
from medsyn.metrics.lpips import LPIPS, load_lpips, lpips, lpips_metric
from medsyn.metrics.regions import evaluate_volume, region_masks, summarize

__all__ = [
    "METRICS",
    "MS_SSIM_BETAS",
    "data_range_of",
    "evaluate_volume",
    "LPIPS",
    "load_lpips",
    "lpips",
    "lpips_metric",
    "mae",
    "ms_ssim",
    "ms_ssim_min_side",
    "mse",
    "multi_region",
    "psnr",
    "region_masks",
    "ssim",
    "ssim3d",
    "summarize",
    "uqi",
    "uqi_wb",
    "vif",
]
