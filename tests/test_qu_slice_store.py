"""Qu et al.'s on-disk slice store (issue 13, item 5): the same slices as in memory, read
memory-mapped; entries written atomically, keyed by settings and source size/mtime, rebuilt when
stale or damaged; lazy rows and lazily augmented slices equal their eager versions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medsyn.data.dataset import discover
from medsyn.data.qu_slices import Rows, SliceStore, augment_slice, load_slices
from medsyn.data.structure import LabelAugmentConfig
from medsyn.errors import OutputError
from test_qu_pipeline import MODS, make_qu_dataset

KW = dict(label="seg", slice_range_mm=(2, 8), slice_size=(32, 32), n_classes=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_qu_dataset(tmp_path_factory.mktemp("qu-store") / "data")


def test_stored_slices_equal_the_in_memory_ones_and_are_memory_mapped(data, tmp_path):
    ds = discover(data)
    mem = load_slices(ds, ["a", "b", "c"], MODS, **KW)
    st = load_slices(ds, ["a", "b", "c"], MODS, store=tmp_path / "cache", **KW)
    assert isinstance(st.images, Rows) and isinstance(st.labels, Rows) and isinstance(st.brain, Rows)
    assert len(st) == len(mem) and st.size == mem.size and st.subjects == mem.subjects
    for name in ("images", "labels", "brain"):
        np.testing.assert_array_equal(np.asarray(getattr(st, name)), getattr(mem, name))
    np.testing.assert_array_equal(st.index, mem.index)
    np.testing.assert_array_equal(st.has_label, mem.has_label)
    for sid in "abc":
        np.testing.assert_array_equal(st.affines[sid], mem.affines[sid])
    # a selection stays lazy and reads the same rows
    sel = st.select([5, 0, 17, 3])
    assert isinstance(sel.images, Rows)
    np.testing.assert_array_equal(np.asarray(sel.images), mem.images[[5, 0, 17, 3]])
    np.testing.assert_array_equal(sel.images[2, 1], mem.images[17, 1])
    # exclusion / inclusion by canonical slice index work on stored subjects too
    held = load_slices(ds, ["a", "b"], MODS, store=tmp_path / "cache", exclude={"a": [2, 3, 4]}, **KW)
    assert [int(k) for s, k in zip(held.subjects, held.index) if s == "a"] == [5, 6, 7]
    only = load_slices(ds, ["a"], MODS, store=tmp_path / "cache", include={"a": [3]}, **KW)
    np.testing.assert_array_equal(np.asarray(only.images), mem.images[[1]])


def test_entries_are_reused_and_rebuilt_when_stale_or_damaged(data, tmp_path):
    ds = discover(data)
    root = tmp_path / "cache"

    def store():
        return SliceStore(ds, MODS, clip=3.0, floor=0.01, root=root, **{k: v for k, v in KW.items()})

    s1 = store()
    s1.open("a")
    assert s1.rebuilt == [("a", "missing")]
    entry = s1.dir / "a"
    assert sorted(p.name for p in entry.iterdir()) == ["brain.npy", "images.npy", "index.npy", "labels.npy",
                                                       "meta.json", "offsets.npy"]
    assert not [p for p in s1.dir.iterdir() if p.name.startswith(".tmp")]  # nothing half-written left
    s2 = store()
    s2.open("a")
    assert s2.rebuilt == []  # reused
    # another setting → another key folder
    other = SliceStore(ds, MODS, clip=2.0, floor=0.01, root=root, **KW)
    assert other.dir != s1.dir
    # a source file changed after caching (size/mtime) → rebuilt
    src = ds.subjects["a"].files["t2w"]
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    s3 = store()
    arrays, _ = s3.open("a")
    assert s3.rebuilt == [("a", "a source file changed since it was cached")]
    # a truncated array → named and rebuilt, and the rebuilt entry is what is read
    images = entry / "images.npy"
    images.write_bytes(images.read_bytes()[:200])
    s4 = store()
    arrays, _ = s4.open("a")
    assert s4.rebuilt and s4.rebuilt[0][1].startswith("images.npy unreadable or truncated")
    np.testing.assert_array_equal(np.asarray(arrays["images"]),
                                  load_slices(ds, ["a"], MODS, **KW).images)
    # no meta.json (an entry interrupted before its last file) → rebuilt
    (entry / "meta.json").unlink()
    s5 = store()
    s5.open("a")
    assert s5.rebuilt[0] == ("a", "meta.json unreadable (FileNotFoundError)")


def test_an_unwritable_cache_folder_is_one_clear_error(data, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write the Qu slice cache.*params.slice_cache"):
        load_slices(discover(data), ["a"], MODS, store=blocker / "cache", **KW)


def test_rows_behave_like_the_concatenated_arrays():
    a, b = np.arange(24).reshape(6, 4), 100 + np.arange(12).reshape(3, 4)
    r = Rows([(a, [4, 1]), (b, [2, 0, 1])])
    ref = np.concatenate([a[[4, 1]], b[[2, 0, 1]]])
    assert len(r) == 5 and r.shape == (5, 4)
    np.testing.assert_array_equal(np.asarray(r), ref)
    np.testing.assert_array_equal(r[-1], ref[-1])
    assert r[3, 2] == ref[3, 2]
    np.testing.assert_array_equal(np.asarray(r[1:4]), ref[1:4])
    np.testing.assert_array_equal(np.asarray(r.take([4, 0, 0])), ref[[4, 0, 0]])
    np.testing.assert_array_equal(np.asarray(Rows.concat([r, a[:2]])), np.concatenate([ref, a[:2]]))
    np.testing.assert_array_equal(np.stack(list(r)), ref)
    with pytest.raises(IndexError):
        r[5]


def test_lazily_augmented_slices_equal_the_eager_augmentation(data):
    from medsyn.pipelines.qu_segment import Pool, augmented_data

    s = load_slices(discover(data), ["a", "b"], MODS, **KW)
    real = Pool.of(s)
    cfg = LabelAugmentConfig()
    lazy = augmented_data(real, 7, np.random.default_rng([0, 22, 2]), cfg)
    rng = np.random.default_rng([0, 22, 2])  # what Table 2 computed before, slice by slice
    for j in range(7):
        i = int(rng.integers(len(real)))
        image = real.images[i].astype(np.float32)
        im, lab, _ = augment_slice(image, real.labels[i], image.max(axis=0) > 0, rng, cfg)
        np.testing.assert_array_equal(lazy.images[j], im.astype(real.images.dtype))
        np.testing.assert_array_equal(lazy.labels[j], lab)
        assert lazy.origin[j] == real.origin[i]
