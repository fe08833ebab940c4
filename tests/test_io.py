"""medsyn.io.image: every reader gives a canonical RAS volume with the right world geometry, and
``write_like`` puts a result back into the input's own geometry, dtype and values, atomically."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import SAMPLE_GLI, phantom, truncate, write_nii
from medsyn.errors import DatasetError, GeometryError, OutputError
from medsyn.io import image as io_image
from medsyn.io.image import atomic_write_bytes, read_image, write_like, write_nifti

SHAPE = (7, 9, 5)  # all sides different: a transposed axis cannot go unnoticed


def _rot_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def _affine(m: np.ndarray, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = origin
    return a


AFFINES = {
    "ras": _affine(np.diag([1.0, 1.5, 2.0])),
    "lps": _affine(np.diag([-0.9, -0.9, 3.0])),  # DICOM-like: x → Left, y → Posterior
    "oblique-flipped": _affine(_rot_z(25) @ np.diag([-1.2, 1.0, -2.5])),
    # axis 0 → Superior, axis 1 → Left (−R), axis 2 → Anterior
    "permuted": _affine(np.array([[0, -1.1, 0], [0, 0, 0.8], [2.0, 0, 0]])),
}


def _unique_int16(shape=SHAPE) -> np.ndarray:
    """Every voxel a different value, so a voxel can be found again after any reorientation."""
    rng = np.random.default_rng(0)
    n = int(np.prod(shape))
    return (rng.permutation(n) - n // 2).astype(np.int16).reshape(shape)


def _world(affine: np.ndarray, ijk) -> np.ndarray:
    return (affine @ np.r_[np.asarray(ijk, dtype=float), 1.0])[:3]


def _assert_same_world_geometry(vol, original: np.ndarray, original_affine: np.ndarray, n: int = 25) -> None:
    """For voxels of the original array, the canonical voxel holding the same value sits at the same
    world position (``vol.affine`` vs ``original_affine``)."""
    rng = np.random.default_rng(1)
    for _ in range(n):
        o = tuple(int(rng.integers(s)) for s in original.shape)
        c = np.argwhere(vol.array == original[o])
        assert c.shape[0] == 1, "values must stay unique"
        np.testing.assert_allclose(_world(vol.affine, c[0]), _world(original_affine, o), atol=1e-4)


# ------------------------------------------------------------------------------------------------
# NIfTI: canonical orientation and write-back round trip
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(AFFINES))
def test_nifti_round_trip_keeps_shape_affine_dtype_values(tmp_path, name):
    affine = AFFINES[name]
    data = _unique_int16()
    src = write_nii(tmp_path / "in.nii.gz", data, affine)

    vol = read_image(src)
    assert vol.original_shape == SHAPE
    assert vol.original_dtype == np.int16
    np.testing.assert_allclose(vol.original_affine, affine, atol=1e-6)
    assert sorted(vol.shape) == sorted(SHAPE)
    _assert_same_world_geometry(vol, data, affine)

    out = write_like(vol, vol.array, tmp_path / "out.nii.gz", dtype=vol.original_dtype)
    img = nib.load(str(out))
    assert img.shape == SHAPE
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    back = np.asarray(img.dataobj)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, data)


@pytest.mark.parametrize("name", list(AFFINES))
def test_canonical_affine_is_ras(tmp_path, name):
    vol = read_image(write_nii(tmp_path / "in.nii.gz", _unique_int16(), AFFINES[name]))
    m = vol.affine[:3, :3]
    # canonical axis i points (mostly) along world axis i, in the positive direction
    assert list(np.abs(m).argmax(axis=0)) == [0, 1, 2]
    assert (np.diag(m) > 0).all()
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")


def test_lps_input_is_flipped_to_ras(tmp_path):
    affine = AFFINES["lps"]
    data = _unique_int16()
    vol = read_image(write_nii(tmp_path / "lps.nii.gz", data, affine))
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    np.testing.assert_allclose(np.diag(vol.affine)[:3], [0.9, 0.9, 3.0], atol=1e-6)
    # first canonical voxel is the original's last along x and y
    assert vol.array[0, 0, 0] == data[-1, -1, 0]
    np.testing.assert_allclose(_world(vol.affine, (0, 0, 0)), _world(affine, (SHAPE[0] - 1, SHAPE[1] - 1, 0)))
    assert vol.spacing == pytest.approx((0.9, 0.9, 3.0))


def test_permuted_axes_canonical_shape_and_spacing(tmp_path):
    vol = read_image(write_nii(tmp_path / "p.nii.gz", _unique_int16(), AFFINES["permuted"]))
    # original axes: 0 → S (2 mm), 1 → L (1.1 mm), 2 → A (0.8 mm): canonical (R, A, S) = (1, 2, 0)
    assert vol.shape == (SHAPE[1], SHAPE[2], SHAPE[0])
    assert vol.spacing == pytest.approx((1.1, 0.8, 2.0))


def test_write_like_float_default_and_integer_rounding(tmp_path):
    affine = AFFINES["oblique-flipped"]
    vol = read_image(write_nii(tmp_path / "in.nii.gz", _unique_int16(), affine))
    pred = vol.array.astype(np.float32) + 0.3  # a float result in canonical space

    f = nib.load(str(write_like(vol, pred, tmp_path / "f.nii.gz")))
    assert f.get_data_dtype() == np.float32
    np.testing.assert_allclose(f.affine, affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(f.dataobj), vol.to_original(pred), rtol=0, atol=0)

    pred[0, 0, 0] = 1e6  # out of int16 range: clipped, not wrapped around
    i = nib.load(str(write_like(vol, pred, tmp_path / "i.nii", dtype="int16")))
    back = np.asarray(i.dataobj)
    assert back.dtype == np.int16
    expected = vol.to_original(np.clip(np.rint(pred), -32768, 32767)).astype(np.int16)
    np.testing.assert_array_equal(back, expected)
    assert back.max() == 32767


def test_write_like_refuses_wrong_shape_and_suffix(tmp_path):
    vol = read_image(write_nii(tmp_path / "in.nii.gz", _unique_int16(), AFFINES["ras"]))
    with pytest.raises(GeometryError):
        write_like(vol, np.zeros((3, 3, 3), np.float32), tmp_path / "bad.nii.gz")
    with pytest.raises(OutputError, match="nii"):
        write_like(vol, vol.array, tmp_path / "bad.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_float_nifti_with_scaling_reads_scaled_values(tmp_path):
    data = _unique_int16()
    img = nib.Nifti1Image(data, AFFINES["ras"])
    img.header.set_slope_inter(0.5, -100.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    vol = read_image(tmp_path / "scaled.nii.gz")
    np.testing.assert_allclose(np.sort(vol.array.ravel()), np.sort(data.ravel() * 0.5 - 100.0))


def test_sample_reads_as_int16_ras(sample):
    vol = read_image(sample / SAMPLE_GLI / "t1n.nii.gz")
    assert vol.original_dtype == np.int16
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.array.ndim == 3 and vol.array.max() > 0


# ------------------------------------------------------------------------------------------------
# SimpleITK formats and DICOM series
# ------------------------------------------------------------------------------------------------


def _itk_image(data_xyz: np.ndarray, direction: np.ndarray, spacing, origin):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(data_xyz.transpose(2, 1, 0)))  # ITK arrays are (z, y, x)
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(v) for v in origin))
    return img


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_agree_with_itk_world_and_nifti_path(tmp_path, suffix):
    import SimpleITK as sitk

    data = _unique_int16()
    direction = _rot_z(30) @ np.diag([1.0, -1.0, 1.0])  # oblique, one flipped axis (LPS world)
    img = _itk_image(data, direction, (0.8, 1.3, 2.2), (5.0, -7.0, 11.0))
    sitk.WriteImage(img, str(tmp_path / f"img{suffix}"))
    sitk.WriteImage(img, str(tmp_path / "img.nii.gz"))  # ITK's own LPS → RAS conversion for NIfTI

    vol = read_image(tmp_path / f"img{suffix}")
    assert vol.original_dtype == np.int16
    # world position of voxels agrees with SimpleITK's physical points (LPS → RAS: negate x, y)
    for idx in [(0, 0, 0), (6, 8, 4), (3, 1, 2), (1, 7, 0)]:
        lps = np.asarray(img.TransformIndexToPhysicalPoint(idx))
        ras = lps * np.array([-1.0, -1.0, 1.0])
        c = np.argwhere(vol.array == data[idx])
        assert c.shape[0] == 1
        np.testing.assert_allclose(_world(vol.affine, c[0]), ras, atol=1e-4)

    nii = read_image(tmp_path / "img.nii.gz")
    np.testing.assert_array_equal(vol.array, nii.array)
    np.testing.assert_allclose(vol.affine, nii.affine, atol=1e-4)

    out = write_like(vol, vol.array, tmp_path / "back.nii.gz", dtype="int16")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def _write_dicom_series(folder: Path, n_slices: int = 4, rows: int = 6, cols: int = 5) -> tuple[np.ndarray, dict]:
    """A series from pydicom's CT_small.dcm: coronal slices (row dir +x, column dir −z), unique values.

    Returns the stored values (k, r, c) and the geometry used.
    """
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 0, -1.0])
    normal = np.cross(row_dir, col_dir)  # (0, 1, 0)
    geo = dict(row_dir=row_dir, col_dir=col_dir, normal=normal, row_spacing=0.7, col_spacing=0.9,
               slice_spacing=2.5, ipp0=np.array([-10.0, 20.0, 35.0]))
    raw = (np.arange(n_slices * rows * cols) - 50).astype(np.int16).reshape(n_slices, rows, cols)
    series_uid = generate_uid()
    for k in range(n_slices):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [geo["row_spacing"], geo["col_spacing"]]
        ds.SliceThickness = geo["slice_spacing"]
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.ImagePositionPatient = list(geo["ipp0"] + k * geo["slice_spacing"] * normal)
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = raw[k].tobytes()
        # written in reverse order, so the reader must sort by position, not by file name
        ds.save_as(str(folder / f"slice{n_slices - k:02d}.dcm"))
    return raw, geo


def test_dicom_series_folder_values_and_geometry(tmp_path):
    raw, geo = _write_dicom_series(tmp_path / "ct")
    vol = read_image(tmp_path / "ct")
    assert sorted(vol.shape) == sorted(raw.shape)
    hu = raw.astype(np.float64) - 1024.0  # CT_small: RescaleSlope 1, RescaleIntercept −1024
    np.testing.assert_array_equal(np.sort(vol.array.ravel()), np.sort(hu.ravel()))
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    for k, r, c in [(0, 0, 0), (3, 5, 4), (1, 2, 3), (2, 5, 0)]:
        lps = (geo["ipp0"] + k * geo["slice_spacing"] * geo["normal"]
               + c * geo["col_spacing"] * geo["row_dir"] + r * geo["row_spacing"] * geo["col_dir"])
        ras = lps * np.array([-1.0, -1.0, 1.0])
        idx = np.argwhere(vol.array == hu[k, r, c])
        assert idx.shape[0] == 1
        np.testing.assert_allclose(_world(vol.affine, idx[0]), ras, atol=1e-3)


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    _write_dicom_series(tmp_path / "a")
    _write_dicom_series(tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for sub in ("a", "b"):
        for f in (tmp_path / sub).iterdir():
            (mixed / f"{sub}_{f.name}").write_bytes(f.read_bytes())
    with pytest.raises(DatasetError, match="2 DICOM series") as e:
        read_image(mixed)
    assert str(mixed) in str(e.value)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    with pytest.raises(DatasetError, match="no DICOM") as e:
        read_image(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)


# ------------------------------------------------------------------------------------------------
# 2D arrays and pictures
# ------------------------------------------------------------------------------------------------


def test_npy_2d_is_one_slice_volume(tmp_path):
    a = np.arange(12 * 7, dtype=np.float32).reshape(12, 7) / 3.0
    np.save(tmp_path / "x.npy", a)
    vol = read_image(tmp_path / "x.npy")
    assert vol.shape == (12, 7, 1)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array[:, :, 0], a)
    np.testing.assert_array_equal(vol.affine, np.eye(4))
    out = nib.load(str(write_like(vol, vol.array * 2, tmp_path / "x2.nii.gz")))
    np.testing.assert_array_equal(np.asarray(out.dataobj).reshape(12, 7), a * 2)


def test_png_grey_and_rgb(tmp_path):
    from PIL import Image

    g = (np.arange(10 * 6).reshape(10, 6) * 4).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    vol = read_image(tmp_path / "g.png")
    assert vol.shape == (10, 6, 1)
    assert vol.original_dtype == np.uint8
    np.testing.assert_array_equal(vol.array[:, :, 0], g)

    rgb = np.stack([g, g // 2, np.zeros_like(g)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    v2 = read_image(tmp_path / "rgb.png")
    assert v2.shape == (10, 6, 1)
    np.testing.assert_allclose(v2.array[:, :, 0], (g.astype(np.float32) + g // 2) / 3.0, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Broken inputs: DatasetError naming the file
# ------------------------------------------------------------------------------------------------


def _raises_naming(path: Path, match: str | None = None) -> DatasetError:
    with pytest.raises(DatasetError, match=match) as e:
        read_image(path)
    assert str(path) in str(e.value)
    return e.value


def test_truncated_nifti_gz(tmp_path):
    p = write_nii(tmp_path / "t.nii.gz", phantom((20, 20, 20), dtype="int16"))
    truncate(p, 0.6)
    # the header alone still loads: the error must come from reading the voxels
    assert nib.load(str(p)).shape == (20, 20, 20)
    _raises_naming(p)


def test_truncated_uncompressed_nifti(tmp_path):
    p = write_nii(tmp_path / "t.nii", phantom((10, 10, 10)))
    truncate(p, 0.5)
    _raises_naming(p)


def test_wrong_magic_bytes(tmp_path):
    p = write_nii(tmp_path / "m.nii", phantom((6, 6, 6)))
    raw = bytearray(p.read_bytes())
    assert raw[344:348] == b"n+1\x00"
    raw[344:348] = b"XXXX"
    p.write_bytes(bytes(raw))
    _raises_naming(p)


@pytest.mark.parametrize("content", [b"this is not a nifti file at all", gzip.compress(b"\x00" * 400)])
def test_garbage_with_nifti_suffix(tmp_path, content):
    p = tmp_path / "g.nii.gz"
    p.write_bytes(content)
    _raises_naming(p)


def test_truncated_nrrd(tmp_path):
    import SimpleITK as sitk

    p = tmp_path / "t.nrrd"
    sitk.WriteImage(_itk_image(_unique_int16(), np.eye(3), (1, 1, 1), (0, 0, 0)), str(p))
    truncate(p, 0.7)
    _raises_naming(p)


def test_4d_is_refused(tmp_path):
    p = write_nii(tmp_path / "four.nii.gz", np.zeros((4, 5, 6, 3), np.float32))
    _raises_naming(p, match="4D")


def test_4d_with_single_volume_is_3d(tmp_path):
    vol = read_image(write_nii(tmp_path / "one.nii.gz", np.ones((4, 5, 6, 1), np.float32)))
    assert vol.shape == (4, 5, 6)


def test_zero_size_dimension(tmp_path):
    p = write_nii(tmp_path / "z.nii.gz", np.zeros((4, 0, 6), np.float32))
    _raises_naming(p, match="zero-size")


def test_missing_and_unsupported_files(tmp_path):
    _raises_naming(tmp_path / "nope.nii.gz", match="not found")
    (tmp_path / "x.txt").write_text("1 2 3")
    _raises_naming(tmp_path / "x.txt", match="unsupported")


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_like_replaces_atomically_and_leaves_no_temp(tmp_path):
    vol = read_image(write_nii(tmp_path / "in.nii.gz", _unique_int16(), AFFINES["lps"]))
    out_dir = tmp_path / "out" / "s1"  # parents are created
    target = write_like(vol, vol.array, out_dir / "t2w.nii.gz", dtype="int16")
    first = target.read_bytes()
    write_like(vol, vol.array * 0, target, dtype="int16")
    assert target.read_bytes() != first
    assert _listing(out_dir) == ["t2w.nii.gz"]
    assert not np.asarray(nib.load(str(target)).dataobj).any()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("bug in a writer")])
def test_failed_nifti_write_keeps_previous_file_and_no_temp(tmp_path, monkeypatch, error):
    vol = read_image(write_nii(tmp_path / "in.nii.gz", _unique_int16(), AFFINES["ras"]))
    out_dir = tmp_path / "out"
    target = write_like(vol, vol.array, out_dir / "pred.nii.gz", dtype="int16")
    before = target.read_bytes()
    real_save = nib.save

    def half_save(img, filename):  # writes a partial file where it was told to, then fails
        real_save(img, filename)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise error

    monkeypatch.setattr(io_image.nib, "save", half_save)
    expected = OutputError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected) as e:
        write_like(vol, vol.array + 1, target, dtype="int16")
    if expected is OutputError:
        assert str(target) in str(e.value)
    assert target.read_bytes() == before
    assert _listing(out_dir) == ["pred.nii.gz"]

    with pytest.raises(expected):
        write_nifti(np.zeros((2, 2, 2)), np.eye(4), out_dir / "new.nii.gz")
    assert _listing(out_dir) == ["pred.nii.gz"]  # never a half-written new file either


def test_atomic_write_bytes(tmp_path, monkeypatch):
    p = tmp_path / "deep" / "state.json"
    atomic_write_bytes(p, b'{"step": 1}')
    assert p.read_bytes() == b'{"step": 1}'
    atomic_write_bytes(p, b'{"step": 2}')
    assert p.read_bytes() == b'{"step": 2}'

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(io_image.os, "fsync", failing_fsync)
    with pytest.raises(OutputError) as e:
        atomic_write_bytes(p, b'{"step": 3, "half": ')
    assert str(p) in str(e.value)
    assert p.read_bytes() == b'{"step": 2}'
    assert _listing(p.parent) == ["state.json"]

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_image.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(p, b"partial")
    assert p.read_bytes() == b'{"step": 2}'
    assert _listing(p.parent) == ["state.json"]
    assert os.path.exists(p)
