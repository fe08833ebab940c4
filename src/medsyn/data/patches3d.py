"""3D training patches for volumetric (3D-convolution) methods.

The 3D counterpart of :class:`medsyn.data.sampling.PatchSampler25D`, with the same centre policy
(lesion, then foreground, then anywhere), padding (each modality's minimum) and resumable RNG.
Full-volume inference of such models uses
:func:`medsyn.inference.sliding_window.predict_volume_patches`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medsyn.data.sampling import SliceMajor, cut, draw_centre


class PatchSampler3D:
    """Random (x, y, m) patches: x (M, px, py, pz) sources, y (1, px, py, pz) target, m the mask.

    ``cases``: :class:`~medsyn.data.sampling.NormalizedCase` (memory) or :class:`medsyn.data.cache.CachedCase`
    (memory-mapped, slice-major; patches are cut in that layout and transposed back to X, Y, Z).
    """

    def __init__(self, cases: list[Any], *, patch_size: tuple[int, int, int] = (64, 64, 64),
                 foreground_fraction: float = 0.9, label_fraction: float = 0.0, seed: int = 0):
        if not cases:
            raise ValueError("PatchSampler3D needs at least one case")
        if len(patch_size) != 3:
            raise ValueError(f"patch_size must have 3 entries, got {patch_size}")
        self.p = tuple(int(s) for s in patch_size)
        self.fg_frac, self.lab_frac = foreground_fraction, label_fraction
        self.rng = np.random.default_rng(seed)
        self._cases = [self._prepare(c) for c in cases]

    def _prepare(self, c: Any) -> dict[str, Any]:
        """The case in its stored layout (canonical for memory, slice-major for the cache) and
        the permutation back to canonical (X, Y, Z); nothing is copied or padded here."""
        perm = tuple(getattr(c, "layout", (0, 1, 2)))
        v = c.slice_major(perm[0])  # in memory: (X, Y, Z) itself, planes along X (argwhere's order)
        return {"view": v, "perm": perm, "shape": v.mask.shape, "fg": v.fg, "lab": v.lab,
                "size": tuple(self.p[a] for a in perm), "back": tuple(int(i) for i in np.argsort(perm))}

    def _centre(self, c: dict[str, Any]) -> tuple[int, ...]:
        return draw_centre(self.rng, c["lab"], c["fg"], c["shape"], self.lab_frac, self.fg_frac)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self._cases[int(self.rng.integers(len(self._cases)))]
        centre = self._centre(c)
        v: SliceMajor = c["view"]
        size = c["size"]
        lo = tuple(int(centre[i]) - size[i] // 2 for i in range(3))
        back = c["back"]
        x = np.transpose(cut(v.src, lo, size, v.src_fill), (0, *[b + 1 for b in back]))
        if v.tgt is not None:
            y = cut(v.tgt, lo, size, v.tgt_fill)
            y = np.transpose(v.tgt_forward(y) if v.tgt_forward is not None else y, back)[None]
        else:
            y = np.zeros((1,) + self.p, np.float32)
        m = np.transpose(cut(v.mask, lo, size, False), back)[None]
        return np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.float32), np.ascontiguousarray(m)

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        """{"source": (n, M, px, py, pz), "target": (n, 1, ...), "mask": (n, 1, ...)}."""
        xs, ys, ms = zip(*(self.sample() for _ in range(n)))
        return {"source": torch.from_numpy(np.stack(xs)), "target": torch.from_numpy(np.stack(ys)),
                "mask": torch.from_numpy(np.stack(ms))}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

