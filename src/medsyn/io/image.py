"""Reading and writing images with their geometry.

Every image is read into a :class:`Volume`: a 3D array in medsyn's canonical orientation
(nibabel's closest-canonical RAS+: axis 0 → Right, 1 → Anterior, 2 → Superior, so axial slices
are ``array[:, :, k]``), its canonical affine (voxel → world mm, RAS), and what is needed to write
a result back in the input's *own* geometry (original affine, axis order and flips, dtype).

Supported inputs:

* NIfTI ``.nii`` / ``.nii.gz`` (nibabel)
* ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd`` (SimpleITK; LPS world converted to RAS)
* a DICOM series folder (SimpleITK's GDCM series reader; one series per folder)
* 2D ``.png`` / ``.npy`` (shape (H, W) → (H, W, 1) volume, identity affine, 1 mm pixels); a 2D
  image keeps its 2D ``original_shape`` and :func:`write_like` writes results back 2D

Arrays are read *fully* (not only the header), so truncated or corrupt files fail here with a
:class:`~medsyn.errors.DatasetError` naming the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medsyn.errors import DatasetError, GeometryError, OutputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
ARRAY_SUFFIXES = (".npy", ".png")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + ARRAY_SUFFIXES

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def image_stem(path: str | Path) -> str:
    """File name without its image suffix: ``t1n.nii.gz`` → ``t1n``; a DICOM folder → its name."""
    name = Path(path).name
    for s in IMAGE_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def is_image_path(path: Path) -> bool:
    if path.is_dir():
        return is_dicom_dir(path)
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def is_dicom_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    for p in list(path.iterdir())[:50]:
        if p.is_file():
            if p.suffix.lower() == ".dcm":
                return True
            try:
                with open(p, "rb") as f:
                    f.seek(128)
                    if f.read(4) == b"DICM":
                        return True
            except OSError:
                pass
    return False


@dataclass
class Volume:
    """A 3D image in canonical (RAS+) orientation with the geometry to write it back.

    array: (X, Y, Z) in canonical orientation, the file's values (int or float, native units).
    affine: 4×4 voxel → world (RAS, mm) of ``array``.
    original_affine / original_shape / original_dtype: the file's own geometry and storage type.
    ornt: nibabel orientation transform that takes the *original* array to canonical.
    """

    array: np.ndarray
    affine: np.ndarray
    original_affine: np.ndarray
    original_shape: tuple[int, ...]
    original_dtype: np.dtype
    ornt: np.ndarray
    path: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the canonical axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new canonical-space values (shape must match)."""
        if tuple(array.shape) != self.shape:
            raise GeometryError(
                f"{self.path}: new array has shape {array.shape}, expected {self.shape}"
            )
        return Volume(array, self.affine, self.original_affine, self.original_shape,
                      self.original_dtype, self.ornt, self.path, dict(self.meta))

    def to_original(self, array: np.ndarray | None = None) -> np.ndarray:
        """Canonical-space array → the file's own axis order and flips."""
        a = self.array if array is None else array
        inverse = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(self.affine), nib.orientations.io_orientation(self.original_affine)
        )
        return nib.orientations.apply_orientation(a, inverse)


def _from_original(array: np.ndarray, affine: np.ndarray, path: str, dtype: np.dtype,
                   meta: dict[str, Any] | None = None) -> Volume:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    file_shape = tuple(array.shape)  # a 2D file is written back 2D (write_like)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DatasetError(
            f"{path}: expected a 3D image (or 2D), got {array.ndim}D with shape {array.shape}; "
            "split 4D series into one file per volume"
        )
    if 0 in array.shape:
        raise DatasetError(f"{path}: image has a zero-size dimension, shape {array.shape}")
    ornt = nib.orientations.io_orientation(affine)
    canon = nib.orientations.apply_orientation(array, ornt)
    canon_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    return Volume(np.ascontiguousarray(canon), canon_affine, np.asarray(affine, dtype=np.float64),
                  file_shape, np.dtype(dtype), ornt, str(path), meta or {})


