"""``medsyn verify``: every broken file is found, named, and makes the command exit 2 — no traceback;
the bundled sample passes; extra files are reported, not errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_GLI, SAMPLE_MET, phantom, truncate, write_nii
from medsyn.cli.main import main
from medsyn.data.verify import verify_dataset
from medsyn.errors import DatasetError

MODS = "t1n,t2w"


def run_verify(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    rc = main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc: int, err: str, *paths: Path, words: tuple[str, ...] = ()) -> None:
    assert rc == 2, f"verify must exit 2 on a broken dataset, got {rc}; stderr:\n{err}"
    assert "Traceback" not in err
    for p in paths:
        assert str(p) in err
    for w in words:
        assert w in err


def test_sample_passes(capsys, sample):
    rc, out, err = run_verify(capsys, sample, "--modalities", MODS)
    assert rc == 0, err
    assert "2 subjects ok" in out
    assert "error" not in err


def test_sample_report_lists_extras(sample):
    mods = ["t1n", "t2w"]
    rep = verify_dataset(sample, mods)
    # GLI's seg is checked but must not become a requirement for MET (which has none)
    assert mods == ["t1n", "t2w"] and rep.requested == ["t1n", "t2w"]
    assert rep.ok and [s.id for s in rep.subjects] == [SAMPLE_GLI, SAMPLE_MET]
    met = rep.subjects[1]
    assert set(met.modalities) == {"t1n", "t2w"}
    assert set(met.extra) == {"t1c.nii.gz", "t2f.nii.gz"}  # not requested: reported, not checked
    gli = rep.subjects[0]
    assert "seg" in gli.modalities  # labels are always checked


def test_truncated_file(capsys, tiny_dataset):
    root = tiny_dataset(("s1", "s2"), ("t1n", "t2w"), shape=(20, 22, 18))
    bad = truncate(root / "s2" / "t2w.nii.gz", 0.5)
    rc, _, err = run_verify(capsys, root, "--modalities", MODS)
    assert_refused(rc, err, bad)
    assert str(root / "s1") not in err  # the good subject is not blamed
    rep = verify_dataset(root, ["t1n", "t2w"])
    assert [p.path for p in rep.problems] == [str(bad)]


def test_missing_modality(capsys, tiny_dataset):
    root = tiny_dataset(("s1", "s2"), ("t1n", "t2w"))
    (root / "s1" / "t2w.nii.gz").unlink()
    rc, _, err = run_verify(capsys, root, "--modalities", MODS)
    assert_refused(rc, err, root / "s1", words=("missing modality 't2w'",))
    rep = verify_dataset(root, ["t1n", "t2w"])
    assert [(p.subject, Path(p.path).parent) for p in rep.problems] == [("s1", root / "s1")]


def test_mismatched_shapes(capsys, tiny_dataset):
    root = tiny_dataset(("s1", "s2"), ("t1n",), shape=(16, 18, 12))
    write_nii(root / "s1" / "t2w.nii.gz", phantom((16, 18, 12)))
    write_nii(root / "s2" / "t2w.nii.gz", phantom((16, 18, 13)))
    rc, _, err = run_verify(capsys, root, "--modalities", MODS)
    assert_refused(rc, err, root / "s2" / "t2w.nii.gz", words=("shape", "--resample"))
    assert str(root / "s1") not in err


def test_shifted_affine_is_a_different_grid(tiny_dataset):
    root = tiny_dataset(("s1",), ("t1n",))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    write_nii(root / "s1" / "t2w.nii.gz", phantom(), shifted)
    rep = verify_dataset(root, ["t1n", "t2w"])
    assert len(rep.problems) == 1 and "affine" in rep.problems[0].message
    assert verify_dataset(root, ["t1n", "t2w"], resample=True).ok


def test_resample_accepts_different_grids(capsys, tiny_dataset):
    root = tiny_dataset(("s1",), ("t1n",), shape=(16, 18, 12))
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    write_nii(root / "s1" / "t2w.nii.gz", phantom((8, 9, 6)), coarse)
    rc, _, err = run_verify(capsys, root, "--modalities", MODS, "--resample")
    assert rc == 0, err
    rc, _, err = run_verify(capsys, root, "--modalities", MODS)
    assert_refused(rc, err, root / "s1" / "t2w.nii.gz")


def test_nan_volume(capsys, tiny_dataset):
    nan = phantom()
    nan[3, 4, 5] = np.nan
    nan[0, 0, 0] = np.inf
    root = tiny_dataset(("s1", "s2"), ("t1n",), arrays={"s1": {"t2w": phantom(seed=1)}, "s2": {"t2w": nan}})
    rc, _, err = run_verify(capsys, root, "--modalities", MODS)
    assert_refused(rc, err, root / "s2" / "t2w.nii.gz", words=("2 of",))
    assert str(root / "s1") not in err


def test_empty_mask(capsys, tiny_dataset):
    root = tiny_dataset(("s1", "s2"), ("t1n", "t2w"))
    ok_mask = np.zeros((16, 18, 12), np.uint8)
    ok_mask[4:10, 4:10, 3:8] = 1
    write_nii(root / "s1" / "brainmask.nii.gz", ok_mask)
    write_nii(root / "s2" / "brainmask.nii.gz", np.zeros((16, 18, 12), np.uint8))
    rc, _, err = run_verify(capsys, root, "--modalities", MODS)
    assert_refused(rc, err, root / "s2" / "brainmask.nii.gz", words=("empty",))
    assert str(root / "s1") not in err


def test_constant_image(capsys, tiny_dataset):
    root = tiny_dataset(("s1", "s2"), ("t1n",), arrays={"s1": {"t2w": phantom(seed=4)},
                                                       "s2": {"t2w": np.full((16, 18, 12), 7, np.int16)}})
    rc, _, err = run_verify(capsys, root, "--modalities", MODS)
    assert_refused(rc, err, root / "s2" / "t2w.nii.gz", words=("constant",))
    assert str(root / "s1") not in err


def test_bad_labels(tiny_dataset):
    root = tiny_dataset(("s1",), ("t1n", "t2w"))
    seg = np.zeros((16, 18, 12), np.float32)
    seg[5, 5, 5] = -1
    seg[6, 6, 6] = 1.5
    write_nii(root / "s1" / "seg.nii.gz", seg)
    rep = verify_dataset(root, ["t1n", "t2w"])
    assert [(Path(p.path).name, "non-negative integers" in p.message) for p in rep.problems] == [("seg.nii.gz", True)]


def test_label_outside_mask(tiny_dataset):
    root = tiny_dataset(("s1",), ("t1n", "t2w"))
    mask = np.zeros((16, 18, 12), np.uint8)
    mask[4:10, 4:10, 3:8] = 1
    seg = np.zeros_like(mask)
    seg[5:7, 5:7, 4] = 2
    seg[0, 0, 0] = 1  # outside the mask
    write_nii(root / "s1" / "brainmask.nii.gz", mask)
    write_nii(root / "s1" / "seg.nii.gz", seg)
    rep = verify_dataset(root, ["t1n", "t2w"])
    # a warning with the count, as `train` gives (issue 17: BRATS2015 has such voxels and trains fine)
    assert rep.ok and len(rep.warnings) == 1
    assert rep.warnings[0].path == str(root / "s1" / "seg.nii.gz") and "1 labelled voxels" in rep.warnings[0].message


def test_every_problem_is_reported(capsys, tiny_dataset):
    root = tiny_dataset(("s1", "s2", "s3"), ("t1n", "t2w"), shape=(20, 20, 20))
    a = truncate(root / "s1" / "t1n.nii.gz", 0.4)
    b = truncate(root / "s3" / "t2w.nii.gz", 0.4)
    rc, _, err = run_verify(capsys, root, "--modalities", MODS)
    assert_refused(rc, err, a, b, words=("2 problem(s) in 2 of 3 subjects",))
    assert str(root / "s2") not in err


def test_extra_files_are_reported_not_errors(capsys, tiny_dataset):
    root = tiny_dataset(("s1", "s2"), ("t1n", "t2w", "t1c"), extra={"s1": ["notes.txt", "protocol.json"]})
    rc, out, err = run_verify(capsys, root, "--modalities", MODS)
    assert rc == 0, err
    assert "2 subjects ok" in out and "error" not in err
    rep = verify_dataset(root, ["t1n", "t2w"])
    assert rep.ok
    assert set(rep.subjects[0].extra) == {"notes.txt", "protocol.json", "t1c.nii.gz"}
    assert rep.subjects[1].extra == ["t1c.nii.gz"]


def test_unrequested_broken_extra_image_is_not_read(tiny_dataset):
    root = tiny_dataset(("s1",), ("t1n", "t2w", "t1c"), shape=(20, 20, 20))
    truncate(root / "s1" / "t1c.nii.gz", 0.3)
    assert verify_dataset(root, ["t1n", "t2w"]).ok
    # without --modalities every image is checked
    rep = verify_dataset(root)
    assert [p.path for p in rep.problems] == [str(root / "s1" / "t1c.nii.gz")]


def test_manifest_dataset(capsys, tiny_dataset):
    root = tiny_dataset(("s1", "s2"), ("t1n", "t2w"), shape=(20, 20, 20))
    man = root / "list.csv"
    man.write_text("subject,modality,path\n" + "".join(f"{s},{m},{s}/{m}.nii.gz\n" for s in ("s1", "s2")
                                                        for m in ("t1n", "t2w")))
    rc, _, err = run_verify(capsys, root, "--manifest", man, "--modalities", MODS)
    assert rc == 0, err
    bad = truncate(root / "s2" / "t1n.nii.gz", 0.5)
    rc, _, err = run_verify(capsys, man, "--modalities", MODS)  # a CSV given as the dataset
    assert_refused(rc, err, bad)


def test_unknown_subject_and_missing_root(tmp_path, tiny_dataset):
    root = tiny_dataset(("s1",), ("t1n",))
    with pytest.raises(DatasetError, match="'s9'"):
        verify_dataset(root, ["t1n"], subjects=["s9"])
    with pytest.raises(DatasetError, match="not found"):
        verify_dataset(tmp_path / "nowhere", ["t1n"])
