"""Downstream check of completed cases, as BraSyn scores it: does a segmenter find the same tumour
with a synthesised contrast as with the real one?

``medsyn evaluate --segmenter RUN --pred COMPLETED --ref DATASET`` (:func:`segmenter_dice`): for
every subject of ``COMPLETED`` (a folder of synthesised contrasts, any layout medsyn recognises,
e.g. the output of ``medsyn predict RUN DATASET --missing``), segment the subject twice with the
4-contrast lesion segmenter of a Qu et al. pipeline run (its ``segmenter`` stage: one MONAI 2D UNet
per contrast by default, whose class probabilities are averaged, or one on all contrasts as channels
with ``params.segmenter_input: multichannel``; medsyn.methods.qu2023.build_segmenter) — once with the reference's real
contrasts, once with the synthesised ones in place of the real — and report Dice against the
reference label, per label and per BraTS region.

Conventions (choices, docs/brasyn.md):

* Slices: the axial slices the segmenter was trained on (the run's ``params.slice_range``, mm from
  the first slice) whose brain covers ≥ 1 % of the slice; each slice is standardised and
  padded/cropped exactly as in training (medsyn.data.qu_slices). Dice is 3D over those slices.
* The brain mask of both passes is the reference's (its ``brainmask``, else computed from the first
  real contrast), so the two passes differ only in the synthesised contrast.
* Labels ``1 … n_classes − 1`` of the run; with 4 classes (BraTS 2021+: 1 necrosis, 2 oedema,
  3 enhancing) also the BraTS regions WT (label > 0), TC (1 ∪ 3) and ET (3). A Dice where both the
  prediction and the reference are empty is 1 (the BraTS convention).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsyn.errors import DatasetError

#: BraTS 2021+ regions as label sets (4 classes: 0 background, 1 NCR, 2 ED, 3 ET)
BRATS_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean maps; 1.0 when both are empty."""
    denom = int(pred.sum()) + int(ref.sum())
    return 1.0 if denom == 0 else 2.0 * float((pred & ref).sum()) / denom


def region_dice(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> dict[str, float]:
    """Dice per label ``"1" … str(n_classes − 1)`` and, for 4 classes, per BraTS region (WT, TC, ET)."""
    out = {str(c): dice(pred == c, ref == c) for c in range(1, n_classes)}
    if n_classes == 4:
        for name, labels in BRATS_REGIONS.items():
            out[name] = dice(np.isin(pred, labels), np.isin(ref, labels))
    return out


def _unfit(b: np.ndarray, shape: tuple[int, int], off: tuple[int, int]) -> np.ndarray:
    """Inverse of ``fit_to_size``: ``out[i, j] = b[i - off0, j - off1]`` where that exists, else 0."""
    out = np.zeros(shape, b.dtype)
    i0, j0 = max(0, off[0]), max(0, off[1])
    i1, j1 = min(shape[0], off[0] + b.shape[0]), min(shape[1], off[1] + b.shape[1])
    out[i0:i1, j0:j1] = b[i0 - off[0]:i1 - off[0], j0 - off[1]:j1 - off[1]]
    return out


@torch.no_grad()
def segment_volume(model: torch.nn.Module, images: list[np.ndarray], brain: np.ndarray, slices: list[int],
                   slice_size: list[int], clip: float, device: torch.device) -> np.ndarray:
    """Contrasts (X, Y, Z) in native units (the segmenter's channel order) → class map (X, Y, Z), int16;
    0 outside ``slices`` and outside the brain."""
    from medsyn.data.qu_slices import fit_to_size, standardize_image
    from medsyn.methods.qu2023 import segment_views

    out = np.zeros(brain.shape, np.int16)
    for k in slices:
        stack = np.stack([standardize_image(a[:, :, k], brain[:, :, k], clip) for a in images], axis=-1)
        fitted, off = fit_to_size(stack, slice_size)
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(fitted, -1, 0))[None]).to(device)
        views = segment_views(model, x)[0]  # (V, C, H, W): V = 1, or one view per contrast (per-modality segmenters)
        pred = views.mean(0).argmax(0).cpu().numpy().astype(np.int16)  # per-modality: mean of the contrasts' probabilities
        out[:, :, k] = _unfit(pred, brain.shape[:2], off) * brain[:, :, k]
    return out


