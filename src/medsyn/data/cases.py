"""A subject's images loaded onto one grid, ready to normalise and sample.

``load_case`` reads the requested modalities of a subject, checks that they share one grid
(shape and affine within tolerance — or resamples them onto the first source's grid when asked),
reads or computes the foreground mask, and reads the optional label map.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsyn.data.dataset import Subject
from medsyn.data.masks import as_mask, compute_mask
from medsyn.errors import DatasetError, GeometryError, MedsynWarning, labels_outside_mask_message
from medsyn.io.image import Volume, grid_difference, read_image, resample_to, same_grid


@dataclass
class Case:
    """One subject on one canonical grid.

    sources: modality → Volume (native units). target: Volume or None (prediction-only input).
    mask: bool (X, Y, Z) foreground. label: int (X, Y, Z) or None. reference: the grid's Volume
    (the first source), used to write outputs back in the input's own geometry.
    """

    id: str
    sources: dict[str, Volume]
    target: Volume | None
    mask: np.ndarray
    label: np.ndarray | None
    reference: Volume
    mask_source: str = "computed"


def _check_finite(v: Volume) -> None:
    a = v.array
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        n = int((~np.isfinite(a)).sum())
        raise DatasetError(f"{v.path}: {n} voxels are NaN or infinite; fix or remove the file")


def _on_grid(v: Volume, ref: Volume, resample: bool, is_label: bool = False) -> Volume:
    if same_grid(v, ref):
        return v
    if not resample:
        raise GeometryError(
            f"{v.path}: grid differs from {ref.path} ({grid_difference(v, ref)}); co-register the images, or "
            "resample them onto the first modality's grid with data.resample=true (train: --set data.resample=true)"
        )
    out = resample_to(v, ref, is_label=is_label)
    out.path = v.path
    return out


def load_case(
    subject: Subject,
    sources: list[str],
    target: str | None,
    *,
    mask: str | None = None,
    label: str | None = None,
    resample: bool = False,
    require_target: bool = True,
) -> Case:
    """Read ``subject``'s ``sources`` (+ ``target``, mask, label) onto one grid.

    mask: modality name of a mask file; when None, ``brainmask``/``bodymask`` are used if the
    subject has one, else the mask is computed from the first source (threshold + largest
    component + hole filling). label: modality name of a label map, used when present.
    """
    vols: dict[str, Volume] = {}
    for m in sources:
        v = read_image(subject.path(m))
        _check_finite(v)
        vols[m] = v
    ref = vols[sources[0]]
    for m in sources[1:]:
        vols[m] = _on_grid(vols[m], ref, resample)
    tgt = None
    if target is not None and (require_target or target in subject.files):
        tgt = read_image(subject.path(target))
        _check_finite(tgt)
        tgt = _on_grid(tgt, ref, resample)
    mask_name = mask or next((n for n in ("brainmask", "bodymask", "mask") if n in subject.files), None)
    if mask_name is not None and mask_name in subject.files:
        mv = _on_grid(read_image(subject.path(mask_name)), ref, resample, is_label=True)
        fg = as_mask(mv.array, mv.path)
        mask_source = mask_name
    elif mask is not None:
        raise DatasetError(f"{subject.folder or subject.id}: mask {mask!r} not found for subject {subject.id!r}")
    else:
        try:
            fg = compute_mask(ref.array)
        except DatasetError as e:
            raise DatasetError(f"{ref.path}: {e}") from None
        mask_source = "computed"
    lab = None
    if label is not None and label in subject.files:
        lv = _on_grid(read_image(subject.path(label)), ref, resample, is_label=True)
        lab = np.rint(np.asarray(lv.array, dtype=np.float32)).astype(np.int16)
        if mask_source != "computed":  # the same check and words as `medsyn verify`
            outside = int(((lab != 0) & ~fg).sum())
            if outside:
                warnings.warn(labels_outside_mask_message(lv.path, Path(str(subject.path(mask_source))).name, outside),
                              MedsynWarning, stacklevel=2)
    return Case(subject.id, vols, tgt, fg, lab, ref, mask_source)
