"""Structure maps, brain masks, lesion labels and their fusion (Qu et al., Sec. 2.2–2.8).

The pieces of Qu et al.'s lesion-label -> registered multimodal brain-MRI pipeline that need no
training:

* :func:`structural_feature_map` — Algorithm 1, the binary "structural feature map" ``f`` of a
  2D slice (Sobel gradients -> min/max over the two directions -> minus the mean -> threshold
  ``beta`` -> binarise -> sum -> binarise). :func:`structural_feature_map_torch` is the batched
  torch version, with an optional straight-through gradient for ``loss_sv,f`` (Sec. 2.6).
* :func:`extract_mask` — Algorithm 2, the paper's ``mask``: **1 outside the brain, 0 inside**
  (Alg. 2 line 2 is ``mask = 1.0 - ones * (x > 0.)``), with the brain enlarged by resizing the
  mask to ``(H + p, W + p)`` (nearest neighbour) and centre-cropping back to ``(H, W)``.
* :func:`filter_structure_map` — Algorithm 3, the quality filter of generated structure maps.
* :func:`augment_label` — the random scale / rotation / translation / flip of real lesion labels
  (Sec. 2.8, 3.4), nearest neighbour, label values kept, seeded.
* :func:`remove_lesion_structure`, :func:`check_lesion_label`, :func:`fuse_label_structure` —
  Sec. 2.5: remove the tumour's own structure from a real-derived map, accept a random label
  only inside the brain, and build the generator input.

Conventions
-----------
* numpy functions take one 2D slice ``(H, W)``; ``*_torch`` functions take ``(B, 1, H, W)``.
* Intensities: Algorithm 2 defines the brain as ``x > 0``, so images must have a background of
  exactly 0 (e.g. scaled to [0, 1] with the background at 0); a z-scored slice with a negative
  background gives a wrong mask. Algorithm 1 is scale-free (each reduction map is min-max
  normalised per image before the mean is subtracted).
* Structure maps and masks are float32 arrays of 0.0/1.0 — the paper multiplies them into
  images and losses (``f_r * mask``) — not boolean arrays.
* Lesion labels are integer class maps ``0 .. n_classes-1`` (0 = no lesion). BRATS2015, the
  paper's data set, has 5 classes (0–4); BraTS 2021+ has 4 (0–3).

Choices the paper leaves open are documented at each function and in ``docs/qu.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# --------------------------------------------------------------------------- defaults

#: Algorithm 1's threshold beta. The paper names beta without a value; the authors' public code
#: (quyili/MultimodalGeneration, OPEN_CODE/get_f_and_mask/VAE_model.py) uses 0.07 for the maps
#: the structure-map generator learns (its MRI-stage code uses 0.12). Use one beta per run.
DEFAULT_BETA = 0.07
#: Algorithm 2's padding p (pixels added to each side length before the centre crop). The paper
#: names p without a value; the authors' code uses 5 (184 x 144 slices). 6 is used: an even p
#: crops p/2 from each side (the magnification stays centred), and it is the smallest value
#: that puts the whole Sobel outline of a brain inside the enlarged mask in the tests'
#: geometries (5 leaves a few outline pixels in the background).
DEFAULT_MASK_PADDING = 6
#: Algorithm 3's MAE threshold (Alg. 3 line 7: ``mae = 0.05``).
DEFAULT_FILTER_MAE = 0.05
#: Sigma of Algorithm 3's Gaussian blur. The paper cites Gaussian smoothing without parameters;
#: the authors' code calls ``cv2.GaussianBlur(img, (3, 3), 0)``, i.e. a 3x3 kernel with OpenCV's
#: default sigma 0.3 * ((3 - 1) * 0.5 - 1) + 0.8 = 0.8.
DEFAULT_FILTER_SIGMA = 0.8
#: Weights of the label fusion (Sec. 2.5: "a weighted sum" of each one-hot channel and f, no
#: values given). The authors' code uses 0.2 * onehot_c + 0.8 * f.
DEFAULT_FUSION_W_LABEL = 0.2
DEFAULT_FUSION_W_STRUCTURE = 0.8
#: Temperature of the sigmoid relaxation used for gradients by the torch Algorithm 1
#: (``mode="ste"`` / ``"soft"``). Not in the paper (see :func:`structural_feature_map_torch`).
DEFAULT_STE_TAU = 0.02

StructureMode = Literal["hard", "ste", "soft"]

# Sobel kernels in the layout of tf.image.sobel_edges (the paper's code): [d/dy, d/dx].
_SOBEL_Y = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]], dtype=np.float64)
_SOBEL_X = _SOBEL_Y.T.copy()


def _check_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected one 2D slice (H, W), got shape {x.shape}")
    if min(x.shape) < 2:
        raise ValueError(f"{name}: slice {x.shape} is too small; need H, W >= 2")
    return x


def _check_b1hw(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name}: expected a (B, 1, H, W) tensor, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < 2:
        raise ValueError(f"{name}: slice {tuple(x.shape[-2:])} is too small; need H, W >= 2")
    return x


# --------------------------------------------------------------------------- Algorithm 1


def sobel_edges(x: np.ndarray) -> np.ndarray:
    """Sobel gradients of a 2D slice: ``(2, H, W)`` float64, ``[d/dy, d/dx]``.

    3x3 Sobel kernels (Sobel 1970; Qu et al. Sec. 2.2), reflect padding of one pixel (as
    ``tf.image.sobel_edges`` in the authors' code), so flat borders give zero gradient.
    """
    x = _check_2d(x, "sobel_edges").astype(np.float64)
    padded = np.pad(x, 1, mode="reflect")
    h, w = x.shape
    out = np.zeros((2, h, w), dtype=np.float64)
    for k, kernel in enumerate((_SOBEL_Y, _SOBEL_X)):
        for di in range(3):
            for dj in range(3):
                if kernel[di, dj] != 0.0:
                    out[k] += kernel[di, dj] * padded[di : di + h, dj : dj + w]
    return out


def _minmax(v: np.ndarray) -> np.ndarray:
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 0.0:
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)


def structural_feature_map(
    x: np.ndarray, beta: float = DEFAULT_BETA, *, normalize: bool = True
) -> np.ndarray:
    """Algorithm 1 (Structural Feature Extraction): the binary structure map ``f`` of a slice.

    Qu et al. Alg. 1::

        f1 = reduce_min(sobel(x));  f2 = reduce_max(sobel(x))     # over the 2 directions
        f1 = mean(f1) - f1;         f2 = f2 - mean(f2)
        f1 = ones * (f1 > beta);    f2 = ones * (f2 > beta)
        f = f1 + f2;                f = ones * (f > 0.)

    ``f1`` flags strongly negative gradients, ``f2`` strongly positive ones, so an edge is
    marked whichever way the intensity steps; flat regions (interior and background) are not.

    Args:
        x: one 2D slice ``(H, W)``, any intensity scale.
        beta: the element threshold of Alg. 1 (applied after ``normalize``). Larger beta keeps
            only the stronger edges. Default :data:`DEFAULT_BETA`.
        normalize: min-max normalise each reduction map to [0, 1] per slice before the mean is
            subtracted. Not written in Alg. 1 but done by the authors' code; it makes beta
            independent of the image's intensity scale. ``False`` = Alg. 1 literally.

    Returns:
        ``(H, W)`` float32 of 0.0/1.0 (1 = structure). All zeros for a constant slice.
    """
    g = sobel_edges(x)
    f1, f2 = g.min(axis=0), g.max(axis=0)
    if normalize:
        f1, f2 = _minmax(f1), _minmax(f2)
    f1 = f1.mean() - f1
    f2 = f2 - f2.mean()
    f = (f1 > beta).astype(np.float32) + (f2 > beta).astype(np.float32)
    return (f > 0.0).astype(np.float32)


def sobel_edges_torch(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradients of ``(B, 1, H, W)`` -> ``(B, 2, H, W)`` ``[d/dy, d/dx]``, reflect padding."""
    x = _check_b1hw(x, "sobel_edges_torch")
    kernel = torch.tensor(np.stack([_SOBEL_Y, _SOBEL_X])[:, None], dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel)


def _minmax_torch(v: torch.Tensor) -> torch.Tensor:
    lo = v.amin(dim=(1, 2, 3), keepdim=True)
    hi = v.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (v - lo) / safe, torch.zeros_like(v))


