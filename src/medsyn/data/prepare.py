"""Paired tasks built from real images, reproducibly: MedGAN's three applications on public data.

MedGAN's datasets (PET/CT, motion-corrupted MR, low-count PET; Sec. 3.1) are not public, so
these functions make paired (source, target) datasets from any medsyn dataset:

* :func:`prepare_motion` — rigid-motion k-space artefacts (MR motion correction, MedGAN 3.1 b);
* :func:`prepare_denoise` — Rician noise for MR, or a Poisson low-count model for PET-like data
  (PET denoising, MedGAN 3.1 c);
* :func:`prepare_translation_2d` — 2D axial slice pairs of two modalities at size×size and 1 mm
  in-plane spacing (the paper's 256×256 slice setting, e.g. T1 → T2 in place of PET → CT).

Motion and denoising keep each subject's own grid by default; with ``size`` (and ``spacing``)
they write the same size×size axial-slice grid as the 2D translation task (MedGAN's MR data:
1 mm, 256×256): the corruption is made on the acquisition grid, then the corrupted and the clean
volume are resliced identically (:func:`write_slice_grid`).

Input: a folder of subject folders (every sub-folder holding at least one ``.nii``/``.nii.gz``
is a subject; each must hold the requested modalities as ``<modality>.nii.gz`` or ``.nii``,
else DatasetError naming the folder), or ``"sample"`` for the bundled sample.

Output: a normal medsyn dataset (``out_root/<subject>/<name>.nii.gz``) plus ``prepare.json``
with the task, every generation parameter, the seed and each subject's derived seed, the values
drawn (motion parameters), the medsyn/torchio/numpy versions and the source files with their
SHA-256. Label and mask files (``seg``, ``brainmask`` …) are carried over (resampled with nearest
neighbour in the 2D task). The whole dataset is written into a hidden temporary folder beside
``out_root`` and renamed into place at the end, so a crash never leaves a half-written dataset;
a non-empty ``out_root`` is refused (OutputError) unless ``overwrite=True``.

Reproducibility: each subject gets its own seed, ``subject_seed(seed, subject_id)`` (SHA-256 of
both), so its result does not depend on which other subjects are present or their order.
TorchIO draws from torch's global RNG: it is seeded with that subject seed inside
``torch.random.fork_rng`` (the caller's RNG state is left untouched); noise is drawn from
``numpy.random.default_rng(subject seed)``. Same seed and inputs → identical arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from medsyn.data.masks import compute_mask
from medsyn.errors import ConfigError, DatasetError, GeometryError, OutputError
from medsyn.io.image import NIFTI_SUFFIXES, Volume, atomic_write_bytes, file_sha256, read_image, same_grid, write_like, write_nifti

PREPARE_FILE = "prepare.json"
#: files carried over unchanged (motion/denoise) or resampled with nearest neighbour (2D task)
CARRIED_NAMES = ("seg", "label", "labels", "brainmask", "bodymask", "mask")

#: default noise levels (see prepare_denoise)
DEFAULT_RICIAN_LEVEL = 0.05  # σ = 5 % of the mean foreground intensity (SNR 20 at the mean)
DEFAULT_POISSON_COUNTS = 20.0  # mean counts per foreground voxel (SNR √20 ≈ 4.5 at the mean)
DEFAULT_MIN_FOREGROUND = 0.1  # 2D grids: keep axial slices whose foreground is ≥ 10 % of the largest
NOISE_MODELS = ("rician", "poisson")


# ----------------------------------------------------------------------------------------------
# Subjects, seeds, output folder
# ----------------------------------------------------------------------------------------------


def _resolve_root(root: str | Path) -> Path:
    if str(root) == "sample":
        return Path(str(resources.files("medsyn") / "sample_data"))
    return Path(root).expanduser()


def _nifti(folder: Path, name: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        p = folder / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


def discover_subjects(src_root: str | Path, modalities: Sequence[str]) -> dict[str, dict[str, Path]]:
    """Subject id → {modality: file} for every sub-folder of ``src_root`` holding NIfTI images.

    Raises DatasetError when ``src_root`` is missing or holds no subject, and when a subject
    folder lacks one of ``modalities`` (naming the folder and what it has).
    """
    root = _resolve_root(src_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass a folder of subject folders (or 'sample')")
    out: dict[str, dict[str, Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p.name for p in d.iterdir()
                        if p.name.lower().endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
        if not images:
            continue
        files = {}
        for m in modalities:
            p = _nifti(d, m)
            if p is None:
                raise DatasetError(f"{d}: subject has no {m}.nii.gz (or {m}.nii); found {', '.join(images)}. "
                                   f"Add it or move the folder out of {root}")
            files[m] = p
        out[d.name] = files
    if not out:
        raise DatasetError(f"{root}: no subject folders with NIfTI images found "
                           f"(expected <subject>/{modalities[0]}.nii.gz)")
    return out


def subject_seed(seed: int, subject_id: str) -> int:
    """A 63-bit seed derived from the run seed and the subject id (stable across runs/machines)."""
    digest = hashlib.sha256(f"medsyn-prepare/{int(seed)}/{subject_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _check_output(src: Path, out: Path, overwrite: bool) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or o in s.parents:
        raise OutputError(f"{out}: the output folder is (or contains) the source dataset {src}; choose another folder")
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; choose another output folder")
        if any(out.iterdir()) and not overwrite:
            raise OutputError(f"{out}: folder exists and is not empty; choose another folder or pass overwrite=True "
                              "(--overwrite) to replace it")


def _non_empty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


@contextmanager
def _staging(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden temp folder beside ``out``; on success it is renamed to ``out``.

    A dataset that appeared at ``out`` meanwhile (another process) is kept unless ``overwrite``.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()  # (not mkdtemp: its 0700 mode would stay on the dataset folder)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    appeared = OutputError(f"{out}: another dataset was written there meanwhile; kept it "
                           "(pass overwrite=True to replace it)")
    try:
        if _non_empty_dir(out):
            if not overwrite:
                shutil.rmtree(tmp, ignore_errors=True)
                raise appeared
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)  # also replaces an empty folder
    except OSError as e:
        if _non_empty_dir(out) and not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise appeared from None
        raise OutputError(f"{out}: cannot move the finished dataset into place ({e.strerror or e}); "
                          f"it is complete in {tmp}") from None


def _versions() -> dict[str, str]:
    import medsyn

    v = {"medsyn": medsyn.__version__, "numpy": np.__version__}
    try:
        import torchio

        v["torchio"] = torchio.__version__
    except ImportError:  # pragma: no cover
        pass
    return v


def _write_manifest(tmp: Path, task: str, seed: int | None, params: dict[str, Any], src: Path,
                    pair: tuple[list[str], str], subjects: list[dict[str, Any]]) -> None:
    import medsyn

    record = {
        "task": task,
        "medsyn_version": medsyn.__version__,
        "versions": _versions(),
        "seed": None if seed is None else int(seed),
        "parameters": params,
        "source_root": str(src.resolve()),
        "pair": {"source": pair[0], "target": pair[1]},
        "suggested_config": {"data": {"source": pair[0], "target": pair[1]}},
        "subjects": subjects,
    }
    atomic_write_bytes(tmp / PREPARE_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def _source_record(files: dict[str, Path]) -> dict[str, Any]:
    return {m: {"path": str(p.resolve()), "sha256": file_sha256(p)} for m, p in files.items()}


def _write_pair(v: Volume, corrupted: np.ndarray, source: str, target: str, src_dir: Path, d: Path,
                size: int | None, spacing: float | None) -> dict[str, Any]:
    """Write a restoration pair (``<source>`` = the corrupted image, ``<target>`` = the clean one) and
    the subject's labels/masks into ``d``: as volumes in ``v``'s geometry (``size`` None), or as
    ``size``² slices (:func:`write_slice_grid`). Returns the record's outputs/carried entries."""
    rec: dict[str, Any] = {}
    if size is None:
        write_like(v, corrupted, d / f"{source}.nii.gz")
        write_like(v, v.array, d / f"{target}.nii.gz", dtype=_clean_dtype(v))
        carried = _carry_labels(src_dir, d)
    else:
        carried, rec = write_slice_grid(v, {source: corrupted, target: v.array}, src_dir, d, size, spacing)
    return {"outputs": {"source": f"{source}.nii.gz", "target": f"{target}.nii.gz"}, "carried": carried, **rec}


