"""``medsyn crossval``: folds, one run per fold, pooled held-out predictions, one metrics table,
resumable fold by fold, and read by ``medsyn report``."""

from __future__ import annotations

import json

import pytest

from medsyn.cli.main import main
from medsyn.errors import ConfigError
from medsyn.training.crossval import make_folds

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--set", "params.base_filters=4", "--set", "params.depth=2", "--set", "data.patch_size=[32,32]",
        "--set", "train.batch_size=2", "--set", "train.max_steps=2", "--set", "train.sample_every=0",
        "--set", "train.checkpoint_every=0", "--set", "inference.batch_size=64"]


def test_folds_cover_every_subject_once_and_are_deterministic():
    ids = [f"s{i:02d}" for i in range(11)]
    folds = make_folds(ids, 3, seed=0)
    assert sorted(s for f in folds for s in f) == ids and sorted(len(f) for f in folds) == [3, 4, 4]
    assert make_folds(list(reversed(ids)), 3, seed=0) == folds
    assert make_folds(ids, 3, seed=1) != folds
    assert [len(f) for f in make_folds(ids, "loo", seed=0)] == [1] * 11
    for bad in (1, 12):
        with pytest.raises(ConfigError, match="--folds"):
            make_folds(ids, bad, seed=0)


def test_leave_one_out_on_the_sample_trains_predicts_scores_resumes_and_reports(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cv"
    calls = []
    import medsyn.training.crossval as cv
    from medsyn.training.distributed import launch_train

    def counting(cfg, path, **kw):
        calls.append((path.name, list(cfg.data.train), list(cfg.data.test), kw.get("resume")))
        return launch_train(cfg, path, **kw)

    orig = cv.run_crossval
    cv_run = lambda *a, **k: orig(*a, train_fn=counting, **k)  # noqa: E731
    monkeypatch.setattr(cv, "run_crossval", cv_run)  # the command looks it up at call time
    rc = main(["crossval", "configs/nie2018_unet.yaml", "--folds", "loo", "--out", str(out), *TINY])
    assert rc == 0
    # two subjects → two folds; each trains on the other subject only and tests on its own
    assert [c[0] for c in calls] == ["fold_00", "fold_01"]
    for _, train, test, resume in calls:
        assert len(train) == len(test) == 1 and train != test and resume is False
    assert {c[2][0] for c in calls} == {"BraTS-GLI-00000-000", "BraTS-MET-00110-000"}
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["subjects"]) == {"BraTS-GLI-00000-000", "BraTS-MET-00110-000"}
    assert res["settings"]["crossval"]["folds"] == 2 and res["settings"]["modality"] == "t2w"
    fold_of = res["settings"]["crossval"]["fold_of_subject"]
    for run, _, test, _ in calls:  # each subject's prediction came from the run that held it out
        assert fold_of[test[0]] == run
        assert json.loads((out / run / "splits.json").read_text())["test"] == test
    assert res["summary"]["foreground"]["psnr"]["n"] == 2
    assert (out / "metrics.csv").is_file() and (out / "predictions" / "BraTS-GLI-00000-000" / "t2w.nii.gz").is_file()
    # re-running skips finished folds
    calls.clear()
    assert main(["crossval", "configs/nie2018_unet.yaml", "--folds", "loo", "--out", str(out), *TINY]) == 0
    assert calls == []
    # an interrupted fold is resumed, not restarted
    state = json.loads((out / "crossval.json").read_text())
    state["done"] = ["fold_00"]
    (out / "crossval.json").write_text(json.dumps(state))
    assert main(["crossval", "configs/nie2018_unet.yaml", "--folds", "loo", "--out", str(out), *TINY]) == 0
    assert [(c[0], c[3]) for c in calls] == [("fold_01", True)]
    # another config into the same folder is refused
    assert main(["crossval", "configs/nie2018_unet.yaml", "--folds", "loo", "--out", str(out), *TINY,
                 "--set", "params.base_filters=8"]) == 2
    assert "another config" in capsys.readouterr().err
    # medsyn report reads the cross-validation folder
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.html").read_text()
    assert "Cross-validation" in text and "BraTS-MET-00110-000" in text


def test_bad_folds_value_is_one_line_exit_2(tmp_path, capsys):
    assert main(["crossval", "configs/nie2018_unet.yaml", "--folds", "five", "--out", str(tmp_path / "x")]) == 2
    assert "--folds" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