def structural_feature_map_torch(
    x: torch.Tensor,
    beta: float = DEFAULT_BETA,
    *,
    normalize: bool = True,
    mode: StructureMode = "hard",
    tau: float = DEFAULT_STE_TAU,
) -> torch.Tensor:
    """Algorithm 1 on a batch ``(B, 1, H, W)`` -> ``(B, 1, H, W)``; see :func:`structural_feature_map`.

    The binarisations of Alg. 1 have zero gradient almost everywhere, yet ``loss_sv,f``
    (Sec. 2.6) compares the structure map ``f_{g,i}`` of each *generated* modality with the
    input map ``f``. The paper does not say how gradients pass; in the authors' TensorFlow code
    they do not (``tf.cast(f > beta, float32)`` has no gradient), so that loss never trains the
    generator there. ``mode`` chooses:

    * ``"hard"`` — Alg. 1 exactly, no gradient (targets, real maps, evaluation).
    * ``"ste"`` — straight-through: the forward value is exactly the hard map; the backward
      pass uses the gradient of the relaxation ``s1 = sigmoid((f1 - beta) / tau)``, ``s2``
      likewise, and the soft OR ``1 - (1 - s1)(1 - s2)`` for "sum, then binarise". Use this
      for ``f_{g,i}`` inside ``loss_sv,f``.
    * ``"soft"`` — the relaxation itself (values in (0, 1)), for analysis.

    Args:
        x: ``(B, 1, H, W)`` slices, float.
        beta, normalize: as in :func:`structural_feature_map` (per-slice min-max).
        mode: ``"hard"``, ``"ste"`` or ``"soft"``.
        tau: temperature of the sigmoid relaxation, in units of the normalised maps.
    """
    x = _check_b1hw(x, "structural_feature_map_torch")
    if mode not in ("hard", "ste", "soft"):
        raise ValueError(f"mode: expected 'hard', 'ste' or 'soft', got {mode!r}")
    if mode == "hard":
        x = x.detach()
    g = sobel_edges_torch(x)
    f1 = g.amin(dim=1, keepdim=True)
    f2 = g.amax(dim=1, keepdim=True)
    if normalize:
        f1, f2 = _minmax_torch(f1), _minmax_torch(f2)
    f1 = f1.mean(dim=(1, 2, 3), keepdim=True) - f1
    f2 = f2 - f2.mean(dim=(1, 2, 3), keepdim=True)
    hard = (((f1 > beta).to(x.dtype) + (f2 > beta).to(x.dtype)) > 0.0).to(x.dtype)
    if mode == "hard":
        return hard
    if tau <= 0:
        raise ValueError(f"tau: expected > 0, got {tau}")
    s1 = torch.sigmoid((f1 - beta) / tau)
    s2 = torch.sigmoid((f2 - beta) / tau)
    soft = 1.0 - (1.0 - s1) * (1.0 - s2)
    if mode == "soft":
        return soft
    return hard + (soft - soft.detach())


