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

from medsyn.data.sampling import NormalizedCase, draw_centre


class PatchSampler3D:
    """Random (x, y, m) patches: x (M, px, py, pz) sources, y (1, px, py, pz) target, m the mask."""

    def __init__(self, cases: list[NormalizedCase], *, patch_size: tuple[int, int, int] = (64, 64, 64),
                 foreground_fraction: float = 0.9, label_fraction: float = 0.0, seed: int = 0):
        if not cases:
            raise ValueError("PatchSampler3D needs at least one case")
        if len(patch_size) != 3:
            raise ValueError(f"patch_size must have 3 entries, got {patch_size}")
        self.p = tuple(int(s) for s in patch_size)
        self.fg_frac, self.lab_frac = foreground_fraction, label_fraction
        self.rng = np.random.default_rng(seed)
        self._cases = [self._prepare(c) for c in cases]

    def _prepare(self, c: NormalizedCase) -> dict[str, Any]:
        pad = [(s // 2 + 1, s // 2 + 1) for s in self.p]
        fill = c.source.reshape(c.source.shape[0], -1).min(axis=1)
        src = np.stack([np.pad(c.source[m], pad, constant_values=fill[m]) for m in range(c.source.shape[0])])
        tgt = np.pad(c.target, pad, constant_values=float(c.target.min())) if c.target is not None else None
        return {"src": src.astype(np.float32), "tgt": None if tgt is None else tgt.astype(np.float32),
                "mask": np.pad(c.mask, pad, constant_values=False), "fg": np.argwhere(c.mask),
                "lab": np.argwhere(c.label > 0) if c.label is not None else np.zeros((0, 3), np.int64),
                "shape": c.mask.shape, "pad": [p[0] for p in pad]}

    def _centre(self, c: dict[str, Any]) -> tuple[int, ...]:
        return draw_centre(self.rng, c["lab"], c["fg"], c["shape"], self.lab_frac, self.fg_frac)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self._cases[int(self.rng.integers(len(self._cases)))]
        centre = self._centre(c)
        lo = [centre[i] + c["pad"][i] - self.p[i] // 2 for i in range(3)]
        sl = tuple(slice(lo[i], lo[i] + self.p[i]) for i in range(3))
        x = c["src"][(slice(None),) + sl]
        y = c["tgt"][sl][None] if c["tgt"] is not None else np.zeros((1,) + self.p, np.float32)
        m = c["mask"][sl][None].astype(np.float32)
        return np.ascontiguousarray(x), np.ascontiguousarray(y), m

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        """{"source": (n, M, px, py, pz), "target": (n, 1, ...), "mask": (n, 1, ...)}."""
        xs, ys, ms = zip(*(self.sample() for _ in range(n)))
        return {"source": torch.from_numpy(np.stack(xs)), "target": torch.from_numpy(np.stack(ys)),
                "mask": torch.from_numpy(np.stack(ms))}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
