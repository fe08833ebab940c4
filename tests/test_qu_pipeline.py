"""Qu et al.'s pipeline: slice data, the stage methods, the stage-by-stage runner (resume, skip,
weights handed on), synthetic data generation and the segmentation tables — on tiny phantom
volumes (2 modalities, 28×30×10 voxels → 32×32 slices, networks with 4 base channels).

Tiny tensors run much faster on one thread than on two busy cores, so the module runs with one
torch thread (restored afterwards)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import write_nii
from medsyn.config import build_config
from medsyn.data.dataset import discover
from medsyn.data.qu_slices import (
    QuSliceSampler,
    fit_to_size,
    load_slices,
    slice_indices,
    standardize_image,
)
from medsyn.data.structure import check_lesion_label, extract_mask, remove_lesion_structure, structural_feature_map
from medsyn.errors import ConfigError, DatasetError, OutputError
from medsyn.pipelines.qu import read_pipeline, run_pipeline, stage_dir, stage_weights
from medsyn.training import checkpoint as ckpt

MODS = ["t1n", "t2w"]
TINY_PARAMS = {"modalities": MODS, "slice_range": [2, 8], "base_channels": 4, "code_channels": 8,
               "structure_code_channels": 2, "seg_channels": [4, 8, 16, 32], "seg_res_units": 0}
SHAPE = (28, 30, 10)


def make_qu_dataset(root: Path, *, subjects=("a", "b", "c"), labelled=("a", "b"), mods=tuple(MODS),
                    lesion_shift=(0.0, 0.0)) -> Path:
    """Subjects of co-registered phantom volumes (1 mm): an elliptic 'brain' with texture, a round
    lesion (labels 1 core, 2 rim) that changes each modality's intensity, zero background."""
    for si, s in enumerate(subjects):
        rng = np.random.default_rng(si)
        X, Y, Z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in SHAPE], indexing="ij")
        brain = (X / 11) ** 2 + (Y / 12) ** 2 < 1
        cx, cy = 3 - si + lesion_shift[0], -2 + lesion_shift[1]
        r2 = (X - cx) ** 2 + (Y - cy) ** 2
        lesion = (r2 < 9) & (np.abs(Z) < 4)
        for mi, m in enumerate(mods):
            a = np.where(brain, 300 + 100 * mi + 40 * np.sin(X / 3 + mi) + rng.normal(0, 5, SHAPE), 0.0)
            a = np.where(lesion & brain, a + (-1) ** mi * 150, a)
            write_nii(root / s / f"{m}.nii.gz", a.astype(np.float32))
        if s in labelled:
            seg = np.zeros(SHAPE, np.uint8)
            seg[lesion] = 2
            seg[lesion & (r2 < 3)] = 1
            write_nii(root / s / "seg.nii.gz", seg)
    return root


