"""Training samples: 2.5D stacks (k adjacent source slices → the target's centre slice), 2D
slices (k = 1) and 3D patches, centred preferentially in the foreground or the lesion.

Randomness is counter-based: sample number ``i`` of the run is drawn with its own
``numpy.random.Generator`` seeded from ``(seed, i)``. The sampler's state is just ``(seed,
position)``, part of every checkpoint, so a resumed run draws exactly the samples an
uninterrupted one would — and the same holds whichever process or data-loader worker draws
sample ``i``:

* distributed training (``rank``/``world_size``): every step consumes one *global* batch of
  ``n × world_size`` samples; rank ``r`` draws samples ``position + r·n … position + (r+1)·n − 1``.
  The ranks' batches together are the batch a single process with ``n × world_size`` would draw.
* loader workers call :meth:`PatchSampler25D.batch_at` for a given position; the result does not
  depend on which worker computes it, or on how many there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
#: ``data.flip`` → the axes of a (C, ph, pw) sample it may flip: -2 is the slice-major view's first
#: in-plane axis, the canonical grid's left-right axis for axial and coronal slices
FLIP_AXES = {"none": (), "left-right": (-2,), "in-plane": (-2, -1)}


def draw_centre(rng: np.random.Generator, label_points: np.ndarray, fg_points: np.ndarray,
                shape: tuple[int, ...], lab_frac: float, fg_frac: float) -> tuple[int, ...]:
    """A patch centre: a labelled voxel with probability ``lab_frac`` (when there are any), else a
    foreground voxel with probability ``fg_frac``, else any voxel of ``shape``, uniformly.

    ``label_points``/``fg_points`` are ``np.argwhere`` outputs (n, ndim). One draw of ``rng``
    decides the kind, one more picks the voxel (one per axis for a uniform voxel).
    """
    u = rng.random()
    if label_points.shape[0] and u < lab_frac:
        return tuple(label_points[rng.integers(label_points.shape[0])])
    if fg_points.shape[0] and u < lab_frac + (1 - lab_frac) * fg_frac:
        return tuple(fg_points[rng.integers(fg_points.shape[0])])
    return tuple(int(rng.integers(s)) for s in shape)


@dataclass
class NormalizedCase:
    """A case in network range, on its canonical grid (in memory).

    source: (M, X, Y, Z) float32, M source modalities in ``DataConfig.source`` order, ≈[-1, 1].
    target: (X, Y, Z) float32 ≈[-1, 1], or None. mask: bool (X, Y, Z). label: int (X, Y, Z) or None.
    """

    id: str
    source: np.ndarray
    target: np.ndarray | None
    mask: np.ndarray
    label: np.ndarray | None = None

    def slice_major(self, slice_axis: int) -> "SliceMajor":
        """Views with the slice axis first (no copy)."""
        ax = slice_axis
        order = (ax, *[a for a in range(3) if a != ax])
        src = np.transpose(self.source, (0, *[o + 1 for o in order]))
        mask = np.transpose(self.mask, order)
        tgt = np.transpose(self.target, order) if self.target is not None else None
        lab = np.transpose(self.label, order) if self.label is not None else None
        return SliceMajor(self.id, src, src.reshape(src.shape[0], -1).min(axis=1).astype(np.float32), tgt,
                          float(tgt.min()) if tgt is not None else 0.0, None, mask,
                          plane_points(mask.reshape(mask.shape[0], -1).sum(1), lambda s: mask[s]),
                          plane_points((lab > 0).reshape(lab.shape[0], -1).sum(1), lambda s: lab[s] > 0)
                          if lab is not None else plane_points(np.zeros(mask.shape[0], np.int64), None))


class PlanePoints:
    """The voxels of a boolean volume, in C order of its (S, A, B) layout, without listing them:
    ``points[k]`` is the k-th one — what ``np.argwhere(volume)[k]`` is — found from the per-plane
    counts and one plane. Memory: one integer per plane (an argwhere list of a brain mask would
    take ~30 MB per case). ``shape`` is ``(n, 3)`` like argwhere's, for :func:`draw_centre`.
    """

    def __init__(self, counts: np.ndarray, plane: Callable[[int], np.ndarray] | None):
        self.cum = np.cumsum(np.asarray(counts, dtype=np.int64))
        self.plane = plane
        n = int(self.cum[-1]) if self.cum.size else 0
        self.shape = (n, 3)

    def __getitem__(self, k: int) -> tuple[int, int, int]:
        k = int(k)
        s = int(np.searchsorted(self.cum, k, side="right"))
        r = k - (int(self.cum[s - 1]) if s else 0)
        p = np.asarray(self.plane(s))
        a, b = divmod(int(np.flatnonzero(p)[r]), p.shape[1])
        return s, a, b


def plane_points(counts: np.ndarray, plane: Callable[[int], np.ndarray] | None) -> PlanePoints:
    return PlanePoints(counts, plane)


@dataclass
class SliceMajor:
    """What a sampler reads from a case, slice axis first (views of memory or of memory maps).

    src (M, S, A, B) network range; src_fill (M,) padding value per modality (its minimum).
    tgt (S, A, B) or None, with padding value ``tgt_fill``; ``tgt_forward`` maps a target patch
    to network range (None: already there). mask (S, A, B) bool. fg/lab: the mask's and the
    lesion's voxels as :class:`PlanePoints` (coordinates (s, a, b)).
    """

    id: str
    src: np.ndarray
    src_fill: np.ndarray
    tgt: np.ndarray | None
    tgt_fill: float
    tgt_forward: Callable[[np.ndarray], np.ndarray] | None
    mask: np.ndarray
    fg: PlanePoints
    lab: PlanePoints


def cut(array: np.ndarray, starts: tuple[int, ...], sizes: tuple[int, ...], fill: Any, dtype=np.float32) -> np.ndarray:
    """``array[..., s0:s0+n0, s1:s1+n1, ...]`` over its last ``len(starts)`` axes, as a new array of
    ``dtype``; the part beyond the array's edges is ``fill`` (a scalar, or one value per index of
    the first axis). Only the window is read (a memory map stays on disk)."""
    lead = array.shape[: array.ndim - len(starts)]
    out = np.empty(lead + tuple(sizes), dtype)
    fill = np.asarray(fill, dtype=dtype)
    out[...] = fill.reshape(fill.shape + (1,) * (out.ndim - fill.ndim))  # one value per first index
    src, dst = [], []
    for st, n, dim in zip(starts, sizes, array.shape[len(lead):]):
        lo, hi = max(st, 0), min(st + n, dim)
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


class PatchSampler25D:
    """Random 2.5D training patches from a list of cases (:class:`NormalizedCase` in memory, or
    :class:`medsyn.data.cache.CachedCase` memory-mapped from the preprocessed cache).

    A sample is ``(x, y, m)``: x (M·k, ph, pw) — k adjacent slices of each source modality,
    channel m·k + j is modality m at slice offset j − k//2 —, y (1, ph, pw) the target's centre
    slice, m (1, ph, pw) the foreground mask. The slice axis is one of ``AXES``. Stacks at the
    first/last slices are padded by replication; in-plane, patches that reach past the border
    are padded with each modality's minimum (the background value after normalisation).

    Patch centres: with probability ``label_fraction`` a random lesion voxel (label > 0, when
    the case has one), else with ``foreground_fraction`` a random foreground voxel, else any voxel.

    ``flip`` (``data.flip``): "left-right" mirrors a sample with probability ½ along the in-plane
    axis that runs left-right on the canonical RAS grid (the first in-plane axis of axial and
    coronal slices), "in-plane" each in-plane axis independently with probability ½; the source
    stack, the target and the mask of a sample are flipped together, after ``augment``.

    ``rank``/``world_size`` shard each global batch between distributed processes (see the
    module docstring); :meth:`shard` changes them later. Subclasses that override ``_centre`` or
    ``_augment`` draw from ``self.rng``, which holds the current sample's generator.
    """

    def __init__(
        self,
        cases: list[NormalizedCase],
        *,
        slice_axis: str = "axial",
        context: int = 5,
        patch_size: tuple[int, int] = (144, 144),
        foreground_fraction: float = 0.9,
        label_fraction: float = 0.0,
        augment: bool = False,
        flip: str = "none",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not cases:
            raise ValueError("PatchSampler25D needs at least one case")
        if flip not in FLIP_AXES:
            raise ValueError(f"flip: got {flip!r}, expected one of {', '.join(FLIP_AXES)}")
        if flip == "left-right" and slice_axis == "sagittal":
            raise ValueError("flip 'left-right': sagittal slices do not hold the left-right axis")
        self.axis = AXES[slice_axis]
        self.k = context
        self.ph, self.pw = patch_size
        self.fg_frac, self.lab_frac = foreground_fraction, label_fraction
        self.augment = augment
        self.flip_axes = FLIP_AXES[flip]
        self.seed = int(seed)
        self.position = 0  # index of the next sample of the run (global, over all ranks)
        self.rng = self._generator(0)
        self.shard(rank, world_size)
        self._cases = [self._prepare(c) for c in cases]
        self.n_src = int(self._cases[0]["view"].src.shape[0])

    def shard(self, rank: int, world_size: int) -> None:
        """Draw rank ``rank``'s share of every global batch of ``world_size`` processes."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
        self.rank, self.world_size = int(rank), int(world_size)

    def _generator(self, index: int) -> np.random.Generator:
        """The generator of sample ``index``: a function of (seed, index) only."""
        return np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFF_FFFF_FFFF_FFFF, int(index)]))

    def _prepare(self, c: Any) -> dict[str, Any]:
        """The case's slice-major view (nothing copied: padding is done per patch)."""
        v = c.slice_major(self.axis)
        s, a, b = v.mask.shape
        return {"id": v.id, "view": v, "fg": _Reordered(v.fg), "lab": _Reordered(v.lab), "shape": (a, b, s)}

    # ------------------------------------------------------------------------------------------
    def _centre(self, c: dict[str, Any]) -> tuple[int, int, int]:
        return draw_centre(self.rng, c["lab"], c["fg"], c["shape"], self.lab_frac, self.fg_frac)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This rank's next sample ``(x, y, m)`` (a global batch of one sample per rank)."""
        index = self.position + self.rank
        self.position += self.world_size
        return self.sample_at(index)

    def sample_at(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample number ``index`` of the run; a pure function of (seed, index)."""
        x = np.empty((self.n_src * self.k, self.ph, self.pw), np.float32)
        y = np.empty((1, self.ph, self.pw), np.float32)
        m = np.empty((1, self.ph, self.pw), np.float32)
        self._sample_into(index, x, y, m)
        return x, y, m

    def _sample_into(self, index: int, x: np.ndarray, y: np.ndarray, m: np.ndarray) -> None:
        """Write sample ``index`` into x (M·k, ph, pw), y and m (1, ph, pw): only the patch's
        window of the case is read; what lies beyond the case is padded here."""
        self.rng = self._generator(index)
        c = self._cases[int(self.rng.integers(len(self._cases)))]
        a, b, s = self._centre(c)
        v: SliceMajor = c["view"]
        n_slices, size_a, size_b = v.mask.shape
        a0, b0, r = a - self.ph // 2, b - self.pw // 2, self.k // 2
        a_lo, a_hi, b_lo, b_hi = max(a0, 0), min(a0 + self.ph, size_a), max(b0, 0), min(b0 + self.pw, size_b)
        inside = a_lo == a0 and b_lo == b0 and a_hi == a0 + self.ph and b_hi == b0 + self.pw
        win = (slice(a_lo, a_hi), slice(b_lo, b_hi))
        dst = (slice(a_lo - a0, a_hi - a0), slice(b_lo - b0, b_hi - b0))
        xs = x.reshape(self.n_src, self.k, self.ph, self.pw)  # channel m·k + j: modality m, slice s + j − r
        if not inside:
            xs[...] = v.src_fill[:, None, None, None]
            y[...] = v.tgt_fill
            m[...] = 0.0
        if a_lo < a_hi and b_lo < b_hi:
            for j in range(self.k):  # first/last slices: replicated
                xs[(slice(None), j, *dst)] = v.src[(slice(None), min(max(s + j - r, 0), n_slices - 1), *win)]
            if v.tgt is not None:
                y[(0, *dst)] = v.tgt[(s, *win)]
            m[(0, *dst)] = v.mask[(s, *win)]
        if v.tgt is None:
            y[...] = 0.0
        elif v.tgt_forward is not None:
            y[...] = v.tgt_forward(y)
        if self.augment:
            xa, ya, ma = self._augment(x, y, m)
            x[...], y[...], m[...] = xa, ya, ma
        for axis in self.flip_axes:  # one draw per axis, from this sample's generator
            if self.rng.random() < 0.5:
                for arr in (x, y, m):
                    arr[...] = np.flip(arr, axis).copy()

    def _augment(self, x, y, m):
        """Same flip and small rotation/scale for source, target and mask; intensity on source."""
        if self.rng.random() < 0.5:
            x, y, m = x[:, :, ::-1], y[:, :, ::-1], m[:, :, ::-1]
        if self.rng.random() < 0.5:
            x, y, m = _small_affine(self.rng, [x, y, m])
        scale = 1.0 + self.rng.uniform(-0.1, 0.1)
        shift = self.rng.uniform(-0.05, 0.05)
        x = np.clip(x * scale + shift, -1.0, 1.0)
        return np.ascontiguousarray(x), np.ascontiguousarray(y), np.ascontiguousarray(m)

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        """This rank's n samples of the next global batch of ``n × world_size``, stacked:
        {"source": (n, M·k, ph, pw), "target": (n, 1, ph, pw), "mask": (n, 1, ph, pw)}."""
        out = self.batch_at(self.position, n)
        self.position += n * self.world_size
        return out

    def batch_at(self, position: int, n: int, out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """This rank's share of the global batch that starts at sample ``position``; no state change
        (what a data-loader worker computes ahead of time). ``out``: float32 CPU tensors of the
        batch's shapes to write into and return (a loader worker's reused shared-memory slot)."""
        first = position + self.rank * n
        shapes = {"source": (n, self.n_src * self.k, self.ph, self.pw), "target": (n, 1, self.ph, self.pw),
                  "mask": (n, 1, self.ph, self.pw)}
        if out is None:
            out = {key: torch.empty(shape, dtype=torch.float32) for key, shape in shapes.items()}
        elif any(tuple(out[key].shape) != shape or out[key].dtype != torch.float32 for key, shape in shapes.items()):
            raise ValueError(f"batch_at: out must hold float32 tensors of shapes {shapes}")
        x, y, m = (out[key].numpy() for key in shapes)
        for j in range(n):
            self._sample_into(first + j, x[j], y[j], m[j])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "position" not in state:
            raise ValueError("sampler state from an older medsyn (a single random stream); "
                             "it cannot be continued exactly")
        self.seed, self.position = int(state["seed"]), int(state["position"])


class _Reordered:
    """PlanePoints whose items are (a, b, s) — the 2.5D sampler's (in-plane A, B, slice) order."""

    def __init__(self, points: PlanePoints):
        self.points, self.shape = points, points.shape

    def __getitem__(self, k: int) -> tuple[int, int, int]:
        s, a, b = self.points[k]
        return a, b, s


def _small_affine(rng: np.random.Generator, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Rotation ±10°, scale ±10 % about the patch centre (MONAI's Affine), identical for all arrays;
    the mask is resampled with nearest neighbour."""
    from monai.transforms import Affine

    angle = float(rng.uniform(-np.pi / 18, np.pi / 18))
    scale = float(rng.uniform(0.9, 1.1))
    out = []
    for i, a in enumerate(arrays):
        mode = "nearest" if i == len(arrays) - 1 else "bilinear"
        t = Affine(rotate_params=angle, scale_params=(scale, scale), padding_mode="border", mode=mode, image_only=True)
        out.append(np.asarray(t(torch.from_numpy(np.ascontiguousarray(a)))))
    return out
