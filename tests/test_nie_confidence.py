"""scripts/nie_confidence.py: mean D2 confidence in tumour vs healthy tissue with paired tests
(Nie et al. Sec. 3.2), and the train/eval batch-norm choice for the exported map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
import torch

from medsyn.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TRAIN, TEST = "BraTS-MET-00110-000", "BraTS-GLI-00000-000"
TINY = ["--set", "params.base_filters=4", "--set", "params.depth=2", "--set", "data.patch_size=[32,32]",
        "--set", "train.batch_size=2", "--set", f"data.train=[{TRAIN}]", "--set", "data.val=[]",
        "--set", f"data.test=[{TEST}]", "--set", "train.sample_every=0", "--set", "inference.batch_size=64"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _script():
    return load_script("scripts/nie_confidence.py")


def test_region_means_and_paired_tests_by_hand():
    mod = _script()
    conf = np.zeros((4, 4, 3))
    conf[..., 0], conf[..., 1], conf[..., 2] = 0.8, 0.6, 0.7
    conf[0, 0, :] = 0.2  # tumour voxel of every slice
    mask = np.ones(conf.shape, bool)
    label = np.zeros(conf.shape, int)
    label[0, 0, :2] = 1  # tumour in slices 0 and 1 only
    r = mod.region_means(conf, mask, label)
    assert r["tumour"] == pytest.approx(0.2) and r["tumour_voxels"] == 2
    healthy = np.concatenate([np.full(15, 0.8), np.full(15, 0.6), [0.2], np.full(15, 0.7)])
    assert r["healthy"] == pytest.approx(healthy.mean())
    assert [k for k, _, _ in r["slices"]] == [0, 1]
    assert r["slices"][0][1:] == pytest.approx((0.2, 0.8))
    subjects = {f"s{i}": {"tumour": 0.3 + 0.01 * i, "healthy": 0.7, "slices": [(0, 0.3, 0.7)]} for i in range(7)}
    t = mod.analyse(subjects)
    assert t["subjects"]["n"] == 7 and t["subjects"]["median_tumour_minus_healthy"] == pytest.approx(-0.37)
    assert t["subjects"]["wilcoxon_p"] < 0.05 and t["slices"]["n"] == 7


def test_script_on_a_trained_run_with_eval_and_train_batch_norm(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "configs/nie2018_brats_t1_t2.yaml", *TINY, "--max-steps", "3", "--out", str(run)]) == 0
    mod = _script()
    assert mod.main([str(run), "--out", str(tmp_path / "eval"), "--bn", "eval"]) == 0
    assert "| subjects | 1 |" in capsys.readouterr().out
    res = json.loads((tmp_path / "eval" / "confidence.json").read_text())
    r = res["per_subject"][TEST]
    assert res["bn"] == "eval" and 0 <= r["tumour"] <= 1 and 0 <= r["healthy"] <= 1 and r["tumour_voxels"] > 0
    assert res["tests"]["slices"]["n"] == len(r["slices"]) > 0
    assert mod.main([str(run), "--out", str(tmp_path / "train"), "--bn", "train"]) == 0
    r_train = json.loads((tmp_path / "train" / "confidence.json").read_text())["per_subject"][TEST]
    assert r_train["tumour"] != pytest.approx(r["tumour"], abs=1e-7)  # batch statistics change M
    # the running statistics are not touched by a train-mode export
    from medsyn.inference.predict import load_run

    m = load_run(run, "best", "cpu").method
    bn = next(x for x in m.networks["D2"].modules() if isinstance(x, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    m.confidence_bn = "train"
    m.confidence(torch.zeros(2, 5, 32, 32), torch.zeros(2, 1, 32, 32))
    assert torch.equal(bn.running_mean, before) and not bn.training and bn.momentum == 0.1


def test_script_refuses_a_method_without_d2(tmp_path, capsys):
    run = tmp_path / "unet"
    assert main(["train", "configs/nie2018_unet.yaml", *TINY, "--max-steps", "1", "--out", str(run)]) == 0
    assert _script().main([str(run), "--out", str(tmp_path / "o")]) == 2
    assert "no local discriminator D2" in capsys.readouterr().err
