"""Full-reference image metrics on numpy arrays, with an explicit data range and optional mask.

Layout: a 3D volume ``(X, Y, Z)`` in medsyn's canonical orientation, whose axial slices are
``array[:, :, k]``, or a single 2D image ``(X, Y)`` (treated as one axial slice). ``pred`` and
``ref`` share a shape; intensities are in whatever units the caller chose (original scanner units,
z-scores, …) — the metrics do not rescale them, except where a metric's definition is tied to a
fixed scale (VIF, below).

Every metric has the signature ``fn(pred, ref, *, data_range, mask=None) -> float`` and is
registered by name in :data:`METRICS`:

========  =====================================  ==============================================
name      what                                   with a mask
========  =====================================  ==============================================
mae       mean absolute error (image units)      over the masked voxels
mse       mean squared error (image units²)      over the masked voxels
psnr      10·log10(data_range² / MSE) in dB      MSE over the masked voxels
ssim      2D SSIM map per axial slice            map averaged over masked voxels (interior)
ssim3d    3D SSIM map on the volume              map averaged over masked voxels (interior)
uqi       2D UQI map per axial slice, 11×11      map averaged over masked voxels (interior)
          Gaussian window (torchmetrics)
uqi_wb    2D UQI per axial slice, Wang & Bovik's map averaged over windows whose centre pixel
          8×8 sliding uniform window (cited by   is masked
          MedGAN; their ``img_qi.m``)
ms_ssim   2D MS-SSIM per axial slice             mask's in-plane bounding box, slices weighted
                                                 by their number of masked voxels
vif       2D pixel VIF, pooled over slices       mask's in-plane bounding box, slices that hold
                                                 masked voxels
========  =====================================  ==============================================

Conventions shared by all metrics:

* ``data_range`` is never guessed. Where the metric uses it (PSNR, SSIM, MS-SSIM, VIF) it is a
  required keyword; MAE, MSE and UQI accept it (uniform signature) and ignore it. A common choice
  for MR in original units is the reference's ``max − min`` inside the brain:
  :func:`data_range_of`.
* ``mask`` is ``None`` or a boolean array of the image's shape. An **empty mask gives NaN**: the
  region does not exist in this subject (e.g. no tumour), which is not an error.
  :func:`medsyn.metrics.regions.summarize` skips NaN.
* PSNR of identical images (MSE = 0) is ``+inf``; see :func:`~medsyn.metrics.regions.summarize`
  for how summaries treat it.
* Non-finite input voxels raise ``ValueError`` (a NaN would otherwise be mistaken for an empty
  region); arrays of different shapes raise :class:`~medsyn.errors.GeometryError`; an image too
  small for a metric's window raises :class:`~medsyn.errors.ConfigError` naming the minimum.
* Unmasked slice-wise metrics on skull-stripped volumes include the zero background and the empty
  slices (SSIM and MS-SSIM of two zero slices is 1, UQI of two flat patches is 0), so they mostly
  measure the background: pass the foreground mask to measure the brain.

LPIPS needs pretrained weights the user supplies (medsyn never downloads any), so it is not in
:data:`METRICS`: see :mod:`medsyn.metrics.lpips`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from medsyn.errors import ConfigError, GeometryError
from medsyn.registry import Registry

MetricFn = Callable[..., float]
METRICS: Registry[MetricFn] = Registry("metric")

# SSIM: Wang, Bovik, Sheikh & Simoncelli 2004 (IEEE TIP 13(4)): 11×11 circular-symmetric Gaussian window,
# σ = 1.5, K1 = 0.01, K2 = 0.03, population (not sample) covariances.
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_SSIM_TRUNCATE = 3.5  # scikit-image's truncation of the Gaussian: radius int(3.5·1.5 + 0.5) = 5
SSIM_RADIUS = int(_SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5 → an 11-voxel window

# UQI: Wang & Bovik 2002 with torchmetrics' window (11×11 Gaussian, σ = 1.5).
UQI_SIGMA = 1.5
UQI_RADIUS = 5

# MS-SSIM: Wang, Simoncelli & Bovik 2003: five scales and their calibrated exponents (coarsest last),
# also torchmetrics' default.
MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_MS_SSIM_KERNEL = 11  # Gaussian window, σ = 1.5 (torchmetrics' default)

# VIF (pixel domain, Sheikh & Bovik 2006) as in torchmetrics: 4 scales, visual-noise variance
# σ_n² = 2 on an 8-bit [0, 255] intensity scale. Images are mapped to that scale with
# 255 / data_range first, so the noise variance means the same thing whatever the units.
VIF_SIGMA_N_SQ = 2.0
VIF_SCALE = 255.0
VIF_MIN_SIDE = 41
_VIF_EPS = 1e-10


# --------------------------------------------------------------------------------------------
# input checks and helpers


def _check_range(data_range: Optional[float], metric: str) -> float:
    if data_range is None:
        raise ValueError(
            f"{metric}: data_range is required (no default: a wrong range silently changes "
            "PSNR/SSIM); pass e.g. data_range=medsyn.metrics.data_range_of(ref, mask)"
        )
    r = float(data_range)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"{metric}: data_range must be a finite number > 0, got {data_range!r}")
    return r


def _check(
    pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray], metric: str
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """float64 pred/ref (2D or 3D, same shape, finite) and the validated mask."""
    p, r, masks = _check_many(pred, ref, [mask], metric)
    return p, r, masks[0]


def _check_many(
    pred: np.ndarray, ref: np.ndarray, masks: list[Optional[np.ndarray]], metric: str
) -> tuple[np.ndarray, np.ndarray, list[Optional[np.ndarray]]]:
    p = np.asarray(pred, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if p.shape != r.shape:
        raise GeometryError(f"{metric}: pred has shape {p.shape} but ref has shape {r.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"{metric}: expected a 2D (X, Y) or 3D (X, Y, Z) array, got shape {p.shape}")
    for name, a in (("pred", p), ("ref", r)):
        if not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise ValueError(f"{metric}: {name} holds {bad} non-finite voxel(s) (NaN/inf)")
    return p, r, [_check_mask(m, p.shape, metric) for m in masks]


def _check_mask(mask: Optional[np.ndarray], shape: tuple[int, ...], metric: str) -> Optional[np.ndarray]:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(
            f"{metric}: mask must be a boolean array, got dtype {mask.dtype}; "
            "convert it explicitly (e.g. mask > 0)"
        )
    if mask.shape != shape:
        raise GeometryError(f"{metric}: mask has shape {mask.shape} but the images have {shape}")
    return mask


def _empty(mask: Optional[np.ndarray]) -> bool:
    return mask is not None and not mask.any()


def _as_stack(a: np.ndarray) -> np.ndarray:
    """(X, Y) → (X, Y, 1); (X, Y, Z) unchanged (a view)."""
    return a[..., None] if a.ndim == 2 else a


def _need_side(shape: tuple[int, ...], axes: tuple[int, ...], minimum: int, metric: str, why: str) -> None:
    sides = tuple(shape[a] for a in axes)
    if min(sides) < minimum:
        raise ConfigError(
            f"metric {metric!r} needs every side of {sides} to be at least {minimum} voxels ({why}); "
            f"drop {metric!r} from the metrics for images this small"
        )


def _masked_mean(values: np.ndarray, interior: tuple[slice, ...], mask: Optional[np.ndarray]) -> float:
    """Mean of a metric map over ``mask`` ∩ interior; ``values`` has the interior's shape."""
    if mask is None:
        return float(values.mean())
    m = mask[interior]
    if not m.any():
        return float("nan")
    return float(values[m].mean())


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter_inplane(a: np.ndarray, weights: np.ndarray, mode: str = "mirror") -> np.ndarray:
    """Separable filtering of a (X, Y, Z) stack along X and Y only (each slice on its own).

    ``mode="mirror"`` (d c b | a b c d | c b a) is torch's ``F.pad(..., mode="reflect")``.
    """
    out = ndimage.correlate1d(a, weights, axis=0, mode=mode)
    return ndimage.correlate1d(out, weights, axis=1, mode=mode)


