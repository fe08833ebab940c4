"""BRATS2015 (.mha, Qu et al.'s data set) → medsyn's subject folders, on a tiny fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsyn.cli.main import main
from medsyn.data.brats2015 import convert_brats2015, find_cases
from medsyn.data.dataset import discover
from medsyn.errors import DatasetError
from medsyn.io.image import read_image

TAGS = {"MR_Flair": 54512, "MR_T1": 54513, "MR_T1c": 54514, "MR_T2": 54515}


def _mha(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)  # (z, y, x)
    img.SetSpacing(spacing)
    img.SetOrigin((-4.0, 5.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def make_brats2015(root: Path, *, flat: str | None = None, labels=True) -> dict[str, dict[str, np.ndarray]]:
    """Two HGG cases and one LGG case, 6×7×8 voxels (z, y, x); ``flat``: a case whose .mha files
    lie directly in its folder. Returns the arrays written, per case and tag."""
    written = {}
    for i, (grade, case) in enumerate([("HGG", "brats_2013_pat0001_1"), ("HGG", "brats_tcia_pat105_0001"),
                                       ("LGG", "brats_2013_pat0008_1")]):
        rng = np.random.default_rng(i)
        arrs = {t: rng.integers(0, 900, (6, 7, 8)).astype(np.int16) for t in TAGS}
        if labels:
            arrs["OT"] = rng.integers(0, 5, (6, 7, 8)).astype(np.uint8)
        for tag, arr in arrs.items():
            stem = f"VSD.Brain_3more.XX.O.OT.{54517 + 10 * i}" if tag == "OT" else f"VSD.Brain.XX.O.{tag}.{TAGS[tag] + 10 * i}"
            path = root / grade / case / f"{stem}.mha" if case == flat else root / grade / case / stem / f"{stem}.mha"
            _mha(path, arr, (1.0, 1.0, 1.5))
        written[case] = arrs
    return written


def test_brats2015_cases_become_medsyn_subjects_with_their_geometry(tmp_path):
    src = tmp_path / "BRATS2015_Training"
    written = make_brats2015(src, flat="brats_tcia_pat105_0001")
    rec = convert_brats2015(src, tmp_path / "out")
    ds = discover(tmp_path / "out")
    assert ds.ids() == sorted(written)
    for case, arrs in written.items():
        s = ds.subjects[case]
        assert sorted(s.files) == ["seg", "t1c", "t1n", "t2f", "t2w"]
        for tag, name in (("MR_T1", "t1n"), ("MR_T1c", "t1c"), ("MR_T2", "t2w"), ("MR_Flair", "t2f"), ("OT", "seg")):
            ours = read_image(s.files[name])
            src_file = next(p for p in src.rglob("*.mha") if case in str(p) and f".{tag}." in p.name)
            ref = read_image(src_file)
            np.testing.assert_array_equal(ours.array, ref.array)  # same voxels, same orientation
            np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-5)  # same world geometry
            assert ours.original_dtype == (np.uint8 if tag == "OT" else np.int16)
    assert rec["cases"]["brats_2013_pat0008_1"]["grade"] == "LGG" and rec["n_classes"] == 5
    assert json.loads((tmp_path / "out" / "brats2015.json").read_text())["cases"].keys() == written.keys()
    # resumable: a second run skips every case already written
    assert convert_brats2015(src, tmp_path / "out")["skipped_existing"] == 3


def test_testing_archive_without_labels_and_bad_input(tmp_path, capsys):
    src = tmp_path / "test"
    make_brats2015(src, labels=False)
    assert [c.files.keys() >= {"MR_T1"} and "OT" not in c.files for c in find_cases(src)] == [True] * 3
    rc = main(["qu", "convert-brats2015", str(src), str(tmp_path / "o")])
    assert rc == 0 and not (tmp_path / "o" / "brats_2013_pat0001_1" / "seg.nii.gz").exists()
    next(src.rglob("VSD.Brain.XX.O.MR_T2.*.mha")).unlink()
    capsys.readouterr()
    rc = main(["qu", "convert-brats2015", str(src), str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and "no MR_T2 image" in " ".join(err.split()) and "Traceback" not in err
    with pytest.raises(DatasetError, match="no BRATS2015 image"):
        find_cases(tmp_path / "o")
