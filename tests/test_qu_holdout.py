"""No test data reaches a training set in Qu et al.'s pipeline (issue 15).

Two runs on tiny phantom data: one whose split has a labelled test subject, one whose split has
none (the bundled sample's situation: test slices held out of one labelled subject). For each,
every slice that any stage loaded for training, every lesion label of the generation label pool
(and of the synthetic set written from it), and every real, synthetic or augmented slice that a
Table 2 segmenter trains on must be data the run trained on — never a test subject, a held-out
test slice or its gap slice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medsyn.errors import DatasetError
from medsyn.methods import qu2023
from medsyn.pipelines.qu import read_holdout, read_pipeline, run_pipeline
from test_qu_pipeline import _slice_cache, make_qu_dataset, tiny_cfg  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(root: Path, out: Path, **data) -> tuple[Path, list[tuple[str, int]]]:
    """Train all four stages (1 step each); return the run and every (subject, slice) a stage loaded."""
    cfg = tiny_cfg(root, max_steps=1)
    if data:
        from medsyn.config import build_config, to_dict

        d = to_dict(cfg)
        d["data"].update(data)
        cfg = build_config(d)
    loaded: list[tuple[str, int]] = []
    real_load = qu2023.load_slices

    def spy(*args, **kw):
        s = real_load(*args, **kw)
        loaded.extend(zip(s.subjects, (int(k) for k in s.index)))
        return s

    qu2023._SLICE_CACHE.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qu2023, "load_slices", spy)
        run_pipeline(cfg, out, progress=False)
    qu2023._SLICE_CACHE.clear()
    assert loaded, "the stages loaded no slices through medsyn.methods.qu2023.load_slices"
    return out, loaded


@pytest.fixture(scope="module")
def subject_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("qu-h1")
    data = make_qu_dataset(root / "data", subjects=("a", "b", "c"), labelled=("a", "b", "c"))
    run, loaded = _train(data, root / "run", test=["c"])
    return data, run, loaded


@pytest.fixture(scope="module")
def slice_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("qu-h2")
    data = make_qu_dataset(root / "data", subjects=("a", "b", "c"), labelled=("a", "b"))
    run, loaded = _train(data, root / "run")
    return data, run, loaded


def _test_keys(run: Path, data: Path) -> set[tuple[str, int]]:
    """Every (subject, slice) of the real test set that segment-experiment evaluates on."""
    from medsyn.pipelines.qu_segment import real_data

    _, test, _ = real_data(run)
    return {(o.rsplit(":", 1)[0], int(o.rsplit(":", 1)[1])) for o in test.origin}


def _assert_no_leak(data: Path, run: Path, loaded, tmp_path: Path) -> None:
    from medsyn.pipelines.qu_generate import generate, load_label_pool
    from medsyn.pipelines.qu_segment import real_data, run_table2

    h = read_holdout(run)
    test = _test_keys(run, data)
    assert test, "the run has no real test slice"
    test_subjects = {sid for sid, _ in test} if h.kind == "subjects" else set()
    # 1. generator / segmenter stages: no test subject, no test slice, no gap slice
    for sid, k in loaded:
        assert sid not in test_subjects and (sid, k) not in test, f"stage training loaded test slice {sid}:{k}"
        assert not h.never_trained(sid, k), f"stage training loaded held-out slice {sid}:{k}"
    # 2. the generation label pool (the run's own data set, and the same folder passed as --labels)
    _, p, state = read_pipeline(run)
    pool = load_label_pool(data, p, state["slice_size"], state["in_plane_spacing_mm"], h)
    for o in pool.origin:
        sid, k = o.rsplit(":", 1)
        assert sid not in test_subjects and (sid, int(k)) not in test and not h.never_trained(sid, int(k)), o
    for labels in (None, data):
        out = tmp_path / f"syn-{'default' if labels is None else 'folder'}"
        rec = generate(run, 12, labels, out, filter_mae=1.0, min_dice=0.0).record
        assert rec["label_slices"] == len(pool.labels)
        for s in rec["subjects"]:
            for sl in s["slices"]:
                sid, k = sl["label_source"].rsplit(":", 1)
                assert (sid, int(k)) not in test and sid not in test_subjects, sl["label_source"]
    # 3. the segmenters' training sets: real, synthetic (through their label sources), augmented
    train, test_pool, _ = real_data(run)
    assert not {(o.rsplit(":", 1)[0], int(o.rsplit(":", 1)[1])) for o in train.origin} & test
    seen = []
    from medsyn.pipelines import qu_segment

    real_train_segmenter = qu_segment.train_segmenter

    def spy(phases, *a, **kw):
        seen.extend(o for ph in phases for o in ph.origin)
        return real_train_segmenter(phases, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qu_segment, "train_segmenter", spy)
        run_table2(run, tmp_path / "syn-default", tmp_path / "t2", experiments="1,15,22", steps=1, examples=0)
        n_table2 = len(seen)
        qu_segment.run_table1(run, {"4SEG": tmp_path / "syn-default"}, tmp_path / "t1", steps=1, repeats=2, examples=0)
    assert seen and any(o.startswith("synthetic:") for o in seen)
    assert len(seen) > n_table2 and not any(o.startswith("synthetic:") for o in seen[n_table2:])  # Table 1: real only
    for o in seen:
        if not o.startswith("synthetic:"):
            sid, k = o.rsplit(":", 1)
            assert (sid, int(k)) not in test and sid not in test_subjects, o


def test_a_labelled_test_subject_never_reaches_training(subject_split, tmp_path):
    data, run, loaded = subject_split
    h = read_holdout(run)
    assert h.kind == "subjects" and h.test_subjects == ["c"] and not h.excluded
    assert {sid for sid, _ in _test_keys(run, data)} == {"c"}
    _assert_no_leak(data, run, loaded, tmp_path)
    assert {sid for sid, _ in loaded} == {"a", "b"}


def test_held_out_slices_never_reach_training_when_no_test_subject(slice_split, tmp_path):
    data, run, loaded = slice_split
    h = read_holdout(run)
    # 6 in-range slices (2–7) per subject: slices 2, 3 are test, 4 the gap, 5–7 train
    assert h.kind == "slices" and h.test_slices == {"a": [2, 3], "b": [2, 3]} and h.excluded == {"a": [2, 3, 4],
                                                                                                 "b": [2, 3, 4]}
    assert _test_keys(run, data) == {("a", 2), ("a", 3), ("b", 2), ("b", 3)}
    _assert_no_leak(data, run, loaded, tmp_path)
    assert {k for sid, k in loaded if sid in ("a", "b")} == {5, 6, 7}
    assert {k for sid, k in loaded if sid == "c"} >= {2, 3, 4}  # unlabelled: never a test subject, all its slices train


def test_synthetic_sets_built_from_test_labels_and_runs_without_held_out_data_are_refused(slice_split, tmp_path):
    from medsyn.pipelines.qu_generate import generate
    from medsyn.pipelines.qu_segment import real_data, run_table2

    data, run, _ = slice_split
    syn = tmp_path / "syn"
    generate(run, 8, None, syn, filter_mae=1.0, min_dice=0.0)
    rec = json.loads((syn / "generate.json").read_text())
    rec["subjects"][3]["slices"][0]["label_source"] = "a:3"  # a synthetic case drawn around a test lesion
    (syn / "generate.json").write_text(json.dumps(rec))
    with pytest.raises(DatasetError, match=r"synth-00003 from a:3"):
        run_table2(run, syn, tmp_path / "t", experiments="2", steps=1)
    assert not (tmp_path / "t").exists()
    # a run whose pipeline.json records no hold-out (trained before it existed): nothing real is unseen
    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    state = json.loads((legacy / "pipeline.json").read_text())
    del state["holdout"]
    (legacy / "pipeline.json").write_text(json.dumps(state))
    with pytest.raises(DatasetError, match="holds no real test data out"):
        real_data(legacy)