# --------------------------------------------------------------------------- Algorithm 2


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # Nearest-neighbour source index of each output pixel with half-pixel centres,
    # floor((i + 0.5) * in / out) — torch's mode="nearest-exact". The authors' TF1 code uses the
    # legacy floor(i * in / out), which magnifies about a point shifted towards the top-left.
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def extract_mask(
    x: np.ndarray, p: int = DEFAULT_MASK_PADDING, *, threshold: float = 0.0
) -> np.ndarray:
    """Algorithm 2 (Mask Extraction): the paper's ``mask`` — **1.0 outside the brain, 0.0 inside**.

    Qu et al. Alg. 2::

        mask = 1.0 - ones * (x > 0.)
        mask = resize(mask, size=[H + p, W + p])                   # nearest neighbour
        mask = crop_padding(mask, crop_length=p, crop_width=p)     # centre crop back to H x W

    Resizing by ``(H + p) / H`` and cropping the centre magnifies the slice about its centre,
    so the brain (the 0 region) grows outward — by about ``p / 2`` pixels where it reaches the
    image border, less near the centre. That margin keeps the Sobel edge of the brain outline
    (which straddles the boundary) inside the brain, so ``f * mask == 0`` for real maps, as
    ``loss_sv`` / ``loss_mask`` assume. ``p = 0`` gives ``1 - (x > threshold)`` exactly (used on
    lesion labels in Sec. 2.5). The resize is nearest neighbour with half-pixel centres
    (``floor((i + 0.5) * H / (H + p))``); the crop takes ``p // 2`` rows/columns off the
    top/left and the rest off the bottom/right (``tf.image.resize_image_with_crop_or_pad``).

    Args:
        x: one 2D slice ``(H, W)`` with a background of exactly 0 (or a label map).
        p: padding in pixels, ``>= 0``. Default :data:`DEFAULT_MASK_PADDING`.
        threshold: foreground is ``x > threshold``; the paper uses 0.

    Returns:
        ``(H, W)`` float32, 1.0 = background (outside the enlarged brain), 0.0 = brain.
    """
    x = _check_2d(x, "extract_mask")
    p = int(p)
    if p < 0:
        raise ValueError(f"extract_mask: padding p must be >= 0, got {p}")
    mask = 1.0 - (x > threshold).astype(np.float32)
    if p == 0:
        return mask
    h, w = mask.shape
    big = mask[np.ix_(_nearest_index(h, h + p), _nearest_index(w, w + p))]
    top, left = p // 2, p // 2
    return np.ascontiguousarray(big[top : top + h, left : left + w])


