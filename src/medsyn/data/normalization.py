"""Invertible per-modality intensity normalisation, saved with a run.

A normaliser maps native intensities (scanner units for MR, Hounsfield units for CT) to the
network range, roughly [-1, 1], and back. ``fit`` learns its statistics; ``to_dict``/``from_dict``
store them in the run folder (``normalization.json``) so predictions go back to real units.

Kinds
-----
``window``      fixed window [low, high] in native units (CT: HU clipped to [-1024, 3000]) →
                [-1, 1]. Nothing is learned; the inverse gives HU.
``percentile``  clip to the [lower, upper] percentiles inside the mask, scale to [-1, 1].
``zscore``      (x − mean) / std inside the mask, clipped to ±clip, divided by clip.

Per-image vs. learned scale (MR)
--------------------------------
MR has no absolute unit, so a *source* image is normalised with its *own* statistics
(``per_image=True``, the default for sources): every input is brought to a comparable range.
The *target* normaliser is fitted once on the training targets (``per_image=False``): the
statistics are pooled over all training subjects, so the network learns one intensity scale
and the inverse maps its output back onto the typical scale of the training targets. That is the
only honest "original unit" a synthesised MR can have; a CT target with the ``window`` kind goes
back to true HU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medsyn.errors import ConfigError
from medsyn.registry import Registry

NORMALIZERS: Registry = Registry("normalisation kind")


def _unit(y: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] exactly (float32 rounding of the affine map can overshoot by an ulp)."""
    return np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0)


def _masked(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return x.ravel()
    vals = x[mask]
    return vals if vals.size else x.ravel()


class Normalizer:
    """Base class. Subclasses implement fit_distribution (statistics), forward and inverse."""

    kind = "base"
    per_image = True

    def fit(self, images: list[np.ndarray], masks: list[np.ndarray | None]) -> "Normalizer":
        vals = np.concatenate([_masked(np.asarray(x, dtype=np.float64), m) for x, m in zip(images, masks)])
        self.fit_values(vals)
        return self

    def fit_values(self, vals: np.ndarray) -> None:
        self.fit_distribution(ExactDistribution(vals))

    def fit_distribution(self, dist: Any) -> None:  # pragma: no cover - interface
        """Learn the statistics from a distribution: ``dist.percentile(q)``, ``dist.mean``,
        ``dist.std`` — exact voxels (:class:`ExactDistribution`) or merged per-case histograms
        (:class:`medsyn.data.cache.MergedHistogram`), so the fit never needs every voxel at once."""
        raise NotImplementedError

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        d["kind"] = self.kind
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Normalizer":
        d = dict(d)
        kind = d.pop("kind")
        cls = NORMALIZERS.get(kind)
        obj = cls.__new__(cls)
        obj.__dict__.update(d)
        return obj


class ExactDistribution:
    """The distribution of the voxels ``vals`` themselves (what a normaliser fits in memory)."""

    def __init__(self, vals: np.ndarray):
        self.vals = vals

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.vals, q))

    @property
    def mean(self) -> float:
        return float(self.vals.mean())

    @property
    def std(self) -> float:
        return float(self.vals.std())


@NORMALIZERS.register("window")
@dataclass
class WindowNorm(Normalizer):
    """Fixed native-unit window [low, high] → [-1, 1] (CT default: [-1024, 3000] HU)."""

    low: float = -1024.0
    high: float = 3000.0
    kind = "window"
    per_image = False

    def fit(self, images, masks):  # nothing to learn
        return self

    def fit_distribution(self, dist):
        pass

    def forward(self, x):
        x = np.clip(np.asarray(x, dtype=np.float32), self.low, self.high)
        return _unit(2.0 * (x - self.low) / (self.high - self.low) - 1.0)

    def inverse(self, y):
        y = np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0)
        return ((y + 1.0) / 2.0 * (self.high - self.low) + self.low).astype(np.float32)


