"""medsyn.data: discovery, subject-level splits, invertible normalisers, masks, 2.5D sampling."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy import ndimage

from conftest import SAMPLE_GLI, SAMPLE_MET, phantom, write_nii
from medsyn.config import NormConfig
from medsyn.data.dataset import discover, split_subjects
from medsyn.data.masks import as_mask, compute_mask
from medsyn.data.normalization import (
    NormalizationState,
    Normalizer,
    PercentileNorm,
    WindowNorm,
    ZScoreNorm,
    make_normalizer,
)
from medsyn.data.sampling import NormalizedCase, PatchSampler25D
from medsyn.errors import ConfigError, DatasetError

# ------------------------------------------------------------------------------------------------
# discover
# ------------------------------------------------------------------------------------------------


def test_discover_folder_layout(tiny_dataset):
    root = tiny_dataset(("b2", "a1"), ("t1n", "t2w", "seg"), extra={"a1": ["notes.txt"]})
    (root / "a1" / ".hidden.nii.gz").write_bytes(b"")
    (root / ".cache").mkdir()
    ds = discover(root)
    assert ds.root == root
    assert ds.ids() == ["a1", "b2"]
    assert ds.modalities() == {"t1n", "t2w", "seg"}
    assert ds.subjects["a1"].files["t2w"] == root / "a1" / "t2w.nii.gz"
    assert [p.name for p in ds.subjects["a1"].extra] == ["notes.txt"]
    assert ds.subjects["b2"].extra == []


def test_discover_subject_path_error_lists_what_it_has(tiny_dataset):
    ds = discover(tiny_dataset(("s1",), ("t1n",)))
    with pytest.raises(DatasetError, match="'ct'.*t1n"):
        ds.subjects["s1"].path("ct")


def test_discover_sample_by_name(sample):
    ds = discover("sample")
    assert ds.root == sample
    assert ds.ids() == [SAMPLE_GLI, SAMPLE_MET]
    assert {"t1n", "t1c", "t2w", "t2f"} <= set(ds.subjects[SAMPLE_MET].files)
    assert "seg" in ds.subjects[SAMPLE_GLI].files


def test_discover_root_that_is_a_subject_folder(tiny_dataset):
    root = tiny_dataset(("only",), ("t1n", "t2w"))
    ds = discover(root / "only")
    assert ds.ids() == ["only"]
    assert ds.root == root
    assert set(ds.subjects["only"].files) == {"t1n", "t2w"}


def test_discover_errors_name_the_folder(tmp_path, tiny_dataset):
    with pytest.raises(DatasetError, match="not found") as e:
        discover(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(e.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no subject") as e:
        discover(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)
    root = tiny_dataset(("s1",), ("t1n",))
    write_nii(root / "s1" / "t1n.nii", phantom())
    with pytest.raises(DatasetError, match="two files for modality 't1n'"):
        discover(root)


def _manifest(root, rows, header="subject,modality,path,split"):
    p = root / "manifest.csv"
    p.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return p


def test_manifest_with_splits(tiny_dataset):
    root = tiny_dataset(("s1", "s2", "s3", "s4"), ("t1n", "t2w"))
    rows = [(s, m, f"{s}/{m}.nii.gz", sp) for s, sp in [("s1", "train"), ("s2", "test"), ("s3", "val"), ("s4", "")]
            for m in ("t1n", "t2w")]
    rows.append(("s5", "t1n", str(root / "s1" / "t1n.nii.gz"), "train"))  # absolute paths work too
    man = _manifest(root, rows)
    for ds in (discover("ignored", manifest=man), discover(man)):
        assert ds.manifest == man
        assert ds.ids() == ["s1", "s2", "s3", "s4", "s5"]
        assert ds.subjects["s2"].files["t2w"] == root / "s2" / "t2w.nii.gz"
        assert ds.subjects["s5"].files["t1n"] == root / "s1" / "t1n.nii.gz"
        assert ds.subjects["s3"].split == "val" and ds.subjects["s4"].split is None
    splits = split_subjects(discover(man), seed=123)
    assert splits == {"train": ["s1", "s4", "s5"], "val": ["s3"], "test": ["s2"]}


@pytest.mark.parametrize("rows, header, match", [
    ([("s1", "t1n", "a.nii.gz", "train"), ("s1", "t2w", "b.nii.gz", "test")], None, "two splits"),
    ([("s1", "t1n", "a.nii.gz", "training")], None, "must be one of train, val, test"),
    ([("s1", "t1n", "a.nii.gz", ""), ("s1", "t1n", "b.nii.gz", "")], None, "twice"),
    ([("s1", "", "a.nii.gz", "")], None, "empty"),
    ([("s1", "a.nii.gz")], "subject,path", "columns"),
    ([], None, "no images"),
])
def test_manifest_errors_name_the_file(tmp_path, rows, header, match):
    man = _manifest(tmp_path, rows, header or "subject,modality,path,split")
    with pytest.raises(DatasetError, match=match) as e:
        discover(man)
    assert str(man) in str(e.value)


# ------------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------------


def _ds(tiny_dataset, n):
    return discover(tiny_dataset([f"sub{i:02d}" for i in range(n)], ("t1n",), shape=(4, 4, 4)))


def test_seeded_split_is_deterministic_disjoint_and_complete(tiny_dataset):
    ds = _ds(tiny_dataset, 10)
    a = split_subjects(ds, seed=7)
    b = split_subjects(ds, seed=7)
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (7, 1, 2)
    all_ids = a["train"] + a["val"] + a["test"]
    assert sorted(all_ids) == ds.ids() and len(set(all_ids)) == 10
    # the seed matters: not every seed gives the same test set
    assert len({tuple(split_subjects(ds, seed=s)["test"]) for s in range(6)}) > 1


def test_split_does_not_depend_on_subject_order(tiny_dataset):
    ds = _ds(tiny_dataset, 8)
    shuffled = copy.copy(ds)
    shuffled.subjects = dict(reversed(list(ds.subjects.items())))
    assert split_subjects(ds, seed=3) == split_subjects(shuffled, seed=3)


def test_small_datasets_keep_a_training_subject(tiny_dataset):
    # two subjects: one trains, one is held out for test (issue 17: a held-out prediction even then)
    ds = _ds(tiny_dataset, 2)
    s = split_subjects(ds)
    assert len(s["train"]) == 1 and len(s["test"]) == 1 and s["val"] == []
    assert split_subjects(ds, test_fraction=0) == {"train": ["sub00", "sub01"], "val": [], "test": []}


def test_explicit_splits(tiny_dataset):
    ds = _ds(tiny_dataset, 5)
    s = split_subjects(ds, train=["sub01"], val=["sub02"], test=["sub03"])
    assert s == {"train": ["sub01"], "val": ["sub02"], "test": ["sub03"]}  # sub00, sub04 unused
    s = split_subjects(ds, val=["sub02"], test=["sub00"])
    assert s == {"train": ["sub01", "sub03", "sub04"], "val": ["sub02"], "test": ["sub00"]}
    s = split_subjects(ds, train=["sub00"], val=[], test=[])
    assert s == {"train": ["sub00"], "val": [], "test": []}


def test_explicit_split_errors(tiny_dataset):
    ds = _ds(tiny_dataset, 4)
    with pytest.raises(ConfigError, match="data.val.*'nobody'"):
        split_subjects(ds, val=["nobody"])
    with pytest.raises(ConfigError, match="'sub01'.*data.train.*data.test"):
        split_subjects(ds, train=["sub00", "sub01"], test=["sub01"])


# ------------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------------


def test_window_ct_gives_hu_back():
    n = make_normalizer(NormConfig(kind="window"))
    hu = np.array([-1024.0, -1000.0, -500.5, 0.0, 40.0, 988.0, 1500.25, 3000.0], np.float32)
    y = n.forward(hu)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[[0, 5, 7]], [-1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(n.inverse(y), hu, atol=1e-3)
    # outside the window: clipped both ways
    np.testing.assert_allclose(n.inverse(n.forward(np.array([-3000.0, 5000.0]))), [-1024.0, 3000.0])
    np.testing.assert_allclose(n.inverse(np.array([-1.5, 1.5])), [-1024.0, 3000.0])


def test_percentile_fit_uses_the_mask_and_round_trips():
    rng = np.random.default_rng(0)
    img = rng.normal(500, 80, size=(20, 20, 10)).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[4:16, 4:16, 2:8] = True
    img[~mask] = 1e5  # outliers outside the mask must not move the statistics
    n = make_normalizer(NormConfig(kind="percentile", lower=1, upper=99)).fit([img], [mask])
    lo, hi = np.percentile(img[mask].astype(np.float64), [1, 99])
    assert (n.lo, n.hi) == pytest.approx((lo, hi))
    y = n.forward(img)
    assert y.min() >= -1 and y.max() <= 1
    inside = mask & (img > lo) & (img < hi)
    np.testing.assert_allclose(n.inverse(y)[inside], img[inside], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(n.inverse(y)[~mask], hi, rtol=1e-6)


def test_zscore_fit_and_round_trip_inside_clip():
    rng = np.random.default_rng(1)
    imgs = [rng.normal(100, 10, size=(8, 8, 8)).astype(np.float32), rng.normal(140, 10, size=(8, 8, 8)).astype(np.float32)]
    n = make_normalizer(NormConfig(kind="zscore", clip=3.0)).fit(imgs, [None, None])
    pooled = np.concatenate([i.ravel() for i in imgs]).astype(np.float64)
    assert (n.mean, n.std) == pytest.approx((pooled.mean(), pooled.std()))
    x = np.array([n.mean - 2.9 * n.std, n.mean, n.mean + 1.7 * n.std], np.float32)
    np.testing.assert_allclose(n.forward(x), [-2.9 / 3, 0.0, 1.7 / 3], atol=1e-5)
    np.testing.assert_allclose(n.inverse(n.forward(x)), x, rtol=1e-5)
    far = np.array([n.mean + 10 * n.std], np.float32)
    np.testing.assert_allclose(n.inverse(n.forward(far)), n.mean + 3 * n.std, rtol=1e-5)


@pytest.mark.parametrize("norm", [WindowNorm(-200.0, 400.0), PercentileNorm(2.0, 98.0, lo=-3.5, hi=812.25),
                                  ZScoreNorm(4.0, mean=71.5, std=13.25)])
def test_normalizer_to_dict_from_dict(norm):
    d = json.loads(json.dumps(norm.to_dict()))  # what the run folder stores
    back = Normalizer.from_dict(d)
    assert type(back) is type(norm) and back.kind == norm.kind
    assert back.to_dict() == norm.to_dict()
    x = np.linspace(-300, 900, 50, dtype=np.float32)
    np.testing.assert_array_equal(back.forward(x), norm.forward(x))
    np.testing.assert_array_equal(back.inverse(norm.forward(x)), norm.inverse(norm.forward(x)))


def test_make_normalizer_validates():
    with pytest.raises(ConfigError, match="high"):
        make_normalizer(NormConfig(kind="window", low=100, high=100))
    with pytest.raises(ConfigError, match="percentiles"):
        make_normalizer(NormConfig(kind="percentile", lower=90, upper=10))
    with pytest.raises(ConfigError, match="clip"):
        make_normalizer(NormConfig(kind="zscore", clip=0))
    bad = NormConfig()
    bad.kind = "zscor"  # bypassing the config's own Literal check
    with pytest.raises(ConfigError, match="did you mean 'zscore'"):
        make_normalizer(bad)


def test_normalization_state_round_trip_and_per_image_sources():
    rng = np.random.default_rng(2)
    tgt = make_normalizer(NormConfig(kind="percentile"), per_image=False).fit(
        [rng.uniform(0, 1000, (6, 6, 6))], [None])
    state = NormalizationState({"t1n": make_normalizer(NormConfig(kind="percentile"), per_image=True).to_dict()},
                               tgt.to_dict(), "t2w", "int16", 3.0, {"t1n": {"median_range": [1.0, 2.0]}})
    back = NormalizationState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back == state
    a = rng.uniform(0, 50, (6, 6, 6)).astype(np.float32)
    b = a * 10 + 7  # another scan of another scale: per-image fitting brings both to one range
    na, nb = back.source_normalizer("t1n", a, None), back.source_normalizer("t1n", b, None)
    np.testing.assert_allclose(na.forward(a), nb.forward(b), atol=1e-5)
    assert back.target_normalizer().to_dict() == tgt.to_dict()


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------


def _ball(shape, centre, radius):
    g = np.indices(shape)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= radius**2


@pytest.mark.parametrize("noisy_background", [False, True])
def test_compute_mask_fills_holes_and_drops_specks(noisy_background):
    rng = np.random.default_rng(3)
    shape = (30, 30, 24)
    head = _ball(shape, (15, 15, 12), 9)
    img = np.where(head, rng.uniform(200, 300, shape), 0.0)
    img[_ball(shape, (15, 15, 12), 3)] = 0.0  # dark cavity (ventricle / necrosis) inside
    img[1:3, 1:3, 1:3] = 250.0  # a bright speck far from the head
    if noisy_background:  # not skull-stripped: air is noise, Otsu's threshold applies
        img = img + rng.uniform(0, 20, shape)
    mask = compute_mask(img)
    assert mask.dtype == bool and mask.shape == shape
    np.testing.assert_array_equal(mask, head)
    assert ndimage.label(mask)[1] == 1


def test_compute_mask_explicit_threshold_and_empty():
    img = np.zeros((5, 5, 5))
    img[1:4, 1:4, 1:4] = 10
    img[2, 2, 2] = 3
    m = compute_mask(img, threshold=5)
    assert m.sum() == 27  # the dim centre voxel is a hole, filled
    with pytest.raises(DatasetError, match="empty"):
        compute_mask(np.full((4, 4, 4), 7.0))
    with pytest.raises(DatasetError, match="m.nii.gz.*empty"):
        as_mask(np.zeros((3, 3, 3)), "m.nii.gz")
    np.testing.assert_array_equal(as_mask(np.array([[[0, 2, -1]]])), [[[False, True, True]]])


# ------------------------------------------------------------------------------------------------
# 2.5D patch sampler
# ------------------------------------------------------------------------------------------------

X, Y, Z = 11, 13, 7


def _coded_case(label_at=None, cid="c0") -> NormalizedCase:
    """Values encode position: source[m, x, y, z] = 1e6·m + 1e4·x + 100·y + z + 1, target = same for m = 9."""
    g = np.indices((X, Y, Z)).astype(np.float32)
    code = 1e4 * g[0] + 100 * g[1] + g[2] + 1
    src = np.stack([code, 1e6 + code]).astype(np.float32)
    mask = np.zeros((X, Y, Z), bool)
    mask[3:8, 4:10, 1:6] = True
    label = None
    if label_at is not None:
        label = np.zeros((X, Y, Z), np.int16)
        label[label_at] = 1
    return NormalizedCase(cid, src, (9e6 + code).astype(np.float32), mask, label)


def _expected(case: NormalizedCase | np.ndarray, axis: int, k: int, ph: int, pw: int, centre) -> np.ndarray:
    """The (M·k, ph, pw) stack built by hand: slices clamped at the ends, min-value padding in plane.

    ``case`` may also be a (M, X, Y, Z) array (mask, target) instead of the case's sources.
    """
    order = [a for a in range(3) if a != axis] + [axis]
    vol = case.source if isinstance(case, NormalizedCase) else case
    src = np.transpose(vol, [0] + [a + 1 for a in order])
    a, b, s = (centre[i] for i in order)
    M, A, B, S = src.shape
    out = np.empty((M * k, ph, pw), np.float32)
    for m in range(M):
        for j in range(k):
            sl = min(max(s + j - k // 2, 0), S - 1)
            for u in range(ph):
                for v in range(pw):
                    ia, ib = a - ph // 2 + u, b - pw // 2 + v
                    inside = 0 <= ia < A and 0 <= ib < B
                    out[m * k + j, u, v] = src[m, ia, ib, sl] if inside else src[m].min()
    return out


def _decode(value: float) -> tuple[int, int, int]:
    c = int(round(value - 9e6 - 1))
    return c // 10000, (c // 100) % 100, c % 100


@pytest.mark.parametrize("axis_name, axis", [("axial", 2), ("sagittal", 0), ("coronal", 1)])
@pytest.mark.parametrize("patch", [(6, 5), (4, 9)])
def test_sampler_shapes_channel_order_and_padding(axis_name, axis, patch):
    case = _coded_case()
    k, (ph, pw) = 3, patch
    sampler = PatchSampler25D([case], slice_axis=axis_name, context=k, patch_size=patch,
                              foreground_fraction=0.0, seed=5)
    seen_border = False
    for _ in range(40):
        x, y, m = sampler.sample()
        assert x.shape == (2 * k, ph, pw) and y.shape == (1, ph, pw) and m.shape == (1, ph, pw)
        assert x.dtype == y.dtype == m.dtype == np.float32
        centre = _decode(y[0, ph // 2, pw // 2])  # the target's centre pixel is the patch centre
        np.testing.assert_array_equal(x, _expected(case, axis, k, ph, pw, centre))
        np.testing.assert_array_equal(y, _expected(case.target[None], axis, 1, ph, pw, centre))
        np.testing.assert_array_equal(m, _expected(case.mask[None].astype(np.float32), axis, 1, ph, pw, centre))
        seen_border |= centre[axis] in (0, case.mask.shape[axis] - 1)
    assert seen_border, "40 draws should include a first or last slice"


def test_sampler_replicates_first_and_last_slice_and_centres_on_label():
    k, r = 5, 2
    for z in (0, Z - 1):
        centre = (X - 1, 0, z)  # a corner: the patch reaches past two borders
        case = _coded_case(label_at=centre)
        sampler = PatchSampler25D([case], context=k, patch_size=(8, 7), label_fraction=1.0, seed=0)
        for _ in range(3):
            x, y, m = sampler.sample()
            assert _decode(y[0, 4, 3]) == centre
            np.testing.assert_array_equal(x, _expected(case, 2, k, 8, 7, centre))
            # channel j of modality m is slice z + j − r, clamped: replicated at the ends
            got_slices = [int(round(x[j, 4, 3])) % 100 - 1 for j in range(k)]
            assert got_slices == [min(max(z + j - r, 0), Z - 1) for j in range(k)]
            assert (x[k:] >= 1e6).all() and (x[:k] < 1e6).all()  # modality blocks in order
            # outside the image: each modality's minimum, mask False, target its minimum
            assert x[0, 0, 0] == case.source[0].min() and x[k, 0, 0] == case.source[1].min()
            assert m[0, 0, 0] == 0 and y[0, 0, 0] == case.target.min()


def test_sampler_patch_larger_than_image():
    case = _coded_case(label_at=(0, 0, 3))
    x, y, m = PatchSampler25D([case], context=1, patch_size=(16, 20), label_fraction=1.0).sample()
    np.testing.assert_array_equal(x, _expected(case, 2, 1, 16, 20, (0, 0, 3)))
    assert m.sum() == case.mask[:, :, 3].sum()  # the whole slice is inside the patch
    np.testing.assert_array_equal(y, _expected(case.target[None], 2, 1, 16, 20, (0, 0, 3)))


def test_sampler_foreground_fraction_one_stays_in_mask():
    case = _coded_case()
    sampler = PatchSampler25D([case], context=3, patch_size=(4, 4), foreground_fraction=1.0, seed=1)
    for _ in range(30):
        x, y, m = sampler.sample()
        assert case.mask[_decode(y[0, 2, 2])]
        assert m[0, 2, 2] == 1


def test_sampler_label_fraction_zero_ignores_label():
    case = _coded_case(label_at=(5, 6, 3))
    sampler = PatchSampler25D([case], context=1, patch_size=(4, 4), foreground_fraction=0.0,
                              label_fraction=0.0, seed=2)
    centres = {_decode(sampler.sample()[1][0, 2, 2]) for _ in range(20)}
    assert len(centres) > 5


def test_sampler_same_seed_same_batches_and_several_cases():
    cases = [_coded_case(cid="a"), _coded_case(cid="b")]
    cases[1].source = cases[1].source + 0.5
    a = PatchSampler25D(cases, context=3, patch_size=(8, 8), seed=11)
    b = PatchSampler25D(cases, context=3, patch_size=(8, 8), seed=11)
    c = PatchSampler25D(cases, context=3, patch_size=(8, 8), seed=12)
    ba, bb, bc = a.batch(6), b.batch(6), c.batch(6)
    assert ba["source"].shape == (6, 6, 8, 8) and ba["target"].shape == (6, 1, 8, 8) and ba["mask"].shape == (6, 1, 8, 8)
    for key in ba:
        assert ba[key].equal(bb[key])
    assert not ba["source"].equal(bc["source"])
    frac = (ba["source"] % 1 != 0).float().mean().item() + (bc["source"] % 1 != 0).float().mean().item()
    assert frac > 0  # the second case is drawn too


@pytest.mark.parametrize("augment", [False, True])
def test_sampler_state_dict_resumes_exact_sequence(augment):
    rng = np.random.default_rng(0)  # network-range values, so augmentation's clip to [-1, 1] keeps them
    cases = [NormalizedCase("n", rng.uniform(-1, 1, (2, X, Y, Z)).astype(np.float32),
                            rng.uniform(-1, 1, (X, Y, Z)).astype(np.float32), np.ones((X, Y, Z), bool))]
    a = PatchSampler25D(cases, context=3, patch_size=(8, 8), augment=augment, seed=4)
    a.batch(3)
    state = json.loads(json.dumps(a.state_dict()))  # as a checkpoint stores it
    expected = [a.batch(2) for _ in range(3)]
    b = PatchSampler25D(cases, context=3, patch_size=(8, 8), augment=augment, seed=999)
    b.load_state_dict(state)
    for want in expected:
        got = b.batch(2)
        for key in want:
            assert got[key].equal(want[key])
    fresh = PatchSampler25D(cases, context=3, patch_size=(8, 8), augment=augment, seed=4)
    assert not fresh.batch(2)["source"].equal(expected[0]["source"])  # the state mattered


def test_sampler_needs_a_case():
    with pytest.raises(ValueError):
        PatchSampler25D([])


@pytest.mark.parametrize("flip, axes", [("left-right", [(), (-2,)]), ("in-plane", [(), (-2,), (-1,), (-2, -1)])])
def test_sampler_flips_source_target_and_mask_together(flip, axes):
    """data.flip: each sample is the unflipped sample (same seed, same centre) mirrored along the
    same axes in its source stack, target and mask; every allowed combination occurs."""
    case = _coded_case()
    plain = PatchSampler25D([case], context=3, patch_size=(6, 5), foreground_fraction=0.5, seed=3)
    flipped = PatchSampler25D([case], context=3, patch_size=(6, 5), foreground_fraction=0.5, flip=flip, seed=3)
    seen = set()
    for _ in range(40):
        ref, got = plain.sample(), flipped.sample()
        match = [a for a in axes if all(np.array_equal(np.flip(r, a) if a else r, g) for r, g in zip(ref, got))]
        assert len(match) == 1, "source, target and mask flipped along the same axes"
        seen.add(match[0])
    assert seen == set(axes)
    # "left-right" is the canonical grid's x axis (RAS: left-right) for axial slices
    lr = PatchSampler25D([case], context=1, patch_size=(6, 5), foreground_fraction=1.0, flip="left-right", seed=3)
    xs = []
    for _ in range(20):
        y = lr.sample()[1][0]
        xs.append(_decode(y[1, 2])[0] - _decode(y[2, 2])[0])
    assert set(xs) == {-1, 1}


def test_sampler_flips_are_part_of_the_resumable_sample_stream():
    cases = [_coded_case()]
    a = PatchSampler25D(cases, context=3, patch_size=(8, 8), flip="in-plane", seed=4)
    a.batch(3)
    state = json.loads(json.dumps(a.state_dict()))  # as a checkpoint stores it
    expected = a.batch(4)
    b = PatchSampler25D(cases, context=3, patch_size=(8, 8), flip="in-plane", seed=0)
    b.load_state_dict(state)
    got = b.batch(4)
    for key in expected:
        assert got[key].equal(expected[key])
    assert b.batch_at(3, 4)["source"].equal(expected["source"])  # what a loader worker computes


def test_sampler_flip_errors():
    with pytest.raises(ValueError, match="flip"):
        PatchSampler25D([_coded_case()], flip="up-down")
    with pytest.raises(ValueError, match="sagittal"):
        PatchSampler25D([_coded_case()], slice_axis="sagittal", flip="left-right")