def _mask_box(mask: np.ndarray, shape: tuple[int, int], min_side: int) -> tuple[slice, slice]:
    """In-plane bounding box of a (X, Y, Z) mask, grown about its centre to ``min_side``."""
    plane = mask.any(axis=2)
    box = []
    for axis, n in enumerate(shape):
        idx = np.flatnonzero(plane.any(axis=1 - axis))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        if hi - lo < min_side:
            grow = min_side - (hi - lo)
            lo -= grow // 2
            hi = lo + min_side
            lo, hi = (0, min_side) if lo < 0 else (lo, hi)
            lo, hi = (n - min_side, n) if hi > n else (lo, hi)
        box.append(slice(lo, hi))
    return box[0], box[1]


def _slices_in_box(
    p: np.ndarray, r: np.ndarray, mask: Optional[np.ndarray], min_side: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, Z) stacks cut to the mask's in-plane box, the slices holding the mask, and the
    number of masked voxels per kept slice (all ones without a mask)."""
    if mask is None:
        return p, r, np.ones(p.shape[2])
    box = _mask_box(mask, p.shape[:2], min_side)
    counts = mask.sum(axis=(0, 1))
    keep = np.flatnonzero(counts)
    return p[box][:, :, keep], r[box][:, :, keep], counts[keep].astype(np.float64)


# --------------------------------------------------------------------------------------------
# voxel-wise errors


@METRICS.register("mae")
def mae(
    pred: np.ndarray, ref: np.ndarray, *, data_range: Optional[float] = None, mask: Optional[np.ndarray] = None
) -> float:
    """Mean absolute error ``mean |pred − ref|`` in the images' own units.

    Args:
        pred, ref: (X, Y, Z) or (X, Y) arrays of the same shape.
        data_range: accepted for the uniform metric signature and ignored (MAE is not normalised).
        mask: boolean, image shape; the mean runs over the masked voxels only.

    Returns:
        MAE; NaN for an empty mask.
    """
    p, r, mask = _check(pred, ref, mask, "mae")
    d = np.abs(p - r)
    if mask is None:
        return float(d.mean())
    return float(d[mask].mean()) if mask.any() else float("nan")


@METRICS.register("mse")
def mse(
    pred: np.ndarray, ref: np.ndarray, *, data_range: Optional[float] = None, mask: Optional[np.ndarray] = None
) -> float:
    """Mean squared error ``mean (pred − ref)²`` in the images' units squared.

    Args:
        pred, ref: (X, Y, Z) or (X, Y) arrays of the same shape.
        data_range: accepted for the uniform metric signature and ignored.
        mask: boolean, image shape; the mean runs over the masked voxels only.

    Returns:
        MSE; NaN for an empty mask.
    """
    p, r, mask = _check(pred, ref, mask, "mse")
    d = (p - r) ** 2
    if mask is None:
        return float(d.mean())
    return float(d[mask].mean()) if mask.any() else float("nan")


@METRICS.register("psnr")
def psnr(pred: np.ndarray, ref: np.ndarray, *, data_range: float, mask: Optional[np.ndarray] = None) -> float:
    """Peak signal-to-noise ratio ``10·log10(data_range² / MSE)`` in dB.

    Same value as ``skimage.metrics.peak_signal_noise_ratio(ref, pred, data_range=...)``.

    Args:
        pred, ref: (X, Y, Z) or (X, Y) arrays of the same shape.
        data_range: the peak value's range, in image units (required). Multiplying it by ``k``
            adds ``20·log10(k)`` dB.
        mask: boolean, image shape; the MSE runs over the masked voxels only.

    Returns:
        PSNR in dB; ``+inf`` when pred equals ref on the voxels used; NaN for an empty mask.
    """
    dr = _check_range(data_range, "psnr")
    err = mse(pred, ref, mask=mask)
    if math.isnan(err):
        return err
    if err == 0.0:
        return float("inf")
    return float(10.0 * math.log10(dr * dr / err))


# --------------------------------------------------------------------------------------------
# SSIM and UQI: metric maps averaged over the mask


def _ssim_map(p: np.ndarray, r: np.ndarray, dr: float, per_slice: bool) -> tuple[np.ndarray, tuple[slice, ...]]:
    """SSIM map (scikit-image, Wang et al. 2004 settings) restricted to the voxels whose whole
    window lies inside the image, and that interior as slices."""
    kw = dict(
        data_range=dr,
        gaussian_weights=True,
        sigma=SSIM_SIGMA,
        use_sample_covariance=False,
        K1=SSIM_K1,
        K2=SSIM_K2,
        full=True,
    )
    k = SSIM_RADIUS
    if per_slice:
        p, r = _as_stack(p), _as_stack(r)
        _, s = structural_similarity(p, r, channel_axis=2, **kw)
        interior: tuple[slice, ...] = (slice(k, -k), slice(k, -k), slice(None))
    else:
        _, s = structural_similarity(p, r, **kw)
        interior = (slice(k, -k),) * 3
    return s[interior], interior


def _reshape_mask(mask: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if mask is None else _as_stack(mask)


@METRICS.register("ssim")
def ssim(pred: np.ndarray, ref: np.ndarray, *, data_range: float, mask: Optional[np.ndarray] = None) -> float:
    """Mean 2D SSIM over axial slices ``[:, :, k]`` (Wang et al. 2004).

    Gaussian window σ = 1.5 (11×11), K1 = 0.01, K2 = 0.03, population covariances — the
    paper's settings, computed by ``skimage.metrics.structural_similarity``. As in scikit-image,
    the map is averaged over the voxels at least 5 voxels from the in-plane border, so without a
    mask the result equals the mean of scikit-image's per-slice SSIM.

    Args:
        pred, ref: (X, Y, Z) or (X, Y) arrays of the same shape; X, Y ≥ 11.
        data_range: intensity range in image units (required): C1 = (0.01·L)², C2 = (0.03·L)².
        mask: boolean, image shape. The SSIM map is averaged over masked voxels that are at
            least 5 voxels from the in-plane border (windows still see unmasked neighbours).

    Returns:
        SSIM in [-1, 1]; NaN when the mask (or its part away from the border) is empty.
    """
    return _ssim_many(pred, ref, data_range=data_range, masks=[mask])[0]


def _ssim_many(pred, ref, *, data_range, masks):
    """:func:`ssim` for several masks, computing the SSIM map once."""
    dr = _check_range(data_range, "ssim")
    p, r, masks = _check_many(pred, ref, masks, "ssim")
    _need_side(p.shape, (0, 1), 2 * SSIM_RADIUS + 1, "ssim", "11×11 Gaussian window")
    if all(_empty(m) for m in masks):
        return [float("nan")] * len(masks)
    values, interior = _ssim_map(p, r, dr, per_slice=True)
    return [_masked_mean(values, interior, _reshape_mask(m)) for m in masks]


@METRICS.register("ssim3d")
def ssim3d(pred: np.ndarray, ref: np.ndarray, *, data_range: float, mask: Optional[np.ndarray] = None) -> float:
    """3D SSIM of a volume: :func:`ssim`'s settings with an 11×11×11 Gaussian window.

    The window is isotropic in voxels (resample to isotropic spacing first if that matters).
    Without a mask the result equals ``skimage.metrics.structural_similarity`` on the volume.

    Args:
        pred, ref: (X, Y, Z) arrays of the same shape, every side ≥ 11.
        data_range: intensity range in image units (required).
        mask: boolean, image shape; the 3D SSIM map is averaged over masked voxels at least
            5 voxels from every border.

    Returns:
        SSIM in [-1, 1]; NaN when the mask (or its part away from the border) is empty.
    """
    return _ssim3d_many(pred, ref, data_range=data_range, masks=[mask])[0]


def _ssim3d_many(pred, ref, *, data_range, masks):
    """:func:`ssim3d` for several masks, computing the SSIM map once."""
    dr = _check_range(data_range, "ssim3d")
    p, r, masks = _check_many(pred, ref, masks, "ssim3d")
    if p.ndim != 3:
        raise ValueError(f"ssim3d: needs a 3D (X, Y, Z) volume, got shape {p.shape}; use 'ssim' for 2D images")
    _need_side(p.shape, (0, 1, 2), 2 * SSIM_RADIUS + 1, "ssim3d", "11×11×11 Gaussian window")
    if all(_empty(m) for m in masks):
        return [float("nan")] * len(masks)
    values, interior = _ssim_map(p, r, dr, per_slice=False)
    return [_masked_mean(values, interior, m) for m in masks]


def _uqi_map(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Per-slice UQI map on the interior of a (X, Y, Z) stack.

    Same arithmetic as ``torchmetrics.functional.image.universal_image_quality_index`` (11×11
    Gaussian σ = 1.5, variances clamped at 0, ``eps`` added to the denominator so flat patches
    score 0), in float64 with separable scipy filters: torchmetrics' float64 CPU convolution takes
    ~25 s on a 155×240×240 volume, float32 loses precision on images in scanner units.
    """
    w = _gaussian_1d(2 * UQI_RADIUS + 1, UQI_SIGMA)
    k = UQI_RADIUS
    interior = (slice(k, -k), slice(k, -k), slice(None))

    def f(a: np.ndarray) -> np.ndarray:
        return _filter_inplane(a, w)[interior]

    mu_p, mu_r = f(p), f(r)
    var_p = np.clip(f(p * p) - mu_p**2, 0.0, None)
    var_r = np.clip(f(r * r) - mu_r**2, 0.0, None)
    cov = f(p * r) - mu_p * mu_r
    eps = np.finfo(np.float64).eps
    q = (4.0 * mu_p * mu_r * cov) / ((mu_p**2 + mu_r**2) * (var_p + var_r) + eps)
    return q, interior