def extract_mask_torch(
    x: torch.Tensor, p: int = DEFAULT_MASK_PADDING, *, threshold: float = 0.0
) -> torch.Tensor:
    """Algorithm 2 on a batch ``(B, 1, H, W)`` -> ``(B, 1, H, W)``; see :func:`extract_mask`.

    Piecewise constant in ``x``: no gradient flows (none is needed: masks are targets).
    """
    x = _check_b1hw(x, "extract_mask_torch")
    p = int(p)
    if p < 0:
        raise ValueError(f"extract_mask_torch: padding p must be >= 0, got {p}")
    mask = 1.0 - (x.detach() > threshold).to(torch.float32)
    if p == 0:
        return mask
    h, w = mask.shape[-2:]
    big = F.interpolate(mask, size=(h + p, w + p), mode="nearest-exact")
    top = p // 2
    return big[..., top : top + h, top : top + w].contiguous()


# --------------------------------------------------------------------------- Algorithm 3


@dataclass(frozen=True)
class StructureFilterResult:
    """Outcome of Algorithm 3 on one generated structure map.

    Attributes:
        accepted: ``mae < mae_threshold`` — the brain outline of ``f`` is closed.
        mae: mean absolute difference between the filled-contour brain mask and the generated
            brain mask.
        filled: ``(H, W)`` bool, the brain region recovered from ``f`` by filling its closed
            contours (True = inside).
    """

    accepted: bool
    mae: float
    filled: np.ndarray


def mask_from_contours(f: np.ndarray, sigma: float = DEFAULT_FILTER_SIGMA) -> np.ndarray:
    """Alg. 3's ``GetMaskFromF``: blur ``f``, fill every closed contour; ``(H, W)`` bool, True inside.

    The paper uses OpenCV ``findContours`` + ``drawContours`` (filled) on the Gaussian-blurred
    map. Here: a Gaussian blur with a 3x3 support (``truncate`` chosen so the radius is 1, as
    the authors' ``cv2.GaussianBlur(img, (3, 3), 0)``), ``> 0`` (which closes one-pixel gaps),
    then ``scipy.ndimage.binary_fill_holes``: filling the external contours of a binary image is
    filling its holes. A broken outline leaves only the thin contour, not the brain.
    """
    f = _check_2d(f, "mask_from_contours").astype(np.float64)
    if sigma > 0:
        f = ndimage.gaussian_filter(f, sigma=sigma, mode="constant", truncate=1.0 / sigma)
    return ndimage.binary_fill_holes(f > 0.0)


