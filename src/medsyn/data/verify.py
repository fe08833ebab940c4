"""``medsyn verify``: check every subject of a dataset before training on it.

For each subject: every image file is read *fully* (decompressed, not only its header); the
requested modalities are present (other files are reported, not errors); all images share one
grid (shape and affine within tolerance) unless ``resample`` is on, in which case they are
checked to be resample-able; values are finite; masks are non-empty; label maps hold
non-negative integers. Every problem is collected — nothing stops at the first bad file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsyn.data.dataset import LABEL_NAMES, MASK_NAMES, Dataset, discover
from medsyn.data.layouts import canonical_modality
from medsyn.errors import DatasetError, labels_outside_mask_message
from medsyn.io.image import Volume, grid_difference, read_image

AFFINE_ATOL_MM = 1e-3


@dataclass
class Problem:
    subject: str
    path: str
    message: str


@dataclass
class SubjectReport:
    id: str
    modalities: dict[str, str] = field(default_factory=dict)  # modality → "shape @ spacing"
    extra: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # reported; training accepts them

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    root: Path
    subjects: list[SubjectReport]
    requested: list[str]
    layout: str = ""  # the recognised layout, e.g. "brats2023: BraTS 2023-2025 (<id>/<id>-t1n.nii.gz)"
    found: list[str] = field(default_factory=list)  # modality names found in any subject

    @property
    def layout_line(self) -> str:
        return f"layout {self.layout}; modalities found: {', '.join(self.found) or 'none'}"

    @property
    def problems(self) -> list[Problem]:
        return [p for s in self.subjects for p in s.problems]

    @property
    def warnings(self) -> list[Problem]:
        return [p for s in self.subjects for p in s.warnings]

    @property
    def ok(self) -> bool:
        return not self.problems


def _describe(v: Volume) -> str:
    return f"{'×'.join(map(str, v.original_shape))} @ {'×'.join(f'{s:.3g}' for s in v.spacing)} mm"


def verify_dataset(root: str | Path, modalities: list[str] | None = None, *, manifest: str | Path | None = None,
                   resample: bool = False, subjects: list[str] | None = None) -> VerifyReport:
    """Check a dataset; returns a report (the CLI prints it and exits 2 when it has problems)."""
    ds: Dataset = discover(root, manifest)
    requested = [canonical_modality(m) for m in modalities or []]
    reports = []
    for sid in subjects or ds.ids():
        if sid not in ds.subjects:
            raise DatasetError(f"{ds.root}: no subject {sid!r}")
        reports.append(verify_subject(ds, sid, requested, resample))
    return VerifyReport(ds.root, reports, requested, ds.describe_layout(), sorted(ds.modalities()))


def verify_subject(ds: Dataset, sid: str, requested: list[str], resample: bool) -> SubjectReport:
    subj = ds.subjects[sid]
    rep = SubjectReport(sid, extra=[p.name for p in subj.extra])
    where = str(subj.folder or ds.root)
    for m in requested:
        if m not in subj.files:
            name = subj.layout.file_name(m) if subj.layout else f"{m}.nii.gz"
            rep.problems.append(Problem(sid, f"{where}/{name}", f"missing modality {m!r} "
                                        f"(subject has: {', '.join(sorted(subj.files)) or 'no images'})"))
    checked = list(requested) if requested else sorted(subj.files)  # a copy: never grow the caller's list
    others = [m for m in sorted(subj.files) if m not in checked]
    if requested:
        # masks and labels are always checked; other unrequested images are reported as extra
        checked += [m for m in others if m in MASK_NAMES + LABEL_NAMES]
        rep.extra += [subj.files[m].name for m in others if m not in MASK_NAMES + LABEL_NAMES]
    vols: dict[str, Volume] = {}
    for m in checked:
        if m not in subj.files:
            continue
        path = subj.files[m]
        try:
            v = read_image(path)
        except DatasetError as e:
            rep.problems.append(Problem(sid, str(path), str(e).removeprefix(f"{path}: ")))
            continue
        vols[m] = v
        rep.modalities[m] = _describe(v)
        a = v.array
        if np.issubdtype(a.dtype, np.floating):
            bad = int((~np.isfinite(a)).sum())
            if bad:
                rep.problems.append(Problem(sid, str(path), f"{bad} of {a.size} voxels are NaN or infinite"))
                continue
        if a.size > 1 and a.min() == a.max() and m not in MASK_NAMES + LABEL_NAMES:
            rep.problems.append(Problem(sid, str(path), f"image is constant (every voxel = {a.flat[0]})"))
        if m in MASK_NAMES and not (a != 0).any():
            rep.problems.append(Problem(sid, str(path), "mask is empty (all zeros)"))
        if m in LABEL_NAMES:
            af = np.asarray(a, dtype=np.float64)
            if (af < 0).any() or not np.allclose(af, np.rint(af)):
                rep.problems.append(Problem(sid, str(path), "label map must hold non-negative integers"))
    if vols:
        ref_name = next((m for m in requested if m in vols), next(iter(vols)))
        ref = vols[ref_name]
        for m, v in vols.items():
            if m == ref_name:
                continue
            if v.shape != ref.shape or not np.allclose(v.affine, ref.affine, atol=AFFINE_ATOL_MM):
                if resample:
                    continue  # resampled onto the reference grid at load time
                what = grid_difference(v, ref, atol=AFFINE_ATOL_MM) or "affines differ"
                rep.problems.append(Problem(sid, str(subj.files[m]),
                                            f"grid differs from {subj.files[ref_name].name} ({what}); co-register, or "
                                            "pass --resample to resample onto the first modality (train: "
                                            "--set data.resample=true)"))
        # a label must lie inside the mask when both exist
        mask_name = next((n for n in MASK_NAMES if n in vols), None)
        label_name = next((n for n in LABEL_NAMES if n in vols), None)
        if mask_name and label_name and vols[mask_name].shape == vols[label_name].shape:
            outside = int(((vols[label_name].array != 0) & (vols[mask_name].array == 0)).sum())
            if outside:  # a warning, as in training (docs/data.md): BRATS2015 has such voxels
                rep.warnings.append(Problem(sid, str(subj.files[label_name]), labels_outside_mask_message(
                    subj.files[label_name], subj.files[mask_name].name, outside)))
    return rep