@METRICS.register("uqi")
def uqi(
    pred: np.ndarray, ref: np.ndarray, *, data_range: Optional[float] = None, mask: Optional[np.ndarray] = None
) -> float:
    """Mean 2D universal image quality index over axial slices (Wang & Bovik 2002).

    ``Q = 4·μp·μr·σpr / ((μp² + μr²)(σp² + σr²))`` in an 11×11 Gaussian window (σ = 1.5),
    averaged over voxels at least 5 voxels from the in-plane border — the values of
    ``torchmetrics`` ``universal_image_quality_index`` (float64). UQI has no stabilising
    constants, so flat patches (e.g. zero background, even when identical) score 0: use a
    foreground mask on skull-stripped images.

    Args:
        pred, ref: (X, Y, Z) or (X, Y) arrays of the same shape; X, Y ≥ 11.
        data_range: accepted for the uniform metric signature and ignored (UQI is scale-free).
        mask: boolean, image shape; the UQI map is averaged over masked voxels at least 5 voxels
            from the in-plane border.

    Returns:
        UQI in [-1, 1]; NaN when the mask (or its part away from the border) is empty.
    """
    return _uqi_many(pred, ref, data_range=data_range, masks=[mask])[0]


def _uqi_many(pred, ref, *, data_range=None, masks):
    """:func:`uqi` for several masks, computing the UQI map once."""
    p, r, masks = _check_many(pred, ref, masks, "uqi")
    _need_side(p.shape, (0, 1), 2 * UQI_RADIUS + 1, "uqi", "11×11 Gaussian window")
    if all(_empty(m) for m in masks):
        return [float("nan")] * len(masks)
    values, interior = _uqi_map(_as_stack(p), _as_stack(r))
    return [_masked_mean(values, interior, _reshape_mask(m)) for m in masks]


