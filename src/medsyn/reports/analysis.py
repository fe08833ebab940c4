"""Error analysis of predicted volumes against their references, in the target's own units.

* :func:`load_subject_volumes`: a subject's source, prediction, reference, optional confidence
  map and label, and the evaluation foreground — all (X, Y, Z) in medsyn's canonical RAS+
  orientation (axial slices ``[:, :, k]``), on one grid.
* :class:`ErrorAnalysis`: pools subjects into

  - absolute error vs signed distance to the tumour surface (mm; negative inside the tumour),
  - absolute and signed error per reference-intensity bin,
  - the worst axial slices (foreground MAE per slice).

The foreground is found as :func:`medsyn.metrics.evaluate.evaluate_predictions` finds it (the
subject's brainmask/bodymask, else computed from the reference), so the numbers here and the
metric tables describe the same voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsyn.data.dataset import LABEL_NAMES, MASK_NAMES, Subject
from medsyn.data.masks import as_mask, compute_mask
from medsyn.io.image import read_image, same_grid

#: signed distance to the tumour surface, mm: open-ended end bins catch the rest
DISTANCE_EDGES_MM = np.r_[-np.inf, np.arange(-20.0, 60.0 + 1e-9, 5.0), np.inf]
#: voxels kept per subject for the intensity analysis (a fixed-seed subsample)
INTENSITY_SAMPLES = 200_000
N_INTENSITY_BINS = 20
#: a slice is ranked only when its foreground is at least this share of the subject's largest slice
MIN_SLICE_FRACTION = 0.1


@dataclass
class SubjectVolumes:
    """One subject's arrays, (X, Y, Z) canonical, float64 except masks (bool) and label (int)."""

    id: str
    source_name: str
    source: np.ndarray
    pred: np.ndarray
    ref: np.ndarray
    foreground: np.ndarray
    spacing: tuple[float, float, float]
    confidence: np.ndarray | None = None
    label: np.ndarray | None = None

    @property
    def tumour(self) -> np.ndarray | None:
        return None if self.label is None else self.label > 0


def find_prediction(pred_dir: Path, sid: str, target: str, suffix: str = "") -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = pred_dir / sid / f"{target}{suffix}{ext}"
        if p.is_file():
            return p
    return None


def load_subject_volumes(pred_dir: str | Path, subject: Subject, target: str, source: str | None) -> SubjectVolumes | None:
    """Read what the figures need; None when the prediction is missing or on another grid."""
    pred_dir = Path(pred_dir)
    pp = find_prediction(pred_dir, subject.id, target)
    if pp is None or target not in subject.files:
        return None
    ref_v = read_image(subject.path(target))
    pred_v = read_image(pp)
    if not same_grid(pred_v, ref_v):
        return None
    mask_name = next((n for n in MASK_NAMES if n in subject.files), None)
    if mask_name is not None:
        mv = read_image(subject.path(mask_name))
        fg = as_mask(mv.array, mv.path) if same_grid(mv, ref_v) else compute_mask(ref_v.array)
    else:
        fg = compute_mask(ref_v.array)
    src = None
    if source is not None and source in subject.files:
        sv = read_image(subject.path(source))
        if same_grid(sv, ref_v):
            src = sv.array.astype(np.float64)
    conf = None
    cp = find_prediction(pred_dir, subject.id, target, "_confidence")
    if cp is not None:
        cv = read_image(cp)
        if same_grid(cv, ref_v):
            conf = cv.array.astype(np.float64)
    lab = None
    lab_name = next((n for n in LABEL_NAMES if n in subject.files), None)
    if lab_name is not None:
        lv = read_image(subject.path(lab_name))
        if same_grid(lv, ref_v):
            lab = np.rint(np.asarray(lv.array, dtype=np.float64)).astype(np.int32)
    return SubjectVolumes(subject.id, source or "", src if src is not None else np.zeros(ref_v.shape),
                          pred_v.array.astype(np.float64), ref_v.array.astype(np.float64), fg,
                          tuple(float(s) for s in ref_v.spacing), conf, lab)


def signed_distance_mm(tumour: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) of every voxel to the tumour surface: > 0 outside, ≤ 0 inside (scipy EDT)."""
    outside = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    inside = ndimage.distance_transform_edt(tumour, sampling=spacing)
    return np.where(tumour, -inside, outside)


def foreground_slices(foreground: np.ndarray, axis: int = 2) -> np.ndarray:
    """Indices along ``axis`` of the slices holding at least MIN_SLICE_FRACTION of the largest
    slice's foreground voxels (and at least one): the slices that count as test images."""
    n_fg = foreground.sum(axis=tuple(a for a in range(foreground.ndim) if a != axis))
    return np.flatnonzero(n_fg >= max(1, MIN_SLICE_FRACTION * n_fg.max())) if n_fg.size else np.zeros(0, int)


