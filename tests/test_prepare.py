"""Paired-task preparation on the bundled sample: reproducible, geometry-preserving, atomic."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import medsyn
from medsyn.data.dataset import discover, sample_root
from medsyn.data.prepare import (
    PREPARE_FILE,
    prepare_denoise,
    prepare_motion,
    prepare_translation_2d,
    subject_seed,
)
from medsyn.errors import ConfigError, DatasetError, OutputError
from medsyn.io.image import read_image

GLI = "BraTS-GLI-00000-000"
MET = "BraTS-MET-00110-000"


@pytest.fixture(scope="module")
def one_subject(tmp_path_factory) -> Path:
    """A dataset with the GLI case only (t1n, t2w, seg): keeps the motion runs short."""
    root = tmp_path_factory.mktemp("src")
    (root / GLI).mkdir()
    for name in ("t1n", "t2w", "seg"):
        shutil.copyfile(sample_root() / GLI / f"{name}.nii.gz", root / GLI / f"{name}.nii.gz")
    return root


@pytest.fixture(scope="module")
def motion0(one_subject, tmp_path_factory) -> Path:
    return prepare_motion(one_subject, tmp_path_factory.mktemp("m") / "motion", modality="t2w", seed=0)


def load(p: Path) -> np.ndarray:
    return np.asarray(nib.load(str(p)).dataobj)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=float(b.max() - b.min())))


# ------------------------------------------------------------------------------------ motion


def test_motion_reproducible_and_changes_kspace(one_subject, motion0, tmp_path):
    src = one_subject / GLI / "t2w.nii.gz"
    rng_before = torch.get_rng_state()
    again = prepare_motion(one_subject, tmp_path / "again", modality="t2w", seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # TorchIO ran inside fork_rng
    other = prepare_motion(one_subject, tmp_path / "other", modality="t2w", seed=1)
    a = motion0 / GLI / "t2w_motion.nii.gz"
    assert a.read_bytes() == (again / GLI / "t2w_motion.nii.gz").read_bytes()  # same seed → same bytes
    m0, m1 = load(a), load(other / GLI / "t2w_motion.nii.gz")
    assert not np.array_equal(m0, m1)  # other seed → other motion

    clean = load(motion0 / GLI / "t2w.nii.gz")
    original = load(src)
    # geometry and the clean target kept exactly (values, storage type, affine, axis order)
    assert clean.dtype == original.dtype and np.array_equal(clean, original)
    for out in (a, motion0 / GLI / "t2w.nii.gz"):
        img = nib.load(str(out))
        assert img.shape == nib.load(str(src)).shape
        assert np.allclose(img.affine, nib.load(str(src)).affine)
    # the artefact: lower SSIM, and a k-space that differs from the clean one
    assert m0.dtype == np.float32 and m0.min() >= 0
    assert ssim(m0, original) < 0.95
    k_clean, k_motion = np.fft.fftn(original.astype(np.float64)), np.fft.fftn(m0.astype(np.float64))
    assert np.abs(k_motion - k_clean).sum() / np.abs(k_clean).sum() > 0.05


def test_motion_prepare_json(one_subject, motion0):
    rec = json.loads((motion0 / PREPARE_FILE).read_text())
    assert rec["task"] == "motion" and rec["seed"] == 0
    assert rec["medsyn_version"] == medsyn.__version__ and "torchio" in rec["versions"]
    p = rec["parameters"]
    assert (p["modality"], p["degrees"], p["translation_mm"]) == ("t2w", 10.0, 10.0)
    assert (p["num_transforms"], p["ghosting"]) == (2, False)
    assert rec["pair"] == {"source": ["t2w_motion"], "target": "t2w"}
    (s,) = rec["subjects"]
    assert s["id"] == GLI and s["seed"] == subject_seed(0, GLI)
    src = one_subject / GLI / "t2w.nii.gz"
    assert s["inputs"]["t2w"] == {"path": str(src.resolve()), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    assert np.asarray(s["drawn"]["motion.degrees"]).shape == (2, 3)
    assert np.abs(s["drawn"]["motion.translation"]).max() <= 10
    assert s["outputs"] == {"source": "t2w_motion.nii.gz", "target": "t2w.nii.gz"}
    assert s["carried"] == ["seg.nii.gz"]
    # a normal medsyn dataset
    ds = discover(motion0)
    assert ds.ids() == [GLI] and set(ds.subjects[GLI].files) == {"t2w", "t2w_motion", "seg"}


def test_motion_with_ghosting(one_subject, motion0, tmp_path):
    out = prepare_motion(one_subject, tmp_path / "g", modality="t2w", seed=0, ghosting=True)
    rec = json.loads((out / PREPARE_FILE).read_text())
    assert rec["parameters"]["ghosting"] is True
    assert "ghosting.num_ghosts" in rec["subjects"][0]["drawn"]
    original = load(one_subject / GLI / "t2w.nii.gz")
    with_ghosts = ssim(load(out / GLI / "t2w_motion.nii.gz"), original)
    assert with_ghosts < ssim(load(motion0 / GLI / "t2w_motion.nii.gz"), original)


def test_subject_seed_is_stable_and_distinct():
    assert subject_seed(0, GLI) == subject_seed(0, GLI)
    assert len({subject_seed(0, GLI), subject_seed(1, GLI), subject_seed(0, MET)}) == 3
    assert 0 <= subject_seed(123, "x") < 2**63


# ------------------------------------------------------------------------------------ noise


def test_denoise_rician(tmp_path):
    out = prepare_denoise("sample", tmp_path / "a", modality="t1n", seed=0)
    same = prepare_denoise(sample_root(), tmp_path / "b", modality="t1n", seed=0)
    other = prepare_denoise("sample", tmp_path / "c", modality="t1n", seed=5)
    rec = json.loads((out / PREPARE_FILE).read_text())
    assert rec["task"] == "denoise" and rec["parameters"]["noise"] == "rician" and rec["parameters"]["level"] == 0.05
    assert [s["id"] for s in rec["subjects"]] == [GLI, MET]
    for sid, s in zip((GLI, MET), rec["subjects"]):
        noisy = load(out / sid / "t1n_noisy.nii.gz")
        assert np.array_equal(noisy, load(same / sid / "t1n_noisy.nii.gz"))
        assert not np.array_equal(noisy, load(other / sid / "t1n_noisy.nii.gz"))
        clean = load(sample_root() / sid / "t1n.nii.gz")
        assert np.array_equal(load(out / sid / "t1n.nii.gz"), clean)
        assert np.allclose(nib.load(str(out / sid / "t1n_noisy.nii.gz")).affine,
                           nib.load(str(sample_root() / sid / "t1n.nii.gz")).affine)
        sigma = s["drawn"]["sigma"]
        assert sigma == pytest.approx(0.05 * s["drawn"]["foreground_mean"])
        # background (clean == 0) becomes Rayleigh noise: mean σ·sqrt(π/2)
        bg = noisy[clean == 0]
        assert bg.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.03)
        assert ssim(noisy, clean) < 0.9


def test_denoise_poisson(tmp_path):
    out = prepare_denoise("sample", tmp_path / "p", modality="t1n", seed=0, noise="poisson", level=10.0)
    rec = json.loads((out / PREPARE_FILE).read_text())
    s = rec["subjects"][0]
    assert rec["parameters"]["noise"] == "poisson" and rec["parameters"]["level"] == 10.0
    noisy = load(out / GLI / "t1n_noisy.nii.gz").astype(np.float64)
    clean = load(sample_root() / GLI / "t1n.nii.gz").astype(np.float64)
    counts = noisy * s["drawn"]["counts_per_unit"]
    assert np.allclose(counts, np.round(counts), atol=1e-3 * counts.max())  # integer counts, rescaled
    fg = clean > 0
    assert noisy[fg].mean() == pytest.approx(clean[fg].mean(), rel=0.02)  # unbiased
    assert counts[fg].mean() == pytest.approx(10.0, rel=0.05)  # mean count per foreground voxel
    assert (noisy[~fg] == 0).all()
    with pytest.raises(ConfigError, match="noise"):
        prepare_denoise("sample", tmp_path / "x", noise="gaussian")
    with pytest.raises(ConfigError, match="level"):
        prepare_denoise("sample", tmp_path / "y", level=-1.0)


# ------------------------------------------------------------------------------------ 2D translation


def test_translation_2d_native_spacing(tmp_path):
    out = prepare_translation_2d("sample", tmp_path / "t", source="t1n", target="t2w", size=64, spacing=None)
    rec = json.loads((out / PREPARE_FILE).read_text())
    assert rec["task"] == "translation_2d" and rec["parameters"]["size"] == 64
    assert rec["pair"] == {"source": ["t1n"], "target": "t2w"}
    for s in rec["subjects"]:
        sid, (k0, k1) = s["id"], s["slices"]
        a, b = nib.load(str(out / sid / "t1n.nii.gz")), nib.load(str(out / sid / "t2w.nii.gz"))
        assert a.shape == b.shape == (64, 64, k1 - k0) and np.allclose(a.affine, b.affine)
        v = read_image(sample_root() / sid / "t1n.nii.gz")
        g = np.asarray(s["grid_to_native_voxel"])
        assert np.allclose(a.affine, v.affine @ g)
        assert np.allclose(g[:3, :3], np.eye(3)) and np.allclose(g[:3, 3], np.round(g[:3, 3]))
        # spacing=None: voxels are copied exactly and sit at their true world position
        arr = np.asarray(a.dataobj)
        ox, oy = int(g[0, 3]), int(g[1, 3])
        for i, j, k in [(32, 32, (k1 - k0) // 2), (10, 50, 0), (60, 5, k1 - k0 - 1)]:
            n = (ox + i, oy + j, k0 + k)
            if all(0 <= n[d] < v.shape[d] for d in range(3)):
                assert arr[i, j, k] == v.array[n]
                assert np.allclose(a.affine @ [i, j, k, 1], v.affine @ [*n, 1])
        # every chosen slice shows brain
        assert all((arr[:, :, k] > 0).any() for k in range(arr.shape[2]))
    assert set(discover(out).subjects[GLI].files) == {"t1n", "t2w", "seg"}


def test_translation_2d_resampled_to_1mm(one_subject, tmp_path):
    out = prepare_translation_2d(one_subject, tmp_path / "t", size=192, spacing=1.0, slices=(30, 34))
    a = nib.load(str(out / GLI / "t1n.nii.gz"))
    assert a.shape == (192, 192, 4)
    assert np.allclose(np.linalg.norm(a.affine[:3, :3], axis=0), [1.0, 1.0, 2.0])  # 1 mm in-plane, slices kept
    arr = np.asarray(a.dataobj)
    # the 2 mm sample (72×89) becomes 144×178 at 1 mm: padded with background, brain not cut
    assert (arr > 0).any() and (arr[[0, -1], :, :] == 0).all() and (arr[:, [0, -1], :] == 0).all()
    seg = nib.load(str(out / GLI / "seg.nii.gz"))
    assert np.issubdtype(seg.get_data_dtype(), np.integer)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    with pytest.raises(ConfigError, match="slices"):
        prepare_translation_2d(one_subject, tmp_path / "bad", slices=(70, 200))
    with pytest.raises(ConfigError, match="both"):
        prepare_translation_2d(one_subject, tmp_path / "same", source="t2w", target="t2w")


# ------------------------------------------------------------------------------------ safety


def test_refuses_to_overwrite(one_subject, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an existing *empty* folder is fine
    prepare_denoise(one_subject, out, modality="t1n", seed=0)
    (out / "marker.txt").write_text("old")
    with pytest.raises(OutputError, match="not empty"):
        prepare_denoise(one_subject, out, modality="t1n", seed=1)
    assert (out / "marker.txt").exists()
    prepare_denoise(one_subject, out, modality="t1n", seed=1, overwrite=True)
    assert not (out / "marker.txt").exists()
    assert json.loads((out / PREPARE_FILE).read_text())["seed"] == 1
    with pytest.raises(OutputError, match="source dataset"):
        prepare_denoise(one_subject, one_subject, modality="t1n", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_missing_modality_and_crash_leave_nothing(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "notes").mkdir()  # no images: not a subject
    shutil.copyfile(sample_root() / GLI / "t2w.nii.gz", src / "a" / "t2w.nii.gz")
    shutil.copyfile(sample_root() / GLI / "t1n.nii.gz", src / "b" / "t1n.nii.gz")
    out_root = tmp_path / "outs"
    out_root.mkdir()
    with pytest.raises(DatasetError, match=r"src/b: subject has no t2w\.nii\.gz"):
        prepare_motion(src, out_root / "m", modality="t2w")
    # a corrupt image in the second subject: the first one was written, yet nothing remains
    (src / "b" / "t2w.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DatasetError, match="cannot read"):
        prepare_denoise(src, out_root / "d", modality="t2w")
    assert list(out_root.iterdir()) == []
    with pytest.raises(DatasetError, match="no subject folders"):
        prepare_denoise(tmp_path / "outs", tmp_path / "x")