#: Wang & Bovik 2002's sliding window: 8×8, uniform (their reference code ``img_qi.m``, block size 8)
UQI_WB_BLOCK = 8


def _box_sums(a: np.ndarray, n: int) -> np.ndarray:
    """Sums over every n×n in-plane window of a (X, Y, Z) stack ('valid': (X−n+1, Y−n+1, Z))."""
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1, a.shape[2]), dtype=np.float64)
    c[1:, 1:] = a.cumsum(axis=0).cumsum(axis=1)
    return c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]


def _uqi_wb_map(p: np.ndarray, r: np.ndarray, n: int = UQI_WB_BLOCK) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Wang & Bovik's quality map of a (X, Y, Z) stack, window by window, with their special cases:
    both windows flat with equal means (σ's and μ's differences 0) → 1; both flat with other means →
    2·μp·μr / (μp² + μr²); all-zero windows → 1 (their map starts at ones). The value of the window
    whose top-left voxel is (i, j) belongs to voxel (i + n/2 − 1, j + n/2 − 1) — MATLAB's centre of
    an even kernel — which is how a mask selects windows."""
    N = float(n * n)
    sp, sr = _box_sums(p, n), _box_sums(r, n)
    spp, srr, spr = _box_sums(p * p, n), _box_sums(r * r, n), _box_sums(p * r, n)
    mul = sp * sr
    sq = sp * sp + sr * sr
    num = 4.0 * (N * spr - mul) * mul
    den1 = N * (spp + srr) - sq
    den = den1 * sq
    q = np.ones_like(den)
    flat = (den1 == 0) & (sq != 0)
    q[flat] = 2.0 * mul[flat] / sq[flat]
    ok = den != 0
    q[ok] = num[ok] / den[ok]
    a = n // 2 - 1
    interior = (slice(a, a + q.shape[0]), slice(a, a + q.shape[1]), slice(None))
    return q, interior


@METRICS.register("uqi_wb")
def uqi_wb(
    pred: np.ndarray, ref: np.ndarray, *, data_range: Optional[float] = None, mask: Optional[np.ndarray] = None
) -> float:
    """Universal image quality index as Wang & Bovik (2002) define and compute it: an 8×8 window
    sliding pixel by pixel, Q = 4·μp·μr·σpr / ((μp² + μr²)(σp² + σr²)) per window, averaged —
    the UQI MedGAN cites (Table II). Per axial slice, then averaged over the slices' windows.

    Unlike :func:`uqi` (11×11 Gaussian, torchmetrics' arithmetic, flat patches score 0), identical
    flat windows score 1 here, as in the authors' code. The two differ by a few hundredths on real
    slices (documented in docs/medgan.md); tables say which window they used.

    Args:
        pred, ref: (X, Y, Z) or (X, Y) arrays of the same shape; X, Y ≥ 8.
        data_range: accepted for the uniform metric signature and ignored (UQI is scale-free).
        mask: boolean, image shape; windows whose centre voxel is masked are averaged.

    Returns:
        UQI in [-1, 1]; NaN when the mask selects no window.
    """
    return _uqi_wb_many(pred, ref, data_range=data_range, masks=[mask])[0]


def _uqi_wb_many(pred, ref, *, data_range=None, masks):
    p, r, masks = _check_many(pred, ref, masks, "uqi_wb")
    _need_side(p.shape, (0, 1), UQI_WB_BLOCK, "uqi_wb", "8×8 sliding window")
    if all(_empty(m) for m in masks):
        return [float("nan")] * len(masks)
    values, interior = _uqi_wb_map(_as_stack(p), _as_stack(r))
    return [_masked_mean(values, interior, _reshape_mask(m)) for m in masks]


# --------------------------------------------------------------------------------------------
# MS-SSIM and VIF: no map, computed on the mask's bounding box


def ms_ssim_min_side(n_scales: int) -> int:
    """Smallest in-plane side for MS-SSIM with ``n_scales`` scales: 176 for the standard 5
    (the coarsest scale, 1/16 of the image, still holds an 11-voxel window), 44 for 3.

    The rule torchmetrics enforces, ``11·max(1, n−1)²`` (and ≥ 2ⁿ), kept so that every image
    medsyn accepts is one torchmetrics accepts.
    """
    return max(2**n_scales, _MS_SSIM_KERNEL * max(1, n_scales - 1) ** 2)


def _avg_pool2(a: np.ndarray) -> np.ndarray:
    """2×2 in-plane average pooling of a (X, Y, Z) stack, dropping an odd last row/column
    (torch ``F.avg_pool2d(x, 2)``)."""
    x, y = a.shape[0] // 2, a.shape[1] // 2
    return a[: 2 * x, : 2 * y].reshape(x, 2, y, 2, a.shape[2]).mean(axis=(1, 3))


def _ms_ssim_slices(p: np.ndarray, r: np.ndarray, dr: float, betas: tuple[float, ...]) -> np.ndarray:
    """Per-slice MS-SSIM of (X, Y, Z) stacks, torchmetrics' arithmetic in float64.

    At each scale: Gaussian statistics (11×11, σ = 1.5) on the reflect-padded slice; the
    contrast-structure term ``(2σpr + C2)/(σp² + σr² + C2)`` averaged over the interior (5 voxels
    from the border), except at the coarsest scale where the full SSIM is averaged over the
    whole slice; each mean clamped at 0 (``normalize="relu"``), raised to its beta; 2×2 average
    pooling between scales.
    """
    w = _gaussian_1d(_MS_SSIM_KERNEL, SSIM_SIGMA)
    k = (_MS_SSIM_KERNEL - 1) // 2
    c1, c2 = (SSIM_K1 * dr) ** 2, (SSIM_K2 * dr) ** 2
    score = np.ones(p.shape[2])
    for i, beta in enumerate(betas):
        mu_p, mu_r = _filter_inplane(p, w), _filter_inplane(r, w)
        var_p = np.clip(_filter_inplane(p * p, w) - mu_p**2, 0.0, None)
        var_r = np.clip(_filter_inplane(r * r, w) - mu_r**2, 0.0, None)
        cov = _filter_inplane(p * r, w) - mu_p * mu_r
        cs = (2.0 * cov + c2) / (var_p + var_r + c2)
        if i == len(betas) - 1:
            lum = (2.0 * mu_p * mu_r + c1) / (mu_p**2 + mu_r**2 + c1)
            term = (lum * cs).mean(axis=(0, 1))
        else:
            term = cs[k:-k, k:-k].mean(axis=(0, 1))
            p, r = _avg_pool2(p), _avg_pool2(r)
        score *= np.maximum(term, 0.0) ** beta
    return score


@METRICS.register("ms_ssim")
def ms_ssim(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    data_range: float,
    mask: Optional[np.ndarray] = None,
    betas: tuple[float, ...] = MS_SSIM_BETAS,
) -> float:
    """Mean 2D multi-scale SSIM over axial slices (Wang, Simoncelli & Bovik 2003).

    The values of torchmetrics' ``multiscale_structural_similarity_index_measure`` with its
    defaults (Gaussian σ = 1.5, 11×11 window, K1 = 0.01, K2 = 0.03, 2×2 average pooling between
    scales, ``normalize="relu"`` so a negative term cannot give NaN), recomputed in float64 with
    separable scipy filters (:func:`_ms_ssim_slices`): torch's float64 CPU convolutions take
    ~40 s on a 155×240×240 volume, float32 loses precision in scanner units, and torch's
    threads slow down badly on a busy machine.

    The scales are fixed, not adapted to the image size, so scores stay comparable: with the
    5 standard ``betas`` every in-plane side must be ≥ 176 (:func:`ms_ssim_min_side`); for
    smaller images pass fewer ``betas`` (e.g. ``MS_SSIM_BETAS[:3]``) and report that choice.

    Args:
        pred, ref: (X, Y, Z) or (X, Y) arrays of the same shape.
        data_range: intensity range in image units (required).
        mask: boolean, image shape. MS-SSIM has no per-voxel map, so it is computed on the mask's
            in-plane bounding box (the union over slices, grown about its centre to the minimum
            side and kept inside the image), for the slices that hold masked voxels, and the
            slice scores are averaged weighted by their number of masked voxels.
        betas: one exponent per scale, coarsest last.

    Returns:
        MS-SSIM in [0, 1]; NaN for an empty mask.
    """
    dr = _check_range(data_range, "ms_ssim")
    p, r, mask = _check(pred, ref, mask, "ms_ssim")
    betas = tuple(float(b) for b in betas)
    min_side = ms_ssim_min_side(len(betas))
    _need_side(p.shape, (0, 1), min_side, "ms_ssim", f"{len(betas)} scales with an 11-voxel window")
    if _empty(mask):
        return float("nan")
    ps, rs, weights = _slices_in_box(_as_stack(p), _as_stack(r), _reshape_mask(mask), min_side)
    return float(np.average(_ms_ssim_slices(ps, rs, dr, betas), weights=weights))


def _vif_terms(p: np.ndarray, r: np.ndarray, sigma_n_sq: float = VIF_SIGMA_N_SQ) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice numerator and denominator of pixel-domain VIF on a (X, Y, Z) stack.

    The arithmetic of torchmetrics' ``visual_information_fidelity`` (4 scales, Gaussian windows
    of 17, 9, 5, 3 px with σ = size/5, 'valid' filtering, 2× decimation; the same clamps and
    eps), with separable float64 scipy filters, returning the information sums
    ``Σ log10(1 + g²σr²/(σv² + σn²))`` and ``Σ log10(1 + σr²/σn²)`` per slice so that slices can
    be pooled. ``torchmetrics`` VIF of slice k is ``num[k] / den[k]``.
    """
    num = np.zeros(p.shape[2])
    den = np.zeros(p.shape[2])
    for scale in range(4):
        n = 2 ** (4 - scale) + 1
        w = _gaussian_1d(n, n / 5.0)
        k = (n - 1) // 2

        def f(a: np.ndarray) -> np.ndarray:
            return _filter_inplane(a, w)[k:-k, k:-k]  # 'valid' 2D filtering

        if scale > 0:
            r = f(r)[::2, ::2]
            p = f(p)[::2, ::2]
        mu_r, mu_p = f(r), f(p)
        var_r = np.clip(f(r * r) - mu_r**2, 0.0, None)
        var_p = np.clip(f(p * p) - mu_p**2, 0.0, None)
        cov = f(r * p) - mu_r * mu_p

        g = cov / (var_r + _VIF_EPS)
        var_v = var_p - g * cov
        flat_r = var_r < _VIF_EPS
        g[flat_r] = 0.0
        var_v[flat_r] = var_p[flat_r]
        var_r[flat_r] = 0.0
        flat_p = var_p < _VIF_EPS
        g[flat_p] = 0.0
        var_v[flat_p] = 0.0
        neg = g < 0
        var_v[neg] = var_p[neg]
        g[neg] = 0.0
        var_v = np.clip(var_v, _VIF_EPS, None)

        num += np.log10(1.0 + g**2 * var_r / (var_v + sigma_n_sq)).sum(axis=(0, 1))
        den += np.log10(1.0 + var_r / sigma_n_sq).sum(axis=(0, 1))
    return num, den


@METRICS.register("vif")
def vif(pred: np.ndarray, ref: np.ndarray, *, data_range: float, mask: Optional[np.ndarray] = None) -> float:
    """Pixel-domain visual information fidelity (VIFp, Sheikh & Bovik 2006), pooled over slices.

    Both images are first scaled by ``255 / data_range`` so that the model's visual-noise
    variance σn² = 2 refers to an 8-bit scale, as in the original (VIF is shift-invariant but not
    scale-invariant). Per axial slice the information sums of torchmetrics' VIF are computed
    (:func:`_vif_terms`); the result is ``Σ num / Σ den`` over the slices — the information the
    prediction keeps as a fraction of the information in the reference volume. For a 2D image it
    equals torchmetrics ``visual_information_fidelity`` on the scaled image.

    Args:
        pred, ref: (X, Y, Z) or (X, Y) arrays of the same shape; X, Y ≥ 41.
        data_range: intensity range in image units (required).
        mask: boolean, image shape. VIF has no per-voxel map, so it is computed on the mask's
            in-plane bounding box (union over slices, grown about its centre to 41 voxels and
            kept inside the image), pooled over the slices that hold masked voxels.

    Returns:
        VIF ≥ 0 (1 for identical images; above 1 for contrast enhancement); NaN for an empty
        mask, or when the reference is flat there (its information ``Σ den`` is 0).
    """
    dr = _check_range(data_range, "vif")
    p, r, mask = _check(pred, ref, mask, "vif")
    _need_side(p.shape, (0, 1), VIF_MIN_SIDE, "vif", "4 scales of Gaussian windows")
    if _empty(mask):
        return float("nan")
    ps, rs, _ = _slices_in_box(_as_stack(p), _as_stack(r), _reshape_mask(mask), VIF_MIN_SIDE)
    scale = VIF_SCALE / dr
    num, den = _vif_terms(ps * scale, rs * scale)
    total = float(den.sum())
    return float(num.sum()) / total if total > 0 else float("nan")


_MANY: dict[MetricFn, Callable[..., list[float]]] = {ssim: _ssim_many, ssim3d: _ssim3d_many, uqi: _uqi_many,
                                                    uqi_wb: _uqi_wb_many}


def multi_region(fn: MetricFn) -> Callable[..., list[float]]:
    """``fn`` evaluated for several masks at once: ``g(pred, ref, *, data_range, masks) -> list``.

    Map metrics (ssim, ssim3d, uqi) compute their map once and average it per mask; the others
    are called once per mask. Results equal ``[fn(pred, ref, data_range=…, mask=m) for m in masks]``.
    """
    if fn in _MANY:
        return _MANY[fn]

    def loop(pred, ref, *, data_range, masks):
        return [fn(pred, ref, data_range=data_range, mask=m) for m in masks]

    return loop


# --------------------------------------------------------------------------------------------
# data range


def data_range_of(ref: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """``max − min`` of the reference inside ``mask`` (everywhere without one).

    The usual convention for PSNR/SSIM of MR in original units: one range per subject, taken
    from the reference (never from the prediction), inside the brain/foreground mask. Metrics
    still take ``data_range`` explicitly; this only computes it.

    Args:
        ref: reference image, any shape.
        mask: boolean, ref's shape.

    Raises:
        ValueError: the mask is empty, the values are not finite, or the range is 0 (a constant
            reference has no usable range).
    """
    r = np.asarray(ref)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"data_range_of: mask must be boolean, got dtype {mask.dtype}")
        if mask.shape != r.shape:
            raise GeometryError(f"data_range_of: mask has shape {mask.shape} but ref has {r.shape}")
        r = r[mask]
    if r.size == 0:
        raise ValueError("data_range_of: the mask is empty; no voxels to take a range from")
    lo, hi = float(np.min(r)), float(np.max(r))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"data_range_of: ref holds non-finite values (min {lo}, max {hi})")
    if hi <= lo:
        raise ValueError(f"data_range_of: ref is constant ({lo}) inside the mask; its range is 0")
    return hi - lo