def slice_errors(sv: SubjectVolumes, axis: int = 2) -> list[dict]:
    """Per slice along ``axis``: foreground MAE, foreground and tumour voxel counts."""
    err = np.abs(sv.pred - sv.ref)
    other = tuple(a for a in range(3) if a != axis)
    n_fg = sv.foreground.sum(axis=other)
    sums = np.where(sv.foreground, err, 0.0).sum(axis=other)
    n_tum = sv.tumour.sum(axis=other) if sv.tumour is not None else np.zeros_like(n_fg)
    return [{"subject": sv.id, "index": int(k), "mae": float(sums[k] / n_fg[k]), "foreground_voxels": int(n_fg[k]),
             "tumour_voxels": int(n_tum[k])} for k in foreground_slices(sv.foreground, axis)]


@dataclass
class ErrorAnalysis:
    """Accumulates subjects; read :meth:`distance_table`, :meth:`intensity_table`, :meth:`worst_slices`."""

    dist_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(DISTANCE_EDGES_MM) - 1))
    dist_count: np.ndarray = field(default_factory=lambda: np.zeros(len(DISTANCE_EDGES_MM) - 1, np.int64))
    ref_samples: list[np.ndarray] = field(default_factory=list)
    err_samples: list[np.ndarray] = field(default_factory=list)
    slices: list[dict] = field(default_factory=list)
    n_subjects: int = 0
    n_with_tumour: int = 0

    def add(self, sv: SubjectVolumes) -> None:
        self.n_subjects += 1
        diff = sv.pred - sv.ref
        tum = sv.tumour
        if tum is not None and tum.any():
            self.n_with_tumour += 1
            region = sv.foreground | tum
            d = signed_distance_mm(tum, sv.spacing)[region]
            idx = np.searchsorted(DISTANCE_EDGES_MM, d, side="right") - 1
            idx = np.clip(idx, 0, len(self.dist_count) - 1)
            self.dist_sum += np.bincount(idx, weights=np.abs(diff[region]), minlength=len(self.dist_sum))
            self.dist_count += np.bincount(idx, minlength=len(self.dist_count))
        fg = sv.foreground
        ref, err = sv.ref[fg], diff[fg]
        if ref.size > INTENSITY_SAMPLES:
            pick = np.random.default_rng(0).choice(ref.size, INTENSITY_SAMPLES, replace=False)
            ref, err = ref[pick], err[pick]
        self.ref_samples.append(ref)
        self.err_samples.append(err)
        self.slices.extend(slice_errors(sv))

    # results ------------------------------------------------------------------------------
    def distance_table(self) -> list[dict]:
        """Rows ``{"lo", "hi", "mae", "voxels"}`` per distance bin (mm); MAE NaN for an empty bin."""
        rows = []
        for i in range(len(self.dist_count)):
            n = int(self.dist_count[i])
            rows.append({"lo": float(DISTANCE_EDGES_MM[i]), "hi": float(DISTANCE_EDGES_MM[i + 1]),
                         "mae": float(self.dist_sum[i] / n) if n else float("nan"), "voxels": n})
        return rows

    def intensity_table(self) -> list[dict]:
        """Rows ``{"lo", "hi", "mae", "bias", "voxels"}``: equal-width bins of the reference
        between its pooled 0.5th and 99.5th percentiles (outer values go to the end bins)."""
        if not self.ref_samples:
            return []
        ref = np.concatenate(self.ref_samples)
        err = np.concatenate(self.err_samples)
        if ref.size == 0:
            return []
        lo, hi = np.percentile(ref, [0.5, 99.5])
        if not hi > lo:
            lo, hi = float(ref.min()), float(ref.max()) + 1.0
        edges = np.linspace(lo, hi, N_INTENSITY_BINS + 1)
        idx = np.clip(np.searchsorted(edges, ref, side="right") - 1, 0, N_INTENSITY_BINS - 1)
        n = np.bincount(idx, minlength=N_INTENSITY_BINS)
        s_abs = np.bincount(idx, weights=np.abs(err), minlength=N_INTENSITY_BINS)
        s_sig = np.bincount(idx, weights=err, minlength=N_INTENSITY_BINS)
        return [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "voxels": int(n[i]),
                 "mae": float(s_abs[i] / n[i]) if n[i] else float("nan"),
                 "bias": float(s_sig[i] / n[i]) if n[i] else float("nan")} for i in range(N_INTENSITY_BINS)]

    def worst_slices(self, k: int = 10) -> list[dict]:
        return sorted(self.slices, key=lambda r: r["mae"], reverse=True)[:k]


def display_index(sv: SubjectVolumes, axis: int) -> tuple[int, str]:
    """The slice to show along ``axis``: the one with the most tumour, else the foreground's centre."""
    other = tuple(a for a in range(3) if a != axis)
    tum = sv.tumour
    if tum is not None and tum.any():
        return int(np.argmax(tum.sum(axis=other))), "largest tumour cross-section"
    if sv.foreground.any():
        com = ndimage.center_of_mass(sv.foreground)
        return int(round(com[axis])), "centre of the foreground"
    return sv.ref.shape[axis] // 2, "middle slice"
