"""Report figures (matplotlib, object API, no global pyplot state): PNG files written atomically.

* :func:`training_curves` — every logged scalar of ``metrics.jsonl`` against the step;
* :func:`view_grid` — one view (axial, coronal or sagittal) of a subject: source | synthesis |
  reference | |error| | confidence, each with a colour bar in its units, tumour outlined;
* :func:`error_vs_distance`, :func:`error_vs_intensity` — the error-analysis plots.

Display convention: arrays are medsyn's canonical RAS+ (X → right, Y → anterior, Z → superior);
axial and coronal views put the patient's right on the image's right (neurological
convention), sagittal views put anterior on the right; superior/anterior up; pixel aspect from
the voxel spacing.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medsyn.io.image import atomic_write_bytes
from medsyn.reports.analysis import SubjectVolumes

VIEWS = {"axial": 2, "coronal": 1, "sagittal": 0}
GROUP_ORDER = ("g", "d", "val", "lr")
DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _group(key: str) -> tuple[int, str]:
    prefix = key.split("/", 1)[0] if "/" in key else ""
    for i, g in enumerate(GROUP_ORDER):
        if prefix == g or (g == "d" and prefix.startswith("d") and prefix[1:].isdigit()):
            return i, key
    return len(GROUP_ORDER), key


def _ema(values: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def training_curves(records: list[dict[str, Any]], keys: list[str], path: Path) -> Path:
    """Small multiples, one panel per key (losses ``g/…``, ``d1/…``, validation ``val/…``, ``lr/…``).

    Loss panels show the logged values and, beyond 30 points, an exponential moving average
    (α = 0.1) over them; validation metrics are drawn with markers; learning rates on a log axis
    when they span more than a factor of 10.
    """
    keys = sorted(keys, key=_group)
    ncols = min(4, max(1, len(keys)))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.3 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, key in zip(axes, keys):
        pts = [(r["step"], r[key]) for r in records
               if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float)) and math.isfinite(r[key])]
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            continue
        x, y = np.asarray(pts, dtype=np.float64).T
        if key.startswith("val/"):
            ax.plot(x, y, "o-", ms=3, lw=1, color="tab:green")
        elif key.startswith("lr/"):
            ax.step(x, y, where="post", lw=1, color="tab:purple")
            if y.min() > 0 and y.max() / y.min() > 10:
                ax.set_yscale("log")
        else:
            if len(y) > 30:
                ax.plot(x, y, lw=0.6, alpha=0.35, color="tab:blue")
                ax.plot(x, _ema(y, 0.1), lw=1.2, color="tab:blue")
            else:
                ax.plot(x, y, ".-", ms=3, lw=1, color="tab:blue")
        ax.set_xlabel("step", fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return _save(fig, path)


def _plane(a: np.ndarray, view: str, idx: int) -> np.ndarray:
    """(X, Y, Z) → the 2D plane, transposed so that rows run along the vertical display axis."""
    axis = VIEWS[view]
    return np.take(a, idx, axis=axis).T


def _aspect(spacing: tuple[float, float, float], view: str) -> float:
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[view]


def _crop_box(mask2d: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    if not mask2d.any():
        return slice(None), slice(None)
    rows, cols = np.flatnonzero(mask2d.any(axis=1)), np.flatnonzero(mask2d.any(axis=0))
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def _window(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (float(values.min()), float(values.max()) + 1.0)


def view_grid(sv: SubjectVolumes, view: str, idx: int, path: Path, *, target: str, units: str,
              source_units: str = "scanner units") -> Path:
    """One row: source | synthesis | reference | |synthesis − reference| | confidence (if any).

    Grey levels: the source in its own 0.5–99.5th-percentile window inside the foreground;
    synthesis and reference share the reference's window; the error runs from 0 to its 99.5th
    percentile inside the foreground. Every panel has a colour bar in its units. The tumour
    (label > 0) is outlined in red where a label map exists.
    """
    fg = sv.foreground
    err = np.abs(sv.pred - sv.ref)
    tum = sv.tumour
    plane_fg = _plane(fg, view, idx)
    rs, cs = _crop_box(plane_fg | (_plane(tum, view, idx) if tum is not None else False))
    ref_win = _window(sv.ref[fg]) if fg.any() else _window(sv.ref.ravel())
    err_hi = float(np.percentile(err[fg], 99.5)) if fg.any() else float(err.max())
    panels = [
        (f"source ({sv.source_name})", sv.source, "gray", _window(sv.source[fg]) if fg.any() else _window(sv.source.ravel()),
         source_units),
        (f"synthesis ({target})", sv.pred, "gray", ref_win, units),
        (f"reference ({target})", sv.ref, "gray", ref_win, units),
        ("|synthesis − reference|", err, "magma", (0.0, max(err_hi, 1e-6)), f"absolute error ({units})"),
    ]
    if sv.confidence is not None:
        panels.append(("confidence map", sv.confidence, "viridis", (0.0, 1.0), "confidence ∈ [0, 1] (low = hard)"))
    aspect = _aspect(sv.spacing, view)
    fig = Figure(figsize=(2.45 * len(panels), 3.25), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    tum2d = _plane(tum, view, idx)[rs, cs] if tum is not None else None
    for ax, (title, vol, cmap, (lo, hi), unit) in zip(axes, panels):
        im = ax.imshow(_plane(vol, view, idx)[rs, cs], cmap=cmap, vmin=lo, vmax=hi, origin="lower",
                       aspect=aspect, interpolation="nearest")
        if tum2d is not None and tum2d.any():  # red on grey/viridis; cyan on the error's magma
            ax.contour(tum2d.astype(np.float32), levels=[0.5], colors="cyan" if cmap == "magma" else "red", linewidths=0.8)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        cb = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.06, pad=0.03)
        cb.ax.tick_params(labelsize=6)
        cb.set_label(unit, fontsize=7)
    return _save(fig, path)


def comparison_grid(ref: np.ndarray, preds: list[tuple[str, np.ndarray]], foreground: np.ndarray,
                    slices: list[int], path: Path, *, view: str = "axial", spacing=(1.0, 1.0, 1.0),
                    target: str = "target", units: str = "", source: tuple[str, np.ndarray] | None = None,
                    tumour: np.ndarray | None = None) -> Path:
    """The same slices of every compared method side by side (Nie et al. Figs. 3–5, MedGAN Figs. 4–8).

    Per slice two rows: [source] | reference | method 1 … N, and below each method its
    |method − reference|. Arrays are (X, Y, Z). Grey levels: reference and every method share the
    reference's 0.5–99.5th-percentile window inside the foreground of that slice; the error maps of
    one slice share one scale, 0 … the largest of the methods' 99.5th percentiles there, so the
    methods' errors are comparable by eye. Panels are cropped to the foreground (+ tumour) box; the
    tumour is outlined where a label exists.
    """
    cols = (1 if source is not None else 0) + 1 + len(preds)
    fig = Figure(figsize=(2.0 * cols, 4.1 * len(slices)), layout="constrained")
    axes = fig.subplots(2 * len(slices), cols, squeeze=False)
    aspect = _aspect(tuple(spacing), view)
    for r, idx in enumerate(slices):
        fg2 = _plane(foreground, view, idx)
        tum2 = _plane(tumour, view, idx) if tumour is not None else None
        rs, cs = _crop_box(fg2 | (tum2 if tum2 is not None else False))
        ref2 = _plane(ref, view, idx)
        win = _window(ref2[fg2]) if fg2.any() else _window(ref2.ravel())
        errs = [np.abs(_plane(p, view, idx) - ref2) for _, p in preds]
        err_hi = max([float(np.percentile(e[fg2], 99.5)) if fg2.any() else float(e.max()) for e in errs] + [1e-6])
        panels = ([(f"source ({source[0]})", _plane(source[1], view, idx), "gray",
                    _window(_plane(source[1], view, idx)[fg2]) if fg2.any() else None)] if source is not None else [])
        panels += [(f"reference ({target})", ref2, "gray", win)] + [(name, _plane(p, view, idx), "gray", win)
                                                                     for name, p in preds]
        top, bottom = axes[2 * r], axes[2 * r + 1]
        for c, (title, img, cmap, w) in enumerate(panels):
            lo, hi = w if w is not None else _window(img.ravel())
            im = top[c].imshow(img[rs, cs], cmap=cmap, vmin=lo, vmax=hi, origin="lower", aspect=aspect,
                               interpolation="nearest")
            top[c].set_title(f"{title}\nslice {idx}" if c == 0 else title, fontsize=7)
            if tum2 is not None and tum2[rs, cs].any():
                top[c].contour(tum2[rs, cs].astype(np.float32), levels=[0.5], colors="red", linewidths=0.6)
        first = cols - len(preds)
        for c in range(cols):
            top[c].set_xticks([])
            top[c].set_yticks([])
            bottom[c].set_visible(c >= first)
        for c, (name, _), e in zip(range(first, cols), preds, errs):
            im = bottom[c].imshow(e[rs, cs], cmap="magma", vmin=0.0, vmax=err_hi, origin="lower", aspect=aspect,
                                  interpolation="nearest")
            bottom[c].set_title(f"|{name} − reference|", fontsize=7)
            bottom[c].set_xticks([])
            bottom[c].set_yticks([])
        cb = fig.colorbar(im, ax=list(bottom[first:]), orientation="horizontal", fraction=0.05, pad=0.02)
        cb.ax.tick_params(labelsize=6)
        cb.set_label(f"absolute error ({units})" if units else "absolute error", fontsize=7)
    return _save(fig, path)


def error_vs_distance(rows: list[dict], path: Path, *, units: str, n_subjects: int) -> Path:
    """MAE per signed-distance bin (negative = inside the tumour), voxel counts as grey bars."""
    x = np.arange(len(rows))
    mae = np.array([r["mae"] for r in rows])
    counts = np.array([r["voxels"] for r in rows])
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    ax = fig.subplots()
    ax2 = ax.twinx()
    ax2.bar(x, counts, color="0.85", width=0.8, zorder=0)
    ax2.set_ylabel("voxels", fontsize=8, color="0.45")
    ax2.tick_params(labelsize=7, colors="0.45")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    inside = [i for i, r in enumerate(rows) if r["hi"] <= 0]
    if inside:
        ax.axvspan(inside[0] - 0.5, inside[-1] + 0.5, color="tab:red", alpha=0.08, lw=0)
        ax.text(inside[-1] + 0.4, 0.97, "inside tumour ←", transform=ax.get_xaxis_transform(), ha="right", va="top",
                fontsize=7, color="tab:red")
    ok = np.isfinite(mae)
    ax.plot(x[ok], mae[ok], "o-", ms=3.5, color="tab:red")
    # ticks on the bin edges (between the points), every 10 mm; the two end bins are open-ended
    edges = [(i - 0.5, r["lo"]) for i, r in enumerate(rows) if math.isfinite(r["lo"])]
    ticks = [(pos, lo) for pos, lo in edges if abs(lo / 10 - round(lo / 10)) < 1e-9]
    ax.set_xticks([p for p, _ in ticks], [f"{v:g}" for _, v in ticks], fontsize=7)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel(f"signed distance to the tumour surface (mm); end bins: < {rows[1]['lo']:g} and ≥ {rows[-1]['lo']:g}",
                  fontsize=8)
    ax.set_ylabel(f"mean absolute error ({units})", fontsize=8)
    ax.set_title(f"error vs distance to the tumour ({n_subjects} subject{'s' if n_subjects != 1 else ''} with a label)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def error_vs_intensity(rows: list[dict], path: Path, *, units: str, target: str, n_subjects: int) -> Path:
    """MAE and mean signed error (bias) per reference-intensity bin, voxel counts as grey bars."""
    centres = np.array([(r["lo"] + r["hi"]) / 2 for r in rows])
    width = rows[0]["hi"] - rows[0]["lo"] if rows else 1.0
    mae = np.array([r["mae"] for r in rows])
    bias = np.array([r["bias"] for r in rows])
    counts = np.array([r["voxels"] for r in rows])
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    ax = fig.subplots()
    ax2 = ax.twinx()
    ax2.bar(centres, counts, width=0.85 * width, color="0.85", zorder=0)
    ax2.set_ylabel("voxels (sampled)", fontsize=8, color="0.45")
    ax2.tick_params(labelsize=7, colors="0.45")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ok = np.isfinite(mae)
    ax.plot(centres[ok], mae[ok], "o-", ms=3.5, color="tab:red", label="mean |error|")
    ax.plot(centres[ok], bias[ok], "s--", ms=3, color="tab:blue", label="mean error (synthesis − reference)")
    ax.axhline(0, color="0.3", lw=0.6)
    ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelsize=7)
    ax.set_xlabel(f"reference {target} intensity ({units}), foreground voxels", fontsize=8)
    ax.set_ylabel(f"error ({units})", fontsize=8)
    ax.set_title(f"error per intensity bin ({n_subjects} subject{'s' if n_subjects != 1 else ''}, pooled)", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)