def filter_structure_map(
    f: np.ndarray,
    mask: np.ndarray,
    *,
    mae_threshold: float = DEFAULT_FILTER_MAE,
    sigma: float = DEFAULT_FILTER_SIGMA,
) -> StructureFilterResult:
    """Algorithm 3 (Structural feature map filtering): keep a generated ``f`` only if its outline is closed.

    Qu et al. Alg. 3 / Sec. 2.8: ``m' = GetMaskFromF(f)``; accept when ``MAE(m', m)`` is below
    the threshold (0.05), else generate again. (The printed loop ``do ... while MAE <= mae``
    has the comparison inverted relative to the text, which accepts when the MAE is *below*
    the threshold; the text is followed.) ``m`` here is the MASK generator's output, which is
    in Algorithm 2's convention (1 outside the brain), so the comparison is with ``1 - m``.

    Args:
        f: generated structure map ``(H, W)``, 0/1 (or probabilities; ``> 0`` after the blur
            counts as structure, so binarise soft maps first).
        mask: the generated mask ``m`` ``(H, W)``, Algorithm 2 convention (1 = outside).
        mae_threshold: accept when ``mae < mae_threshold``. Default 0.05 (Alg. 3 line 7).
        sigma: Gaussian blur sigma (see :func:`mask_from_contours`).
    """
    f = _check_2d(f, "filter_structure_map")
    mask = _check_2d(mask, "filter_structure_map mask")
    if f.shape != mask.shape:
        raise ValueError(f"filter_structure_map: f {f.shape} and mask {mask.shape} differ in shape")
    filled = mask_from_contours(f, sigma)
    mae = float(np.mean(np.abs(filled.astype(np.float64) - (1.0 - mask.astype(np.float64)))))
    return StructureFilterResult(accepted=mae < mae_threshold, mae=mae, filled=filled)


# --------------------------------------------------------------------------- Sec. 2.8: labels


@dataclass(frozen=True)
class LabelAugmentConfig:
    """Ranges of the random lesion-label transform (Sec. 2.8 / 3.4 name the operations only).

    All four operations are drawn every call and composed into one affine map about the slice
    centre (the authors' code instead applies two operations picked at random from the four).

    Attributes:
        scale_range: isotropic scale factor, uniform in ``[lo, hi]``.
        rotation_deg: rotation angle in degrees, uniform in ``[lo, hi]``; lesions have no
            canonical orientation, so the full circle (as the authors' code, 0–360).
        max_translation: shift along each axis, uniform in ``+-max_translation * side``.
        flip_prob: probability of flipping each axis (up-down, left-right) independently.
    """

    scale_range: tuple[float, float] = (0.9, 1.1)
    rotation_deg: tuple[float, float] = (-180.0, 180.0)
    max_translation: float = 0.05
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: expected 0 < lo <= hi, got {self.scale_range}")
        if self.rotation_deg[0] > self.rotation_deg[1]:
            raise ValueError(f"rotation_deg: expected lo <= hi, got {self.rotation_deg}")
        if not 0 <= self.max_translation < 1:
            raise ValueError(f"max_translation: expected a fraction in [0, 1), got {self.max_translation}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob: expected a probability, got {self.flip_prob}")


