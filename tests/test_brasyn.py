"""BraSyn (medsyn.methods.brasyn): any one of four contrasts completed from the other three.

The missing contrast's code and fill, the per-sample draw (counter-seeded: resume, workers and ranks
agree), a 2-step training run of configs/brasyn.yaml on the bundled sample, and
``medsyn predict --missing`` on a BraTS 2023 layout (one clear line per subject it cannot complete).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsyn.cli.main import main
from medsyn.config import load_config, method_params
from medsyn.data.dataset import sample_root
from medsyn.data.sampling import NormalizedCase, PatchSampler25D
from medsyn.methods import METHODS
from medsyn.methods.brasyn import MissingContrastSampler, complete_input

from conftest import SAMPLE_GLI, SAMPLE_MET, phantom

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]
TINY = ["--set", "params.base_filters=4", "--set", "params.depth=2", "--set", "data.patch_size=[32,32]",
        "--set", "train.batch_size=2", "--set", "data.patches_per_subject=2", "--set", "inference.overlap=0.0"]


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def base_sampler(seed: int = 3, rank: int = 0, world_size: int = 1) -> PatchSampler25D:
    # four contrasts whose values say which contrast and slice they are: channel m·k + j ≈ 10·m
    cases = []
    for i in range(2):
        shape = (20, 22, 9)
        src = np.stack([np.full(shape, 10.0 * m, np.float32) + phantom(shape, seed=i) / 1000 for m in range(4)])
        cases.append(NormalizedCase(f"s{i}", src, src[2].copy(), np.ones(shape, bool)))
    return PatchSampler25D(cases, context=3, patch_size=(8, 8), seed=seed, rank=rank, world_size=world_size)


def test_complete_input_fills_the_missing_contrast_and_codes_it():
    x = torch.arange(2 * 8 * 2 * 2, dtype=torch.float32).reshape(2, 8, 2, 2) + 1  # 4 contrasts × k=2
    out = complete_input(x, torch.tensor([1, 3]), 4, fill_value=-0.5)
    assert out.shape == (2, 12, 2, 2)
    assert torch.equal(out[0, 2:4], torch.full((2, 2, 2), -0.5)) and torch.equal(out[1, 6:8], torch.full((2, 2, 2), -0.5))
    assert torch.equal(out[0, [0, 1, 4, 5, 6, 7]], x[0, [0, 1, 4, 5, 6, 7]])
    assert torch.equal(out[0, 8:, 0, 0], torch.tensor([0.0, 1, 0, 0])) and torch.equal(out[1, 8:, 1, 1], torch.tensor([0.0, 0, 0, 1]))


def test_sampler_hides_one_contrast_per_sample_and_targets_it():
    s = MissingContrastSampler(base_sampler(), 4, seed=3)
    b = s.batch(64)
    k = 3
    assert b["source"].shape == (64, 4 * k + 4, 8, 8) and b["target"].shape == (64, 1, 8, 8)
    code = b["source"][:, 4 * k:, 0, 0]
    assert torch.equal(code.argmax(1), b["missing"]) and torch.equal(code.sum(1), torch.ones(64))
    for i in range(64):
        m = int(b["missing"][i])
        assert torch.all(b["source"][i, m * k:(m + 1) * k] == 0)  # zero-filled
        # the target is the hidden contrast (values ≈ 10·m), present contrasts keep theirs
        assert abs(float(b["target"][i].mean()) - 10 * m) < 1
        others = [c for c in range(4) if c != m]
        assert all(abs(float(b["source"][i, c * k + 1].mean()) - 10 * c) < 1 for c in others)
    counts = np.bincount(b["missing"].numpy(), minlength=4)
    assert counts.min() >= 8, counts  # every contrast is drawn, about uniformly


def test_missing_draw_is_counter_seeded_resume_workers_and_ranks_agree():
    a = MissingContrastSampler(base_sampler(), 4, seed=3)
    first, second = a.batch(4), a.batch(4)
    state = a.state_dict()
    third = a.batch(4)
    b = MissingContrastSampler(base_sampler(), 4, seed=3)
    b.load_state_dict(state)  # a resumed run continues exactly
    resumed = b.batch(4)
    worker = MissingContrastSampler(base_sampler(), 4, seed=3).batch_at(4, 4)  # what a loader worker computes
    for key in ("source", "target", "missing"):
        assert torch.equal(resumed[key], third[key]) and torch.equal(worker[key], second[key])
    # two ranks of a global batch of 8 = one process drawing 8
    whole = MissingContrastSampler(base_sampler(), 4, seed=3).batch_at(0, 8)
    r0 = MissingContrastSampler(base_sampler(rank=0, world_size=2), 4, seed=3).batch_at(0, 4)
    r1 = MissingContrastSampler(base_sampler(rank=1, world_size=2), 4, seed=3).batch_at(0, 4)
    assert torch.equal(torch.cat([r0["missing"], r1["missing"]]), whole["missing"])
    assert torch.equal(torch.cat([r0["source"], r1["source"]]), whole["source"])
    other_seed = MissingContrastSampler(base_sampler(), 4, seed=4).batch_at(0, 64)["missing"]
    assert not torch.equal(other_seed, MissingContrastSampler(base_sampler(), 4, seed=3).batch_at(0, 64)["missing"])
    assert torch.equal(first["missing"], whole["missing"][:4])


@pytest.mark.parametrize("name,extra", [("brasyn", {"base_filters": 4, "depth": 2}),
                                        ("brasyn-casnet", {"n_blocks": 1, "depth": 3, "base_channels": 4,
                                                           "d_base_channels": 4})])
def test_generator_ignores_the_missing_contrast_input(name, extra):
    spec = METHODS.get(name)
    k = 3 if spec.sample_kind == "2.5d" else 1
    m = spec.build(spec.make_params(extra), in_channels=4 * k, out_channels=1, patch_size=(32, 32)).eval()
    G = m.networks["G"]
    x = torch.randn(2, 4 * k, 32, 32)
    y = x.clone()
    y[:, 1 * k:2 * k] = 5.0  # t1c's values change, t1c is the missing one
    with torch.no_grad():
        assert torch.equal(G(x, 1), G(y, 1)) and G(x, 1).shape == (2, 1, 32, 32)
        assert not torch.equal(G(x, 0), G(y, 0))  # t1c is an input when t1n is missing
        # all contrasts without a code (the engine's validation): validate_missing (t2w) is hidden
        assert torch.equal(G(x), G(x, 2))
        coded = complete_input(x, torch.tensor([2, 2]), 4)
        assert torch.equal(G(coded), G(x, 2))


def test_contrast_order_must_match_data_source(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "configs/brasyn.yaml", *TINY, "--set", "data.source=[t1c,t1n,t2w,t2f]",
                     "--max-steps", "1", "--out", tmp_path / "run")
    assert rc == 2 and "data.source" in err and "params.contrasts" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def brats2023_copy(root: Path, drop: dict[str, list[str]]) -> Path:
    """The bundled sample renamed to the official BraTS 2023 layout, without the files in ``drop``."""
    for sid in (SAMPLE_GLI, SAMPLE_MET):
        (root / sid).mkdir(parents=True)
        for m in CONTRASTS:
            if m not in drop.get(sid, []):
                shutil.copy(sample_root() / sid / f"{m}.nii.gz", root / sid / f"{sid}-{m}.nii.gz")
    return root


def test_train_then_complete_a_brats2023_dataset(tmp_path, capsys):
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "configs/brasyn.yaml", *TINY, "--max-steps", "2", "--out", run)
    assert rc == 0, err
    cfg = load_config(run / "config.yaml")
    assert cfg.method == "brasyn" and method_params(cfg).contrasts == CONTRASTS

    data = brats2023_copy(tmp_path / "val", {SAMPLE_GLI: ["t2w"], SAMPLE_MET: ["t1c", "t2f"]})
    out = tmp_path / "done"
    rc, stdout, err = cli(capsys, "predict", run, data, "--missing", "--out", out)
    assert rc == 2  # one subject could not be completed; the other was
    flat = " ".join(err.split())
    assert f"subject '{SAMPLE_MET}' not completed: 2 are missing (t1c, t2f)" in flat and "Traceback" not in err
    written = out / SAMPLE_GLI / f"{SAMPLE_GLI}-t2w.nii.gz"
    assert written.is_file() and [p.name for p in out.rglob("*.nii.gz")] == [written.name]
    ref = nib.load(data / SAMPLE_GLI / f"{SAMPLE_GLI}-t1n.nii.gz")
    img = nib.load(written)
    assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
    arr = np.asarray(img.dataobj, dtype=np.float64)
    assert np.isfinite(arr).all() and arr.std() > 0

    # medsyn evaluate finds a prediction named in the dataset's own layout
    rc, _, err = cli(capsys, "evaluate", "--pred", out, "--ref", "sample", "--modality", "t2w", "--metrics", "mae",
                     "--out", tmp_path / "m")
    assert rc == 0, err
    assert list(json.loads((tmp_path / "m" / "metrics.json").read_text())["subjects"]) == [SAMPLE_GLI]

    # the completed folder reads back as the same layout with the synthesised contrast
    shutil.copy(written, data / SAMPLE_GLI / written.name)
    rc, _, err = cli(capsys, "predict", run, data / SAMPLE_GLI, "--missing", "--out", tmp_path / "again")
    assert rc == 2 and "none is missing" in err

    rc, _, err = cli(capsys, "predict", run, tmp_path / "val", "--missing", "--out", out)
    assert rc == 2 and "output exists" not in err  # GLI is complete now: nothing to overwrite
    (data / SAMPLE_GLI / written.name).unlink()
    rc, _, err = cli(capsys, "predict", run, data, "--missing", "--out", out)
    assert rc == 2 and "output exists" in err and "--force" in err


def test_missing_needs_a_brasyn_run(tmp_path, capsys):
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "configs/nie2018_unet.yaml", "--set", "params.base_filters=4",
                     "--set", "params.depth=2", "--set", "data.patch_size=[32,32]", "--set", "train.batch_size=2",
                     "--max-steps", "1", "--out", run)
    assert rc == 0, err
    data = brats2023_copy(tmp_path / "val", {SAMPLE_GLI: ["t2w"]})
    rc, _, err = cli(capsys, "predict", run, data, "--missing", "--out", tmp_path / "o")
    assert rc == 2 and "needs a BraSyn run" in err and "nie-unet" in err


def test_casnet_variant_trains(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "configs/brasyn_casnet.yaml",
                     "--set", "params.n_blocks=1", "--set", "params.depth=3", "--set", "params.base_channels=4",
                     "--set", "params.d_base_channels=4", "--set", "data.patch_size=[32,32]",
                     "--set", "train.batch_size=2", "--max-steps", "1", "--out", tmp_path / "run")
    assert rc == 0, err
    assert load_config(tmp_path / "run" / "config.yaml").method == "brasyn-casnet"


# ------------------------------------------------------------------------------------------------
# Downstream check: `medsyn evaluate --segmenter RUN` (medsyn.metrics.downstream)
# ------------------------------------------------------------------------------------------------
def test_region_dice_and_unfit():
    from medsyn.data.qu_slices import fit_to_size
    from medsyn.metrics.downstream import _unfit, region_dice

    ref = np.array([[0, 1, 2], [3, 3, 0]])
    pred = np.array([[0, 1, 2], [3, 0, 0]])
    d = region_dice(pred, ref, 4)
    assert d["1"] == 1.0 and d["2"] == 1.0 and d["3"] == pytest.approx(2 / 3)
    assert d["WT"] == pytest.approx(2 * 3 / 7) and d["TC"] == pytest.approx(2 * 2 / 5) and d["ET"] == d["3"]
    assert region_dice(np.zeros((2, 2), int), np.zeros((2, 2), int), 3) == {"1": 1.0, "2": 1.0}
    a = np.arange(89 * 71).reshape(89, 71)
    for size in ([96, 64], [88, 80], [89, 71]):  # pad and crop, odd differences
        fitted, off = fit_to_size(a, size)
        back = _unfit(fitted, a.shape, off)
        inside = _unfit(np.ones(size, bool), a.shape, off)
        assert np.array_equal(back[inside], a[inside]) and (inside.all() or size[0] < 89 or size[1] < 71)


def test_segmenter_dice_real_vs_completed(tmp_path, capsys):
    from test_qu_pipeline import TINY_PARAMS, make_qu_dataset

    data = make_qu_dataset(tmp_path / "data", mods=tuple(CONTRASTS))
    params = {**TINY_PARAMS, "modalities": CONTRASTS, "stages": ["segmenter"]}
    sets = [x for k, v in params.items() for x in ("--set", f"params.{k}={json.dumps(v)}")]
    run = tmp_path / "seg"
    rc, _, err = cli(capsys, "train", "configs/qu_brats.yaml", *sets, "--set", f"data.root={data}",
                     "--set", "data.test_fraction=0", "--set", "train.sample_every=0", "--max-steps", 2, "--out", run)
    assert rc == 0, err
    # "completed" subjects in the BraTS 2023 naming: a copy of the real t2w (a perfect synthesis) for a,
    # an image of noise for b
    pred = tmp_path / "pred"
    (pred / "a").mkdir(parents=True)
    shutil.copy(data / "a" / "t2w.nii.gz", pred / "a" / "a-t2w.nii.gz")
    real_b = nib.load(data / "b" / "t1c.nii.gz")
    noise = np.random.default_rng(0).uniform(0, 1000, real_b.shape).astype(np.float32)
    (pred / "b").mkdir()
    nib.save(nib.Nifti1Image(noise, real_b.affine), pred / "b" / "b-t1c.nii.gz")
    rc, stdout, err = cli(capsys, "evaluate", "--segmenter", run, "--pred", pred, "--ref", data, "--out", tmp_path / "d")
    assert rc == 0, err
    res = json.loads((tmp_path / "d" / "downstream.json").read_text())
    a, b = res["per_subject"]["a"], res["per_subject"]["b"]
    assert a["synthesised"] == ["t2w"] and b["synthesised"] == ["t1c"]
    assert a["real"] == a["completed"] and set(a["real"]) == {"1", "2", "3", "WT", "TC", "ET"}
    assert all(0.0 <= v <= 1.0 for v in b["completed"].values())
    assert res["summary"]["difference"]["WT"] == pytest.approx(res["summary"]["completed"]["WT"] - res["summary"]["real"]["WT"])
    assert "segmenter Dice" in stdout and res["settings"]["protocol"] == "segmenter"

    # a reference without the label → one line, exit 2
    (pred / "c").mkdir()
    shutil.copy(data / "c" / "t2w.nii.gz", pred / "c" / "c-t2w.nii.gz")
    rc, _, err = cli(capsys, "evaluate", "--segmenter", run, "--pred", pred, "--ref", data, "--out", tmp_path / "e")
    assert rc == 2 and "subject 'c' has no 'seg' label" in " ".join(err.split()) and "Traceback" not in err


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, capsys):
    from medsyn.training import checkpoint as ckpt

    sets = [*TINY, "--set", "train.checkpoint_every=1", "--set", "train.sample_every=0", "--set", "train.log_every=1"]
    rc, _, err = cli(capsys, "train", "configs/brasyn.yaml", *sets, "--max-steps", "3", "--out", tmp_path / "a")
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "configs/brasyn.yaml", *sets, "--max-steps", "1", "--out", tmp_path / "b")
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "--resume", tmp_path / "b", "--max-steps", "3")
    assert rc == 0, err

    def last(run):
        return ckpt.load_weights(ckpt.list_checkpoints(run / "checkpoints")[-1] / "weights.safetensors")

    def logged(run):
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    wa, wb = last(tmp_path / "a"), last(tmp_path / "b")
    assert set(wa) == set(wb) == {"G", "D1", "D2"}
    for net in wa:
        for k in wa[net]:
            assert torch.equal(wa[net][k], wb[net][k]), f"{net}.{k} differs"
    assert logged(tmp_path / "a") == logged(tmp_path / "b")
