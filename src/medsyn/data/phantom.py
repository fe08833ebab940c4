"""A CT phantom built from real MR, for testing MRI→CT synthesis without a licensed MR/CT pair.

No registered, openly licensed human MR/CT pair could be found (see the sample's README), so
MRI→CT is exercised on a phantom: each subject's T1 is segmented into tissue classes inside the
brain (CSF / grey matter / white matter by intensity terciles of the brain voxels — a crude but
deterministic classification) and mapped to typical Hounsfield units, the skull is a ring around
the brain mask, the scalp a thin soft-tissue ring, and everything else is air. Gaussian noise
(σ = ``noise_hu``) is added and the result stored as int16 HU (``ct.nii.gz``) in the MR's own
geometry. It tests the pipeline — HU normalisation, predictions in HU, MAE in HU — not clinical
accuracy; real MRI→CT work uses data such as SynthRAD.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsyn import __version__
from medsyn.data.dataset import discover
from medsyn.data.masks import compute_mask
from medsyn.errors import DatasetError, OutputError
from medsyn.io.image import read_image, write_like

HU = {"air": -1000.0, "csf": 15.0, "grey": 40.0, "white": 25.0, "bone": 1000.0, "scalp": 40.0}


def ct_phantom(t1: np.ndarray, brain: np.ndarray, spacing: tuple[float, ...], rng: np.random.Generator,
               skull_mm: float = 6.0, scalp_mm: float = 4.0, noise_hu: float = 10.0) -> np.ndarray:
    """(X, Y, Z) T1 + bool brain mask → phantom CT in HU (float32)."""
    ct = np.full(t1.shape, HU["air"], np.float32)
    vals = t1[brain]
    t1_lo, t1_hi = np.percentile(vals, [33.3, 66.6])
    ct[brain & (t1 <= t1_lo)] = HU["csf"]
    ct[brain & (t1 > t1_lo) & (t1 <= t1_hi)] = HU["grey"]
    ct[brain & (t1 > t1_hi)] = HU["white"]
    vox = float(np.mean(spacing))
    skull_it = max(1, int(round(skull_mm / vox)))
    scalp_it = max(1, int(round(scalp_mm / vox)))
    head = ndimage.binary_dilation(brain, iterations=skull_it)
    outer = ndimage.binary_dilation(head, iterations=scalp_it)
    ct[head & ~brain] = HU["bone"]
    ct[outer & ~head] = HU["scalp"]
    ct += rng.normal(0.0, noise_hu, ct.shape).astype(np.float32) * (outer | brain)
    return ct


def prepare_ct_phantom(src_root: str | Path, out_root: str | Path, *, source: str = "t1n", seed: int = 0,
                       overwrite: bool = False) -> Path:
    """Write ``out_root/<subject>/{<source>,ct,brainmask}.nii.gz`` + ``prepare.json`` (atomic folder)."""
    out_root = Path(out_root)
    if out_root.exists() and any(out_root.iterdir()):
        if not overwrite:
            raise OutputError(f"{out_root}: already holds files; choose another output folder or pass --overwrite")
    ds = discover(src_root)
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_root.parent, prefix=f".{out_root.name}.tmp-"))
    try:
        for sid in ds.ids():
            subj = ds.subjects[sid]
            if source not in subj.files:
                raise DatasetError(f"{subj.folder}: no {source!r} image to build the CT phantom from")
            v = read_image(subj.files[source])
            brain = compute_mask(v.array)
            rng = np.random.default_rng([seed, int.from_bytes(sid.encode()[:8].ljust(8, b"\0"), "little")])
            ct = ct_phantom(v.array.astype(np.float32), brain, v.spacing, rng)
            write_like(v, v.array, tmp / sid / f"{source}.nii.gz", dtype=v.original_dtype)
            write_like(v, ct, tmp / sid / "ct.nii.gz", dtype=np.int16)
            write_like(v, brain.astype(np.uint8), tmp / sid / "brainmask.nii.gz", dtype=np.uint8)
        (tmp / "prepare.json").write_text(json.dumps({
            "task": "ct-phantom", "source_dataset": str(ds.root), "source_modality": source, "seed": seed,
            "hounsfield_units": HU, "skull_mm": 6.0, "scalp_mm": 4.0, "noise_hu": 10.0, "medsyn_version": __version__,
            "subjects": ds.ids()}, indent=1))
        if out_root.exists():
            shutil.rmtree(out_root)
        os.replace(tmp, out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_root
