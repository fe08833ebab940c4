"""Challenge evaluation protocols: the published scorers of BraSyn and SynthRAD 2023/2025.

``medsyn evaluate --protocol NAME`` scores predictions the way a challenge's own code does, so that
the numbers can sit in the same table as the leaderboard's. Each protocol is written here from the
official scorer's source (read, not copied) and checked against numbers that scorer computed on
fixture volumes (tests/test_protocols.py says how):

============  ===========================================================  =====================
name          official scorer (commit read)                                needs
============  ===========================================================  =====================
default       medsyn's own metrics (:mod:`medsyn.metrics.evaluate`)        —
brasyn        hongweilibran/BraSyn ``ssim.py`` (8908040)                   tumour label (seg)
synthrad2023  SynthRAD2023/metrics ``functions/image_metrics.py`` (3200007)  mask; CT in HU
synthrad2025  SynthRAD2025/evaluation ``image_metrics.py`` (17cac47)         mask; CT in HU
============  ===========================================================  =====================

A scorer function takes ``pred``, ``ref`` and ``aux`` (the label map for BraSyn, the mask for
SynthRAD) as arrays **in the reference file's own voxel order** ``(i, j, k)`` (what nibabel reads;
SimpleITK's array transposed) and **in the files' storage dtypes** (int16, float32, …), and returns
``{region: {metric: value}}``. Both matter for exactness: the official scorers read the files with
SimpleITK and compute in whatever dtype NumPy's promotion rules give (float32 filters for a float32
prediction in SynthRAD 2025, float64 after BraSyn's percentile scaling), and SynthRAD 2025's
down-sampling and padding are not symmetric under axis flips. Each function states its units and
ranges; docs/challenges.md compares them with medsyn's default metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medsyn.registry import Registry

Scores = dict[str, dict[str, float]]
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray], Scores]


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    needs: ``"label"`` (an integer label map, BraSyn's seg), ``"mask"`` (the challenge's evaluation
    mask) or ``None``. ct_only: the protocol is defined in Hounsfield units only. score: ``None``
    for medsyn's default metrics (computed by :mod:`medsyn.metrics.evaluate` itself).
    """

    name: str
    summary: str
    official: str
    needs: Optional[str]
    ct_only: bool
    metrics: tuple[str, ...]
    score: Optional[ScoreFn]
    definition: str


PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")


# --------------------------------------------------------------------------------------------
# BraSyn (BraTS missing-MRI synthesis): hongweilibran/BraSyn ssim.py

BRASYN_PERCENTILES = (0.5, 99.5)  # ssim.py __percentile_clip(p_min=0.5, p_max=99.5, strictlyPositive=True)
# torchmetrics StructuralSimilarityIndexMeasure() defaults, as ssim.py builds it: Gaussian window of
# int(3.5·σ + 0.5)·2 + 1 = 11 taps, σ = 1.5, K1 = 0.01, K2 = 0.03, data_range None (= the larger
# max − min of the two inputs), reflection padding, mean over every voxel.
TM_SSIM_SIGMA = 1.5
TM_SSIM_TAPS = int(3.5 * TM_SSIM_SIGMA + 0.5) * 2 + 1
TM_SSIM_K1, TM_SSIM_K2 = 0.01, 0.03


def brasyn_normalise(volume: np.ndarray) -> np.ndarray:
    """BraSyn's intensity scaling of one volume (any shape, any dtype) → float64 in [0, 1].

    Clip to the volume's own 0.5th and 99.5th percentiles, the lower one raised to 0 if it is
    negative, and map that interval linearly onto [0, 1]. Each of prediction and reference is
    scaled by its own percentiles, so a global gain or offset of the prediction is not penalised.
    """
    lo, hi = np.percentile(volume, BRASYN_PERCENTILES)
    lo = max(lo, 0.0)
    return (np.clip(np.asarray(volume, dtype=np.float64), lo, hi) - lo) / (hi - lo)


def _gaussian_taps(taps: int, sigma: float) -> np.ndarray:
    """torchmetrics' 1D Gaussian window: offsets −(taps−1)/2 … (taps−1)/2, normalised to sum 1."""
    x = np.arange((1 - taps) / 2, (1 + taps) / 2, 1.0)
    g = np.exp(-((x / sigma) ** 2) / 2)
    return g / g.sum()


