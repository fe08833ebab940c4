"""Qu et al.'s qualitative figures from medsyn's outputs (``medsyn qu figure``).

- **Figs. 7–8** (:func:`synthetic_figure`): a synthetic data set from ``medsyn generate`` — per
  case one row: the generated structure map ``f_g`` (``structure``), the brain ``1 − mask_g``
  (``brainmask``), the input lesion label, then every generated modality with the label outlined.
- **Fig. 9** (:func:`table1_figure`): ``table1_examples.npz`` of ``segment-experiment --table 1``
  — the real-trained segmenter on real and on each variant's synthetic test slices: per test set
  and example slice, the image, the true label and the predicted label of every segmenter view.
- **Fig. 10** (:func:`table2_figure`): ``table2_examples.npz`` of Table 2 — the same real test
  slices segmented by the segmenters of different rows (real only, synthetic only, mixes …).

Label colours: class 1 red, 2 yellow, 3 green, 4 blue (BraTS 2021+: necrosis, oedema,
enhancing; BRATS2015 has 1–4 as necrosis, oedema, non-enhancing, enhancing). Images are shown in
their own 0.5–99.5th-percentile window inside the brain (synthetic: the networks' [0, 1] range;
examples: the standardised slices the segmenters saw).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from medsyn.errors import ConfigError, DatasetError
from medsyn.reports.figures import _save

#: label class → colour (0 transparent)
LABEL_COLOURS = ["#00000000", "#e41a1c", "#ffd92f", "#4daf4a", "#377eb8", "#984ea3", "#ff7f00"]


def _label_cmap(n: int) -> ListedColormap:
    return ListedColormap(LABEL_COLOURS[:max(n, 2)])


def _window(img: np.ndarray, inside: np.ndarray | None = None) -> tuple[float, float]:
    v = img[inside] if inside is not None and inside.any() else img.ravel()
    lo, hi = np.percentile(v, [0.5, 99.5]) if v.size else (0.0, 1.0)
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def _panel(ax, img: np.ndarray, title: str, *, cmap: str = "gray", window: tuple[float, float] | None = None,
           label: np.ndarray | None = None, outline: np.ndarray | None = None, n_classes: int = 5) -> None:
    """One 2D panel (H, W) drawn with row 0 at the top, as the slices are stored."""
    lo, hi = window if window is not None else (float(img.min()), float(max(img.max(), img.min() + 1e-6)))
    ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    if label is not None:
        ax.imshow(np.ma.masked_equal(label, 0), cmap=_label_cmap(n_classes), vmin=0, vmax=max(n_classes - 1, 1),
                  interpolation="nearest", alpha=0.7)
    if outline is not None and outline.any():
        ax.contour((outline > 0).astype(np.float32), levels=[0.5], colors="red", linewidths=0.6)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _n_classes(*labels: np.ndarray) -> int:
    return int(max([int(np.max(lab)) if np.size(lab) else 0 for lab in labels] + [1])) + 1


# --------------------------------------------------------------------------- Figs. 7–8


def synthetic_figure(root: str | Path, path: str | Path, *, n: int = 4) -> Path:
    """Figs. 7–8 from a ``medsyn generate`` folder: its first ``n`` cases (first slice of each)."""
    from medsyn.io.image import read_image

    root = Path(root)
    rec_path = root / "generate.json"
    if not rec_path.is_file():
        raise DatasetError(f"{root}: no generate.json; give a folder written by `medsyn generate`")
    if n < 1:
        raise ConfigError(f"--n: got {n}; expected ≥ 1 cases")
    rec = json.loads(rec_path.read_text())
    mods = list(rec["modalities"])
    label_name = rec.get("label", "seg")
    cases = [s["id"] for s in rec.get("subjects", []) if (root / s["id"]).is_dir()][:n]
    if not cases:
        raise DatasetError(f"{root}: generate.json lists no written case")

    def load(sid: str, name: str) -> np.ndarray | None:
        f = root / sid / f"{name}.nii.gz"
        return np.asarray(read_image(f).array)[:, :, 0] if f.is_file() else None

    has_structure = (root / cases[0] / "structure.nii.gz").is_file()
    cols = (1 if has_structure else 0) + 2 + len(mods)
    fig = Figure(figsize=(1.7 * cols, 1.9 * len(cases) + 0.4), layout="constrained")
    axes = fig.subplots(len(cases), cols, squeeze=False)
    for r, sid in enumerate(cases):
        label = load(sid, label_name)
        brain = load(sid, "brainmask")
        if label is None or brain is None:
            raise DatasetError(f"{root / sid}: {label_name}.nii.gz or brainmask.nii.gz missing")
        label = label.astype(np.int64)
        ncls = max(_n_classes(label), 4)
        c = 0
        row = axes[r]
        if has_structure:
            f = load(sid, "structure")
            _panel(row[c], f if f is not None else np.zeros_like(brain), f"{sid}\nstructure map f_g", window=(0, 1))
            c += 1
        _panel(row[c], brain, "brain (1 − mask_g)", window=(0, 1))
        _panel(row[c + 1], np.zeros_like(brain, dtype=np.float32), f"lesion label ({label_name})", window=(0, 1),
               label=label, n_classes=ncls)
        for j, m in enumerate(mods):
            img = load(sid, m)
            if img is None:
                raise DatasetError(f"{root / sid}: {m}.nii.gz missing")
            _panel(row[c + 2 + j], img, m, window=_window(img, brain > 0), outline=label > 0)
    fig.suptitle(f"Qu et al. Figs. 7–8 — synthetic cases of {root.name} (label outlined in red)", fontsize=8)
    return _save(fig, Path(path))


# --------------------------------------------------------------------------- Figs. 9–10


def _view_index(views: Sequence[str], view: str | None) -> int:
    views = list(views)
    if view is None:
        return len(views) - 1
    if view not in views:
        raise ConfigError(f"--view: got {view!r}; the segmenters' views are {', '.join(views)}")
    return views.index(view)


def table1_figure(npz: str | Path, path: str | Path, *, view: str | None = None) -> Path:
    """Fig. 9: per test set (real, each variant's synthetic set) and example slice: image, true
    label, and the real-trained segmenter's prediction of every view."""
    d = np.load(npz)
    sets, views = [str(s) for s in d["sets"]], [str(v) for v in d["views"]]
    vi = _view_index(views, view)
    blocks = [(s, k) for s in sets for k in range(d[f"{s}/labels"].shape[0])]
    if not blocks:
        raise DatasetError(f"{npz}: no example slices")
    cols = 2 + len(views)
    fig = Figure(figsize=(1.7 * cols, 1.9 * len(blocks) + 0.4), layout="constrained")
    axes = fig.subplots(len(blocks), cols, squeeze=False)
    per_modality = len(views) > 1  # the views are the modalities, in the images' channel order
    for r, (s, k) in enumerate(blocks):
        img = d[f"{s}/images"][k].astype(np.float32)
        lab = d[f"{s}/labels"][k].astype(np.int64)
        pred = d[f"{s}/predictions"][k]
        ncls = max(_n_classes(lab, pred), 4)
        ch = vi if per_modality else img.shape[0] - 1
        brain = img[ch] != img[ch].min()
        win = _window(img[ch], brain)
        shown = views[vi] if per_modality else "last channel"
        kind = "real" if s == "real" else f"{s} synthetic"
        _panel(axes[r][0], img[ch], f"{kind} test {d[f'{s}/origin'][k]}\n({shown})", window=win)
        _panel(axes[r][1], img[ch], "true label", window=win, label=lab, n_classes=ncls)
        for j, v in enumerate(views):
            c = j if per_modality else ch
            _panel(axes[r][2 + j], img[c], f"predicted ({v})", window=_window(img[c], brain), label=pred[j],
                   n_classes=ncls)
    fig.suptitle("Qu et al. Fig. 9 — the real-trained segmenter on real and synthetic test slices", fontsize=8)
    return _save(fig, Path(path))


def table2_figure(npz: str | Path, path: str | Path, *, rows: str | Sequence[int] | None = None,
                  view: str | None = None) -> Path:
    """Fig. 10: the example real test slices (image, true label) and the prediction of the chosen
    Table 2 rows' segmenters (view ``view``, default the last modality)."""
    d = np.load(npz)
    have, views = [int(i) for i in d["rows"]], [str(v) for v in d["views"]]
    vi = _view_index(views, view)
    want = have if rows is None else ([int(x) for x in rows.split(",") if x.strip()] if isinstance(rows, str)
                                      else [int(x) for x in rows])
    bad = [i for i in want if i not in have]
    if bad or not want:
        raise ConfigError(f"--rows: {bad or rows} not in {npz} (rows: {', '.join(map(str, have))})")
    images, labels, origin = d["images"].astype(np.float32), d["labels"].astype(np.int64), d["origin"]
    if not len(labels):
        raise DatasetError(f"{npz}: no example slices")
    ch = vi if len(views) > 1 else images.shape[1] - 1
    cols = 2 + len(want)
    fig = Figure(figsize=(1.7 * cols, 1.9 * len(labels) + 0.4), layout="constrained")
    axes = fig.subplots(len(labels), cols, squeeze=False)
    for k in range(len(labels)):
        img = images[k, ch]
        brain = img != img.min()
        win = _window(img, brain)
        ncls = max(_n_classes(labels[k], d["predictions"][:, k]), 4)
        _panel(axes[k][0], img, f"real test {origin[k]}\n({views[vi]})", window=win)
        _panel(axes[k][1], img, "true label", window=win, label=labels[k], n_classes=ncls)
        for j, row in enumerate(want):
            _panel(axes[k][2 + j], img, f"row {row}", window=win, label=d["predictions"][have.index(row), k, vi],
                   n_classes=ncls)
    fig.suptitle("Qu et al. Fig. 10 — one real test set, segmenters trained on different data (Table 2 rows)",
                 fontsize=8)
    return _save(fig, Path(path))


def figure(source: str | Path, path: str | Path, *, n: int = 4, rows: str | Sequence[int] | None = None,
           view: str | None = None) -> Path:
    """The figure ``source`` holds: a synthetic set (Figs. 7–8), a Table 1 folder (Fig. 9) or a
    Table 2 folder (Fig. 10)."""
    source = Path(source)
    if (source / "generate.json").is_file():
        return synthetic_figure(source, path, n=n)
    if (source / "table2_examples.npz").is_file():
        return table2_figure(source / "table2_examples.npz", path, rows=rows, view=view)
    if (source / "table1_examples.npz").is_file():
        return table1_figure(source / "table1_examples.npz", path, view=view)
    raise DatasetError(f"{source}: neither a synthetic data set (generate.json) nor a segment-experiment folder with "
                       "table1_examples.npz / table2_examples.npz (written by segment-experiment --examples K > 0)")


__all__ = ["figure", "synthetic_figure", "table1_figure", "table2_figure"]
