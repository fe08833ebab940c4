"""``medsyn evaluate``: compare predicted volumes with a reference dataset, per subject and region.

Predictions are read from ``PRED/<subject>/<modality>.nii.gz`` (what ``medsyn predict`` writes)
and compared, in the files' own units (HU for CT, the MR scale), with the reference dataset's
``<subject>/<modality>``. Both must share the grid.

Settings stated in the output:

* mask: the foreground region — ``auto`` uses the subject's brainmask/bodymask, else a mask
  computed from the reference (threshold + largest component + hole filling); or a named file.
* data_range: ``ref`` = max − min of the reference inside the foreground, per subject (the usual
  convention for MR, which has no absolute scale); or a fixed number (e.g. 4024 for CT in
  [-1024, 3000] HU), the same for every subject.
* regions: foreground; and where a label map (``seg``) exists: tumour (label > 0), healthy
  (foreground without tumour) and one region per label value.

``protocol`` (``--protocol``) replaces all of this with a challenge's official scorer
(:mod:`medsyn.metrics.protocols`: brasyn, synthrad2023, synthrad2025); the JSON keeps the same
shape (subjects → region → metric, summary, settings) with ``settings["protocol"]`` naming it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medsyn.data.dataset import LABEL_NAMES, MASK_NAMES, discover
from medsyn.data.masks import as_mask, compute_mask
from medsyn.errors import ConfigError, DatasetError, GeometryError
from medsyn.io.image import atomic_write_bytes, read_image, same_grid
from medsyn.metrics import METRICS, data_range_of, evaluate_volume, region_masks, summarize
from medsyn.metrics.protocols import Protocol, get_protocol

DEFAULT_METRICS = ["mae", "mse", "psnr", "ssim", "ssim3d", "uqi"]


def _find_pred(pred_dir: Path, sid: str, modality: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        p = pred_dir / sid / f"{modality}{suffix}"
        if p.is_file():
            return p
    # a prediction named as its dataset names it (BraTS 2023 <id>/<id>-t2w.nii.gz, medsyn.data.layouts)
    from medsyn.data.dataset import read_subject_folder
    from medsyn.data.layouts import canonical_modality

    d = pred_dir / sid
    return read_subject_folder(d).files.get(canonical_modality(modality)) if d.is_dir() else None


def _subjects(pred_dir: Path, ref_root: str | Path, manifest: str | Path | None,
              modality: str) -> tuple[Any, list[tuple[str, Any]]]:
    """The reference dataset and (subject id, reference Subject) of every prediction in ``pred_dir``."""
    ref_ds = discover(ref_root, manifest)
    sids = sorted(p.name for p in pred_dir.iterdir() if p.is_dir() and _find_pred(pred_dir, p.name, modality))
    if not sids:
        raise DatasetError(f"{pred_dir}: no predictions found (expected <subject>/{modality}.nii.gz)")
    for sid in sids:
        if sid not in ref_ds.subjects:
            raise DatasetError(f"{pred_dir / sid}: subject {sid!r} is not in the reference dataset {ref_ds.root}")
    return ref_ds, [(sid, ref_ds.subjects[sid]) for sid in sids]


def _read_pair(pred_dir: Path, subj: Any, modality: str) -> tuple[Any, Any]:
    """Reference and prediction Volumes of one subject: same grid, finite prediction."""
    ref_v = read_image(subj.path(modality))
    pred_v = read_image(_find_pred(pred_dir, subj.id, modality))
    if not same_grid(pred_v, ref_v):
        raise GeometryError(f"{pred_v.path}: grid {pred_v.shape} differs from the reference {ref_v.path} {ref_v.shape}; "
                            "predictions must be written in the reference's geometry")
    if not np.isfinite(pred_v.array).all():
        raise DatasetError(f"{pred_v.path}: prediction holds NaN/Inf values")
    return ref_v, pred_v


def evaluate_predictions(pred_dir: str | Path, ref_root: str | Path, modality: str, *, mask: str = "auto",
                         data_range: str | float = "ref", metrics: list[str] | None = None,
                         manifest: str | Path | None = None, label: str | None = "auto",
                         lpips_model: Any = None, protocol: str = "default") -> dict[str, Any]:
    """Metrics of every prediction in ``pred_dir`` against ``ref_root`` (see the module doc).

    ``lpips_model`` (a :class:`medsyn.metrics.lpips.LPIPS` loaded from the user's files) enables
    the ``lpips`` metric, and adds it to ``metrics`` if it is not named there.

    ``protocol`` other than ``"default"`` scores with a challenge's official definitions instead
    (:mod:`medsyn.metrics.protocols`); it fixes its own metrics, ranges and regions, so
    ``data_range``, ``metrics`` and ``lpips_model`` must be left at their defaults.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(f"{pred_dir}: prediction folder not found")
    spec = get_protocol(protocol)
    if spec.score is not None:
        given = [flag for flag, used in (("--data-range", str(data_range) != "ref"), ("--metrics", bool(metrics)),
                                         ("--lpips-weights", lpips_model is not None)) if used]
        if given:
            raise ConfigError(f"--protocol {protocol}: {', '.join(given)} cannot be combined with a challenge protocol, "
                              f"which fixes its own metrics and ranges ({', '.join(spec.metrics)}); drop "
                              f"{'them' if len(given) > 1 else 'it'} or use --protocol default")
        return _evaluate_protocol(spec, pred_dir, ref_root, modality, mask=mask, manifest=manifest, label=label)
    metrics = list(metrics or DEFAULT_METRICS)
    extra = {}
    if lpips_model is not None:
        from medsyn.metrics.lpips import lpips_metric

        extra["lpips"] = lpips_metric(lpips_model)
        if "lpips" not in metrics:
            metrics.append("lpips")
    for m in metrics:
        if m == "lpips" and lpips_model is None:
            raise ConfigError("--metrics: 'lpips' needs pretrained weights that medsyn never downloads: give "
                              "--lpips-weights LIN.pth and --lpips-backbone BACKBONE.pth (see medsyn evaluate --help)")
        if m not in extra:
            METRICS.get(m, key="--metrics")
    fixed_range = None
    if str(data_range) != "ref":
        try:
            fixed_range = float(data_range)
        except ValueError:
            raise ConfigError(f"--data-range: got {data_range!r}; expected 'ref' or a positive number") from None
        if not fixed_range > 0:
            raise ConfigError(f"--data-range: got {data_range!r}; expected a positive number")
    ref_ds, pairs = _subjects(pred_dir, ref_root, manifest, modality)
    per_subject: dict[str, Any] = {}
    ranges: dict[str, float] = {}
    mask_used: dict[str, str] = {}
    for sid, subj in pairs:
        ref_v, pred_v = _read_pair(pred_dir, subj, modality)
        ref = ref_v.array.astype(np.float64)
        pred = pred_v.array.astype(np.float64)
        if mask == "auto":
            name = next((n for n in MASK_NAMES if n in subj.files), None)
        else:
            name = mask
        if name is not None:
            mv = read_image(subj.path(name))
            if not same_grid(mv, ref_v):
                raise GeometryError(f"{mv.path}: mask grid differs from {ref_v.path}")
            fg = as_mask(mv.array, mv.path)
            mask_used[sid] = name if name not in LABEL_NAMES else f"{name} > 0"
        else:
            fg = compute_mask(ref_v.array)
            mask_used[sid] = "computed from reference"
        lab = None
        lab_name = next((n for n in LABEL_NAMES if n in subj.files), None) if label == "auto" else label
        if lab_name is not None and lab_name in subj.files:
            lv = read_image(subj.path(lab_name))
            if same_grid(lv, ref_v):
                lab = np.rint(lv.array).astype(np.int32)
        try:
            dr = fixed_range if fixed_range is not None else data_range_of(ref, fg)
        except ValueError as e:
            raise DatasetError(f"{ref_v.path}: cannot take the data range inside the mask ({e}); "
                               "pass a fixed --data-range") from None
        ranges[sid] = float(dr)
        per_subject[sid] = evaluate_volume(pred, ref, data_range=dr, regions=region_masks(fg, lab), metrics=metrics,
                                           extra=extra)
    settings = {
        "protocol": "default",
        "modality": modality, "prediction_dir": str(pred_dir), "reference": str(ref_ds.root),
        "data_range": "per-subject max-min of the reference inside the foreground" if fixed_range is None else fixed_range,
        "data_range_per_subject": ranges, "mask": mask_used, "metrics": metrics,
        "units": "the files' own units (HU for CT, MR scanner scale for MR)",
        "psnr_identical": "inf (no cap); summaries count finite values only and report n_inf",
    }
    if lpips_model is not None:
        settings["lpips"] = {
            **lpips_model.source,
            "input": "axial slices; ref min … ref min + data_range → [-1, 1], grey repeated to RGB",
        }
    return {"subjects": per_subject, "summary": summarize(per_subject), "settings": settings}


# HU plausibility for the CT-only protocols: every CT of a body part holds air (≈ −1000 HU) around the
# body or inside it; an MR volume (scanner units ≥ 0, or z-scores of a few units) never goes this low.
CT_NAMES = ("ct",)
CT_AIR_BELOW_HU = -500.0


def _evaluate_protocol(spec: Protocol, pred_dir: Path, ref_root: str | Path, modality: str, *, mask: str,
                       manifest: str | Path | None, label: str | None) -> dict[str, Any]:
    """``evaluate_predictions`` with a challenge protocol: per subject ``{region: {metric: value}}``.

    Arrays go to the scorer in the reference file's own voxel order and storage dtype (the
    official scorers read the files with SimpleITK; see :mod:`medsyn.metrics.protocols`): the
    prediction is taken in the reference's grid (checked) and put into the reference file's axis
    order, which equals its own whenever it was written in the reference's geometry.
    """
    if spec.ct_only and modality.lower() not in CT_NAMES:
        raise ConfigError(f"--protocol {spec.name} scores CT in Hounsfield units, but --modality is {modality!r}; "
                          f"it is defined for a CT target only (modality {' or '.join(CT_NAMES)}); "
                          "use --protocol default for other modalities")
    ref_ds, pairs = _subjects(pred_dir, ref_root, manifest, modality)
    per_subject: dict[str, Any] = {}
    aux_used: dict[str, str] = {}
    for sid, subj in pairs:
        where = subj.folder or ref_ds.manifest or ref_ds.root
        if spec.needs == "label":
            names = LABEL_NAMES if label in (None, "auto") else (label,)
            what = "the tumour label map"
        else:
            names = MASK_NAMES if mask == "auto" else (mask,)
            what = "the evaluation mask"
        aux_name = next((n for n in names if n in subj.files), None)
        if aux_name is None:
            raise DatasetError(f"{where}: --protocol {spec.name} needs {what} ({' or '.join(names)}) of subject {sid!r}, "
                               f"which has none (has: {', '.join(sorted(subj.files))}); add it or use --protocol default")
        ref_v, pred_v = _read_pair(pred_dir, subj, modality)
        aux_v = read_image(subj.path(aux_name))
        if not same_grid(aux_v, ref_v):
            raise GeometryError(f"{aux_v.path}: grid {aux_v.shape} differs from the reference {ref_v.path} {ref_v.shape}")
        ref = ref_v.to_original()
        if spec.ct_only and not float(ref.min()) <= CT_AIR_BELOW_HU:
            raise DatasetError(f"{ref_v.path}: --protocol {spec.name} needs a CT in Hounsfield units, but the reference "
                               f"spans [{float(ref.min()):g}, {float(ref.max()):g}] with no air (nothing ≤ "
                               f"{CT_AIR_BELOW_HU:g}); convert it to HU (e.g. apply the rescale intercept) or use "
                               "--protocol default")
        aux = ref_v.to_original(aux_v.array)
        if spec.needs == "mask" and not (aux > 0).any():
            raise DatasetError(f"{aux_v.path}: the evaluation mask of --protocol {spec.name} is empty (nothing > 0)")
        per_subject[sid] = spec.score(ref_v.to_original(pred_v.array), ref, aux)
        aux_used[sid] = aux_name
    settings = {
        "protocol": spec.name, "official": spec.official, "definition": spec.definition,
        "modality": modality, "prediction_dir": str(pred_dir), "reference": str(ref_ds.root),
        "label" if spec.needs == "label" else "mask": aux_used, "metrics": list(spec.metrics),
        "units": "HU (mae), dB (psnr)" if spec.ct_only else "[0, 1] after the protocol's percentile scaling (mse), dB (psnr)",
        "psnr_identical": "inf (no cap); summaries count finite values only and report n_inf",
    }
    return {"subjects": per_subject, "summary": summarize(per_subject), "settings": settings}


def json_safe(obj: Any) -> Any:
    """inf → "inf", NaN → null, recursively (strict JSON has neither)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else None)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def read_results(path: str | Path) -> dict[str, Any]:
    """A metrics JSON written by :func:`write_results`, its values as :func:`evaluate_predictions`
    returned them: "inf"/"-inf" back to floats and null (NaN: an empty region) back to NaN."""

    def back(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: back(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [back(v) for v in obj]
        if obj in ("inf", "-inf"):
            return float(obj)
        return float("nan") if obj is None else obj

    try:
        res = json.loads(Path(path).read_text())
        return {**res, "subjects": back(res["subjects"]), "summary": back(res["summary"])}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: not a readable metrics file written by medsyn evaluate ({e})") from None


def write_results(results: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """JSON (inf written as the string "inf", NaN as null) and a CSV of the per-subject rows."""
    out = Path(out)
    atomic_write_bytes(out, json.dumps(json_safe(results), indent=1).encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    metrics = results["settings"]["metrics"]
    w.writerow(["subject", "region", *metrics])
    for sid, regions in results["subjects"].items():
        for region, vals in regions.items():
            w.writerow([sid, region, *[vals.get(m, "") for m in metrics]])
    csv_path = out.with_suffix(".csv")
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    return out, csv_path