def torchmetrics_ssim3d(pred: np.ndarray, ref: np.ndarray) -> float:
    """torchmetrics' ``structural_similarity_index_measure`` with default settings on two 3D volumes.

    The same value as ``torchmetrics.functional.structural_similarity_index_measure(p[None, None],
    r[None, None])`` in float64 (tests/test_protocols.py checks it), computed with the separable
    Gaussian along each axis instead of torch's dense 11³ conv3d: in float64 on the CPU torch
    unfolds that convolution and asks for ~475 GB for one 240×240×155 BraTS volume, and BraSyn's
    scorer runs in float64 under NumPy 2 (its percentile scaling promotes), so that is the
    precision to reproduce.

    Args:
        pred, ref: (X, Y, Z) float arrays of one shape, every side > 5 (reflection padding by 5).

    Returns:
        The mean SSIM map over every voxel (no border crop; reflection-padded borders count).
    """
    p = np.asarray(pred, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    data_range = max(p.max() - p.min(), r.max() - r.min())
    c1 = (TM_SSIM_K1 * data_range) ** 2
    c2 = (TM_SSIM_K2 * data_range) ** 2
    window = _gaussian_taps(TM_SSIM_TAPS, TM_SSIM_SIGMA)

    def blur(a: np.ndarray) -> np.ndarray:
        for axis in range(a.ndim):  # scipy's "mirror" (d c b | a b c d) is torch's "reflect"
            a = ndimage.correlate1d(a, window, axis=axis, mode="mirror")
        return a

    mu_p, mu_r = blur(p), blur(r)
    var_p = np.maximum(blur(p * p) - mu_p**2, 0.0)
    var_r = np.maximum(blur(r * r) - mu_r**2, 0.0)
    cov = blur(p * r) - mu_p * mu_r
    with np.errstate(invalid="ignore", divide="ignore"):  # two all-zero volumes: 0/0 = NaN, as in torch
        ssim_map = ((2 * mu_p * mu_r + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_r**2 + c1) * (var_p + var_r + c2))
    return float(ssim_map.mean())


def score_brasyn(pred: np.ndarray, ref: np.ndarray, label: np.ndarray) -> Scores:
    """BraSyn: SSIM inside and outside the tumour on percentile-scaled volumes, plus MSE and PSNR.

    Args:
        pred, ref: (i, j, k) volumes in MR scanner units, any dtype.
        label: the tumour label map (BraTS seg), same shape; tumour = label > 0.

    Returns:
        ``{"tumour": {...}, "non_tumour": {...}}`` with, for each region R:

        * ``ssim`` — BraSyn's score: pred and ref each scaled by :func:`brasyn_normalise`, both
          multiplied by the region's indicator (zero elsewhere), then torchmetrics' default 3D
          SSIM of the two whole volumes (:func:`torchmetrics_ssim3d`). The official script reads
          it from a torchmetrics metric object whose state is float32, so it is rounded to
          float32 here too. Non-tumour is the complement of the tumour, background included.
        * ``mse`` — mean of (pred' − ref')² over R's voxels of the scaled volumes (unitless, the
          [0, 1] scale); ``psnr`` — 10·log10(1 / mse) dB (data range 1). ssim.py computes neither;
          this is the definition BraTS's inpainting scorer (evaluation_utils.py, same repository)
          uses for its region, so a BraSyn table can carry them.

        A subject without tumour voxels has NaN for every tumour metric (torchmetrics' SSIM of two
        all-zero volumes is 0/0), which summaries skip.
    """
    p = brasyn_normalise(pred.transpose(2, 1, 0))  # SimpleITK's (k, j, i) order, as ssim.py reads
    r = brasyn_normalise(ref.transpose(2, 1, 0))
    tumour = label.transpose(2, 1, 0) > 0
    out: Scores = {}
    for region, inside in (("tumour", tumour), ("non_tumour", ~tumour)):
        w = inside.astype(np.float64)
        ssim_value = float(np.float32(torchmetrics_ssim3d(p * w, r * w)))
        if inside.any():
            err = float(np.mean((p[inside] - r[inside]) ** 2))
            psnr_value = math.inf if err == 0 else 10.0 * math.log10(1.0 / err)
        else:
            err = psnr_value = math.nan
        out[region] = {"ssim": ssim_value, "mse": err, "psnr": psnr_value}
    return out


# --------------------------------------------------------------------------------------------
# SynthRAD 2023 (MRI → CT, CBCT → CT): SynthRAD2023/metrics functions/image_metrics.py

SYNTHRAD2023_HU = (-1024.0, 3000.0)
SSIM_CROP = 3  # scikit-image's default 7-voxel uniform window: the map's 3-voxel border is dropped


def score_synthrad2023(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> Scores:
    """SynthRAD 2023 image metrics of one case.

    Args:
        pred, ref: (i, j, k) CT volumes in HU, any dtype. Like the official loader, all three
            arrays are cast to float32 first (its SimpleITK CastImageFilter), so the SSIM filters
            run in float32 exactly as there.
        mask: the challenge's evaluation mask (body contour), same shape; inside = mask > 0.

    Returns:
        ``{"mask": {"mae", "psnr", "ssim"}}``:

        * ``mae`` — mean |pred − ref| in HU over the mask, unclipped;
        * ``psnr`` — both clipped to [−1024, 3000] HU, MSE over the mask's voxels, data range
          4024 HU (scikit-image's ``peak_signal_noise_ratio``);
        * ``ssim`` — both clipped to [−1024, 3000], voxels outside the mask set to −1024, shifted
          by +1024 to [0, 4024], scikit-image's 3D SSIM with its defaults (7³ uniform window,
          sample covariance, K1 0.01, K2 0.03) and data range 4024; the map averaged over the
          mask's voxels after dropping its 3-voxel border.
    """
    g, p, m = (np.ascontiguousarray(np.asarray(a).transpose(2, 1, 0), dtype=np.float32) for a in (ref, pred, mask))
    inside = m > 0
    lo, hi = SYNTHRAD2023_HU
    mae_value = float(np.mean(np.abs(g.astype(np.float64) - p.astype(np.float64))[inside]))
    g_clip, p_clip = np.clip(g, lo, hi), np.clip(p, lo, hi)
    psnr_value = float(peak_signal_noise_ratio(g_clip[inside], p_clip[inside], data_range=hi - lo))
    g_ssim = np.where(inside, g_clip, lo) - lo
    p_ssim = np.where(inside, p_clip, lo) - lo
    _, ssim_map = structural_similarity(g_ssim, p_ssim, data_range=hi - lo, full=True)
    crop = (slice(SSIM_CROP, -SSIM_CROP),) * 3
    kept = inside[crop]
    ssim_value = float(ssim_map[crop][kept].mean(dtype=np.float64)) if kept.any() else math.nan
    return {"mask": {"mae": mae_value, "psnr": psnr_value, "ssim": ssim_value}}


# --------------------------------------------------------------------------------------------
# SynthRAD 2025: SynthRAD2025/evaluation image_metrics.py (masked multi-scale SSIM)

SYNTHRAD2025_HU = (-1024.0, 3071.0)
# Scale exponents of Wang, Simoncelli & Bovik 2003 (finest first). The official file applies them to
# the luminance term too, at every scale: its `luminance_weights = [0, 0, 0, 0, 0, 0.1333] if
# scale_weights is None else scale_weights` runs after scale_weights has been set, so it always
# takes scale_weights. (Wang et al. use luminance at the coarsest scale only.)
MS_SSIM_SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_LUMINANCE_WEIGHTS = MS_SSIM_SCALE_WEIGHTS
MS_SSIM_MIN_SIDE = 97  # every side is edge-padded to at least 97 voxels before the 5 scales
MS_SSIM_WINDOW = 7  # uniform window at every scale, sample covariance (N/(N−1), N = 7³)
MS_SSIM_K1, MS_SSIM_K2 = 0.01, 0.03


def _ssim_components_map(x: np.ndarray, y: np.ndarray, data_range: float, w_lum: float, w_con: float,
                         w_str: float) -> np.ndarray:
    """Map of L^w_lum · C^w_con · S^w_str (each term clipped at 0) with a 7³ uniform window.

    The arithmetic follows the official file's order and dtypes (a float32 input keeps float32
    filter outputs), which matters at float32 precision.
    """
    cov_norm = MS_SSIM_WINDOW**3 / (MS_SSIM_WINDOW**3 - 1)
    mean_x = ndimage.uniform_filter(x, size=MS_SSIM_WINDOW)
    mean_y = ndimage.uniform_filter(y, size=MS_SSIM_WINDOW)
    mean_xx = ndimage.uniform_filter(x * x, size=MS_SSIM_WINDOW)
    mean_yy = ndimage.uniform_filter(y * y, size=MS_SSIM_WINDOW)
    mean_xy = ndimage.uniform_filter(x * y, size=MS_SSIM_WINDOW)
    var_x = cov_norm * (mean_xx - mean_x * mean_x)
    var_y = cov_norm * (mean_yy - mean_y * mean_y)
    sd_x = np.clip(var_x, 0, None) ** 0.5
    sd_y = np.clip(var_y, 0, None) ** 0.5
    cov_xy = cov_norm * (mean_xy - mean_x * mean_y)
    c1 = (MS_SSIM_K1 * data_range) ** 2
    c2 = (MS_SSIM_K2 * data_range) ** 2
    c3 = c2 / 2
    lum = np.clip((2 * mean_x * mean_y + c1) / (mean_x * mean_x + mean_y * mean_y + c1), 0, None)
    con = np.clip((2 * sd_x * sd_y + c2) / (var_x + var_y + c2), 0, None)
    struct = np.clip((cov_xy + c3) / (sd_x * sd_y + c3), 0, None)
    return (lum**w_lum) * (con**w_con) * (struct**w_str)


def masked_ms_ssim_synthrad2025(ref: np.ndarray, pred: np.ndarray, inside: np.ndarray) -> float:
    """SynthRAD 2025's masked MS-SSIM of two CT volumes already set to −1024 HU outside the mask.

    Steps: clip both to [−1024, 3071] HU, set voxels outside ``inside`` to −1024, shift by +1024;
    edge-pad every side below 97 voxels to 97 (⌊d/2⌋ before, the rest after; the mask too); then
    at each of 5 scales: the map of L^β·C^β·S^β (see :data:`MS_SSIM_LUMINANCE_WEIGHTS`) with a 7³
    uniform window and data range 4095, averaged over the mask voxels after dropping a 3-voxel
    border; between scales both images are averaged over 2×2×2 blocks (FFT convolution, 'same'
    alignment) and, with the mask, subsampled by 2 along each axis. Result: the product over
    scales of each masked mean clipped to [0, 1].

    Args:
        ref, pred: (i, j, k) arrays (the reference's file voxel order), any dtype, HU.
        inside: boolean mask of the same shape.
    """
    lo, hi = SYNTHRAD2025_HU
    x = np.where(inside, np.clip(ref, lo, hi), lo) - lo
    y = np.where(inside, np.clip(pred, lo, hi), lo) - lo
    m = inside.astype(np.float64)
    pads = [(max((MS_SSIM_MIN_SIDE - d) // 2, 0), max(MS_SSIM_MIN_SIDE - d - (MS_SSIM_MIN_SIDE - d) // 2, 0))
            for d in x.shape]
    x, y, m = (np.pad(a, pads, mode="edge") for a in (x, y, m))
    block_mean = np.ones((2, 2, 2)) / 8
    crop = (slice(SSIM_CROP, -SSIM_CROP),) * 3
    result = 1.0
    for level, (w_lum, w) in enumerate(zip(MS_SSIM_LUMINANCE_WEIGHTS, MS_SSIM_SCALE_WEIGHTS)):
        # np.float64 exponents, as the official file indexes them from arrays: a float32 map raised to
        # them is computed in float64 there
        ssim_map = _ssim_components_map(x, y, hi - lo, np.float64(w_lum), np.float64(w), np.float64(w))
        masked_mean = ssim_map[crop][m[crop].astype(bool)].mean(dtype=np.float64)
        result *= float(np.clip(masked_mean, 0, 1))
        if level < len(MS_SSIM_SCALE_WEIGHTS) - 1:
            x, y = (fftconvolve(a, block_mean, mode="same") for a in (x, y))
            x, y, m = x[::2, ::2, ::2], y[::2, ::2, ::2], m[::2, ::2, ::2]
    return result


def score_synthrad2025(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> Scores:
    """SynthRAD 2025 image metrics of one case.

    Args:
        pred, ref: (i, j, k) CT volumes in HU, in the files' dtypes (the official evaluation reads
            them with SimpleITK and transposes to (i, j, k) without a cast).
        mask: the evaluation mask, same shape; outside = mask == 0, inside = mask > 0.

    Returns:
        ``{"mask": {"mae", "psnr", "ms_ssim"}}`` after setting both volumes to −1024 HU outside
        the mask:

        * ``mae`` — mean |pred − ref| in HU over the mask, unclipped;
        * ``psnr`` — both clipped to [−1024, 3071] HU, MSE over the mask's voxels, data range
          4095 HU;
        * ``ms_ssim`` — :func:`masked_ms_ssim_synthrad2025`.
    """
    ref, pred, mask = np.asarray(ref), np.asarray(pred), np.asarray(mask)
    outside = mask == 0
    g = np.where(outside, -1024, ref)  # an int literal, as there: an int16 CT stays int16
    p = np.where(outside, -1024, pred)
    inside = mask > 0
    lo, hi = SYNTHRAD2025_HU
    mae_value = float(np.mean(np.abs(g.astype(np.float64) - p.astype(np.float64))[inside]))
    psnr_value = float(peak_signal_noise_ratio(np.clip(g, lo, hi)[inside], np.clip(p, lo, hi)[inside],
                                               data_range=hi - lo))
    return {"mask": {"mae": mae_value, "psnr": psnr_value, "ms_ssim": masked_ms_ssim_synthrad2025(g, p, inside)}}


# --------------------------------------------------------------------------------------------
# the registry

PROTOCOLS.add("default", Protocol(
    "default", "medsyn's own metrics: MAE, MSE, PSNR, SSIM (2D/3D), UQI, … per region, stated data range",
    "medsyn", None, False, (), None,
    "see medsyn.metrics.image and medsyn.metrics.evaluate"))
PROTOCOLS.add("brasyn", Protocol(
    "brasyn", "BraSyn (BraTS 2023–2025 missing-MRI synthesis): SSIM in tumour / non-tumour on percentile-scaled volumes",
    "github.com/hongweilibran/BraSyn @ 890804083b446f3d6fa0b17a4ef09b174bcd0209, ssim.py",
    "label", False, ("ssim", "mse", "psnr"), score_brasyn,
    "pred and ref each clipped to their own [p0.5, p99.5] (lower bound raised to 0) and scaled to [0, 1]; "
    "ssim: torchmetrics' default 3D SSIM of the volumes times the region indicator (rounded to float32 as the "
    "official metric object does); mse/psnr: over the region's voxels of the scaled volumes, psnr = "
    "10 log10(1/mse); tumour = seg > 0, non_tumour = its complement (background included)"))
PROTOCOLS.add("synthrad2023", Protocol(
    "synthrad2023", "SynthRAD 2023 (MRI/CBCT → CT): MAE in HU, PSNR and SSIM on [-1024, 3000] HU inside the mask",
    "github.com/SynthRAD2023/metrics @ 3200007e7029282416445719f7aae27e3a87308d, functions/image_metrics.py",
    "mask", True, ("mae", "psnr", "ssim"), score_synthrad2023,
    "arrays cast to float32; mae: HU, unclipped, over mask > 0; psnr: clipped to [-1024, 3000], over the mask, "
    "data range 4024; ssim: clipped, outside mask = -1024, +1024, scikit-image 3D SSIM (7^3 uniform window), "
    "map mean over the mask after a 3-voxel border crop"))
PROTOCOLS.add("synthrad2025", Protocol(
    "synthrad2025", "SynthRAD 2025 (MRI/CBCT → CT): MAE in HU, PSNR and masked MS-SSIM on [-1024, 3071] HU",
    "github.com/SynthRAD2025/evaluation @ 17cac47b6288fcb66c5818c9d50eb9534d613fa2, image_metrics.py",
    "mask", True, ("mae", "psnr", "ms_ssim"), score_synthrad2025,
    "outside mask = -1024; mae: HU, unclipped, over mask > 0; psnr: clipped to [-1024, 3071], over the mask, "
    "data range 4095; ms_ssim: clipped, +1024, sides edge-padded to 97, 5 scales of L^b C^b S^b "
    "with a 7^3 uniform window, masked means (3-voxel border crop) clipped to [0, 1] and multiplied"))


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; unknown names raise ConfigError with the closest match."""
    return PROTOCOLS.get(name, key="--protocol")
