"""Property-based tests (hypothesis) over random shapes, affines and dtypes: the readers keep
values and geometry and write back exactly, the normalisers invert (inside their clip range), the
sliding window reproduces its input with an identity model; and a short fuzzing run of the
readers (mutated NIfTI bytes → a volume or a DatasetError, never anything else).

Examples are derandomised (the same on every run) and few: the suite stays fast.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_nii
from medsyn.data.normalization import Normalizer, PercentileNorm, WindowNorm, ZScoreNorm
from medsyn.errors import DatasetError, GeometryError
from medsyn.inference.sliding_window import predict_volume_25d, predict_volume_patches
from medsyn.io.image import read_image, write_like

FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = ["uint8", "int16", "int32", "float32", "float64"]


@st.composite
def affines(draw) -> np.ndarray:
    """Voxel → world: a permutation of the axes with flips, spacing 0.3–4 mm, a small rotation,
    and an origin."""
    perm = draw(st.permutations([0, 1, 2]))
    flips = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    spacing = draw(st.lists(st.floats(0.3, 4.0), min_size=3, max_size=3))
    angle = draw(st.floats(-0.3, 0.3))  # radians about z: stays closest to the same axes
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    m = np.zeros((3, 3))
    for i, j in enumerate(perm):
        m[j, i] = flips[i] * spacing[i]
    a = np.eye(4)
    a[:3, :3] = rot @ m
    a[:3, 3] = draw(st.lists(st.floats(-200, 200), min_size=3, max_size=3))
    return a


shapes3d = st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 6))


def coded(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Unique values per voxel (within the dtype's range), so any axis mix-up shows."""
    a = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    if dtype == "uint8":
        a = a % 256
    elif dtype.startswith("float"):
        a = a * 0.37 - 11.5
    else:
        a = a - 100
    return a.astype(dtype)


# ------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------


@FAST
@given(shape=shapes3d, affine=affines(), dtype=st.sampled_from(DTYPES), gz=st.booleans())
def test_reader_keeps_values_geometry_and_writes_back_exactly(shape, affine, dtype, gz):
    with tempfile.TemporaryDirectory() as d:
        path = write_nii(Path(d) / ("img.nii.gz" if gz else "img.nii"), coded(shape, dtype), affine)
        orig = nib.load(path)
        data = np.asarray(orig.dataobj)
        vol = read_image(path)
        assert vol.array.dtype == np.dtype(dtype) and vol.original_dtype == np.dtype(dtype)
        assert vol.original_shape == shape and sorted(vol.shape) == sorted(shape)
        assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
        np.testing.assert_array_equal(vol.to_original(), data)
        # every voxel keeps its world position: canonical index → world == original index → world
        for idx in {(0, 0, 0), tuple(s - 1 for s in shape), tuple(s // 2 for s in shape)}:
            value = data[idx]
            where = np.argwhere(vol.array == value)
            assert where.shape[0] == 1
            np.testing.assert_allclose(vol.affine @ [*where[0], 1], orig.affine @ [*idx, 1], atol=1e-4)
        out = write_like(vol, vol.array, Path(d) / "back.nii.gz", dtype=dtype)
        back = nib.load(out)
        np.testing.assert_array_equal(np.asarray(back.dataobj), data)
        np.testing.assert_allclose(back.affine, orig.affine, atol=1e-5)


@FAST
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 9)), dtype=st.sampled_from(DTYPES))
def test_2d_npy_reads_as_one_slice_volume(shape, dtype):
    with tempfile.TemporaryDirectory() as d:
        a = coded(shape, dtype)
        np.save(Path(d) / "x.npy", a)
        vol = read_image(Path(d) / "x.npy")
        assert vol.shape == (*shape, 1)
        np.testing.assert_array_equal(vol.array[:, :, 0], a)