def _carry_labels(folder: Path, dest: Path) -> list[str]:
    carried = []
    for name in CARRIED_NAMES:
        p = _nifti(folder, name)
        if p is not None:
            shutil.copyfile(p, dest / p.name)
            carried.append(p.name)
    return carried


def _clean_dtype(v: Volume) -> np.dtype:
    """The clean target keeps its integer storage type when the values are integers."""
    return v.array.dtype if np.issubdtype(v.array.dtype, np.integer) else np.dtype(np.float32)


# ----------------------------------------------------------------------------------------------
# Motion
# ----------------------------------------------------------------------------------------------


def apply_motion(volume: Volume, seed: int, degrees: float = 10.0, translation: float = 10.0,
                 num_transforms: int = 2, ghosting: bool = False, num_ghosts: tuple[int, int] = (4, 10),
                 ghost_intensity: tuple[float, float] = (0.5, 1.0)) -> tuple[np.ndarray, dict[str, Any]]:
    """Rigid-motion k-space artefact of a canonical volume (TorchIO ``RandomMotion``, Shaw et al. 2019).

    TorchIO resamples the image at ``num_transforms`` + 1 rigid poses (rotations ~ U(-degrees,
    degrees) about each axis, translations ~ U(-translation, translation) mm), takes their 3D
    Fourier transforms and fills consecutive k-space segments from the successive poses, then
    transforms back. Optional ``RandomGhosting`` adds ghosts along a random axis. TorchIO returns
    the real part; we keep its absolute value (a magnitude-like, non-negative MR image).
    Returns (float32 array with the volume's shape, the drawn parameters).
    """
    import torch
    import torchio as tio

    img = tio.ScalarImage(tensor=torch.from_numpy(volume.array.astype(np.float32))[None], affine=volume.affine)
    transforms = [tio.RandomMotion(degrees=degrees, translation=translation, num_transforms=num_transforms)]
    if ghosting:
        transforms.append(tio.RandomGhosting(num_ghosts=num_ghosts, intensity=ghost_intensity))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = tio.Compose(transforms)(tio.Subject(image=img))
    drawn: dict[str, Any] = {}
    for t in out.history:
        for key in ("degrees", "translation", "times", "num_ghosts", "axis", "intensity", "restore"):
            val = getattr(t, key, None)
            if isinstance(val, dict):
                val = val.get("image")
            if val is not None:
                drawn[f"{type(t).__name__.lower()}.{key}"] = np.asarray(val).tolist()
    arr = np.abs(out["image"].data[0].numpy()).astype(np.float32)
    return arr, drawn


