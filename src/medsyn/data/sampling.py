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
from typing import Any

import numpy as np
import torch

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


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
    """A case in network range, on its canonical grid.

    source: (M, X, Y, Z) float32, M source modalities in ``DataConfig.source`` order, ≈[-1, 1].
    target: (X, Y, Z) float32 ≈[-1, 1], or None. mask: bool (X, Y, Z). label: int (X, Y, Z) or None.
    """

    id: str
    source: np.ndarray
    target: np.ndarray | None
    mask: np.ndarray
    label: np.ndarray | None = None


class PatchSampler25D:
    """Random 2.5D training patches from a list of cases.

    A sample is ``(x, y, m)``: x (M·k, ph, pw) — k adjacent slices of each source modality,
    channel m·k + j is modality m at slice offset j − k//2 —, y (1, ph, pw) the target's centre
    slice, m (1, ph, pw) the foreground mask. The slice axis is one of ``AXES``. Stacks at the
    first/last slices are padded by replication; in-plane, patches that reach past the border
    are padded with each modality's minimum (the background value after normalisation).

    Patch centres: with probability ``label_fraction`` a random lesion voxel (label > 0, when
    the case has one), else with ``foreground_fraction`` a random foreground voxel, else any voxel.

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
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not cases:
            raise ValueError("PatchSampler25D needs at least one case")
        self.axis = AXES[slice_axis]
        self.k = context
        self.ph, self.pw = patch_size
        self.fg_frac, self.lab_frac = foreground_fraction, label_fraction
        self.augment = augment
        self.seed = int(seed)
        self.position = 0  # index of the next sample of the run (global, over all ranks)
        self.rng = self._generator(0)
        self.shard(rank, world_size)
        self._cases = [self._prepare(c) for c in cases]

    def shard(self, rank: int, world_size: int) -> None:
        """Draw rank ``rank``'s share of every global batch of ``world_size`` processes."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
        self.rank, self.world_size = int(rank), int(world_size)

    def _generator(self, index: int) -> np.random.Generator:
        """The generator of sample ``index``: a function of (seed, index) only."""
        return np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFF_FFFF_FFFF_FFFF, int(index)]))

    def _prepare(self, c: NormalizedCase) -> dict[str, Any]:
        ax = self.axis
        order = [a for a in range(3) if a != ax] + [ax]  # (in-plane A, in-plane B, slice)
        src = np.transpose(c.source, [0] + [a + 1 for a in order])
        tgt = np.transpose(c.target, order) if c.target is not None else None
        mask = np.transpose(c.mask, order)
        r = self.k // 2
        pa, pb = self.ph // 2 + 1, self.pw // 2 + 1
        fill = src.reshape(src.shape[0], -1).min(axis=1)
        padded = np.empty((src.shape[0], src.shape[1] + 2 * pa, src.shape[2] + 2 * pb, src.shape[3] + 2 * r), np.float32)
        for m in range(src.shape[0]):
            padded[m] = np.pad(np.pad(src[m], ((0, 0), (0, 0), (r, r)), mode="edge"),
                               ((pa, pa), (pb, pb), (0, 0)), constant_values=fill[m])
        tfill = float(tgt.min()) if tgt is not None else 0.0
        tpad = np.pad(tgt, ((pa, pa), (pb, pb), (0, 0)), constant_values=tfill).astype(np.float32) if tgt is not None else None
        mpad = np.pad(mask, ((pa, pa), (pb, pb), (0, 0)), constant_values=False)
        fg = np.argwhere(mask)
        lab = np.argwhere(np.transpose(c.label, order) > 0) if c.label is not None else np.zeros((0, 3), np.int64)
        return {"id": c.id, "src": padded, "tgt": tpad, "mask": mpad, "fg": fg, "lab": lab,
                "shape": mask.shape, "pad": (pa, pb, r)}

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
        self.rng = self._generator(index)
        c = self._cases[int(self.rng.integers(len(self._cases)))]
        a, b, s = self._centre(c)
        pa, pb, r = c["pad"]
        a0, b0 = a + pa - self.ph // 2, b + pb - self.pw // 2
        x = c["src"][:, a0:a0 + self.ph, b0:b0 + self.pw, s:s + self.k]  # slice s..s+k-1 = s-r..s+r
        x = np.ascontiguousarray(np.moveaxis(x, 3, 1)).reshape(-1, self.ph, self.pw)  # (M·k, ph, pw)
        y = c["tgt"][a0:a0 + self.ph, b0:b0 + self.pw, s][None] if c["tgt"] is not None else np.zeros((1, self.ph, self.pw), np.float32)
        m = c["mask"][a0:a0 + self.ph, b0:b0 + self.pw, s][None].astype(np.float32)
        if self.augment:
            x, y, m = self._augment(x, y, m)
        return x.astype(np.float32), np.ascontiguousarray(y, dtype=np.float32), m

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

    def batch_at(self, position: int, n: int) -> dict[str, torch.Tensor]:
        """This rank's share of the global batch that starts at sample ``position``; no state change
        (what a data-loader worker computes ahead of time)."""
        first = position + self.rank * n
        xs, ys, ms = zip(*(self.sample_at(first + j) for j in range(n)))
        return {"source": torch.from_numpy(np.stack(xs)), "target": torch.from_numpy(np.stack(ys)),
                "mask": torch.from_numpy(np.stack(ms))}

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "position" not in state:
            raise ValueError("sampler state from an older medsyn (a single random stream); "
                             "it cannot be continued exactly")
        self.seed, self.position = int(state["seed"]), int(state["position"])


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