def read_image(path: str | Path) -> Volume:
    """Read an image file or DICOM series folder into a canonical :class:`Volume`.

    Raises DatasetError naming the file when it is missing, truncated, corrupt or not 2D/3D.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: file not found")
    name = p.name.lower()
    try:
        if p.is_dir():
            if not is_dicom_dir(p):
                raise DatasetError(f"{p}: folder holds no DICOM files; expected a DICOM series folder")
            return _read_dicom_series(p)
        if name.endswith(NIFTI_SUFFIXES):
            return _read_nifti(p)
        if name.endswith(ITK_SUFFIXES):
            return _read_itk(p)
        if name.endswith(".npy"):
            arr = np.load(p, allow_pickle=False)
            return _from_original(np.asarray(arr), np.eye(4), str(p), arr.dtype)
        if name.endswith(".png"):
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im)
            if arr.ndim == 3:  # RGB(A) → luminance
                arr = arr[..., :3].mean(axis=-1).astype(np.float32)
            # PNG rows go top→bottom; keep (row, col) as (axis0, axis1) with identity geometry
            return _from_original(arr, np.eye(4), str(p), arr.dtype)
    except DatasetError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, RuntimeError, nib.filebasedimages.ImageFileError,
            nib.spatialimages.HeaderDataError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{p}: cannot read image ({msg}); the file may be truncated or not an image") from None
    raise DatasetError(f"{p}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder")


def _read_nifti(p: Path) -> Volume:
    img = nib.load(str(p))
    dtype = img.header.get_data_dtype()
    if 0 in img.shape:  # nibabel reads such a file as a 1D (0,) array, losing the shape
        raise DatasetError(f"{p}: image has a zero-size dimension, shape {tuple(img.shape)}")
    # read every byte: np.asarray(dataobj) decompresses the whole file and applies scl_slope
    arr = np.asarray(img.dataobj)
    affine = img.affine if img.affine is not None else np.eye(4)
    if not np.all(np.isfinite(affine)):
        raise DatasetError(f"{p}: header affine has non-finite values")
    meta = {"slope": float(img.dataobj.slope), "inter": float(img.dataobj.inter)} if hasattr(img.dataobj, "slope") else {}
    # what the header claims about its affine (0 unknown, 1 scanner, 2 aligned, …): written back as read
    meta["qform_code"], meta["sform_code"] = int(img.header["qform_code"]), int(img.header["sform_code"])
    return _from_original(arr, affine, str(p), dtype, meta)


def _itk_affine(img: Any) -> np.ndarray:
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    aff = np.eye(4)
    aff[:3, :3] = direction * spacing[None, :]
    aff[:3, 3] = origin
    return _LPS_TO_RAS @ aff


def _itk_to_volume(img: Any, path: str) -> Volume:
    import SimpleITK as sitk

    if img.GetDimension() not in (2, 3) or img.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{path}: expected a scalar 2D/3D image, got {img.GetDimension()}D with "
                           f"{img.GetNumberOfComponentsPerPixel()} components per pixel")
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
    return _from_original(arr, _itk_affine(img), path, arr.dtype)


def _read_itk(p: Path) -> Volume:
    import SimpleITK as sitk

    return _itk_to_volume(sitk.ReadImage(str(p)), str(p))


def _read_dicom_series(p: Path) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(p))
    if not series:
        raise DatasetError(f"{p}: no DICOM series found")
    if len(series) > 1:
        raise DatasetError(
            f"{p}: folder holds {len(series)} DICOM series ({', '.join(series[:3])}...); "
            "put one series per folder"
        )
    files = reader.GetGDCMSeriesFileNames(str(p), series[0])
    reader.SetFileNames(files)
    return _itk_to_volume(reader.Execute(), str(p))


def read_header_geometry(path: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    """(original shape, original affine) without reading voxel data (NIfTI only, else full read)."""
    p = Path(path)
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        img = nib.load(str(p))
        return tuple(img.shape), img.affine
    v = read_image(p)
    return v.original_shape, v.original_affine


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (checkpoint and dataset provenance)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over it."""
    p = Path(path)
    tmp = _temp_beside(p, ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        _remove_quietly(tmp)
        raise OutputError(f"{p}: cannot write ({e.strerror or e}); check free space and permissions") from None
    except BaseException:  # any other failure (a bug, Ctrl-C): still no temp file left behind
        _remove_quietly(tmp)
        raise



def publish_dir(tmp: Path, final: Path) -> None:
    """Make the finished folder ``tmp`` visible as ``final`` by a rename (cache entries).

    An existing ``final`` (a stale entry) is first renamed aside — a rename cannot replace a
    non-empty folder — and deleted after ``tmp`` took its place. If another process publishes its
    own (identical) entry between the two renames, that one is kept and ``tmp`` removed. OSError
    otherwise, for the caller to name its folder and setting.
    """
    trash = None
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{final.name}-", dir=final.parent))
        os.rename(final, trash / "entry")
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

def make_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create folder ``path`` (and parents); OutputError naming it and ``flag`` when it cannot be
    created or written into — checked before long work, not after it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{p}: cannot create the folder ({e.strerror or e}); choose a writable {flag}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: the folder is not writable; choose a writable {flag}")
    return p


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_like(reference: Volume, array: np.ndarray, path: str | Path, dtype: np.dtype | str | None = None) -> Path:
    """Write a canonical-space ``array`` as NIfTI in ``reference``'s own geometry.

    The array is put back into the input's axis order/flips and stored with the input's original
    affine, so the output overlays the input voxel for voxel. ``dtype`` defaults to float32 for
    float data; pass the reference's dtype to round to integers (e.g. int16 HU).
    Written atomically (temp file + rename).
    """
    data = reference.to_original(np.asarray(array))
    file_shape = tuple(reference.original_shape)
    if tuple(data.shape) != file_shape + (1,) * (data.ndim - len(file_shape)):
        raise GeometryError(f"{path}: array shape {array.shape} does not match the reference {reference.path}")
    if len(file_shape) == 2:  # a 2D input comes back 2D
        data = data[:, :, 0]
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
    if np.issubdtype(out_dtype, np.integer):
        info = np.iinfo(out_dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    img = nib.Nifti1Image(data.astype(out_dtype), reference.original_affine)
    img.header.set_xyzt_units("mm", "sec")
    # keep the input's claims: codes 0 (no orientation known) stay 0; non-NIfTI inputs: scanner (1)
    img.set_qform(reference.original_affine, code=reference.meta.get("qform_code", 1))
    img.set_sform(reference.original_affine, code=reference.meta.get("sform_code", 1))
    p = Path(path)
    if not p.name.endswith(NIFTI_SUFFIXES):
        raise OutputError(f"{p}: output must end in .nii.gz or .nii")
    return _atomic_nifti(img, p)


def _temp_beside(p: Path, suffix: str) -> str:
    """Create the parent folder and a temp file beside ``p``; OutputError when that fails."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=suffix)
    except OSError as e:
        raise OutputError(f"{p}: cannot write ({e.strerror or e}); check free space and permissions") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    return tmp


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic_nifti(img: nib.Nifti1Image, p: Path) -> Path:
    tmp = _temp_beside(p, ".nii.gz" if p.name.endswith(".nii.gz") else ".nii")
    try:
        nib.save(img, tmp)
        os.replace(tmp, p)
    except OSError as e:
        _remove_quietly(tmp)
        raise OutputError(f"{p}: cannot write ({e.strerror or e}); check free space and permissions") from None
    except BaseException:  # any other failure (a bug, Ctrl-C): still no temp file left behind
        _remove_quietly(tmp)
        raise
    return p


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, dtype: np.dtype | str = np.float32) -> Path:
    """Write an array (file axis order) with ``affine`` as NIfTI, atomically."""
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return _atomic_nifti(img, Path(path))


def same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> bool:
    """True when two volumes share shape and (canonical) affine within ``atol`` mm."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=atol))


def grid_difference(a: Volume, b: Volume, atol: float = 1e-3) -> str:
    """What differs between two volumes' grids, in words: shape, spacing (mm), axis directions,
    origin shift (mm, RAS). Empty when they share a grid within ``atol``."""
    parts = []
    if a.shape != b.shape:
        parts.append(f"shape {'×'.join(map(str, a.shape))} vs {'×'.join(map(str, b.shape))}")
    sa, sb = np.asarray(a.spacing), np.asarray(b.spacing)
    if not np.allclose(sa, sb, atol=atol):
        parts.append(f"spacing {' × '.join(f'{x:.3g}' for x in sa)} vs {' × '.join(f'{x:.3g}' for x in sb)} mm")
    if not np.allclose(a.affine[:3, :3] / sa, b.affine[:3, :3] / sb, atol=1e-3):
        parts.append("affine axis directions differ (rotated or flipped)")
    shift = a.affine[:3, 3] - b.affine[:3, 3]
    if np.abs(shift).max() > atol:
        parts.append(f"affine origin shifted by {float(np.linalg.norm(shift)):.3g} mm "
                     f"({', '.join(f'{x:+.3g}' for x in shift)} mm along R, A, S)")
    return "; ".join(parts)


def resample_to(moving: Volume, reference: Volume, is_label: bool = False) -> Volume:
    """Resample ``moving`` onto ``reference``'s grid (SimpleITK; linear, or nearest for labels)."""
    import SimpleITK as sitk

    def to_itk(v: Volume, arr: np.ndarray) -> Any:
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        aff = _LPS_TO_RAS @ v.affine  # back to LPS for ITK
        spacing = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
        img.SetSpacing(tuple(float(s) for s in spacing))
        img.SetDirection(tuple(float(x) for x in (aff[:3, :3] / spacing[None, :]).ravel()))
        img.SetOrigin(tuple(float(x) for x in aff[:3, 3]))
        return img

    ref = to_itk(reference, np.zeros(reference.shape, dtype=np.float32))
    mov = to_itk(moving, moving.array.astype(np.float32))
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    out = sitk.Resample(mov, ref, sitk.Transform(), interp, 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    return reference.with_array(arr.astype(moving.array.dtype if is_label else np.float32))