def prepare_motion(src_root: str | Path, out_root: str | Path, modality: str = "t2w", seed: int = 0,
                   degrees: float = 10.0, translation: float = 10.0, num_transforms: int = 2,
                   ghosting: bool = False, num_ghosts: tuple[int, int] = (4, 10),
                   ghost_intensity: tuple[float, float] = (0.5, 1.0), size: int | None = None,
                   spacing: float | None = None, overwrite: bool = False) -> Path:
    """Motion-correction task (MedGAN Sec. 3.1 b): ``<modality>_motion`` → ``<modality>``.

    For each subject writes ``<modality>_motion.nii.gz`` (float32, artefact, see
    :func:`apply_motion`; TorchIO defaults: ±10°, ±10 mm, 2 movements) and the clean
    ``<modality>.nii.gz`` (original values and storage type), both in the subject's own geometry
    (original affine and axis order). With ``size`` both are resliced to size×size axial slices
    at ``spacing`` mm in-plane (None: native) after the artefact is made — MedGAN's MR setting is
    ``size=256, spacing=1.0`` (see :func:`write_slice_grid`; the clean image is then float32).
    Returns ``out_root``.
    """
    if degrees < 0 or translation < 0 or num_transforms < 1:
        raise ConfigError(f"motion: degrees ≥ 0, translation ≥ 0 and num_transforms ≥ 1 expected, got "
                          f"{degrees}, {translation}, {num_transforms}")
    _check_grid(size, spacing)
    src, out = _resolve_root(src_root), Path(out_root).expanduser()
    subjects = discover_subjects(src, [modality])
    _check_output(src, out, overwrite)
    params = {"modality": modality, "degrees": degrees, "translation_mm": translation,
              "num_transforms": num_transforms, "ghosting": ghosting, "num_ghosts": list(num_ghosts),
              "ghost_intensity": list(ghost_intensity), "output_dtype": "float32",
              "transform": "torchio.RandomMotion" + (" + RandomGhosting" if ghosting else ""),
              "values": "absolute value of TorchIO's real-valued result", "grid": _grid_record(size, spacing)}
    records = []
    with _staging(out, overwrite) as tmp:
        for sid, files in subjects.items():
            s_seed = subject_seed(seed, sid)
            v = read_image(files[modality])
            arr, drawn = apply_motion(v, s_seed, degrees, translation, num_transforms, ghosting,
                                      tuple(num_ghosts), tuple(ghost_intensity))
            records.append({"id": sid, "seed": s_seed, "inputs": _source_record(files), "drawn": drawn,
                            **_write_pair(v, arr, f"{modality}_motion", modality, files[modality].parent,
                                          tmp / sid, size, spacing)})
        _write_manifest(tmp, "motion", seed, params, src, ([f"{modality}_motion"], modality), records)
    return out


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------