# ------------------------------------------------------------------------------------------------
# normalisers
# ------------------------------------------------------------------------------------------------

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def images(draw) -> np.ndarray:
    shape = draw(st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(1, 4)))
    scale = draw(st.floats(0.1, 1000.0))
    offset = draw(st.floats(-1000.0, 1000.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (rng.standard_normal(shape) * scale + offset).astype(np.float32)


def _round_trip(norm: Normalizer, x: np.ndarray, lo: float, hi: float) -> None:
    y = norm.forward(x)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert y.min() >= -1.0 - 1e-6 and y.max() <= 1.0 + 1e-6
    back = norm.inverse(y)
    tol = 1e-5 * max(abs(lo), abs(hi), hi - lo, 1.0)
    np.testing.assert_allclose(back, np.clip(x, lo, hi), atol=tol, rtol=1e-5)
    again = Normalizer.from_dict(norm.to_dict())  # as saved with a run
    np.testing.assert_array_equal(again.forward(x), y)


@FAST
@given(x=images(), lower=st.floats(0.0, 20.0), upper=st.floats(80.0, 100.0), use_mask=st.booleans())
def test_percentile_round_trip(x, lower, upper, use_mask):
    mask = x > np.median(x) if use_mask else None
    n = PercentileNorm(lower, upper).fit([x], [mask])
    assert n.hi > n.lo
    _round_trip(n, x, n.lo, n.hi)


@FAST
@given(x=images(), clip=st.floats(0.5, 10.0))
def test_zscore_round_trip(x, clip):
    n = ZScoreNorm(clip).fit([x], [None])
    _round_trip(n, x, n.mean - clip * n.std, n.mean + clip * n.std)


@FAST
@given(x=images(), low=st.floats(-3000, 0), width=st.floats(1.0, 5000))
def test_window_round_trip(x, low, width):
    _round_trip(WindowNorm(low, low + width), x, low, low + width)


# ------------------------------------------------------------------------------------------------
# sliding window
# ------------------------------------------------------------------------------------------------


@FAST
@given(data=st.data(), ndim=st.sampled_from([2, 3]), blend=st.sampled_from(["gaussian", "uniform"]))
def test_sliding_window_identity(data, ndim, blend):
    shape = data.draw(st.tuples(*[st.integers(1, 13)] * ndim))
    patch = data.draw(st.tuples(*[st.integers(1, 9)] * ndim))
    overlap = data.draw(st.floats(0.0, 0.9))
    batch = data.draw(st.integers(1, 5))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    vol = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    out = predict_volume_patches(lambda x: x, vol, patch, overlap=overlap, blend=blend, batch_size=batch,
                                 device="cpu")
    assert out.shape == vol.shape
    np.testing.assert_allclose(out, vol, atol=1e-5)


@FAST
@given(data=st.data())
def test_sliding_window_25d_identity(data):
    shape = data.draw(st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6)))
    k = data.draw(st.sampled_from([1, 3, 5]))
    axis = data.draw(st.sampled_from([0, 1, 2]))
    patch = data.draw(st.tuples(st.integers(1, 8), st.integers(1, 8)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    vol = rng.uniform(-1, 1, (1, *shape)).astype(np.float32)

    def centre(x: torch.Tensor) -> torch.Tensor:  # (B, k, ph, pw) → its centre slice
        return x[:, k // 2: k // 2 + 1]

    out = predict_volume_25d(centre, vol, slice_axis=axis, context=k, patch_size=patch,
                             overlap=data.draw(st.floats(0.0, 0.8)), batch_size=data.draw(st.integers(1, 7)), device="cpu")
    np.testing.assert_allclose(out, vol, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# fuzzing the readers
# ------------------------------------------------------------------------------------------------


def _seed_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        out = {}
        for name in ("a.nii", "a.nii.gz"):
            p = write_nii(Path(d) / name, coded((5, 4, 3), "int16"), np.diag([1.5, 1.0, 2.0, 1.0]))
            out[name] = p.read_bytes()
        return out


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    raw = name == "a.nii" or draw(st.booleans())  # mutate the NIfTI bytes, then (maybe) re-gzip
    if name == "a.nii.gz" and raw:
        data = bytearray(gzip.decompress(bytes(data)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        # bias towards the 348-byte header, where a mutation changes meaning rather than values
        i = draw(st.integers(0, min(len(data) - 1, 400) if draw(st.booleans()) else len(data) - 1))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:]
            if not data:
                break
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    if name == "a.nii.gz" and raw:
        data = bytearray(gzip.compress(bytes(data)))
    return name, bytes(data)


#: exceptions the reader may still let escape (none: every failure is a DatasetError)
KNOWN_ESCAPES: tuple[type[BaseException], ...] = ()


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=mutated())
def test_fuzzed_nifti_reads_or_fails_cleanly(case):
    name, data = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        try:
            vol = read_image(path)
        except (DatasetError, GeometryError) as e:
            assert str(path) in str(e)  # the message names the file
            return
        except KNOWN_ESCAPES:
            return
        assert vol.array.ndim == 3 and 0 not in vol.array.shape
        assert np.isfinite(vol.affine).all()


def test_nifti_with_an_unknown_datatype_code_is_a_dataset_error(tmp_path):
    data = bytearray(SEEDS["a.nii"])
    data[70:72] = np.int16(5).tobytes()  # datatype (byte 70): 5 is no NIfTI data type
    (tmp_path / "bad.nii").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="bad.nii"):
        read_image(tmp_path / "bad.nii")