def segmenter_dice(run: str | Path, pred_dir: str | Path, ref_root: str | Path, *, device: str = "cpu",
                   manifest: str | Path | None = None) -> dict[str, Any]:
    """Dice of the run's segmenter with real vs completed inputs, per subject and averaged (module docstring).

    Returns {"settings": ..., "per_subject": {sid: {"synthesised": [...], "real": {...}, "completed": {...}}},
    "summary": {"real": {...}, "completed": {...}, "difference": {...}}} (difference = completed − real).
    """
    from medsyn.data.cases import load_case
    from medsyn.data.dataset import Subject, discover
    from medsyn.data.qu_slices import MIN_BRAIN_FRACTION, slice_indices
    from medsyn.io.image import read_image, same_grid
    from medsyn.pipelines.qu import load_stage, read_pipeline
    from medsyn.training.engine import resolve_device

    _, p, state = read_pipeline(run)
    dev = resolve_device(device)
    model = load_stage(run, "segmenter", dev).networks["S"]
    mods, size = list(p.modalities), list(state["slice_size"])
    ref_ds, pred_ds = discover(ref_root, manifest), discover(pred_dir)
    per_subject: dict[str, Any] = {}
    for sid in pred_ds.ids():
        synth = [m for m in mods if m in pred_ds.subjects[sid].files]
        if not synth:
            continue
        if sid not in ref_ds.subjects:
            raise DatasetError(f"{pred_ds.subjects[sid].folder}: subject {sid!r} is not in the reference dataset {ref_ds.root}")
        real = ref_ds.subjects[sid]
        if p.label not in real.files:
            raise DatasetError(f"{real.folder or ref_ds.root}: subject {sid!r} has no {p.label!r} label; the segmenter "
                               "check needs the reference segmentation")
        case = load_case(real, mods, None, label=p.label)
        completed = {m: read_image(pred_ds.subjects[sid].files[m]) for m in synth}
        for m, v in completed.items():
            if not same_grid(v, case.reference):
                raise DatasetError(f"{v.path}: grid {v.shape} differs from the reference {case.reference.path} "
                                   f"{case.reference.shape}; completed contrasts must be in the reference's geometry")
        slices = [k for k in slice_indices(case.reference.shape[2], case.reference.spacing[2], p.slice_range)
                  if case.mask[:, :, k].mean() >= MIN_BRAIN_FRACTION]
        if not slices:
            raise DatasetError(f"{real.folder}: no axial slice of subject {sid!r} in the segmenter's slice range "
                               f"{p.slice_range} mm holds brain")
        ref_label = np.zeros_like(case.label)
        ref_label[:, :, slices] = case.label[:, :, slices] * case.mask[:, :, slices]
        seg = {}
        for kind, arrays in (("real", [case.sources[m].array for m in mods]),
                             ("completed", [(completed[m] if m in completed else case.sources[m]).array for m in mods])):
            labels = segment_volume(model, arrays, case.mask, slices, size, p.standardize_clip, dev)
            seg[kind] = region_dice(labels, ref_label, p.n_classes)
        per_subject[sid] = {"synthesised": synth, "slices": len(slices), **seg}
    if not per_subject:
        raise DatasetError(f"{pred_dir}: no synthesised contrast of {', '.join(mods)} found (expected e.g. "
                           "<id>/<id>-t2w.nii.gz, as `medsyn predict RUN DATASET --missing` writes)")
    keys = list(next(iter(per_subject.values()))["real"])
    summary = {kind: {k: float(np.mean([r[kind][k] for r in per_subject.values()])) for k in keys}
               for kind in ("real", "completed")}
    summary["difference"] = {k: summary["completed"][k] - summary["real"][k] for k in keys}
    settings = {"protocol": "segmenter", "segmenter_run": str(run), "modalities": mods, "n_classes": p.n_classes,
                "slice_range_mm": list(p.slice_range), "slice_size": size, "label": p.label,
                "regions": {k: list(v) for k, v in BRATS_REGIONS.items()} if p.n_classes == 4 else {},
                "dice_empty": 1.0, "brain_mask": "the reference's (both passes)"}
    return {"settings": settings, "per_subject": per_subject, "summary": summary}


def write_segmenter_results(res: dict[str, Any], out: str | Path) -> Path:
    from medsyn.io.image import atomic_write_bytes

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps(res, indent=1, sort_keys=True).encode())
    return out