def add_noise(clean: np.ndarray, rng: np.random.Generator, noise: str = "rician",
              level: float | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Noisy copy of ``clean`` (float32) and the values used.

    Foreground = :func:`medsyn.data.masks.compute_mask` of the clean image (above the minimum for
    skull-stripped images, Otsu otherwise); ``ref`` = its mean intensity.

    * ``rician`` (MR magnitude): σ = level · ref (default level 0.05);
      noisy = sqrt((x + σ n1)² + (σ n2)²), n1, n2 ~ N(0, 1) i.i.d. per voxel — everywhere,
      so the background becomes Rayleigh noise as in magnitude MR.
    * ``poisson`` (PET-like low count): level = mean counts per foreground voxel (default 20);
      counts ~ Poisson(max(x, 0) · level / ref), noisy = counts · ref / level (same units as x;
      fewer counts → noisier, like a shorter acquisition).
    """
    if noise not in NOISE_MODELS:
        raise ConfigError(f"noise: got {noise!r}, expected one of {', '.join(NOISE_MODELS)}")
    if level is None:
        level = DEFAULT_RICIAN_LEVEL if noise == "rician" else DEFAULT_POISSON_COUNTS
    if not level > 0:
        raise ConfigError(f"noise level: got {level}, expected > 0 "
                          "(rician: σ as a fraction of the mean foreground intensity; poisson: mean counts per voxel)")
    x = np.asarray(clean, dtype=np.float64)
    ref = float(x[compute_mask(x)].mean())
    if not ref > 0:
        raise DatasetError(f"mean foreground intensity is {ref}; the noise models need positive intensities")
    if noise == "rician":
        sigma = level * ref
        n1 = rng.standard_normal(x.shape)
        n2 = rng.standard_normal(x.shape)
        noisy = np.sqrt((x + sigma * n1) ** 2 + (sigma * n2) ** 2)
        info = {"level": float(level), "sigma": sigma, "foreground_mean": ref}
    else:
        scale = level / ref
        counts = rng.poisson(np.clip(x, 0, None) * scale)
        noisy = counts / scale
        info = {"level": float(level), "counts_per_unit": scale, "foreground_mean": ref}
    return noisy.astype(np.float32), info


def prepare_denoise(src_root: str | Path, out_root: str | Path, modality: str = "t1n", seed: int = 0,
                    noise: str = "rician", level: float | None = None, size: int | None = None,
                    spacing: float | None = None, overwrite: bool = False) -> Path:
    """Denoising task (MedGAN Sec. 3.1 c): ``<modality>_noisy`` → ``<modality>``.

    ``noise="rician"`` (MR; ``level`` = σ / mean foreground intensity, default 0.05) or
    ``"poisson"`` (PET-like; ``level`` = mean counts per foreground voxel, default 20); see
    :func:`add_noise`. Writes the noisy float32 image and the clean one (original values) in the
    subject's own geometry, or — with ``size`` — both resliced to size×size axial slices at
    ``spacing`` mm after the noise is drawn on the acquisition grid (:func:`write_slice_grid`).
    Returns ``out_root``.
    """
    if noise not in NOISE_MODELS:
        raise ConfigError(f"noise: got {noise!r}, expected one of {', '.join(NOISE_MODELS)}")
    _check_grid(size, spacing)
    if level is None:
        level = DEFAULT_RICIAN_LEVEL if noise == "rician" else DEFAULT_POISSON_COUNTS
    src, out = _resolve_root(src_root), Path(out_root).expanduser()
    subjects = discover_subjects(src, [modality])
    _check_output(src, out, overwrite)
    params = {"modality": modality, "noise": noise, "level": float(level), "output_dtype": "float32",
              "level_meaning": ("sigma / mean foreground intensity" if noise == "rician"
                                else "mean counts per foreground voxel"),
              "foreground": "medsyn.data.masks.compute_mask of the clean image", "grid": _grid_record(size, spacing)}
    records = []
    with _staging(out, overwrite) as tmp:
        for sid, files in subjects.items():
            s_seed = subject_seed(seed, sid)
            v = read_image(files[modality])
            noisy, info = add_noise(v.array, np.random.default_rng(s_seed), noise, level)
            records.append({"id": sid, "seed": s_seed, "inputs": _source_record(files), "drawn": info,
                            **_write_pair(v, noisy, f"{modality}_noisy", modality, files[modality].parent,
                                          tmp / sid, size, spacing)})
        _write_manifest(tmp, "denoise", seed, params, src, ([f"{modality}_noisy"], modality), records)
    return out


# ----------------------------------------------------------------------------------------------
# 2D translation slices
# ----------------------------------------------------------------------------------------------


def slice_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], mask: np.ndarray,
               size: int, target_spacing: float | None, slices: tuple[int, int] | None,
               min_foreground: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The size×size×n grid: 4×4 map new voxel → canonical voxel, and the axial range [k0, k1).

    In-plane step r = target_spacing / native spacing (1 when ``target_spacing`` is None); the
    window of size×size new pixels is centred on the foreground's bounding box (integer offset,
    so r = 1 copies voxels exactly). Slices: ``slices`` if given, else the contiguous range from
    the first to the last axial slice whose foreground area ≥ ``min_foreground`` × the largest.
    """
    if slices is None:
        area = mask.sum(axis=(0, 1))
        keep = np.flatnonzero(area >= min_foreground * area.max())
        k0, k1 = int(keep[0]), int(keep[-1]) + 1
    else:
        k0, k1 = int(slices[0]), int(slices[1])
        if not 0 <= k0 < k1 <= shape[2]:
            raise ConfigError(f"slices: range [{k0}, {k1}) is outside the {shape[2]} axial slices of a {shape} volume")
    r = [1.0, 1.0] if target_spacing is None else [target_spacing / spacing[0], target_spacing / spacing[1]]
    m2 = mask[:, :, k0:k1].any(axis=2)
    if not m2.any():
        m2 = np.ones(shape[:2], bool)
    offsets = []
    for ax in (0, 1):
        idx = np.flatnonzero(m2.any(axis=1 - ax))
        centre = (idx[0] + idx[-1]) / 2.0
        offsets.append(float(np.round(centre - (size - 1) / 2.0 * r[ax])))
    t = np.array([[r[0], 0, 0, offsets[0]], [0, r[1], 0, offsets[1]], [0, 0, 1, k0], [0, 0, 0, 1]], dtype=np.float64)
    return t, (k0, k1)


def _resample_slices(array: np.ndarray, t: np.ndarray, size: int, n: int, order: int) -> np.ndarray:
    from scipy import ndimage

    x = np.asarray(array, dtype=np.float32)
    cval = float(x.min())
    if order > 0 and (t[0, 0] > 1 or t[1, 1] > 1):  # anti-alias before downsampling (as skimage)
        x = ndimage.gaussian_filter(x, sigma=(max(0.0, (t[0, 0] - 1) / 2), max(0.0, (t[1, 1] - 1) / 2), 0))
    return ndimage.affine_transform(x, t[:3, :3], offset=t[:3, 3], output_shape=(size, size, n),
                                    order=order, mode="constant", cval=cval, prefilter=False).astype(np.float32)


def _check_grid(size: int | None, spacing: float | None) -> None:
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 8):
        raise ConfigError(f"size: got {size!r}, expected an integer ≥ 8 (256 in MedGAN) or None for the native grid")
    if spacing is not None and size is None:
        raise ConfigError(f"spacing: {spacing} mm given without a size; pass size (e.g. 256) to reslice, "
                          "or neither to keep each subject's own grid")
    if spacing is not None and not spacing > 0:
        raise ConfigError(f"spacing: got {spacing}, expected a positive number of mm or None (native)")


