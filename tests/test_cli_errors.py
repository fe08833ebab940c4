"""User mistakes on the command line: exit code 2, one line on stderr, no traceback, and nothing
written earlier is touched. One tiny training run (2 steps, 4 base filters, 32×32 patches) and one
prediction on a tiny synthetic volume are shared by the module (about 5–15 s on 2 CPU cores)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_MET, phantom, write_nii
from medsyn.cli.main import main

# the UNet baseline (L1 only) trains in half the time of the full GAN; the errors tested are the same
TINY_TRAIN = [
    "--set", "method=nie-unet", "--set", "params.base_filters=4", "--set", "params.depth=2", "--set", "data.patch_size=[32,32]",
    "--set", "train.batch_size=2", "--set", f"data.train=[{SAMPLE_MET}]", "--set", "data.val=[]",
    "--set", "data.test=[]", "--set", "train.device=cpu", "--max-steps", "2",
]


def snapshot(*folders: Path) -> dict[str, str]:
    """path → sha256 of every file under ``folders`` (what must not change after a refusal)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, *words: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A trained run, a tiny input subject and its prediction."""
    base = tmp_path_factory.mktemp("cli")
    run = base / "run"
    assert main(["train", *TINY_TRAIN, "--out", str(run)]) == 0
    subject = base / "inputs" / "tiny01"
    write_nii(subject / "t1n.nii.gz", phantom((24, 20, 6), seed=5, dtype="int16"), np.diag([1.2, 1.2, 2.0, 1.0]))
    pred = base / "pred"
    assert main(["predict", str(run), str(subject), "--out", str(pred), "--device", "cpu"]) == 0
    assert (pred / "tiny01" / "t2w.nii.gz").is_file()
    return {"base": base, "run": run, "subject": subject, "pred": pred}


# ------------------------------------------------------------------------------------------------


def test_verify_missing_dataset_folder(capsys, tmp_path):
    missing = tmp_path / "no-such-dataset"
    rc, _, err = run_cli(capsys, "verify", missing, "--modalities", "t1n,t2w")
    assert_user_error(rc, err, str(missing), "not found")


def test_train_missing_dataset_folder(capsys, tmp_path):
    missing = tmp_path / "no-such-dataset"
    rc, _, err = run_cli(capsys, "train", *TINY_TRAIN, "--set", f"data.root={missing}", "--out", tmp_path / "run")
    assert_user_error(rc, err, str(missing))
    assert not missing.exists() and not (tmp_path / "run").exists()  # no half-made run folder


def test_train_unknown_config_key(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "train", *TINY_TRAIN, "--set", "train.batch_sise=2", "--out", tmp_path / "run")
    assert_user_error(rc, err, "'train.batch_sise'", "'batch_size'")
    assert not (tmp_path / "run").exists()


def test_train_unknown_key_in_config_file(capsys, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data:\n  patch_sise: [32, 32]\n")
    rc, _, err = run_cli(capsys, "train", cfg, "--out", tmp_path / "run")
    assert_user_error(rc, err, "'data.patch_sise'", "'patch_size'")
    assert not (tmp_path / "run").exists()


def test_train_into_existing_run_is_refused(capsys, workspace):
    before = snapshot(workspace["run"])
    rc, _, err = run_cli(capsys, "train", *TINY_TRAIN, "--out", workspace["run"])
    assert_user_error(rc, err, str(workspace["run"]), "--resume")
    assert snapshot(workspace["run"]) == before


def test_predict_into_existing_output_without_force(capsys, workspace):
    before = snapshot(workspace["run"], workspace["pred"])
    rc, _, err = run_cli(capsys, "predict", workspace["run"], workspace["subject"], "--out", workspace["pred"],
                         "--device", "cpu")
    assert_user_error(rc, err, str(workspace["pred"] / "tiny01" / "t2w.nii.gz"), "--force")
    assert snapshot(workspace["run"], workspace["pred"]) == before


@pytest.mark.parametrize("kind", ["empty", "dataset", "missing"])
def test_predict_from_a_folder_that_is_not_a_run(capsys, workspace, tmp_path, sample, kind):
    not_run = {"empty": tmp_path / "empty", "dataset": sample, "missing": tmp_path / "missing"}[kind]
    if kind == "empty":
        not_run.mkdir()
    before = snapshot(workspace["subject"])
    rc, _, err = run_cli(capsys, "predict", not_run, workspace["subject"], "--out", tmp_path / "out", "--device", "cpu")
    assert_user_error(rc, err, str(not_run))
    assert not (tmp_path / "out").exists()
    assert snapshot(workspace["subject"]) == before


def test_predict_missing_input(capsys, workspace, tmp_path):
    missing = tmp_path / "nobody"
    rc, _, err = run_cli(capsys, "predict", workspace["run"], missing, "--out", tmp_path / "out", "--device", "cpu")
    assert_user_error(rc, err, str(missing), "not found")
    assert not (tmp_path / "out").exists()


def test_resume_a_folder_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, "train", "--resume", tmp_path / "empty")
    assert_user_error(rc, err, str(tmp_path / "empty"))
    assert list((tmp_path / "empty").iterdir()) == []


def test_evaluate_missing_prediction_folder(capsys, tmp_path, sample):
    missing = tmp_path / "no-preds"
    out = tmp_path / "eval"
    rc, _, err = run_cli(capsys, "evaluate", "--pred", missing, "--ref", sample, "--modality", "t2w", "--out", out)
    assert_user_error(rc, err, str(missing), "not found")
    assert not out.exists()


def test_evaluate_prediction_of_a_subject_not_in_the_reference(capsys, workspace, tmp_path, sample):
    before = snapshot(workspace["pred"])
    out = tmp_path / "eval"
    rc, _, err = run_cli(capsys, "evaluate", "--pred", workspace["pred"], "--ref", sample, "--modality", "t2w",
                         "--out", out)
    assert_user_error(rc, err, "'tiny01'")
    assert not out.exists()
    assert snapshot(workspace["pred"]) == before


def test_evaluate_bad_data_range(capsys, workspace, tmp_path):
    rc, _, err = run_cli(capsys, "evaluate", "--pred", workspace["pred"], "--ref", workspace["base"] / "inputs",
                         "--modality", "t2w", "--data-range", "wide", "--out", tmp_path / "m")
    assert_user_error(rc, err, "--data-range", "'wide'")
