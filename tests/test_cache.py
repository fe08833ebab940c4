"""The preprocessed cache (medsyn.data.cache): entries, keys, damage, atomicity, streaming
normalisation, bad disks, two processes, and samplers reading it memory-mapped."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsyn.cli.main import main
from medsyn.config import load_config
from medsyn.data import cache as cache_mod
from medsyn.data.cache import PreprocessedCache, preprocess_dataset, validation_slices
from medsyn.data.patches3d import PatchSampler3D
from medsyn.data.pipeline import (fit_normalization, load_cases, normalize_case, open_dataset,
                                  prepare_training_data)
from medsyn.data.sampling import PatchSampler25D
from medsyn.errors import OutputError

SAMPLE_SETS = ["data.root=sample", "data.val_fraction=0", "data.test_fraction=0", "data.cache_workers=1"]


def sample_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*SAMPLE_SETS, f"data.cache_dir={tmp_path / 'cache'}", *extra])


def quiet(_msg: str) -> None:
    pass


# ------------------------------------------------------------------------------------------------


def test_entry_is_cropped_compact_and_round_trips_within_1e3(tmp_path):
    cfg = sample_cfg(tmp_path)
    data = prepare_training_data(cfg.data, log=quiet)
    ds = open_dataset(cfg.data)
    raw = load_cases(ds, data.splits["train"], cfg.data)
    worst = 0.0
    for c, r in zip(data.train, raw):
        nc = normalize_case(r, data.norm, cfg.data.source)
        box = c.meta["crop_box"]
        crop = tuple(slice(lo, hi) for lo, hi in box)
        assert c.source.dtype == np.float16 and isinstance(c.source, np.memmap)
        assert c.mask.shape == tuple(hi - lo for lo, hi in np.array(box)[list(c.layout)])
        assert c.meta["full_shape"] == list(r.mask.shape)
        assert r.mask[crop].sum() == r.mask.sum()  # the whole foreground is inside the crop
        src = np.transpose(nc.source[(slice(None),) + crop], (0, *[a + 1 for a in c.layout]))
        worst = max(worst, float(np.abs(c.source.astype(np.float32) - src).max()))
        np.testing.assert_array_equal(c.target, np.transpose(r.target.array[crop], c.layout))  # exact, own units
        np.testing.assert_array_equal(c.mask, np.transpose(r.mask[crop], c.layout))
        assert c.target.dtype == r.target.array.dtype or c.target.dtype == np.float32
    # normalised range is [-1, 1] (2 wide): float16 rounds to within 2^-12 ≈ 2.4e-4 there
    assert worst <= 2.5e-4 < 1e-3 * 2
    assert worst > 0  # float16 does round


def test_entry_is_cropped_to_the_foreground_plus_margin(tiny_dataset, tmp_path):
    root = tiny_dataset(shape=(30, 26, 20))  # ellipsoid on a zero background
    cfg = load_config(None, [f"data.root={root}", "data.label=null", f"data.cache_dir={tmp_path / 'c'}",
                             "data.train=[s1]", "data.val=[]", "data.test=[]", "data.cache_margin=2"])
    data = prepare_training_data(cfg.data, log=quiet)
    (c,) = data.train
    r = load_cases(data.dataset, ["s1"], cfg.data)[0]
    nz = np.argwhere(r.mask)
    want = [[max(0, int(lo) - 2), min(s, int(hi) + 3)] for lo, hi, s in zip(nz.min(0), nz.max(0), r.mask.shape)]
    assert c.meta["crop_box"] == want and np.prod(c.mask.shape) < np.prod(r.mask.shape)
    assert c.layout == (2, 0, 1) and c.mask.shape == tuple(want[a][1] - want[a][0] for a in (2, 0, 1))


def test_streaming_normalisation_matches_in_memory_fit_within_1e3(tmp_path):
    for kind in ("percentile", "zscore"):
        cfg = sample_cfg(tmp_path, f"data.normalization.t2w.kind={kind}")
        data = prepare_training_data(cfg.data, log=quiet)
        ref = fit_normalization(cfg.data, load_cases(data.dataset, data.splits["train"], cfg.data))
        got, want = data.norm.target, ref.target
        if kind == "percentile":
            width = want["hi"] - want["lo"]
            assert abs(got["lo"] - want["lo"]) <= 1e-3 * width and abs(got["hi"] - want["hi"]) <= 1e-3 * width
            assert abs(data.norm.target_background - ref.target_background) <= 1e-3 * width
        else:
            assert got["mean"] == pytest.approx(want["mean"], rel=1e-9)
            assert got["std"] == pytest.approx(want["std"], rel=1e-6)
        assert data.norm.target_dtype == ref.target_dtype
        assert data.norm.sources == ref.sources
        for m, st in ref.train_stats.items():
            assert data.norm.train_stats[m]["median_range"] == pytest.approx(st["median_range"])
            assert data.norm.train_stats[m]["spacing"] == pytest.approx(st["spacing"])


def test_merged_histogram_percentiles_and_exact_atoms():
    rng = np.random.default_rng(0)
    parts = [np.concatenate([np.zeros(5000), rng.gamma(2.0, 300.0, 20000)]), rng.normal(900, 200, 30000)]
    hs = [cache_mod._histogram(p) for p in parts]
    merged = cache_mod.MergedHistogram(min(h["lo"] for h in hs), max(h["hi"] for h in hs))
    for h in hs:
        merged.add(h["counts"], h["sums"], h["n"], h["sum"], h["sumsq"])
    pooled = np.concatenate(parts)
    width = pooled.max() - pooled.min()
    for q in (0.5, 5, 50, 99.5):
        assert abs(merged.percentile(q) - np.percentile(pooled, q)) <= 1e-3 * width
    assert merged.percentile(1) == 0.0  # a run of equal values (zero background) comes out exactly
    assert merged.mean == pytest.approx(pooled.mean()) and merged.std == pytest.approx(pooled.std())


# ------------------------------------------------------------------------------------------------


def test_key_changes_with_config_and_stale_sources_are_rebuilt(tiny_dataset, tmp_path):
    root = tiny_dataset()
    cfg = load_config(None, [f"data.root={root}", "data.label=null", f"data.cache_dir={tmp_path / 'c'}",
                             "data.train=[s1,s2]", "data.val=[]", "data.test=[]", "data.cache_workers=1"])
    c1, _ = preprocess_dataset(cfg.data, log=quiet)
    for change in ("data.cache_margin=3", "data.slice_axis=coronal", "data.normalization.t1n.kind=zscore"):
        other = load_config(None, [f"data.root={root}", "data.label=null", f"data.cache_dir={tmp_path / 'c'}",
                                   "data.train=[s1,s2]", "data.val=[]", "data.test=[]", change])
        assert PreprocessedCache(other.data, open_dataset(other.data)).dir != c1.dir, change
    # the split and the target's normaliser do not change an entry
    same = load_config(None, [f"data.root={root}", "data.label=null", f"data.cache_dir={tmp_path / 'c'}",
                              "data.train=[s2]", "data.val=[s1]", "data.test=[]", "data.normalization.t2w.kind=zscore"])
    assert PreprocessedCache(same.data, open_dataset(same.data)).dir == c1.dir
    # a source file touched after caching: named, rebuilt
    f = root / "s1" / "t1n.nii.gz"
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    logs: list[str] = []
    _, metas = preprocess_dataset(cfg.data, log=logs.append)
    assert any(str(f) in m and "changed since it was cached" in m and "rebuilding" in m for m in logs), logs
    assert metas["s1"]["files"]["t1n"]["mtime_ns"] == st.st_mtime_ns + 10**9
    logs.clear()
    preprocess_dataset(cfg.data, log=logs.append)
    assert logs == []  # nothing left to do


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_damaged_entry_is_named_and_rebuilt(tiny_dataset, tmp_path, damage):
    root = tiny_dataset()
    cfg = load_config(None, [f"data.root={root}", "data.label=null", f"data.cache_dir={tmp_path / 'c'}",
                             "data.train=[s1,s2]", "data.val=[]", "data.test=[]", "data.cache_workers=1"])
    cache, metas = preprocess_dataset(cfg.data, log=quiet)
    good = np.load(cache.dir / "s2" / "source.npy")
    path = cache.dir / "s2" / ("meta.json" if damage == "meta" else "source.npy")
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        blob[-10] ^= 0xFF
    else:
        blob = blob[:20]
    path.write_bytes(bytes(blob))
    logs: list[str] = []
    preprocess_dataset(cfg.data, log=logs.append)  # preprocess checks CRC-32 too
    named = [m for m in logs if str(cache.dir / "s2") in m and "rebuilding" in m]
    assert len(named) == 1 and "\n" not in named[0], logs
    np.testing.assert_array_equal(np.load(cache.dir / "s2" / "source.npy"), good)


def test_interrupted_build_leaves_nothing_half_written_and_resumes(tiny_dataset, tmp_path, monkeypatch):
    root = tiny_dataset(subjects=("s1", "s2", "s3"))
    cfg = load_config(None, [f"data.root={root}", "data.label=null", f"data.cache_dir={tmp_path / 'c'}",
                             "data.train=[s1,s2,s3]", "data.val=[]", "data.test=[]", "data.cache_workers=1"])
    real_save, calls = np.save, {"n": 0}

    def dying_save(path, arr, *a, **k):  # Ctrl-C while the second entry is written
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(cfg.data, log=quiet)
    monkeypatch.setattr(np, "save", real_save)
    cache = PreprocessedCache(cfg.data, open_dataset(cfg.data))
    entries = sorted(p.name for p in cache.dir.iterdir() if not p.name.startswith("."))
    assert entries == ["key.json", "s1"]  # s2 was never visible half-written
    assert not list(cache.dir.glob(".tmp-*"))
    logs: list[str] = []
    _, metas = preprocess_dataset(cfg.data, log=logs.append)
    assert "preprocessing 2 subject(s)" in logs[0]  # resumed: only s2 and s3 built
    assert sorted(metas) == ["s1", "s2", "s3"]


def test_full_disk_while_writing_is_one_clear_error_and_nothing_is_kept(tiny_dataset, tmp_path, monkeypatch):
    root = tiny_dataset()
    cfg = load_config(None, [f"data.root={root}", "data.label=null", f"data.cache_dir={tmp_path / 'c'}",
                             "data.train=[s1,s2]", "data.val=[]", "data.test=[]", "data.cache_workers=1"])

    def full(path, arr, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(OutputError, match="No space left on device.*data.cache_dir"):
        preprocess_dataset(cfg.data, log=quiet)
    cache = PreprocessedCache(cfg.data, open_dataset(cfg.data))
    assert [p.name for p in cache.dir.iterdir() if p.name not in ("key.json", ".lock")] == []


def test_read_only_cache_folder_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from test_bad_inputs import ReadOnly

    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    ro = ReadOnly(ro_dir, monkeypatch)
    try:
        rc = main(["preprocess", "--set", "data.val_fraction=0", "--set", "data.test_fraction=0",
                   "--set", f"data.cache_dir={ro_dir / 'cache'}"])
    finally:
        ro.restore()
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and str(ro_dir / "cache") in err and "data.cache_dir" in err, err
    assert list(ro_dir.iterdir()) == []


def test_two_processes_sharing_a_cache_build_each_entry_once(tiny_dataset, tmp_path):
    root = tiny_dataset(subjects=("s1", "s2", "s3", "s4"))
    sets = [f"data.root={root}", "data.label=null", f"data.cache_dir={tmp_path / 'c'}", "data.val=[]",
            "data.test=[]", "data.train=[s1,s2,s3,s4]", "data.cache_workers=1"]
    cmd = [sys.executable, "-m", "medsyn", "preprocess", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    built = [o for o, _ in outs if "preprocessing 4 subject(s)" in o]
    assert len(built) == 1, outs  # the other waited on the lock, then found every entry
    cfg = load_config(None, sets)
    cache = PreprocessedCache(cfg.data, open_dataset(cfg.data))
    good, bad = cache.scan(["s1", "s2", "s3", "s4"], full=True)
    assert not bad and len(good) == 4


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["axial", "sagittal"])
def test_sampler_from_cache_equals_sampler_from_memory(tmp_path, axis):
    cfg = sample_cfg(tmp_path, f"data.slice_axis={axis}", "data.cache_margin=1000")  # margin ≥ volume: no crop
    data = prepare_training_data(cfg.data, log=quiet)
    mem = [normalize_case(c, data.norm, cfg.data.source)
           for c in load_cases(data.dataset, data.splits["train"], cfg.data)]
    kw = dict(slice_axis=axis, context=5, patch_size=(48, 40), foreground_fraction=0.7, label_fraction=0.2, seed=3)
    a, b = PatchSampler25D(data.train, **kw), PatchSampler25D(mem, **kw)
    for i in (0, 1, 7, 40):
        ba, bb = a.batch_at(i, 3), b.batch_at(i, 3)
        np.testing.assert_allclose(ba["source"], bb["source"], atol=1e-3)  # float16 storage
        np.testing.assert_allclose(ba["target"], bb["target"], atol=1e-6)
        np.testing.assert_array_equal(ba["mask"], bb["mask"])
    # cropped (default margin): foreground-centred patches are the same patches
    cfg2 = sample_cfg(tmp_path, f"data.slice_axis={axis}")
    cropped = prepare_training_data(cfg2.data, log=quiet)
    kw.update(foreground_fraction=1.0, label_fraction=0.0)
    a, b = PatchSampler25D(cropped.train, **kw), PatchSampler25D(mem, **kw)
    for i in (0, 5):
        ba, bb = a.batch_at(i, 2), b.batch_at(i, 2)
        np.testing.assert_allclose(ba["source"], bb["source"], atol=1e-3)
        np.testing.assert_allclose(ba["target"], bb["target"], atol=1e-6)
    # 3D patches from the slice-major cache come back in (X, Y, Z) order
    p3 = dict(patch_size=(20, 24, 16), foreground_fraction=1.0, seed=1)
    x3 = PatchSampler3D(data.train, **p3).batch(2)
    assert x3["source"].shape == (2, 1, 20, 24, 16) and x3["target"].shape == (2, 1, 20, 24, 16)


def test_samplers_pickle_without_their_memory_maps(tmp_path):
    import pickle

    data = prepare_training_data(sample_cfg(tmp_path).data, log=quiet)
    s = PatchSampler25D(data.train, patch_size=(32, 32), seed=0)
    first = s.batch_at(0, 2)
    blob = pickle.dumps(data.train)
    assert len(blob) < 100_000  # metadata only: no array travels to a spawned worker
    again = PatchSampler25D(pickle.loads(blob), patch_size=(32, 32), seed=0).batch_at(0, 2)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])


def test_validation_slices_are_bounded_fixed_and_in_the_foreground(tmp_path):
    data = prepare_training_data(sample_cfg(tmp_path).data, log=quiet)
    picked = validation_slices(data.train, 6)
    assert sum(len(s) for _, s in picked) <= 6 and len(picked) == 2
    for c, slices in picked:
        assert all(c.mask[s].any() for s in slices)
    assert [s.tolist() for _, s in picked] == [s.tolist() for _, s in validation_slices(data.train, 6)]
    assert len(validation_slices(data.train, 1)) == 1
    everything = validation_slices(data.train, 0)
    assert sum(len(s) for _, s in everything) == sum(len(c.foreground_slices()) for c in data.train)


def test_training_validates_on_a_bounded_set_of_cached_slices(tiny_dataset, tmp_path):
    axis = "sagittal"  # slices along X: the stack/prediction axes are moved, not assumed axial
    import json

    root = tiny_dataset(subjects=("s1", "s2", "s3"))
    out = tmp_path / "run"
    rc = main(["train", "--set", "method=nie-unet", "--set", "params.base_filters=4", "--set", "params.depth=2",
               "--set", f"data.root={root}", "--set", "data.label=null", "--set", f"data.cache_dir={tmp_path / 'c'}",
               "--set", "data.train=[s1]", "--set", "data.val=[s2,s3]", "--set", "data.test=[]",
               "--set", f"data.slice_axis={axis}", "--set", "data.patch_size=[16,16]", "--set", "data.context_slices=3",
               "--set", "data.patches_per_subject=2", "--set", "train.batch_size=2", "--set", "train.val_slices=3",
               "--set", "train.sample_every=0", "--set", "train.device=cpu", "--max-steps", "2", "--out", str(out)])
    assert rc == 0
    vals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val/psnr" in line]
    assert [v["step"] for v in vals] == [1, 2]
    assert all(np.isfinite(v["val/mae"]) and np.isfinite(v["val/psnr"]) and -1 <= v["val/ssim"] <= 1 for v in vals)
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "psnr" and best["value"] == max(v["val/psnr"] for v in vals)