def _grid_record(size: int | None, spacing: float | None) -> dict[str, Any] | str:
    if size is None:
        return "native: each subject's own grid, affine and axis order"
    return {"size": size, "spacing_mm": spacing, "min_foreground": DEFAULT_MIN_FOREGROUND,
            "orientation": "canonical RAS, axial = axis 2", "interpolation": "linear (labels nearest)",
            "crop": "size×size centred on the clean image's foreground bounding box"}


def _carry_labels_2d(folder: Path, ref: Volume, t: np.ndarray, size: int, n: int, affine: np.ndarray,
                     dest: Path) -> list[str]:
    """Label/mask files of ``folder`` on ``ref``'s grid, resampled (nearest) onto the slice grid."""
    carried = []
    for name in CARRIED_NAMES:
        p = _nifti(folder, name)
        if p is not None:
            lab = read_image(p)
            if not same_grid(lab, ref):
                continue
            arr = _resample_slices(lab.array, t, size, n, order=0)
            dtype = lab.array.dtype if np.issubdtype(lab.array.dtype, np.integer) else np.dtype(np.int16)
            write_nifti(np.rint(arr), affine, dest / f"{name}.nii.gz", dtype=dtype)
            carried.append(f"{name}.nii.gz")
    return carried


def write_slice_grid(ref: Volume, arrays: dict[str, np.ndarray], label_folder: Path, dest: Path, size: int,
                     spacing: float | None, min_foreground: float = DEFAULT_MIN_FOREGROUND) -> tuple[list[str], dict[str, Any]]:
    """Write canonical ``arrays`` (name → (X, Y, Z) on ``ref``'s grid) as size×size axial slices.

    The grid is :func:`slice_grid` of the clean image's foreground (the last array is the clean
    target); every array is resampled linearly onto it (``<name>.nii.gz``, float32) and the label
    files of ``label_folder`` with nearest neighbour. Returns (carried label files, the grid record
    for ``prepare.json``).
    """
    clean = list(arrays.values())[-1]
    mask = compute_mask(clean)
    t, (k0, k1) = slice_grid(ref.shape, ref.spacing, mask, size, spacing, None, min_foreground)
    affine = ref.affine @ t
    for name, arr in arrays.items():
        write_nifti(_resample_slices(arr, t, size, k1 - k0, order=1), affine, dest / f"{name}.nii.gz")
    carried = _carry_labels_2d(label_folder, ref, t, size, k1 - k0, affine, dest)
    return carried, {"slices": [k0, k1], "native_shape": list(ref.shape), "native_spacing": list(ref.spacing),
                     "grid_to_native_voxel": t.tolist(), "affine": affine.tolist()}


