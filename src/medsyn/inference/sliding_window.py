"""Full-volume sliding-window inference: sampler + model call + aggregator.

Three separate pieces, as in TorchIO's ``GridSampler``/``GridAggregator`` and MONAI's
``SlidingWindowInferer``:

1. :class:`GridSampler` lists patch positions on a regular grid with a given overlap or stride.
   Every border is covered: the last window along each axis is aligned to the far edge, and an
   image smaller than the patch is padded (symmetrically, as MONAI does) and cropped back.
   The positions are MONAI's ``dense_patch_slices`` positions (same stride rule
   ``int(patch * (1 - overlap))``, same edge-aligned last window), so results can be compared
   window for window.
2. :func:`run_model` calls the network on one batch of patches under ``torch.inference_mode``
   (optionally ``torch.autocast``); :func:`gather_patches` / :func:`gather_slice_stacks` cut that
   batch from the volume. Patches are gathered batch by batch: memory is bounded by the batch
   size, never by the number of patches.
3. :class:`WeightedAggregator` accumulates ``Σ w · prediction`` and divides by ``Σ w``, with
   uniform or Gaussian window weights (:func:`blend_weights`; σ = patch/8 as in nnU-Net and
   MONAI, floored at 1e-3 of the peak so that every pixel has a strictly positive weight).

The entry points are :func:`predict_volume_25d` (2.5D / 2D slice-wise models, Nie et al. 2018)
and :func:`predict_volume_patches` (2D or 3D patch models).

Volume convention: ``(M, X, Y, Z)`` in medsyn's canonical orientation (axial slices are
``volume[:, :, :, k]``), M source modalities already normalised to the network's range.

2.5D convention: for slice ``s`` along ``slice_axis``, the network input is the ``k = context``
adjacent slices ``s - k//2 … s + k//2`` of every modality, channel ``m * k + j`` holding modality
``m`` at slice offset ``j - k//2``; slices beyond the first/last are replicated (edge padding
along the slice axis). The in-plane patch axes are the two remaining volume axes in their order
(axial: ``(X, Y)``). The network predicts the centre slice: ``(B, M·k, ph, pw) → (B, C_out, ph, pw)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext

import numpy as np
import torch

from medsyn.allocator import keep_freed_memory

__all__ = [
    "BLEND_MODES",
    "GridSampler",
    "WeightedAggregator",
    "blend_weights",
    "foreground_box",
    "gather_patches",
    "gather_slice_stacks",
    "predict_volume_25d",
    "predict_volume_patches",
    "run_model",
    "window_starts",
]

BLEND_MODES = ("gaussian", "uniform")

#: Gaussian window: σ = GAUSSIAN_SIGMA_SCALE · patch size (nnU-Net, MONAI ``sigma_scale=0.125``).
GAUSSIAN_SIGMA_SCALE = 0.125
#: Smallest window weight relative to the peak (MONAI ``compute_importance_map`` uses the same
#: floor). A 2D Gaussian with σ = size/8 falls to ~1e-7 in the corners; the floor keeps every
#: pixel's summed weight well away from zero, so borders and corners stay defined.
MIN_WEIGHT = 1e-3

Progress = Callable[[int, int], None]
ArrayLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------
# 1. Sampler
# --------------------------------------------------------------------------------------------


def window_starts(size: int, patch: int, stride: int) -> np.ndarray:
    """Start indices of the windows along one axis; the last window ends exactly at ``size``.

    ``0, stride, 2·stride, …`` while the window does not reach the far edge, then one window
    aligned to it (``size - patch``). Equals MONAI's ``dense_patch_slices`` along one axis.
    Requires ``1 <= patch <= size`` and ``1 <= stride <= patch``.
    """
    if not 1 <= patch <= size:
        raise ValueError(f"window of {patch} does not fit an axis of {size}: pad the axis first")
    if not 1 <= stride <= patch:
        raise ValueError(f"stride must be in [1, patch={patch}] so that no pixel is skipped, got {stride}")
    return np.asarray([*range(0, size - patch, stride), size - patch], dtype=np.int64)


def _as_tuple(value, ndim: int, name: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (value,) * ndim
    value = tuple(value)
    if len(value) != ndim:
        raise ValueError(f"{name} needs {ndim} values (one per spatial axis), got {value}")
    return value


class GridSampler:
    """Patch positions on a regular grid that covers every pixel of an N-D image.

    Args:
        spatial_shape: image size along each spatial axis.
        patch_size: window size along each axis (may exceed the image: the image is then padded).
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``, per axis or one
            for all; the stride is ``max(1, int(patch * (1 - overlap)))`` (MONAI's rule).
        stride: explicit stride per axis instead of ``overlap``; ``1 <= stride <= patch``.

    Attributes:
        padding: ``((before, after), …)`` per axis: ``max(patch - size, 0)`` split in halves,
            the larger half after (MONAI's split).
        padded_shape: ``spatial_shape`` after padding (``max(size, patch)`` per axis).
        starts: per axis, the window start indices in padded coordinates.

    Positions are listed in row-major order over the per-axis starts (last axis fastest).
    """

    def __init__(
        self,
        spatial_shape: Sequence[int],
        patch_size: Sequence[int],
        *,
        overlap: float | Sequence[float] | None = 0.5,
        stride: int | Sequence[int] | None = None,
    ) -> None:
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        ndim = len(self.spatial_shape)
        if ndim == 0 or min(self.spatial_shape) < 1:
            raise ValueError(f"image shape must have at least one axis, all >= 1, got {self.spatial_shape}")
        self.patch_size = tuple(int(p) for p in _as_tuple(patch_size, ndim, "patch_size"))
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be >= 1 along every axis, got {self.patch_size}")
        if stride is not None:
            stride_ = tuple(int(s) for s in _as_tuple(stride, ndim, "stride"))
        else:
            if overlap is None:
                raise ValueError("give either overlap (fraction in [0, 1)) or stride (pixels)")
            overlaps = tuple(float(o) for o in _as_tuple(overlap, ndim, "overlap"))
            for o in overlaps:
                if not 0.0 <= o < 1.0:
                    raise ValueError(f"overlap must be in [0, 1), got {overlap}")
            stride_ = tuple(max(1, int(p * (1 - o))) for p, o in zip(self.patch_size, overlaps))
        self.stride = stride_
        self.padding = tuple(
            (max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2)
            for s, p in zip(self.spatial_shape, self.patch_size)
        )
        self.padded_shape = tuple(max(s, p) for s, p in zip(self.spatial_shape, self.patch_size))
        self.starts = tuple(
            window_starts(s, p, st) for s, p, st in zip(self.padded_shape, self.patch_size, self.stride)
        )
        self._grid_shape = tuple(len(s) for s in self.starts)
        self._selected: np.ndarray | None = None  # flat grid indices kept by keep_windows_touching

    def keep_windows_touching(self, mask: np.ndarray | torch.Tensor) -> GridSampler:
        """Keep only the windows that hold at least one ``True`` voxel of ``mask``; returns ``self``.

        ``mask``: boolean, ``spatial_shape`` (unpadded coordinates). Positions keep their
        row-major order; ``len``, :meth:`locations` and :meth:`batches` then list only these.
        The grid itself (``starts``) is unchanged, so the aggregator's normaliser is still the
        full grid's: a voxel of the mask is covered by exactly the windows that cover it on the
        full grid (each of them holds that voxel), and its weighted average is unchanged.
        """
        mask = torch.as_tensor(mask).cpu().numpy().astype(bool)
        if mask.shape != self.spatial_shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {self.spatial_shape}")
        padded = np.zeros(self.padded_shape, dtype=bool)
        padded[self.crop_slices()] = mask
        # "any voxel in the window" reduced axis by axis: (…, size, …) → (…, n_windows, …)
        hit = padded
        for axis, (starts, p) in enumerate(zip(self.starts, self.patch_size)):
            cum = np.concatenate([np.zeros_like(hit.take([0], axis), dtype=np.int64),
                                  np.cumsum(hit, axis=axis, dtype=np.int64)], axis=axis)
            hit = (cum.take(starts + p, axis) - cum.take(starts, axis)) > 0
        self._selected = np.flatnonzero(hit.reshape(-1))
        return self

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    @property
    def needs_padding(self) -> bool:
        return any(b or a for b, a in self.padding)

    def __len__(self) -> int:
        return math.prod(self._grid_shape) if self._selected is None else len(self._selected)

    @property
    def grid_size(self) -> int:
        """Number of windows on the full grid (before :meth:`keep_windows_touching`)."""
        return math.prod(self._grid_shape)

    def locations(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """Window starts ``(N, ndim)`` (padded coordinates) of positions ``first … stop - 1``."""
        stop = len(self) if stop is None else min(stop, len(self))
        flat = np.arange(first, stop) if self._selected is None else self._selected[first:stop]
        idx = np.unravel_index(flat, self._grid_shape)
        return np.stack([s[i] for s, i in zip(self.starts, idx)], axis=1).reshape(-1, self.ndim)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield the window starts ``(≤ batch_size, ndim)`` batch by batch, never all at once."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for first in range(0, len(self), batch_size):
            yield self.locations(first, first + batch_size)

    def slices(self, location: Sequence[int]) -> tuple[slice, ...]:
        """The window at ``location`` as slices of the padded spatial axes."""
        return tuple(slice(int(s), int(s) + p) for s, p in zip(location, self.patch_size))

    def pad(self, volume: torch.Tensor, pad_value: torch.Tensor) -> torch.Tensor:
        """Pad ``volume (C, *spatial_shape)`` to ``(C, *padded_shape)`` with ``pad_value (C,)``."""
        if not self.needs_padding:
            return volume
        out = pad_value.to(volume.dtype).reshape(-1, *([1] * self.ndim)).expand(-1, *self.padded_shape).clone()
        out[(slice(None), *self.crop_slices())] = volume
        return out

    def crop_slices(self) -> tuple[slice, ...]:
        """Slices of the padded spatial axes that hold the original image."""
        return tuple(slice(b, b + s) for (b, _), s in zip(self.padding, self.spatial_shape))


# --------------------------------------------------------------------------------------------
# 3. Aggregator (before the model call because the model call uses it)
# --------------------------------------------------------------------------------------------


def blend_weights(
    patch_size: Sequence[int],
    mode: str = "gaussian",
    *,
    sigma_scale: float = GAUSSIAN_SIGMA_SCALE,
    min_weight: float = MIN_WEIGHT,
) -> torch.Tensor:
    """Per-pixel weight of a window's prediction, shape ``patch_size``, float32, in ``(0, 1]``.

    ``"uniform"``: all ones. ``"gaussian"``: separable Gaussian centred on the window,
    σ = ``sigma_scale`` · size per axis (nnU-Net, MONAI), clamped below at ``min_weight`` so the
    weight is strictly positive everywhere. Equal to MONAI's ``compute_importance_map``.
    """
    patch_size = tuple(int(p) for p in patch_size)
    if mode == "uniform":
        return torch.ones(patch_size, dtype=torch.float32)
    if mode != "gaussian":
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {mode!r}")
    if not min_weight > 0:
        raise ValueError(f"min_weight must be > 0 so that every pixel keeps a weight, got {min_weight}")
    weights = torch.ones((), dtype=torch.float32)
    for p in patch_size:
        x = torch.arange(p, dtype=torch.float32) - (p - 1) / 2.0
        g = torch.exp(x**2 / (-2 * (sigma_scale * p) ** 2))
        weights = weights.unsqueeze(-1) * g
    return weights.clamp_(min=max(float(weights.min()), min_weight))


class WeightedAggregator:
    """Overlap-weighted average of patch predictions: ``Σ w · pred / Σ w`` per voxel.

    The normaliser ``Σ w`` depends only on the grid and the weights, so it is computed once at
    construction (like MONAI's count map). Axes whose window size is 1 (the slice axis of a 2.5D
    grid) are covered exactly once per index, so the normaliser is computed over the other axes
    only and broadcast — for a 2.5D volume it is one 2D map.

    Sums are kept in float64 (``accumulate_dtype``; float32 on Apple MPS, which lacks float64):
    the identity model then gives back its input exactly, whatever the number of overlapping
    windows. The extra memory is one volume-sized float64 buffer per output channel.

    Args:
        sampler: the grid the predictions come from.
        weights: per-pixel window weights, shape ``sampler.patch_size``, all > 0.
        device: where the sums live (the volume-sized buffer).
        accumulate_dtype: dtype of the sums; default float64 (float32 on MPS).
    """

    def __init__(
        self,
        sampler: GridSampler,
        weights: torch.Tensor,
        *,
        device: str | torch.device = "cpu",
        accumulate_dtype: torch.dtype | None = None,
    ) -> None:
        if tuple(weights.shape) != sampler.patch_size:
            raise ValueError(f"weights shape {tuple(weights.shape)} != patch size {sampler.patch_size}")
        if not bool((weights > 0).all()):
            raise ValueError("window weights must be > 0 everywhere, or border pixels get no weight")
        self.sampler = sampler
        self.device = torch.device(device)
        # float64 sums except where the backend has no float64 (Apple MPS)
        self.dtype = accumulate_dtype or (torch.float32 if self.device.type == "mps" else torch.float64)
        self.weights = weights.to(self.device, self.dtype)
        self.normaliser = self._normaliser()
        self._sum: torch.Tensor | None = None

    def _normaliser(self) -> torch.Tensor:
        s = self.sampler
        full = [d for d in range(s.ndim) if s.patch_size[d] > 1]  # axes with patch 1: stride 1, once each
        shape = [s.padded_shape[d] if d in full else 1 for d in range(s.ndim)]
        norm = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for starts in itertools.product(*(s.starts[d] for d in full)):
            window = [slice(None)] * s.ndim
            for d, st in zip(full, starts):
                window[d] = slice(int(st), int(st) + s.patch_size[d])
            norm[tuple(window)] += self.weights
        if not bool((norm > 0).all()):  # cannot happen with a GridSampler; a bug if it does
            raise RuntimeError("sliding-window grid leaves pixels uncovered")
        return norm

    def add(self, predictions: torch.Tensor, locations: np.ndarray) -> None:
        """Accumulate ``predictions (B, C, *patch_size)`` made at window starts ``locations (B, ndim)``."""
        s = self.sampler
        if predictions.ndim != s.ndim + 2 or tuple(predictions.shape[2:]) != s.patch_size:
            raise ValueError(
                f"model output has shape {tuple(predictions.shape)}, expected (B, C_out, *{s.patch_size}): "
                "the network must keep the patch's spatial size"
            )
        if self._sum is None:
            self._sum = torch.zeros((predictions.shape[1], *s.padded_shape), dtype=self.dtype, device=self.device)
        # sum += w · pred, computed in ``accumulate_dtype`` in one fused op per window
        for pred, loc in zip(predictions.to(self.device), locations):
            self._sum[(slice(None), *s.slices(loc))].addcmul_(pred, self.weights)

    def result(self) -> torch.Tensor:
        """The weighted average, cropped back to ``(C, *spatial_shape)``, float32."""
        if self._sum is None:
            raise RuntimeError("no predictions were added")
        out = self._sum.div_(self.normaliser)
        self._sum = None
        return out[(slice(None), *self.sampler.crop_slices())].to(torch.float32)


# --------------------------------------------------------------------------------------------
# 2. Gathering patches and calling the model
# --------------------------------------------------------------------------------------------


def gather_patches(volume: torch.Tensor, sampler: GridSampler, locations: np.ndarray) -> torch.Tensor:
    """Cut the windows at ``locations`` from a padded ``volume (C, *padded_shape)``.

    Returns ``(B, C, *patch_size)``, a new tensor on the volume's device.
    """
    return torch.stack([volume[(slice(None), *sampler.slices(loc))] for loc in locations])


def gather_slice_stacks(
    volume: torch.Tensor, sampler: GridSampler, locations: np.ndarray, context: int
) -> torch.Tensor:
    """2.5D network inputs for windows of a slice-first volume.

    Args:
        volume: ``(M, S, *in_plane)`` with the slice axis first (in-plane axes padded).
        sampler: grid over ``(S, *in_plane)`` with window size 1 along the slice axis.
        locations: window starts ``(B, 1 + n_in_plane)``; ``[:, 0]`` is the centre slice.
        context: k, odd number of adjacent slices.

    Returns:
        ``(B, M·k, *patch)``: channel ``m·k + j`` = modality ``m`` at slice
        ``clamp(s + j - k//2, 0, S - 1)`` (replication at the first/last slices).
    """
    n_slices = volume.shape[1]
    offsets = np.arange(context) - context // 2
    slice_idx = np.clip(locations[:, :1] + offsets, 0, n_slices - 1).tolist()  # (B, k)
    # One copy of B·M·k plain views: a single parallel op per batch. (Advanced indexing per
    # window was up to 100× slower on a loaded 2-core machine: each op pays a thread-pool sync.)
    views = [
        volume[(m, s, *sampler.slices(loc)[1:])]
        for loc, stack in zip(locations, slice_idx)
        for m in range(volume.shape[0])
        for s in stack
    ]
    return torch.stack(views).view(len(locations), volume.shape[0] * context, *sampler.patch_size[1:])


def run_model(
    model: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool | None = False,
) -> torch.Tensor:
    """``model(batch)`` in inference mode (optionally under ``torch.autocast``), as float32.

    ``channels_last``: hand the batch to the model in channels-last memory order (same values;
    oneDNN's convolutions run faster on it on CPU, see :func:`predict_volume_25d`); ``None``:
    only for 2D batches (B, C, H, W) on the CPU.
    """
    if channels_last is None:
        channels_last = batch.ndim == 4 and batch.device.type == "cpu"
    if channels_last and batch.ndim in (4, 5):
        batch = batch.contiguous(memory_format=torch.channels_last if batch.ndim == 4 else torch.channels_last_3d)
    ctx = torch.autocast(batch.device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with torch.inference_mode(), ctx:
        out = model(batch)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model must return one tensor (B, C_out, ...), got {type(out).__name__}")
    return out.float()


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _model_device(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _pad_values(volume: torch.Tensor, pad_value, n_channels: int) -> torch.Tensor:
    """``pad_value`` per channel; ``None`` → each channel's minimum (the image background)."""
    if pad_value is None:
        return volume.amin(dim=tuple(range(1, volume.ndim)))
    values = torch.as_tensor(pad_value, dtype=volume.dtype, device=volume.device).reshape(-1)
    if values.numel() == 1:
        values = values.expand(n_channels)
    if values.numel() != n_channels:
        raise ValueError(f"pad_value needs 1 or {n_channels} values (one per modality), got {values.numel()}")
    return values


def _sliding_window(
    model,
    volume: torch.Tensor,
    sampler: GridSampler,
    gather: Callable[[torch.Tensor, np.ndarray], torch.Tensor],
    *,
    to_patch_shape: Callable[[torch.Tensor], torch.Tensor],
    blend: str,
    batch_size: int,
    device: torch.device,
    pad_value,
    autocast_dtype: torch.dtype | None,
    progress: Progress | None,
    channels_last: bool | None = None,
    mask: torch.Tensor | None = None,
    background: float = 0.0,
    pad_source: torch.Tensor | None = None,
) -> torch.Tensor:
    """Shared loop: pad → for each batch of windows: gather, model, aggregate → crop.

    ``mask`` (bool, ``sampler.spatial_shape``): compute only the windows holding a mask voxel;
    voxels outside the mask get ``background``. ``pad_source``: the volume the default pad value
    (each channel's minimum) is taken from, when ``volume`` is a crop of it.
    """
    # Each batch frees and re-allocates the same feature maps (base 64, 16 windows of 144²: 85 MB
    # each); glibc would re-map them from the kernel every layer. Keep freed memory in the process,
    # as training does (allocator.py; measured in benchmarks/inference.py's kernel column).
    keep_freed_memory()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pad_value is not None or sampler.needs_padding:  # a wrong pad_value fails even when unused
        pad = _pad_values(volume if pad_source is None else pad_source, pad_value, volume.shape[0])
        volume = sampler.pad(volume, pad)
    if mask is not None:
        sampler.keep_windows_touching(mask)
        if len(sampler) == 0:  # empty mask: one window, only to learn the output's channels
            sampler._selected = np.zeros(1, dtype=np.int64)
    aggregator = WeightedAggregator(sampler, blend_weights(sampler.patch_size, blend), device=device)
    total, done = len(sampler), 0
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()  # BatchNorm/Dropout in inference behaviour; restored below
    try:
        for locations in sampler.batches(batch_size):
            prediction = run_model(model, gather(volume, locations), autocast_dtype=autocast_dtype,
                                   channels_last=channels_last)
            aggregator.add(to_patch_shape(prediction), locations)
            done += len(locations)
            if progress is not None:
                progress(done, total)
    finally:
        if was_training:
            model.train()
    out = aggregator.result()
    if mask is not None:
        out[:, ~mask.to(out.device)] = background
    return out


def _as_volume(volume: ArrayLike, ndim: int, layout: str, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(volume)
    if tensor.ndim != ndim:
        raise ValueError(f"volume must be {layout}, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.to(device, torch.float32)


def foreground_box(mask: ArrayLike, patch_size: Sequence[int]) -> tuple[slice, ...]:
    """Bounding box of ``mask``'s ``True`` voxels, grown to at least one window, as slices.

    Per axis: ``[first, last + 1)`` of the voxels holding the mask, widened symmetrically to the
    window size where it is smaller and shifted to stay inside the image (so the windows see
    real image rather than padding); an axis shorter than the window is kept whole. An empty
    mask gives the whole image.
    """
    mask = torch.as_tensor(mask).cpu().numpy().astype(bool)
    patch = _as_tuple(patch_size, mask.ndim, "patch_size")
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis, (n, p) in enumerate(zip(mask.shape, patch)):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = int(hit[0]), int(hit[-1]) + 1
        extent = min(max(hi - lo, int(p)), n)
        start = min(max(lo - (extent - (hi - lo)) // 2, 0), n - extent)
        box.append(slice(start, start + extent))
    return tuple(box)


def predict_volume_25d(
    model: Callable[[torch.Tensor], torch.Tensor],
    volume: ArrayLike,
    *,
    slice_axis: int = 2,
    context: int = 5,
    patch_size: int | Sequence[int] = (144, 144),
    overlap: float | Sequence[float] = 0.5,
    stride: int | Sequence[int] | None = None,
    blend: str = "gaussian",
    batch_size: int = 16,
    device: str | torch.device | None = None,
    pad_value: float | Sequence[float] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
    channels_last: bool | None = None,
    mask: ArrayLike | None = None,
    crop_to_mask: bool = True,
    background: float = 0.0,
) -> np.ndarray:
    """Predict a whole volume with a 2.5D (or, ``context=1``, 2D) slice-wise network.

    Every slice along ``slice_axis`` is predicted from its ``context`` neighbours with
    overlapping in-plane windows that always reach the last rows/columns; windows of several
    slices share a batch.

    Foreground-aware inference (``mask`` given): the slices and windows that hold no voxel of
    ``mask`` are not computed, and with ``crop_to_mask`` every slice is first cropped to the
    mask's in-plane bounding box (:func:`foreground_box`, at least one window wide) so the
    windows tile the box instead of the whole slice. Voxels outside the mask are
    ``background``. Inside the mask the result equals the full computation on the same tiling:
    skipping changes nothing there (every window covering a mask voxel is kept, the
    normaliser is the full grid's). The crop moves the windows, so against a full-field-of-view
    run the values inside the mask differ by the network's dependence on window position
    (its zero-padded borders); ``crop_to_mask=False`` keeps the full-FOV tiling exactly.

    Args:
        model: ``(B, M·k, ph, pw) → (B, C_out, ph, pw)``; channel ``m·k + j`` is modality ``m``
            at slice offset ``j - k//2``. An ``nn.Module`` is run in eval mode (its mode is
            restored afterwards) and is not moved.
        volume: ``(M, X, Y, Z)`` numpy array or tensor, canonical orientation, normalised to the
            network's input range.
        slice_axis: spatial axis the slices are taken along (0, 1 or 2; axial = 2).
        context: k, odd; first/last slices are replicated to complete the stacks.
        patch_size: in-plane window ``(ph, pw)`` along the two remaining axes in order
            (axial: ``(X, Y)``); larger than the slice → padded and cropped back.
        overlap: window overlap fraction in ``[0, 1)`` (stride ``int(p · (1 - overlap))``),
            or give ``stride`` in pixels instead.
        blend: ``"gaussian"`` (σ = patch/8) or ``"uniform"`` averaging of overlapping windows.
        batch_size: windows per model call; bounds the memory used beyond the volume itself.
        device: where the model runs and the volume-sized sums live; default: the model's.
        pad_value: per-modality (or one) value for in-plane padding of slices smaller than the
            window; default each modality's minimum.
        autocast_dtype: e.g. ``torch.bfloat16``/``torch.float16`` to run the model under
            ``torch.autocast``; ``None`` runs in float32.
        progress: ``progress(done, total)`` called after each batch (windows done / total).
        channels_last: give the model its batches in channels-last memory order (the values are
            the same; outputs agree to float rounding). ``None`` (auto): on for 2D windows on the
            CPU, where oneDNN's convolutions are 1.4–1.7× faster on it (UNet25D base 32, 144²,
            2 threads: 40 vs 68 ms per window), off on CUDA (not measured there).
        mask: optional ``(X, Y, Z)`` boolean foreground (e.g. the source's brain mask): compute
            only what the mask needs, see above. ``None``: the full field of view.
        crop_to_mask: with ``mask``, tile each slice's mask bounding box rather than the slice.
        background: value written outside ``mask``.

    Returns:
        ``(C_out, X, Y, Z)`` float32 numpy array on the input grid.
    """
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (axial = 2), got {slice_axis}")
    if not (isinstance(context, (int, np.integer)) and context >= 1 and context % 2 == 1):
        raise ValueError(f"context (slices per stack) must be a positive odd integer, got {context}")
    device = _model_device(model, device)
    vol = _as_volume(volume, 4, "(M, X, Y, Z)", device)
    spatial_shape = tuple(vol.shape[1:])
    in_plane = [a for a in (0, 1, 2) if a != slice_axis]
    # Slice-first view (M, S, A, B); gathering k slices × window is one indexed copy per window.
    vol = vol.permute(0, 1 + slice_axis, 1 + in_plane[0], 1 + in_plane[1]).contiguous()
    patch = tuple(int(p) for p in _as_tuple(patch_size, 2, "patch_size"))
    fg = box = None
    if mask is not None:
        fg = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(device)
        if tuple(fg.shape) != spatial_shape or fg.dtype != torch.bool:
            raise ValueError(f"mask must be a boolean (X, Y, Z) array of the volume's shape {spatial_shape}, "
                             f"got {fg.dtype} {tuple(fg.shape)}")
        fg = fg.permute(slice_axis, *in_plane)
        if crop_to_mask:
            box = (slice(None), *foreground_box(fg.any(dim=0), patch))
    full = vol
    if box is not None:  # tile the mask's in-plane box: (M, S, a, b), all slices kept for context
        vol, fg = vol[(slice(None), *box)], fg[box]
    overlap_ = None if stride is not None else (0.0, *_as_tuple(overlap, 2, "overlap"))
    stride_ = None if stride is None else (1, *_as_tuple(stride, 2, "stride"))
    sampler = GridSampler(vol.shape[1:], (1, *patch), overlap=overlap_, stride=stride_)
    out = _sliding_window(
        model,
        vol,
        sampler,
        lambda v, locs: gather_slice_stacks(v, sampler, locs, int(context)),
        to_patch_shape=lambda pred: pred.unsqueeze(2),  # (B, C, ph, pw) → (B, C, 1, ph, pw)
        blend=blend,
        batch_size=batch_size,
        device=device,
        pad_value=pad_value,
        autocast_dtype=autocast_dtype,
        progress=progress,
        channels_last=channels_last,
        mask=fg,
        background=background,
        pad_source=full,
    )
    if box is not None:
        cropped, out = out, torch.full((out.shape[0], *full.shape[1:]), float(background), dtype=out.dtype,
                                       device=out.device)
        out[(slice(None), *box)] = cropped
    # (C, S, A, B) back to (C, X, Y, Z)
    order = [0] * 4
    for position, axis in enumerate((slice_axis, *in_plane)):
        order[1 + axis] = 1 + position
    return out.permute(order).cpu().numpy()


def predict_volume_patches(
    model: Callable[[torch.Tensor], torch.Tensor],
    volume: ArrayLike,
    patch_size: int | Sequence[int],
    *,
    overlap: float | Sequence[float] = 0.5,
    stride: int | Sequence[int] | None = None,
    blend: str = "gaussian",
    batch_size: int = 4,
    device: str | torch.device | None = None,
    pad_value: float | Sequence[float] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Predict a whole image with an N-D patch network (3D patches on ``(C, X, Y, Z)``, 2D on ``(C, H, W)``).

    Same sampler and aggregator as :func:`predict_volume_25d`; the network sees the patch as is.

    Args:
        model: ``(B, C, *patch_size) → (B, C_out, *patch_size)``.
        volume: ``(C, *spatial)`` array or tensor, normalised to the network's input range.
        patch_size: window per spatial axis (one int for all); larger than the image → padded.
        overlap, stride, blend, batch_size, device, pad_value, autocast_dtype, progress,
        channels_last: as in :func:`predict_volume_25d` (auto: on for 2D patches on the CPU only).

    Returns:
        ``(C_out, *spatial)`` float32 numpy array.
    """
    device = _model_device(model, device)
    vol = torch.as_tensor(volume)
    if vol.ndim < 2:
        raise ValueError(f"volume must be (C, *spatial), got shape {tuple(vol.shape)}")
    vol = _as_volume(vol, vol.ndim, "(C, *spatial)", device)
    sampler = GridSampler(vol.shape[1:], _as_tuple(patch_size, vol.ndim - 1, "patch_size"), overlap=overlap, stride=stride)
    out = _sliding_window(
        model,
        vol,
        sampler,
        lambda v, locs: gather_patches(v, sampler, locs),
        to_patch_shape=lambda pred: pred,
        blend=blend,
        batch_size=batch_size,
        device=device,
        pad_value=pad_value,
        autocast_dtype=autocast_dtype,
        progress=progress,
        channels_last=channels_last,
    )
    return out.cpu().numpy()