def random_label_affine(
    rng: np.random.Generator | int,
    shape: tuple[int, int],
    config: LabelAugmentConfig = LabelAugmentConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """The random scale + rotation + translation + flip of :func:`augment_label`, as a map.

    Returns ``(inverse, offset)`` for ``scipy.ndimage.affine_transform`` (output pixel ``o`` reads
    input ``inverse @ o + offset``), so the same transform can be applied to a label with order 0
    and to its images with order 1 (Sec. 3.4's augmented data set). Draws, in this order: scale,
    angle, shift (2), flips (2) from ``rng``.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    h, w = shape
    scale = rng.uniform(*config.scale_range)
    theta = np.deg2rad(rng.uniform(*config.rotation_deg))
    shift = rng.uniform(-config.max_translation, config.max_translation, size=2) * np.array([h, w])
    flips = np.where(rng.random(2) < config.flip_prob, -1.0, 1.0)
    # Forward map (row, col): out = R S Flip (in - c) + c + shift; affine_transform wants the
    # inverse, in = A^-1 (out - c - shift) + c.
    cos, sin = np.cos(theta), np.sin(theta)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.diag(flips * scale)
    inverse = np.linalg.inv(forward)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - inverse @ (centre + shift)
    return inverse, offset


def augment_label(
    label: np.ndarray,
    rng: np.random.Generator | int,
    config: LabelAugmentConfig = LabelAugmentConfig(),
) -> np.ndarray:
    """A random scale + rotation + translation + flip of one lesion label map (Sec. 2.8).

    Nearest-neighbour resampling (``scipy.ndimage.affine_transform(order=0)``), zero outside
    the slice, so every output value is a value of the input (class ids are never blended).
    Reproducible: the same ``rng`` seed gives the same output. The transform is
    :func:`random_label_affine`.

    Args:
        label: ``(H, W)`` integer class map (0 = background).
        rng: a ``numpy.random.Generator`` or an integer seed.
        config: the ranges, see :class:`LabelAugmentConfig`.

    Returns:
        ``(H, W)`` array with ``label``'s dtype. Parts moved out of the slice are lost; check
        the result with :func:`check_lesion_label` before use.
    """
    label = _check_2d(label, "augment_label")
    inverse, offset = random_label_affine(rng, label.shape, config)
    out = ndimage.affine_transform(
        label, inverse, offset=offset, output_shape=label.shape, order=0, mode="constant", cval=0
    )
    return out.astype(label.dtype, copy=False)


# --------------------------------------------------------------------------- Sec. 2.5: fusion


def remove_lesion_structure(f: np.ndarray, label_x: np.ndarray, p: int = 0) -> np.ndarray:
    """``f = mask_{l,x} * f'`` (Sec. 2.5): erase the tumour's own structure from a real-derived map.

    ``mask_{l,x}`` is Algorithm 2 applied to the slice's own lesion label ``label_x`` "without
    border padding" (``p = 0``), i.e. 1 outside the lesion, so structure inside the lesion is
    removed and the generated lesion comes from the random label alone.

    Args:
        f: ``(H, W)`` structure map of the real slice ``x``.
        label_x: ``(H, W)`` lesion label of ``x`` (0 = no lesion).
        p: Algorithm 2 padding; the paper uses 0.
    """
    f = _check_2d(f, "remove_lesion_structure")
    label_x = _check_2d(label_x, "remove_lesion_structure label_x")
    if f.shape != label_x.shape:
        raise ValueError(f"remove_lesion_structure: f {f.shape} and label {label_x.shape} differ")
    return (f * extract_mask(label_x, p)).astype(np.float32)


def remove_lesion_structure_torch(f: torch.Tensor, label_x: torch.Tensor, p: int = 0) -> torch.Tensor:
    """Batched :func:`remove_lesion_structure`: ``(B, 1, H, W)`` maps and labels."""
    return f * extract_mask_torch(label_x.to(torch.float32), p).to(f.dtype)


@dataclass(frozen=True)
class LabelCheck:
    """Whether a candidate lesion label may be fused with a structure map, and why."""

    accepted: bool
    reason: str

    def __bool__(self) -> bool:
        return self.accepted


def check_lesion_label(label: np.ndarray, mask: np.ndarray, *, require_lesion: bool = False) -> LabelCheck:
    """Sec. 2.5's acceptance rule for a (random, augmented) lesion label.

    "If the product of ``mask`` and the chosen ``label`` is 0, the tumour pixels lie inside the
    brain outline of ``mask`` and the label can be used; otherwise choose another label."
    ``mask`` is the structure map's brain mask in Algorithm 2's convention (1 = outside): from
    the real slice (Alg. 2) for real-derived maps, from the MASK generator for generated maps
    (Sec. 2.8). The rule is ``sum(mask * (label > 0)) == 0``.

    Args:
        label: ``(H, W)`` lesion label (0 = no lesion). A ``torch.Tensor`` is accepted too.
        mask: ``(H, W)`` Algorithm 2 mask, 1 outside the brain.
        require_lesion: also reject a label with no lesion pixel. The paper's rule accepts it
            (the sample is then lesion-free); default False.
    """
    label = _check_2d(_as_numpy(label), "check_lesion_label label")
    mask = _check_2d(_as_numpy(mask), "check_lesion_label mask")
    if label.shape != mask.shape:
        raise ValueError(f"check_lesion_label: label {label.shape} and mask {mask.shape} differ")
    lesion = label > 0
    n_lesion = int(lesion.sum())
    if n_lesion == 0:
        if require_lesion:
            return LabelCheck(False, "label has no lesion pixel")
        return LabelCheck(True, "label has no lesion pixel (accepted: mask * label == 0)")
    outside = int(np.count_nonzero(lesion & (mask > 0)))
    if outside:
        return LabelCheck(
            False, f"{outside} of {n_lesion} lesion pixels lie outside the brain mask (mask * label != 0)"
        )
    return LabelCheck(True, f"all {n_lesion} lesion pixels lie inside the brain mask")


def _as_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _check_classes(label: np.ndarray | torch.Tensor, n_classes: int, name: str) -> None:
    if n_classes < 1:
        raise ValueError(f"{name}: n_classes must be >= 1, got {n_classes}")
    lo, hi = float(label.min()), float(label.max())
    if lo < 0 or hi > n_classes - 1:
        raise ValueError(f"{name}: label values span [{lo:g}, {hi:g}]; expected class ids 0..{n_classes - 1}")
    frac = label - label.round() if isinstance(label, torch.Tensor) else label - np.round(label)
    if float(abs(frac).max()) > 0:
        raise ValueError(f"{name}: label values must be integers (class ids), got non-integer values")


def one_hot_label(label: np.ndarray, n_classes: int) -> np.ndarray:
    """``(H, W)`` class map -> ``(n_classes, H, W)`` float32 one-hot ``onehot_l`` (Sec. 2.5)."""
    label = _check_2d(label, "one_hot_label")
    _check_classes(label, n_classes, "one_hot_label")
    return (label[None] == np.arange(n_classes)[:, None, None]).astype(np.float32)


def fuse_label_structure(
    f: np.ndarray,
    label: np.ndarray,
    n_classes: int,
    *,
    w_label: float = DEFAULT_FUSION_W_LABEL,
    w_structure: float = DEFAULT_FUSION_W_STRUCTURE,
) -> np.ndarray:
    """The fused input of the multimodal generator (Sec. 2.5–2.6): ``(n_classes, H, W)`` float32.

    "Each channel of ``onehot_l`` is summed element-wise with ``f_g`` with weights", so channel
    ``c`` is ``w_label * onehot_l[c] + w_structure * f``: one channel per lesion class
    *including* the background class 0, each carrying the whole structure map. Channel 0 is the
    "no lesion" indicator; channels 1..n-1 mark the lesion classes.

    Args:
        f: ``(H, W)`` structure map (0/1), tumour structure already removed for real-derived
            maps (:func:`remove_lesion_structure`).
        label: ``(H, W)`` lesion class map, accepted by :func:`check_lesion_label`.
        n_classes: number of label classes including background (5 for BRATS2015).
        w_label, w_structure: fusion weights; defaults 0.2 / 0.8 (authors' code; paper: none).
    """
    f = _check_2d(f, "fuse_label_structure")
    label = _check_2d(label, "fuse_label_structure label")
    if f.shape != label.shape:
        raise ValueError(f"fuse_label_structure: f {f.shape} and label {label.shape} differ")
    onehot = one_hot_label(label, n_classes)
    return (w_label * onehot + w_structure * f[None].astype(np.float32)).astype(np.float32)


def one_hot_label_torch(label: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, 1, H, W)`` or ``(B, H, W)`` class map -> ``(B, n_classes, H, W)`` float32 one-hot."""
    if label.ndim == 4:
        if label.shape[1] != 1:
            raise ValueError(f"one_hot_label_torch: expected (B, 1, H, W) or (B, H, W), got {tuple(label.shape)}")
        label = label[:, 0]
    if label.ndim != 3:
        raise ValueError(f"one_hot_label_torch: expected (B, 1, H, W) or (B, H, W), got {tuple(label.shape)}")
    _check_classes(label.detach().to(torch.float64), n_classes, "one_hot_label_torch")
    return F.one_hot(label.long(), n_classes).permute(0, 3, 1, 2).to(torch.float32)


def fuse_label_structure_torch(
    f: torch.Tensor,
    label: torch.Tensor,
    n_classes: int,
    *,
    w_label: float = DEFAULT_FUSION_W_LABEL,
    w_structure: float = DEFAULT_FUSION_W_STRUCTURE,
) -> torch.Tensor:
    """Batched :func:`fuse_label_structure`.

    ``f`` ``(B, 1, H, W)`` and label ``(B, 1, H, W)`` (or ``(B, H, W)``) -> ``(B, n_classes, H, W)``,
    channel ``c`` = ``w_label * onehot_c + w_structure * f``.
    """
    f = _check_b1hw(f, "fuse_label_structure_torch")
    onehot = one_hot_label_torch(label, n_classes).to(device=f.device, dtype=f.dtype)
    if onehot.shape[-2:] != f.shape[-2:] or onehot.shape[0] != f.shape[0]:
        raise ValueError(
            f"fuse_label_structure_torch: f {tuple(f.shape)} and label {tuple(label.shape)} differ"
        )
    return w_label * onehot + w_structure * f