def prepare_translation_2d(src_root: str | Path, out_root: str | Path, source: str = "t1n", target: str = "t2w",
                           size: int = 256, slices: tuple[int, int] | None = None, spacing: float | None = 1.0,
                           min_foreground: float = 0.1, overwrite: bool = False) -> Path:
    """2D slice-pair task (MedGAN Sec. 3.1 setting): axial ``source`` → ``target`` slices, size×size.

    Sizing: each axial slice is resampled in-plane to ``spacing`` mm (default 1 mm, as MedGAN's
    data; None keeps the native spacing; linear interpolation, Gaussian anti-aliasing when
    coarsening) and cropped/padded to size×size around the centre of the foreground's bounding
    box (MedGAN: "centre cropped to extract the relevant head region"); padding uses each
    volume's minimum (its background). BraTS originals (240×240, 1 mm) are padded to 256×256
    unchanged; the 2 mm sample becomes 144×180 → padded to 256×256 (pass ``spacing=None`` and a
    small ``size`` in tests). Slices: see :func:`slice_grid`.

    Per subject writes ``<source>.nii.gz`` and ``<target>.nii.gz`` as (size, size, n_slices)
    float32 volumes on one grid, in canonical RAS orientation, with the affine that places every
    pixel at its true world position (so slice-wise 2D training and inference work unchanged and
    the slices overlay the originals). Returns ``out_root``.
    """
    if not isinstance(size, int) or size < 8:
        raise ConfigError(f"size: got {size!r}, expected an integer ≥ 8 (256 in MedGAN)")
    if spacing is not None and not spacing > 0:
        raise ConfigError(f"spacing: got {spacing}, expected a positive number of mm or None (native)")
    if not 0 <= min_foreground <= 1:
        raise ConfigError(f"min_foreground: got {min_foreground}, expected 0-1")
    if source == target:
        raise ConfigError(f"source and target are both {source!r}; choose two modalities")
    src, out = _resolve_root(src_root), Path(out_root).expanduser()
    subjects = discover_subjects(src, [source, target])
    _check_output(src, out, overwrite)
    params = {"source": source, "target": target, "size": size, "spacing_mm": spacing,
              "slices": list(slices) if slices is not None else None, "min_foreground": min_foreground,
              "interpolation": "linear (labels nearest)", "orientation": "canonical RAS, axial = axis 2",
              "output_dtype": "float32", "crop": "size×size centred on the foreground bounding box"}
    records = []
    with _staging(out, overwrite) as tmp:
        for sid, files in subjects.items():
            vs, vt = read_image(files[source]), read_image(files[target])
            if not same_grid(vs, vt):
                raise GeometryError(f"{files[target]}: grid {vt.shape} differs from {files[source]} {vs.shape}; "
                                    "co-register the modalities first")
            mask = compute_mask(vs.array) | compute_mask(vt.array)
            t, (k0, k1) = slice_grid(vs.shape, vs.spacing, mask, size, spacing, slices, min_foreground)
            affine = vs.affine @ t
            d = tmp / sid
            for m, v in ((source, vs), (target, vt)):
                write_nifti(_resample_slices(v.array, t, size, k1 - k0, order=1), affine, d / f"{m}.nii.gz")
            carried = _carry_labels_2d(files[source].parent, vs, t, size, k1 - k0, affine, d)
            records.append({"id": sid, "inputs": _source_record(files), "slices": [k0, k1],
                            "native_shape": list(vs.shape), "native_spacing": list(vs.spacing),
                            "grid_to_native_voxel": t.tolist(), "affine": affine.tolist(),
                            "outputs": {"source": f"{source}.nii.gz", "target": f"{target}.nii.gz"},
                            "carried": carried})
        _write_manifest(tmp, "translation_2d", None, params, src, ([source], target), records)
    return out
