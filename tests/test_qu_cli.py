"""Qu et al. on the command line: ``medsyn generate`` → ``medsyn verify``, ``medsyn
segment-experiment``, ``medsyn train configs/qu_brats.yaml``, and exit code 2 with one line for
every user mistake. The structure and multimodal generators (and the segmenter) are trained a few
steps on tiny phantom volumes (helpers from test_qu_pipeline)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from medsyn.cli.main import main
from medsyn.config import load_config
from medsyn.pipelines.qu import plan, run_pipeline
from test_qu_pipeline import MODS, TINY_PARAMS, _slice_cache, make_qu_dataset, tiny_cfg  # noqa: F401 (autouse fixture)



@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qucli")
    data = make_qu_dataset(root / "data")
    run = root / "run"
    run_pipeline(tiny_cfg(data, max_steps=2), run, progress=False)
    return data, run


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def user_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error:"), err
    for n in needles:
        assert n in " ".join(err.split()), (n, err)


def test_generate_two_subjects_that_verify_accepts(capsys, setup, tmp_path):
    data, run = setup
    out = tmp_path / "syn"
    rc, stdout, err = cli(capsys, "generate", run, "--n", 2, "--labels", data, "--out", out, "--seed", 7,
                          "--filter-mae", 1, "--min-dice", 0)
    assert rc == 0, err
    assert "wrote 2 subjects" in " ".join(stdout.split())
    rc, stdout, err = cli(capsys, "verify", out, "--modalities", ",".join(MODS))
    assert rc == 0, err + stdout
    assert "2 subjects ok" in stdout
    for sid in ("synth-00000", "synth-00001"):
        seg = np.asarray(nib.load(out / sid / "seg.nii.gz").dataobj)
        brain = np.asarray(nib.load(out / sid / "brainmask.nii.gz").dataobj)
        assert seg.max() > 0 and not ((seg > 0) & (brain == 0)).any()  # labels inside the brain mask
    rec = json.loads((out / "generate.json").read_text())
    assert rec["seed"] == 7 and [s["id"] for s in rec["subjects"]] == ["synth-00000", "synth-00001"]
    assert set(rec["counts"]) == {"attempts", "structure_rejected", "label_rejected", "dice_rejected", "accepted"}


def test_generate_user_errors_exit_2_with_one_line(capsys, setup, tmp_path):
    data, run = setup
    base = ["generate", run, "--labels", data, "--filter-mae", 1, "--min-dice", 0]
    for n in (0, -3):
        rc, _, err = cli(capsys, *base, "--n", n, "--out", tmp_path / f"n{n}")
        user_error(rc, err, f"--n: got {n}", "≥ 1")
        assert not (tmp_path / f"n{n}").exists()
    outside = make_qu_dataset(tmp_path / "outside", subjects=("a",), labelled=("a",), lesion_shift=(0.0, 13.0))
    rc, _, err = cli(capsys, "generate", run, "--n", 1, "--labels", outside, "--out", tmp_path / "o")
    user_error(rc, err, "outside their subject's brain", "outside every mask")
    unlabelled = make_qu_dataset(tmp_path / "unlabelled", subjects=("x",), labelled=())
    rc, _, err = cli(capsys, *base, "--n", 1, "--labels", unlabelled, "--out", tmp_path / "u")
    user_error(rc, err, "no subject has a 'seg' label file")
    rc, _, err = cli(capsys, "generate", tmp_path / "no-run", "--n", 1, "--labels", data, "--out", tmp_path / "r")
    user_error(rc, err, "not a medsyn run folder")
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    rc, _, err = cli(capsys, *base, "--n", 1, "--out", full)
    user_error(rc, err, "never overwrites")
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    rc, _, err = cli(capsys, "generate", run, "--n", 1, "--labels", data, "--out", tmp_path / "strict",
                     "--filter-mae", "0.000001", "--min-dice", 0, "--max-attempts", 2)
    user_error(rc, err, "Algorithm 3 rejected all 2")


def test_segment_experiment_writes_tables_and_refuses_bad_data(capsys, setup, tmp_path):
    data, run = setup
    syn = tmp_path / "syn"
    assert cli(capsys, "generate", run, "--n", 6, "--labels", data, "--out", syn, "--filter-mae", 1, "--min-dice", 0)[0] == 0
    rc, stdout, err = cli(capsys, "segment-experiment", run, "--synthetic", syn, "--out", tmp_path / "t2",
                          "--experiments", "1,2,15,16,17,22", "--steps", 2)
    assert rc == 0, err
    assert "| 16 | R (6) | R (6) | 0 | real → synthetic |" in stdout
    rows = json.loads((tmp_path / "t2" / "table2.json").read_text())["rows"]
    assert [r["id"] for r in rows] == [1, 2, 15, 16, 17, 22]
    rc, stdout, err = cli(capsys, "segment-experiment", run, "--table", 1, "--synthetic", f"4SEG={syn}",
                          "--out", tmp_path / "t1", "--steps", 2)
    assert rc == 0, err
    assert "| 4SEG | synthetic |" in stdout and (tmp_path / "t1" / "table1.json").is_file()
    # a synthetic data set missing a modality
    broken = tmp_path / "broken"
    shutil.copytree(syn, broken)
    (broken / "synth-00003" / "t2w.nii.gz").unlink()
    rc, _, err = cli(capsys, "segment-experiment", run, "--synthetic", broken, "--out", tmp_path / "t3",
                     "--experiments", "2", "--steps", 1)
    user_error(rc, err, "synth-00003", "has no 't2w' image")
    rc, _, err = cli(capsys, "segment-experiment", run, "--synthetic", syn, "--out", tmp_path / "t4",
                     "--experiments", "1,99")
    user_error(rc, err, "unknown Table 2 row(s) [99]")
    rc, _, err = cli(capsys, "segment-experiment", run, "--synthetic", syn, "--out", tmp_path / "t2",
                     "--experiments", "1", "--steps", 1)
    user_error(rc, err, "table2.md: exists")


def test_the_paper_config_resolves_on_the_bundled_sample():
    cfg = load_config("configs/qu_brats.yaml")
    assert cfg.method == "qu-pipeline" and cfg.train.batch_size == 1 and cfg.train.epochs == 50
    p = cfg.params
    assert (p["lr"], p["beta1"], p["weight_decay"], p["input_dropout"], p["disc_init_std"]) == (1e-4, 0.5, 0.0, 0.1, 0.2)
    assert p["slice_range"] == [55.0, 105.0] and p["filter_mae"] == 0.05 and p["min_dice"] == 0.95
    pl = plan(cfg)  # headers only
    assert pl["slice_size"] == [72, 96] and pl["in_plane_spacing_mm"] == [2.0, 2.0]
    assert pl["splits"]["train"] == ["BraTS-GLI-00000-000", "BraTS-MET-00110-000"]
    # no labelled test subject: the labelled subject's lowest 30 % of slices 27–51 (8) are held out, + 1 gap
    h = pl["holdout"]
    assert h["kind"] == "slices" and h["test_slices"] == {"BraTS-GLI-00000-000": list(range(27, 35))}
    assert h["excluded"] == {"BraTS-GLI-00000-000": list(range(27, 36))}
    assert pl["slices_per_subject"] == round((25 + 25 - 9) / 2)


def test_train_command_runs_the_pipeline_and_resumes(capsys, tmp_path):
    data = make_qu_dataset(tmp_path / "data")
    sets = [x for k, v in TINY_PARAMS.items() for x in ("--set", f"params.{k}={json.dumps(v)}")]
    sets += ["--set", f"data.root={data}", "--set", "data.test_fraction=0", "--set", "train.sample_every=0",
             "--set", "train.device=cpu"]
    out = tmp_path / "run"
    rc, stdout, err = cli(capsys, "train", "configs/qu_brats.yaml", *sets, "--max-steps", 1, "--out", out)
    assert rc == 0, err
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["assist", "generation", "segmenter", "structure"]
    rc, stdout, err = cli(capsys, "train", "--resume", out, "--max-steps", 2)
    assert rc == 0, err
    state = json.loads((out / "pipeline.json").read_text())
    assert all(s["step"] == 2 for s in state["stages"].values())


def test_every_stage_writes_its_preview_grid(capsys, tmp_path):
    data = make_qu_dataset(tmp_path / "data")
    sets = [x for k, v in TINY_PARAMS.items() for x in ("--set", f"params.{k}={json.dumps(v)}")]
    sets += ["--set", f"data.root={data}", "--set", "data.test_fraction=0", "--set", "train.sample_every=1",
             "--set", "train.device=cpu"]
    out = tmp_path / "run"
    rc, stdout, err = cli(capsys, "train", "configs/qu_brats.yaml", *sets, "--max-steps", 1, "--out", out)
    assert rc == 0, err
    for stage in ("structure", "assist", "generation", "segmenter"):
        pngs = sorted((out / "stages" / stage / "samples").glob("step_*.png"))
        assert pngs and all(p.stat().st_size > 1000 for p in pngs), stage
