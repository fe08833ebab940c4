"""Public dataset layouts as downloaded (medsyn.data.layouts): tiny NIfTI fixtures of each layout
are discovered without a manifest, under canonical modality names, and named back alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsyn.cli.main import main
from medsyn.config import load_config
from medsyn.data.dataset import discover, split_subjects
from medsyn.data.layouts import canonical_modality
from medsyn.errors import DatasetError

from conftest import phantom, write_nii


def tiny(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nii(path, phantom((6, 7, 5), seed=seed))


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_brats2023_names_are_read_as_modalities(tmp_path):
    for sid in ("BraTS-GLI-00000-000", "BraTS-MEN-00004-001"):
        for m in ("t1n", "t1c", "t2w", "t2f", "seg"):
            tiny(tmp_path / sid / f"{sid}-{m}.nii.gz")
    ds = discover(tmp_path)
    assert ds.layouts() == ["brats2023"]
    assert ds.ids() == ["BraTS-GLI-00000-000", "BraTS-MEN-00004-001"]
    s = ds.subjects["BraTS-GLI-00000-000"]
    assert sorted(s.files) == ["seg", "t1c", "t1n", "t2f", "t2w"]
    assert s.files["t2w"].name == "BraTS-GLI-00000-000-t2w.nii.gz"
    assert ds.output_relpath("BraTS-GLI-00000-000", "t2w") == Path("BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2w.nii.gz")


def test_brats2021_names_map_to_brats2023_and_back(tmp_path):
    sid = "BraTS2021_00000"
    for m in ("t1", "t1ce", "t2", "flair", "seg"):
        tiny(tmp_path / sid / f"{sid}_{m}.nii.gz")
    ds = discover(tmp_path)
    assert ds.layouts() == ["brats2021"]
    s = ds.subjects[sid]
    assert sorted(s.files) == ["seg", "t1c", "t1n", "t2f", "t2w"]
    assert s.files["t1c"].name == f"{sid}_t1ce.nii.gz" and s.files["t2f"].name == f"{sid}_flair.nii.gz"
    # written back in the 2021 spelling, whichever name is asked for
    assert ds.output_relpath(sid, "t2w") == Path(sid) / f"{sid}_t2.nii.gz"
    assert ds.output_relpath(sid, "flair") == Path(sid) / f"{sid}_flair.nii.gz"


def test_brats2021_missing_contrast_is_named_in_2021_spelling(tmp_path):
    sid = "BraTS2021_00001"
    for m in ("t1", "t2", "flair"):
        tiny(tmp_path / sid / f"{sid}_{m}.nii.gz")
    ds = discover(tmp_path)
    assert ds.layouts() == ["brats2021"]
    assert ds.output_relpath(sid, "t1c") == Path(sid) / f"{sid}_t1ce.nii.gz"


def test_config_accepts_both_spellings():
    a = load_config(None, ["data.source=[t1ce,flair]", "data.target=t2"])
    b = load_config(None, ["data.source=[t1c,t2f]", "data.target=t2w"])
    assert a.data.source == b.data.source == ["t1c", "t2f"] and a.data.target == b.data.target == "t2w"
    assert canonical_modality("T1w") == "T1w" and canonical_modality("ct") == "ct"
    # method parameters that name contrasts resolve the same way
    q = load_config("configs/qu_brats.yaml", ["params.modalities=[t1,t1ce,t2,flair]"])
    assert q.params["modalities"] == ["t1n", "t1c", "t2w", "t2f"]
    b = load_config("configs/brasyn.yaml", ["params.contrasts=[t1,t1ce,t2,flair]", "params.validate_missing=t2"])
    assert b.params["contrasts"] == ["t1n", "t1c", "t2w", "t2f"] and b.params["validate_missing"] == "t2w"


def test_synthrad_2023_nested_release_and_2025_mha(tmp_path):
    for sid in ("1BA001", "1BA002"):
        for m in ("mr", "ct", "mask"):
            tiny(tmp_path / "Task1" / "brain" / sid / f"{m}.nii.gz")
    (tmp_path / "Task1" / "brain" / "overview").mkdir()
    ds = discover(tmp_path / "Task1")  # Task1/brain/<id>: found one level down
    assert ds.layouts() == ["synthrad"] and ds.ids() == ["1BA001", "1BA002"]
    assert sorted(ds.subjects["1BA001"].files) == ["ct", "mask", "mr"]
    assert ds.output_relpath("1BA001", "ct") == Path("brain/1BA001/ct.nii.gz")

    import SimpleITK as sitk

    d = tmp_path / "sr25" / "2HNA001"
    d.mkdir(parents=True)
    for m in ("cbct", "ct", "mask"):
        sitk.WriteImage(sitk.GetImageFromArray(phantom((5, 6, 7))), str(d / f"{m}.mha"))
    ds = discover(tmp_path / "sr25")
    assert ds.layouts() == ["synthrad"] and sorted(ds.subjects["2HNA001"].files) == ["cbct", "ct", "mask"]
    assert ds.output_relpath("2HNA001", "ct") == Path("2HNA001/ct.mha")


def test_bids_sessions_are_subject_visits_kept_in_one_split(tmp_path):
    (tmp_path / "dataset_description.json").write_text("{}")
    for sub in range(1, 5):
        for ses in (1, 2):
            anat = tmp_path / f"sub-{sub:02d}" / f"ses-{ses}" / "anat"
            for m in ("T1w", "T2w", "FLAIR"):
                tiny(anat / f"sub-{sub:02d}_ses-{ses}_{m}.nii.gz", seed=sub)
            (anat / f"sub-{sub:02d}_ses-{ses}_T1w.json").write_text("{}")
    anat = tmp_path / "sub-05" / "anat"  # a subject without sessions
    tiny(anat / "sub-05_T1w.nii.gz")
    tiny(anat / "sub-05_acq-fast_T2w.nii.gz")
    ds = discover(tmp_path)
    assert ds.layouts() == ["bids"]
    assert "sub-01_ses-2" in ds.ids() and "sub-05" in ds.ids() and len(ds.ids()) == 9
    s = ds.subjects["sub-01_ses-2"]
    assert sorted(s.files) == ["FLAIR", "T1w", "T2w"] and s.group == "sub-01"
    assert [p.name for p in s.extra] == ["sub-01_ses-2_T1w.json"]
    assert sorted(ds.subjects["sub-05"].files) == ["T1w", "acq-fast_T2w"]
    assert ds.output_relpath("sub-01_ses-2", "T2w") == Path("sub-01/ses-2/anat/sub-01_ses-2_T2w.nii.gz")
    for seed in range(5):
        parts = split_subjects(ds, seed=seed, val_fraction=0.2, test_fraction=0.2)
        where = {sid: k for k, v in parts.items() for sid in v}
        assert sorted(where) == ds.ids()
        for sub in range(1, 5):
            assert where[f"sub-{sub:02d}_ses-1"] == where[f"sub-{sub:02d}_ses-2"], (seed, parts)


def test_prefixed_folder_strips_the_subject_name(tmp_path):
    for m in ("T1", "T2", "PD"):
        tiny(tmp_path / "IXI002" / f"IXI002_{m}.nii.gz")
    tiny(tmp_path / "IXI012" / "IXI012-T1.nii.gz")
    ds = discover(tmp_path)
    assert ds.layouts() == ["prefixed"]
    assert sorted(ds.subjects["IXI002"].files) == ["PD", "T1", "T2"]
    assert ds.output_relpath("IXI002", "T2") == Path("IXI002/IXI002_T2.nii.gz")
    assert ds.output_relpath("IXI012", "T2") == Path("IXI012/IXI012-T2.nii.gz")


def test_plain_and_manifest_keep_working(tmp_path):
    for m in ("t1n", "t2w"):
        tiny(tmp_path / "case1" / f"{m}.nii.gz")
    ds = discover(tmp_path)
    assert ds.layouts() == ["plain"] and ds.output_relpath("case1", "t2w") == Path("case1/t2w.nii.gz")
    man = tmp_path / "m.csv"
    man.write_text("subject,modality,path\ncase1,t1ce,case1/t1n.nii.gz\n")
    ds = discover(tmp_path, man)
    assert ds.layouts() == ["manifest"] and sorted(ds.subjects["case1"].files) == ["t1c"]


def test_alias_and_canonical_file_in_one_folder_is_a_clear_error(tmp_path):
    tiny(tmp_path / "s" / "t1ce.nii.gz")
    tiny(tmp_path / "s" / "t1c.nii.gz")
    with pytest.raises(DatasetError, match="two files for modality 't1c'"):
        discover(tmp_path)


def test_verify_prints_layout_and_modalities(tmp_path, capsys):
    sid = "BraTS-GLI-00002-000"
    for m in ("t1n", "t1c", "t2w"):
        tiny(tmp_path / sid / f"{sid}-{m}.nii.gz")
    rc, out, err = cli(capsys, "verify", tmp_path, "--modalities", "t1n,t1ce")
    assert rc == 0, err
    assert "layout brats2023" in out and "modalities found: t1c, t1n, t2w" in out
    rc, out, err = cli(capsys, "verify", tmp_path, "--modalities", "flair")
    assert rc == 2 and f"{sid}-t2f.nii.gz" in " ".join(err.split()) and "missing modality 't2f'" in err
