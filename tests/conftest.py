"""Shared fixtures: small synthetic NIfTI datasets written on the fly.

``tiny_dataset(...)`` writes subject folders of ``<modality>.nii.gz`` files (phantoms: a bright
textured ellipsoid on a zero background, different per subject and modality) and returns the
dataset root. Files are written with nibabel directly, so the readers under test are not also
the writers of their own fixtures.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping

import nibabel as nib
import numpy as np
import pytest
from hypothesis import settings

from medsyn.data.dataset import sample_root

# Property tests explore the same examples on every run, so CI is reproducible; run with
# `--hypothesis-profile=explore` to search new ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")

@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    tiny networks run as fast on one, torchrun gives each process one, and the test does not fight
    other processes for the cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SAMPLE_GLI = "BraTS-GLI-00000-000"
SAMPLE_MET = "BraTS-MET-00110-000"


def phantom(shape: tuple[int, ...] = (16, 18, 12), seed: int = 0, dtype: str | np.dtype = "float32") -> np.ndarray:
    """(X, Y, Z) array: a textured ellipsoid (values ≈ 100–300) on an exactly-zero background."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.6
    values = 200.0 + 80.0 * grids[0] + rng.uniform(-20, 20, size=shape)
    out = np.where(inside, values, 0.0)
    if np.issubdtype(np.dtype(dtype), np.integer):
        out = np.rint(out)
    return out.astype(dtype)


def write_nii(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Plain nibabel write (qform and sform set to ``affine``)."""
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (a download or copy that stopped half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


Arrays = Mapping[str, np.ndarray]


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_dataset(subjects=("s1", "s2"), modalities=("t1n", "t2w"), shape=..., affine=..., dtype=...)``.

    ``arrays={"s1": {"t2w": array}}`` replaces individual images (any shape/dtype);
    ``extra={"s1": ["notes.txt"]}`` adds non-image files. Returns the dataset root (a new folder
    under ``tmp_path`` per call, named ``name``).
    """

    def make(subjects: Iterable[str] = ("s1", "s2"), modalities: Iterable[str] = ("t1n", "t2w"), *,
             shape: tuple[int, int, int] = (16, 18, 12), affine: np.ndarray | None = None,
             dtype: str = "float32", arrays: Mapping[str, Arrays] | None = None,
             extra: Mapping[str, Iterable[str]] | None = None, name: str = "dataset") -> Path:
        root = tmp_path / name
        root.mkdir()
        arrays = arrays or {}
        for sid in subjects:
            for m in modalities:
                arr = phantom(shape, seed=zlib.crc32(f"{sid}/{m}".encode()), dtype=dtype)
                write_nii(root / sid / f"{m}.nii.gz", arr, affine)
            for m, arr in arrays.get(sid, {}).items():
                write_nii(root / sid / f"{m}.nii.gz", arr, affine)
            for fname in (extra or {}).get(sid, []):
                (root / sid / fname).write_text("not an image\n")
        return root

    return make


@pytest.fixture(scope="session")
def sample() -> Path:
    """The bundled two-subject BraTS sample (read-only: never write into it)."""
    return sample_root()


def load_script(relpath: str, name: str | None = None):
    """A script of the repository (``scripts/…``) imported as a module, for testing its functions."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
