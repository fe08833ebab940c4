"""Integration: train a few steps on the bundled sample → predict → evaluate; exact resume."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from medsyn.cli.main import main
from medsyn.data.dataset import sample_root
from medsyn.training import checkpoint as ckpt

TRAIN, TEST = "BraTS-MET-00110-000", "BraTS-GLI-00000-000"
TINY = ["--set", "params.base_filters=4", "--set", "params.depth=2", "--set", "data.patch_size=[32,32]",
        "--set", "train.batch_size=2", "--set", f"data.train=[{TRAIN}]", "--set", "data.val=[]",
        "--set", f"data.test=[{TEST}]", "--set", "train.log_every=1", "--set", "train.sample_every=0",
        "--set", "train.checkpoint_every=1", "--set", "inference.batch_size=64"]


def _weights(run_dir):
    path = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    return ckpt.load_weights(path / "weights.safetensors")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    rc = main(["train", "configs/nie2018_brats_t1_t2.yaml", *TINY, "--max-steps", "20", "--out", str(out)])
    assert rc == 0
    return out


def test_run_folder_is_complete(trained):
    for name in ("config.yaml", "normalization.json", "splits.json", "provenance.json", "metrics.jsonl", "best.json"):
        assert (trained / name).is_file(), name
    splits = json.loads((trained / "splits.json").read_text())
    assert splits["train"] == [TRAIN] and splits["test"] == [TEST]
    steps = [json.loads(line)["step"] for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    # the full method logs every term of Eq. 2, 4 and 9
    rec = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("d1/wasserstein", "d1/gp", "d2/bce", "g/att_l1", "g/adv1", "g/adv2", "lr/G", "lr/D1", "lr/D2"):
        assert key in rec and np.isfinite(rec[key]), key
    w = _weights(trained)
    assert set(w) == {"G", "D1", "D2"}


def test_predict_keeps_geometry_and_units_then_evaluate(trained, tmp_path):
    pred_dir = tmp_path / "pred"
    rc = main(["predict", str(trained), str(sample_root() / TEST), "--out", str(pred_dir), "--confidence"])
    assert rc == 0
    ref = nib.load(sample_root() / TEST / "t2w.nii.gz")
    src = nib.load(sample_root() / TEST / "t1n.nii.gz")
    out = nib.load(pred_dir / TEST / "t2w.nii.gz")
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
    assert not np.allclose(src.affine[:3, :3], np.eye(3))  # the GLI case has flipped axes: a real test
    assert out.get_data_dtype() == ref.get_data_dtype() == np.int16
    pred = np.asarray(out.dataobj)
    mask = np.asarray(src.dataobj) != 0
    assert (pred[~mask] == 0).mean() > 0.99  # background written as the training targets' background
    t2 = np.asarray(ref.dataobj)[mask]
    assert 0 < np.median(pred[mask]) < 3 * np.percentile(t2, 99)  # in the T2 scale, not [-1, 1]
    conf = nib.load(pred_dir / TEST / "t2w_confidence.nii.gz").get_fdata()
    assert conf.min() >= 0 and conf.max() <= 1
    # refuse to overwrite without --force, and leave the file untouched
    before = (pred_dir / TEST / "t2w.nii.gz").read_bytes()
    assert main(["predict", str(trained), str(sample_root() / TEST), "--out", str(pred_dir)]) == 2
    assert (pred_dir / TEST / "t2w.nii.gz").read_bytes() == before

    assert main(["evaluate", "--pred", str(pred_dir), "--ref", "sample", "--modality", "t2w", "--out", str(tmp_path / "eval")]) == 0
    res = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    regions = res["subjects"][TEST]
    assert {"foreground", "tumour", "healthy"} <= set(regions)
    assert regions["foreground"]["mae"] > 0
    assert res["summary"]["foreground"]["psnr"]["mean"] == pytest.approx(regions["foreground"]["psnr"])
    assert "data_range" in res["settings"] and "mask" in res["settings"]
    assert (tmp_path / "eval" / "metrics.csv").is_file()



def test_predict_confidence_with_train_mode_batch_norm(trained, tmp_path):
    """--confidence-bn train: D2's batch norm uses each batch's statistics (as in training), so
    the exported map differs from the default eval-mode one but stays a probability; a bad value
    is one line and exit 2, writing nothing."""
    src = str(sample_root() / TEST)
    assert main(["predict", str(trained), src, "--out", str(tmp_path / "e"), "--confidence"]) == 0
    assert main(["predict", str(trained), src, "--out", str(tmp_path / "t"), "--confidence",
                 "--confidence-bn", "train"]) == 0
    e, t = (nib.load(tmp_path / d / TEST / "t2w_confidence.nii.gz").get_fdata() for d in ("e", "t"))
    assert t.min() >= 0 and t.max() <= 1
    assert np.abs(t - e).max() > 1e-4
    # the synthesis itself does not depend on D2's mode
    pe, pt = (np.asarray(nib.load(tmp_path / d / TEST / "t2w.nii.gz").dataobj) for d in ("e", "t"))
    np.testing.assert_array_equal(pe, pt)
    assert main(["predict", str(trained), src, "--out", str(tmp_path / "bad"), "--confidence-bn", "batch"]) == 2
    assert not (tmp_path / "bad").exists()

def test_evaluate_reference_against_itself(tmp_path):
    pred = tmp_path / "pred" / TEST
    pred.mkdir(parents=True)
    shutil.copy(sample_root() / TEST / "t2w.nii.gz", pred / "t2w.nii.gz")
    out = tmp_path / "m"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", "sample", "--modality", "t2w", "--out", str(out)]) == 0
    fg = json.loads((out / "metrics.json").read_text())["subjects"][TEST]["foreground"]
    assert fg["mae"] == 0
    assert fg["psnr"] == "inf"  # documented: no cap
    assert fg["ssim"] == pytest.approx(1.0)


def test_resume_equals_uninterrupted_run(tmp_path):
    """3 steps + resume for 3 more == 6 uninterrupted steps: same weights, same logged losses."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "configs/nie2018_brats_t1_t2.yaml", *TINY, "--max-steps", "6", "--out", str(a)]) == 0
    assert main(["train", "configs/nie2018_brats_t1_t2.yaml", *TINY, "--max-steps", "3", "--out", str(b)]) == 0
    assert main(["train", "--resume", str(b), "--max-steps", "6"]) == 0
    wa, wb = _weights(a), _weights(b)
    for net in wa:
        for k in wa[net]:
            assert torch.equal(wa[net][k], wb[net][k]), f"{net}.{k}"
    la = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    strip = lambda recs: [{k: v for k, v in r.items() if k != "time_s"} for r in recs]  # noqa: E731
    assert strip(la) == strip(lb)


def test_fresh_run_refuses_existing_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["train", "configs/nie2018_brats_t1_t2.yaml", *TINY, "--max-steps", "1", "--out", str(out)]) == 2
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_predict_flags_set_the_inference_config(trained, tmp_path, monkeypatch):
    """--full-fov / --amp / --compile reach cfg.inference; the default is foreground-aware."""
    import medsyn.inference.predict as predict_module

    seen = []
    monkeypatch.setattr(predict_module, "predict_subjects",
                        lambda run, *a, **k: seen.append((run.cfg.inference.region, run.cfg.inference.amp,
                                                          run.cfg.inference.compile)) or [])
    args = ["predict", str(trained), str(sample_root() / TEST), "--out", str(tmp_path / "p")]
    assert main(args) == 0
    assert main([*args, "--full-fov", "--amp", "--compile"]) == 0
    assert seen == [("foreground", False, False), ("full", True, True)]