@NORMALIZERS.register("percentile")
@dataclass
class PercentileNorm(Normalizer):
    """Clip to the [lower, upper] percentiles of the masked voxels, scale to [-1, 1]."""

    lower: float = 0.5
    upper: float = 99.5
    lo: float = 0.0
    hi: float = 1.0
    kind = "percentile"

    def fit_distribution(self, dist):
        self.lo, self.hi = float(dist.percentile(self.lower)), float(dist.percentile(self.upper))
        if self.hi <= self.lo:
            self.hi = self.lo + 1.0

    def forward(self, x):
        x = np.clip(np.asarray(x, dtype=np.float32), self.lo, self.hi)
        return _unit(2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0)

    def inverse(self, y):
        y = np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0)
        return ((y + 1.0) / 2.0 * (self.hi - self.lo) + self.lo).astype(np.float32)


@NORMALIZERS.register("zscore")
@dataclass
class ZScoreNorm(Normalizer):
    """(x − mean)/std inside the mask, clipped to ±clip and divided by clip (→ [-1, 1])."""

    clip: float = 5.0
    mean: float = 0.0
    std: float = 1.0
    kind = "zscore"

    def fit_distribution(self, dist):
        self.mean = float(dist.mean)
        self.std = float(dist.std) or 1.0

    def forward(self, x):
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.std
        return _unit(np.clip(z, -self.clip, self.clip) / self.clip)

    def inverse(self, y):
        y = np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0)
        return (y * self.clip * self.std + self.mean).astype(np.float32)


def make_normalizer(cfg: Any, per_image: bool | None = None) -> Normalizer:
    """Build an unfitted normaliser from a :class:`medsyn.config.NormConfig`."""
    kind = cfg.kind
    if kind == "window":
        if cfg.high <= cfg.low:
            raise ConfigError(f"normalization window: high ({cfg.high}) must be above low ({cfg.low})")
        n: Normalizer = WindowNorm(cfg.low, cfg.high)
    elif kind == "percentile":
        if not 0 <= cfg.lower < cfg.upper <= 100:
            raise ConfigError(f"normalization percentiles: need 0 ≤ lower < upper ≤ 100, got {cfg.lower}, {cfg.upper}")
        n = PercentileNorm(cfg.lower, cfg.upper)
    elif kind == "zscore":
        if cfg.clip <= 0:
            raise ConfigError(f"normalization zscore: clip must be > 0, got {cfg.clip}")
        n = ZScoreNorm(cfg.clip)
    else:
        raise ConfigError(NORMALIZERS.unknown_message(kind, "normalization.kind"))
    if per_image is not None and kind != "window":
        n.per_image = per_image
    return n


@dataclass
class NormalizationState:
    """All normalisers of a run: per-image recipes for sources, fitted target normaliser."""

    sources: dict[str, dict[str, Any]]  # modality → recipe (kind + params, fitted per image)
    target: dict[str, Any]  # fitted on the training targets (or a fixed window)
    target_name: str
    target_dtype: str = "float32"  # storage type of the training targets: predictions are written so
    target_background: float = 0.0  # median training-target value outside the mask (0 MR, air HU for CT)
    train_stats: dict[str, Any] | None = None  # per source: spacing, median range (out-of-distribution warnings)

    def source_normalizer(self, modality: str, image: np.ndarray, mask: np.ndarray | None) -> Normalizer:
        n = Normalizer.from_dict(self.sources[modality])
        if getattr(n, "per_image", True) and n.kind != "window":
            n.fit([image], [mask])
        return n

    def target_normalizer(self) -> Normalizer:
        return Normalizer.from_dict(self.target)

    def to_dict(self) -> dict[str, Any]:
        return {"sources": self.sources, "target": self.target, "target_name": self.target_name,
                "target_dtype": self.target_dtype, "target_background": self.target_background,
                "train_stats": self.train_stats}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "NormalizationState":
        return NormalizationState(d["sources"], d["target"], d["target_name"], d.get("target_dtype", "float32"),
                                  float(d.get("target_background", 0.0)), d.get("train_stats"))