def tiny_cfg(root: Path, *, max_steps: int | None = 3, minutes: float | None = None, **params):
    return build_config({
        "method": "qu-pipeline", "params": {**TINY_PARAMS, **params},
        "data": {"root": str(root), "source": ["t1n"], "target": "t1n", "val_fraction": 0.0, "test_fraction": 0.0},
        "train": {"batch_size": 1, "max_steps": max_steps, "minutes": minutes, "log_every": 1, "sample_every": 0,
                  "checkpoint_every": 0, "device": "cpu", "epochs": 1}})


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def _slice_cache(tmp_path_factory):
    """The Qu slice store of every run in the module goes to a temporary $MEDSYN_CACHE (modules
    that run pipelines import this fixture)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSYN_CACHE", str(tmp_path_factory.mktemp("medsyn-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_qu_dataset(tmp_path_factory.mktemp("qu") / "data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset) -> Path:
    """All four stages, 3 steps each; the generation stage without the synchronous assist losses,
    so its lesion segmenter must stay exactly as the assist stage left it."""
    out = tmp_path_factory.mktemp("qu-run") / "run"
    res = run_pipeline(tiny_cfg(dataset, assist_in_generation=False), out, progress=False)
    assert res.stopped == "max_steps" and res.step == 12
    return out


# --------------------------------------------------------------------------- slices


def test_slice_range_in_mm_selects_the_papers_slices_on_any_grid():
    assert slice_indices(155, 1.0, (55, 105)) == range(55, 105)  # Sec. 3.2: 50 slices of BRATS2015
    assert slice_indices(77, 2.0, (55, 105)) == range(27, 52)  # the bundled sample's 2 mm grid
    assert slice_indices(40, 2.0, (55, 105)) == range(27, 40)  # clipped to the volume
    assert slice_indices(20, 1.0, (55, 105)) == range(20, 20)  # nothing in range
    assert slice_indices(7, 3.0, None) == range(7)


def test_fit_to_size_pads_and_crops_about_the_centre_with_the_offset_to_write_back():
    a = np.arange(5 * 7).reshape(5, 7)
    out, (o0, o1) = fit_to_size(a, (8, 4))
    assert out.shape == (8, 4)
    for i in range(8):
        for j in range(4):
            src = (i + o0, j + o1)
            expected = a[src] if 0 <= src[0] < 5 and 0 <= src[1] < 7 else 0
            assert out[i, j] == expected
    assert (o0, o1) == (-2, 1)  # 5 rows padded (2 above, 1 below), 7 columns cropped to the middle 4
    np.testing.assert_array_equal(out[2:7], a[:, 1:5])


def test_standardisation_is_per_image_unit_free_with_a_zero_background():
    rng = np.random.default_rng(0)
    x = rng.normal(500, 80, (20, 20))
    brain = np.zeros((20, 20), bool)
    brain[3:17, 4:15] = True
    y = standardize_image(x, brain)
    assert (y[~brain] == 0).all() and (y[brain] >= 0.01).all() and y.max() <= 1.0
    np.testing.assert_allclose(standardize_image(3.5 * x + 20, brain), y, atol=1e-6)  # scanner units do not matter
    z = (x[brain] - x[brain].mean()) / x[brain].std()
    inside = np.abs(z) < 3
    np.testing.assert_allclose(y[brain][inside], 0.01 + 0.99 * (z[inside] + 3) / 6, atol=1e-6)


def test_load_slices_standardises_pads_and_keeps_labels(dataset):
    ds = discover(dataset)
    s = load_slices(ds, ["a", "c"], MODS, slice_range_mm=(2, 8), slice_size=(32, 32), n_classes=4)
    assert s.images.shape == (12, 2, 32, 32) and s.labels.shape == (12, 32, 32)
    assert list(s.has_label) == [True] * 6 + [False] * 6
    assert set(np.unique(s.labels[:6])) == {0, 1, 2} and not s.labels[6:].any()
    assert list(s.index[:6]) == [2, 3, 4, 5, 6, 7]
    assert ((s.images > 0) == s.brain[:, None]).all()  # Alg. 2's x > 0 is the brain
    np.testing.assert_array_equal(s.offsets[0], [-2, -1])  # 28×30 centred in 32×32
    with pytest.raises(DatasetError, match="params.n_classes"):
        load_slices(ds, ["a"], MODS, slice_range_mm=(2, 8), slice_size=(32, 32), n_classes=2)
    with pytest.raises(DatasetError, match="'t1c'"):
        load_slices(ds, ["a"], ["t1n", "t1c"], slice_range_mm=(2, 8), slice_size=(32, 32))


def test_sampler_gives_real_structure_maps_labels_inside_the_mask_and_resumes_exactly(dataset):
    s = load_slices(discover(dataset), ["a", "b", "c"], MODS, slice_range_mm=(2, 8), slice_size=(32, 32))
    smp = QuSliceSampler(s, seed=3, unpaired=False)
    for _ in range(10):
        b = smp.sample()
        assert b["image"].shape == (2, 32, 32) and b["f"].shape == b["mask"].shape == (1, 32, 32)
        assert check_lesion_label(b["label_random"][0], b["mask"][0])  # Sec. 2.5: mask · label = 0
        # f is Algorithm 1 of one real slice with its own tumour removed, mask is Algorithm 2 of that slice
        hits = [j for j in range(len(s)) if np.array_equal(extract_mask(s.images[j, int(b["f_modality"])]), b["mask"][0])]
        assert any(np.array_equal(remove_lesion_structure(structural_feature_map(s.images[j, int(b["f_modality"])]),
                                                          s.labels[j]), b["f"][0]) for j in hits)
        j = [j for j in range(len(s)) if np.array_equal(s.images[j, 0], b["image"][0])]
        assert j and np.array_equal(s.images[j[0], 1], b["image"][1])  # paired: one slice, both modalities
    state = smp.state_dict()
    first = smp.batch(3)
    smp.load_state_dict(state)
    again = smp.batch(3)
    for k in first:
        assert torch.equal(first[k], again[k]), k
    unpaired = QuSliceSampler(s, seed=1, unpaired=True)
    assert any(not any(np.array_equal(s.images[j, 1], b["image"][1]) for j in range(len(s))
                       if np.array_equal(s.images[j, 0], b["image"][0])) for b in (unpaired.sample() for _ in range(20)))
    seg = QuSliceSampler(s, mode="segmenter", seed=0).batch(4)
    assert seg["image"].shape == (4, 2, 32, 32) and seg["label"].shape == (4, 1, 32, 32) and seg["label"].max() > 0


# --------------------------------------------------------------------------- the runner


def test_pipeline_trains_every_stage_into_one_run_folder(trained):
    cfg, p, state = read_pipeline(trained)
    assert cfg.method == "qu-pipeline" and state["slice_size"] == [32, 32]
    assert {k: v["status"] for k, v in state["stages"].items()} == dict.fromkeys(
        ["structure", "assist", "generation", "segmenter"], "done")
    expect = {"structure": {"g/G_f", "g/normal", "g/sv", "g/mask", "d/total"},
              "assist": {"d/assist", "d/real", "g/assist_adv_class", "g/sv_x", "g/cycle", "g/code_consistency",
                         "seg/sv_l_real"},
              "generation": {"d/gen", "g/adv", "g/class", "g/sv_f", "g/sv_l", "g/trans", "g/trans_code",
                             "g/outside_mask"},
              "segmenter": {"seg/mse"}}
    for stage, keys in expect.items():
        recs = [json.loads(line) for line in (stage_dir(trained, stage) / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == [1, 2, 3]
        assert keys <= set(recs[-1]) and all(np.isfinite(recs[-1][k]) for k in keys), stage
        assert ckpt.list_checkpoints(stage_dir(trained, stage) / "checkpoints")
        assert (stage_dir(trained, stage) / "config.yaml").read_text().startswith(f"method: qu-{stage}")


def test_generation_starts_from_the_assist_stage_and_never_trains_seg_on_synthetic_images(trained):
    assist, gen = stage_weights(trained, "assist"), stage_weights(trained, "generation")
    for k, v in assist["SEG"].items():  # SEG: only real slices train it (Sec. 2.6–2.7)
        assert torch.equal(v, gen["SEG"][k]), k
    assert any(not torch.equal(assist["DC"][k], gen["DC"][k]) for k in assist["DC"])  # DC trained on
    # … and SEG is not a fresh network: the assist stage trained it away from its initialisation
    from medsyn.config import method_params
    from medsyn.methods import METHODS
    from medsyn.training.run_dir import RunDir

    scfg = RunDir(stage_dir(trained, "assist")).read_config()
    torch.manual_seed(scfg.train.seed)  # the engine seeds, then builds
    init = METHODS.get("qu-assist").build(method_params(scfg), in_channels=1, out_channels=1, patch_size=(0, 0))
    assert any(not torch.equal(init.networks["SEG"].state_dict()[k], v) for k, v in assist["SEG"].items())


def test_interrupted_stage_resumes_exactly_and_finished_stages_are_skipped(tmp_path, dataset):
    cfg = dict(stages=["structure", "assist"])
    a, b = tmp_path / "a", tmp_path / "b"
    run_pipeline(tiny_cfg(dataset, max_steps=3, **cfg), a, progress=False)
    # stopped by its time budget after one step: the pipeline stops there
    res = run_pipeline(tiny_cfg(dataset, max_steps=3, minutes=1e-6, **cfg), b, progress=False)
    assert res.stopped == "minutes" and not stage_dir(b, "assist").exists()
    assert json.loads((b / "pipeline.json").read_text())["stages"]["structure"]["status"] == "stopped"
    with pytest.raises(ConfigError, match="differs"):
        run_pipeline(tiny_cfg(dataset, max_steps=3, beta=0.1, **cfg), b, resume=True, progress=False)
    res = run_pipeline(tiny_cfg(dataset, max_steps=3, **cfg), b, resume=True, progress=False)
    assert res.stopped == "max_steps"
    for stage in ("structure", "assist"):
        wa, wb = stage_weights(a, stage), stage_weights(b, stage)
        for net in wa:
            for k in wa[net]:
                assert torch.equal(wa[net][k], wb[net][k]), f"{stage}: {net}.{k}"
    before = {p: p.stat().st_mtime_ns for p in b.rglob("*") if p.is_file() and p.name != "pipeline.json"}
    run_pipeline(tiny_cfg(dataset, max_steps=3, **cfg), b, resume=True, progress=False)  # nothing left to do
    assert {p: p.stat().st_mtime_ns for p in b.rglob("*") if p.is_file() and p.name != "pipeline.json"} == before
    # a larger budget continues every stage from where it stopped
    run_pipeline(tiny_cfg(dataset, max_steps=4, **cfg), b, resume=True, progress=False)
    steps = [json.loads(x)["step"] for x in (stage_dir(b, "assist") / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_bad_runs_fail_before_writing_anything(tmp_path, dataset):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        run_pipeline(tiny_cfg(dataset), out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    missing = make_qu_dataset(tmp_path / "missing", mods=("t1n",))
    with pytest.raises(DatasetError, match="has no 't2w' image"):
        run_pipeline(tiny_cfg(missing), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()
    with pytest.raises(ConfigError, match="slice_size"):
        tiny_cfg(dataset, slice_size=[30, 30])
    with pytest.raises(ConfigError, match="stages"):
        tiny_cfg(dataset, stages=["generation"])


# --------------------------------------------------------------------------- synthetic data


def test_generated_subjects_have_a_real_geometry_labels_in_the_brain_and_a_record(trained, dataset, tmp_path):
    from medsyn.data.verify import verify_dataset
    from medsyn.pipelines.qu_generate import generate

    res = generate(trained, 3, dataset, tmp_path / "syn", seed=5, slices_per_case=2, filter_mae=1.0, min_dice=0.0)
    assert res.subjects == ["synth-00000", "synth-00001", "synth-00002"]
    rep = verify_dataset(tmp_path / "syn", MODS)
    assert rep.ok, [p.message for p in rep.problems]
    for sid in res.subjects:
        files = sorted(p.name for p in (tmp_path / "syn" / sid).iterdir())
        assert files == ["brainmask.nii.gz", "seg.nii.gz", "structure.nii.gz", "t1n.nii.gz", "t2w.nii.gz"]
        f_g = np.asarray(nib.load(tmp_path / "syn" / sid / "structure.nii.gz").dataobj)
        assert f_g.shape == (32, 32, 2) and set(np.unique(f_g)) <= {0, 1}  # the generator's input map (Fig. 7)
        seg = nib.load(tmp_path / "syn" / sid / "seg.nii.gz")
        brain = np.asarray(nib.load(tmp_path / "syn" / sid / "brainmask.nii.gz").dataobj)
        img = np.asarray(nib.load(tmp_path / "syn" / sid / "t1n.nii.gz").dataobj)
        lab = np.asarray(seg.dataobj)
        assert seg.shape == (32, 32, 2) and lab.max() > 0 and not (lab[brain == 0] > 0).any()
        assert (img[brain == 0] == 0).all() and (img[brain > 0] > 0).mean() > 0.99
        # in-plane grid of the label's source volume (1 mm, identity), shifted by the padding
        aff = seg.affine
        np.testing.assert_allclose(aff[:3, :3], np.eye(3))
        np.testing.assert_allclose(aff[:2, 3], [-2, -1])
    rec = json.loads((tmp_path / "syn" / "generate.json").read_text())
    assert rec["counts"]["accepted"] == 6 and rec["seed"] == 5 and len(rec["subjects"]) == 3
    assert rec["filters"]["algorithm3"]["enabled"] is False and rec["filters"]["segmenter_dice"]["enabled"] is False
    assert all(sl["label_source"].split(":")[0] in ("a", "b") for s in rec["subjects"] for sl in s["slices"])


def test_generation_is_seeded_filters_count_rejections_and_failures_are_explained(trained, dataset, tmp_path,
                                                                                    monkeypatch):
    from medsyn.pipelines import qu_generate as qg

    a = qg.generate(trained, 2, dataset, tmp_path / "a", seed=1, filter_mae=1.0, min_dice=0.0)
    b = qg.generate(trained, 2, dataset, tmp_path / "b", seed=1, filter_mae=1.0, min_dice=0.0)
    c = qg.generate(trained, 2, dataset, tmp_path / "c", seed=2, filter_mae=1.0, min_dice=0.0)
    read = lambda r, s, m: np.asarray(nib.load(r.out / s / f"{m}.nii.gz").dataobj)  # noqa: E731
    for m in MODS + ["seg"]:
        assert np.array_equal(read(a, "synth-00001", m), read(b, "synth-00001", m))
    assert not np.array_equal(read(a, "synth-00000", "t1n"), read(c, "synth-00000", "t1n"))
    with pytest.raises(OutputError, match="never overwrites"):
        qg.generate(trained, 1, dataset, tmp_path / "a", filter_mae=1.0, min_dice=0.0)
    with pytest.raises(ConfigError, match="--n"):
        qg.generate(trained, 0, dataset, tmp_path / "d")
    # a 3-step structure stage cannot pass Algorithm 3 at a near-zero threshold
    with pytest.raises(qg.GenerationError, match="Algorithm 3 rejected all 3"):
        qg.generate(trained, 1, dataset, tmp_path / "e", filter_mae=1e-9, min_dice=0.0, max_attempts=3)
    assert not (tmp_path / "e" / "synth-00000").exists()
    # filter 2 runs the real-trained segmenter on every case; Dice 0.5 < 0.9 rejects them all
    calls = []
    monkeypatch.setattr(qg, "lesion_dice", lambda pred, target: calls.append(pred.shape) or 0.5)
    with pytest.raises(qg.GenerationError, match="2 with segmenter Dice < 0.9"):
        qg.generate(trained, 1, dataset, tmp_path / "f", filter_mae=1.0, min_dice=0.9, max_attempts=2)
    assert calls == [(32, 32)] * 4  # 2 attempts × one segmenter per modality (Sec. 2.9)


def test_labels_that_fit_no_brain_are_refused(trained, dataset, tmp_path, monkeypatch):
    from medsyn.pipelines import qu_generate as qg

    # lesions drawn outside their own brain: refused before any generation
    outside = make_qu_dataset(tmp_path / "outside", subjects=("a",), labelled=("a",), lesion_shift=(0.0, 13.0))
    with pytest.raises(DatasetError, match="outside their subject's brain"):
        qg.generate(trained, 1, outside, tmp_path / "o1", filter_mae=1.0, min_dice=0.0)
    # labels that fit no generated brain mask: MASK says "outside" everywhere
    real_load = qg.load_stage

    def load(run, stage, device="cpu"):
        m = real_load(run, stage, device)
        if stage == "structure":
            m.networks["MASK"] = _Ones()
        return m

    monkeypatch.setattr(qg, "load_stage", load)
    with pytest.raises(qg.GenerationError, match="outside every mask"):
        qg.generate(trained, 1, dataset, tmp_path / "o2", filter_mae=1.0, min_dice=0.0, max_attempts=3)
    no_labels = make_qu_dataset(tmp_path / "nolab", subjects=("x",), labelled=())
    with pytest.raises(DatasetError, match="no subject has a 'seg' label"):
        qg.generate(trained, 1, no_labels, tmp_path / "o3", filter_mae=1.0, min_dice=0.0)


class _Ones(torch.nn.Module):
    def forward(self, x):
        return torch.ones_like(x)


# --------------------------------------------------------------------------- tables


def test_segmentation_tables_on_real_synthetic_and_mixed_data(trained, dataset, tmp_path):
    from medsyn.pipelines.qu_generate import generate
    from medsyn.pipelines.qu_segment import TABLE2, phase_steps, run_table1, run_table2

    assert len(TABLE2) == 25 and TABLE2[17].mixing == "syn-then-real" and TABLE2[16].mixing == "real-then-syn"
    assert phase_steps([10, 30], 100, None) == [1000, 3000] and phase_steps([10, 30], None, 8) == [2, 6]
    generate(trained, 18, dataset, tmp_path / "syn", filter_mae=1.0, min_dice=0.0)
    generate(trained, 5, dataset, tmp_path / "few", filter_mae=1.0, min_dice=0.0)
    with pytest.raises(DatasetError, match=r"5 synthetic slices, but experiment\(s\) \[4\] need up to 18"):
        run_table2(trained, tmp_path / "few", tmp_path / "t0", experiments="1,4", steps=1)
    rec = run_table2(trained, tmp_path / "syn", tmp_path / "t", experiments="1,4,7,16,17,22", steps=4)
    rows = {r["id"]: r for r in rec["rows"]}
    assert rec["R"] == 6 and rec["split"]["split"] == "slices" and rec["n_test"] == 4  # 2 labelled subjects × 2
    assert (rows[1]["n_real"], rows[1]["n_synthetic"]) == (6, 0)
    assert (rows[4]["n_real"], rows[4]["n_synthetic"]) == (0, 18)
    assert (rows[7]["n_real"], rows[7]["n_synthetic"], rows[7]["steps"]) == (1, 6, [3, 1])  # pre-train, fine-tune
    assert (rows[17]["n_real"], rows[17]["n_synthetic"], rows[17]["steps"]) == (6, 6, [2, 2])
    assert rows[16]["steps"] == [2, 2] and rows[16]["mixing"] == "real-then-syn"
    assert rows[22]["n_augmented"] == 6
    for r in rows.values():
        assert 0 <= r["dice"] <= 1 and 0 <= r["mse"] <= 1
    md = (tmp_path / "t" / "table2.md").read_text()
    assert "| 7 | R×0.1 (1) | R (6) | 0 | synthetic → real |" in md and "optimistic" in md
    with pytest.raises(OutputError):
        run_table2(trained, tmp_path / "syn", tmp_path / "t", experiments="1", steps=1)
    rec1 = run_table1(trained, {"4SEG": tmp_path / "syn"}, tmp_path / "t", steps=3, repeats=2)
    assert [(r["method"], r["test"], r["n_test"]) for r in rec1["rows"]] == [("-", "real", 4), ("4SEG", "synthetic", 4)]
    for r in rec1["rows"]:  # Table 1 repeats: mean ± sample std over the 2 segmenters
        d = [x["dice"] for x in r["repeats"]]
        assert len(d) == 2 and r["summary"]["dice"]["mean"] == pytest.approx(np.mean(d))
        assert r["summary"]["dice"]["std"] == pytest.approx(np.std(d, ddof=1))
        assert set(r["dice_per_view"]) == set(MODS)  # one segmenter per modality (Sec. 2.9), each scored
    assert "| 4SEG | synthetic | 4 (4) |" in (tmp_path / "t" / "table1.md").read_text()


class _Background(torch.nn.Module):
    """A 'segmenter' that predicts background everywhere: (B, M, H, W) → (B, 3, H, W)."""

    def forward(self, x):
        p = torch.zeros(x.shape[0], 3, *x.shape[2:])
        p[:, 0] = 1
        return p


def test_dice_is_reported_with_and_without_lesion_free_slices():
    from medsyn.pipelines.qu_segment import Pool, evaluate

    labels = np.zeros((4, 8, 8), np.int16)
    labels[2:, 2:5, 2:5] = 1  # two empty slices, two with a lesion
    pool = Pool(np.ones((4, 2, 8, 8), np.float16), labels, [f"a:{k}" for k in range(4)])
    m = evaluate(_Background(), pool, 3, torch.device("cpu"))
    # empty prediction on an empty slice scores 1 (2 slices), a missed lesion 0 (2 slices)
    assert m["dice"] == 0.5 and m["dice_lesion"] == 0.0 and m["n_lesion"] == 2 and m["n_test"] == 4


def test_dice_filter_needs_every_modality_and_the_set_gets_the_final_check(trained, dataset, tmp_path, monkeypatch):
    from medsyn.pipelines import qu_generate as qg

    # views alternate (t1n, t2w): t1n finds the lesion, t2w only half of it → every case rejected at 0.9
    seq = iter([1.0, 0.5] * 10)
    monkeypatch.setattr(qg, "lesion_dice", lambda pred, target: next(seq))
    with pytest.raises(qg.GenerationError, match="3 with segmenter Dice < 0.9"):
        qg.generate(trained, 1, dataset, tmp_path / "a", filter_mae=1.0, min_dice=0.9, max_attempts=3)
    # both views ≥ 0.95: accepted; the set's mean Dice (0.975) misses the paper's 0.99 final check
    seq = iter([1.0, 0.95] * 10)
    monkeypatch.setattr(qg, "lesion_dice", lambda pred, target: next(seq))
    rec = qg.generate(trained, 2, dataset, tmp_path / "b", filter_mae=1.0, min_dice=0.95).record
    assert [s["slices"][0]["dice_per_view"] for s in rec["subjects"]] == [[1.0, 0.95]] * 2
    fc = rec["final_check"]
    assert fc["enabled"] and fc["dice"] == pytest.approx(0.975) and fc["passed"] is False and fc["threshold"] == 0.99
    seq = iter([1.0] * 10)
    monkeypatch.setattr(qg, "lesion_dice", lambda pred, target: next(seq))
    assert qg.generate(trained, 2, dataset, tmp_path / "c", filter_mae=1.0, min_dice=0.95).record["final_check"]["passed"]
    rec = qg.generate(trained, 1, dataset, tmp_path / "d", filter_mae=1.0, min_dice=0.0).record
    assert rec["final_check"]["enabled"] is False  # an unfiltered set (Table 1) is not checked


def test_segmenter_weights_that_do_not_fit_the_config_are_one_clear_error(trained, tmp_path):
    import shutil

    from medsyn.errors import CheckpointError
    from medsyn.pipelines.qu import load_stage

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cfg = run / "stages" / "segmenter" / "config.yaml"
    text = cfg.read_text()
    assert "segmenter_input: per-modality" in text
    cfg.write_text(text.replace("segmenter_input: per-modality", "segmenter_input: multichannel"))
    with pytest.raises(CheckpointError, match="do not fit the network.*segmenter_input: multichannel"):
        load_stage(run, "segmenter")
