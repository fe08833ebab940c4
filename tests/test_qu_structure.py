"""Qu et al. Algorithms 1–3, lesion-label augmentation and label fusion on hand-made slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsyn.data.structure import (
    DEFAULT_BETA,
    LabelAugmentConfig,
    augment_label,
    check_lesion_label,
    extract_mask,
    extract_mask_torch,
    filter_structure_map,
    fuse_label_structure,
    fuse_label_structure_torch,
    mask_from_contours,
    one_hot_label,
    remove_lesion_structure,
    remove_lesion_structure_torch,
    sobel_edges,
    structural_feature_map,
    structural_feature_map_torch,
)


def square(n: int = 16, lo: int = 4, hi: int = 12, value: float = 1.0) -> np.ndarray:
    x = np.zeros((n, n))
    x[lo:hi, lo:hi] = value
    return x


def disk(n: int, r: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    cy, cx = centre if centre is not None else ((n - 1) / 2, (n - 1) / 2)
    yy, xx = np.mgrid[:n, :n]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.float64)


def ring(n: int, r: float, width: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    d = np.sqrt((yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2)
    return (np.abs(d - r) <= width / 2 + 0.25).astype(np.float32)


# --------------------------------------------------------------------------- Algorithm 1


def test_sobel_of_a_vertical_step():
    x = np.zeros((5, 6))
    x[:, 3:] = 1.0
    gy, gx = sobel_edges(x)
    assert np.all(gy == 0)
    # columns 2 and 3 straddle the step: (1 + 2 + 1) * 1 = 4; flat columns (and reflected borders) 0
    np.testing.assert_array_equal(gx, np.tile([0, 0, 4, 4, 0, 0], (5, 1)))


def test_structure_map_of_a_bright_square_marks_its_border_only():
    f = structural_feature_map(square())
    expected = np.zeros((16, 16), np.float32)
    expected[3:13, 3:13] = 1.0  # the Sobel response straddles the boundary: 2 pixels wide
    expected[5:11, 5:11] = 0.0  # flat interior
    np.testing.assert_array_equal(f, expected)
    assert f.dtype == np.float32 and set(np.unique(f)) == {0.0, 1.0}


def test_structure_map_marks_both_gradient_signs():
    # a dark square on a bright background: the same outline (f1 catches negative steps)
    np.testing.assert_array_equal(structural_feature_map(1.0 - square()), structural_feature_map(square()))


def test_structure_map_is_scale_and_offset_free_and_flat_images_give_nothing():
    x = square()
    np.testing.assert_array_equal(structural_feature_map(1000.0 * x + 7.0), structural_feature_map(x))
    assert structural_feature_map(np.full((8, 8), 3.0)).sum() == 0


def test_beta_keeps_only_strong_edges_as_it_grows():
    x = square(32, 4, 12, 1.0) + square(32, 18, 28, 0.2)  # a strong and a weak square
    low, high = structural_feature_map(x, beta=0.07), structural_feature_map(x, beta=0.3)
    strong, weak = np.s_[2:14, 2:14], np.s_[16:30, 16:30]
    assert low[strong].sum() > 0 and low[weak].sum() > 0
    assert high[strong].sum() > 0 and high[weak].sum() == 0  # the weak square's outline is gone
    maps = [structural_feature_map(x, beta=b) for b in (0.0, 0.05, 0.1, 0.3, 0.6, 1.0)]
    for a, b in zip(maps, maps[1:]):
        assert np.all(b <= a)  # a larger beta never adds structure
    assert maps[-1].sum() == 0  # normalised maps minus their mean never exceed 1


def test_torch_structure_map_equals_numpy_per_slice():
    rng = np.random.default_rng(0)
    xs = [square(16), rng.random((16, 16)), 0.5 * square(16, 2, 9) + 0.1 * rng.random((16, 16))]
    batch = torch.tensor(np.stack(xs)[:, None], dtype=torch.float32)
    out = structural_feature_map_torch(batch, beta=DEFAULT_BETA)
    assert out.shape == (3, 1, 16, 16)
    for k, x in enumerate(xs):
        np.testing.assert_array_equal(out[k, 0].numpy(), structural_feature_map(x.astype(np.float32)))


def test_straight_through_forward_is_exact_and_passes_gradient():
    x = torch.tensor(square() * 0.8 + 0.1, dtype=torch.float32)[None, None].requires_grad_(True)
    hard = structural_feature_map_torch(x, mode="hard")
    assert not hard.requires_grad
    ste = structural_feature_map_torch(x, mode="ste")
    torch.testing.assert_close(ste, hard, rtol=0, atol=0)
    (ste * torch.rand_like(ste)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    soft = structural_feature_map_torch(x.detach(), mode="soft")
    assert torch.all((soft >= 0) & (soft <= 1))
    assert torch.equal((soft > 0.5).float(), hard)


def test_structure_map_rejects_wrong_shapes_and_modes():
    with pytest.raises(ValueError, match="2D"):
        structural_feature_map(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        structural_feature_map_torch(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="mode"):
        structural_feature_map_torch(torch.zeros(1, 1, 8, 8), mode="sharp")


# --------------------------------------------------------------------------- Algorithm 2


def test_mask_without_padding_is_the_background():
    x = disk(32, 10)
    np.testing.assert_array_equal(extract_mask(x, p=0), 1.0 - (x > 0))


def test_mask_padding_hand_computed():
    # H = W = 6, p = 2: the 8-pixel nearest resize (half-pixel centres) takes source rows
    # floor((i + 0.5) * 6 / 8) = [0, 1, 1, 2, 3, 4, 4, 5]; the centre crop drops p // 2 = 1 row
    # at each end -> output row o shows source row [1, 1, 2, 3, 4, 4][o].
    x = np.zeros((6, 6))
    x[1, 4] = 1.0  # off-centre foreground pixel: duplicated outwards in both axes
    expected = np.ones((6, 6), np.float32)
    expected[0:2, 4:6] = 0.0
    np.testing.assert_array_equal(extract_mask(x, p=2), expected)
    x = np.zeros((6, 6))
    x[2:4, 2:4] = 1.0  # central foreground is not duplicated
    expected = 1.0 - x.astype(np.float32)
    np.testing.assert_array_equal(extract_mask(x, p=2), expected)
    x = np.zeros((6, 6))
    x[0, 0] = 1.0  # a border pixel is pushed out of the slice
    np.testing.assert_array_equal(extract_mask(x, p=2), np.ones((6, 6), np.float32))


def test_mask_padding_enlarges_a_centred_disk_by_the_resize_factor():
    n, r, p = 64, 20, 8
    x = disk(n, r)
    brain0, brain = 1.0 - extract_mask(x, 0), 1.0 - extract_mask(x, p)
    assert np.all(brain >= brain0)  # the brain only grows
    ratio = brain.sum() / brain0.sum()
    assert ratio == pytest.approx(((n + p) / n) ** 2, rel=0.05)
    grown = 1.0 - extract_mask(x, 24)
    assert grown.sum() > brain.sum()


def test_mask_padding_keeps_the_brain_outline_inside_the_brain():
    # Why p exists: the Sobel outline straddles the boundary, so with p = 0 part of it lies in
    # the background (f * mask != 0); the default p = 6 brings it inside, as loss_sv /
    # loss_mask expect.
    for n, r in ((64, 24), (64, 30), (96, 40)):
        x = disk(n, r)
        f = structural_feature_map(x)
        assert (f * extract_mask(x, 0)).sum() > 0
        assert (f * extract_mask(x)).sum() == 0


def test_torch_mask_equals_numpy():
    xs = [disk(32, 9), disk(32, 12, (10.0, 20.0)), square(32, 3, 30)]
    batch = torch.tensor(np.stack(xs)[:, None], dtype=torch.float32)
    for p in (0, 1, 2, 5, 7):
        out = extract_mask_torch(batch, p)
        assert out.shape == batch.shape
        for k, x in enumerate(xs):
            np.testing.assert_array_equal(out[k, 0].numpy(), extract_mask(x, p))


def test_mask_rejects_negative_padding():
    with pytest.raises(ValueError, match="p must be >= 0"):
        extract_mask(disk(8, 3), p=-1)


# --------------------------------------------------------------------------- Algorithm 3


def test_filter_accepts_a_closed_outline():
    n, r = 64, 20
    f = ring(n, r)
    mask = 1.0 - disk(n, r + 1)  # the generated mask, Algorithm 2 convention (1 outside)
    result = filter_structure_map(f, mask)
    assert result.accepted and result.mae < 0.05
    assert result.filled[n // 2, n // 2] and not result.filled[0, 0]


def test_filter_rejects_an_open_outline():
    n, r = 64, 20
    f = ring(n, r)
    f[n // 2 - 3 : n // 2 + 3, n // 2 :] = 0.0  # a 6-pixel gap on the right: the outline is open
    result = filter_structure_map(f, 1.0 - disk(n, r + 1))
    assert not result.accepted and result.mae > 0.05
    assert not result.filled[n // 2, n // 2]


def test_filter_rejects_noise_and_closes_one_pixel_gaps():
    n, r = 64, 20
    rng = np.random.default_rng(1)
    noise = (rng.random((n, n)) < 0.05).astype(np.float32)
    assert not filter_structure_map(noise, 1.0 - disk(n, r + 1)).accepted
    f = ring(n, r)
    f[n // 2, n // 2 + 18 :] = 0.0  # a single-pixel break is closed by the 3x3 blur
    assert mask_from_contours(f)[n // 2, n // 2]


def test_filter_threshold_is_configurable():
    n, r = 64, 20
    result = filter_structure_map(ring(n, r), 1.0 - disk(n, r + 1), mae_threshold=1e-6)
    assert not result.accepted  # same MAE, stricter threshold


# --------------------------------------------------------------------------- Sec. 2.8 augmentation


def lesion() -> np.ndarray:
    label = np.zeros((48, 40), np.int64)
    label[14:26, 10:22] = 2
    label[17:23, 13:19] = 1
    label[19:21, 15:17] = 4
    return label


def test_augmentation_keeps_label_values_and_is_seeded():
    label = lesion()
    out = augment_label(label, 3)
    assert out.shape == label.shape and out.dtype == label.dtype
    assert set(np.unique(out)) <= set(np.unique(label))
    np.testing.assert_array_equal(out, augment_label(label, 3))
    np.testing.assert_array_equal(out, augment_label(label, np.random.default_rng(3)))
    assert any(not np.array_equal(out, augment_label(label, s)) for s in range(4, 9))


def test_augmentation_identity_and_flips_are_exact():
    label = lesion()
    identity = LabelAugmentConfig(scale_range=(1, 1), rotation_deg=(0, 0), max_translation=0, flip_prob=0)
    np.testing.assert_array_equal(augment_label(label, 0, identity), label)
    flip_both = LabelAugmentConfig(scale_range=(1, 1), rotation_deg=(0, 0), max_translation=0, flip_prob=1)
    np.testing.assert_array_equal(augment_label(label, 0, flip_both), label[::-1, ::-1])


def test_augmentation_scales_the_lesion():
    label = lesion()
    bigger = LabelAugmentConfig(scale_range=(1.5, 1.5), rotation_deg=(0, 0), max_translation=0, flip_prob=0)
    out = augment_label(label, 0, bigger)
    assert (out > 0).sum() == pytest.approx(1.5**2 * (label > 0).sum(), rel=0.15)


def test_augmentation_config_is_validated():
    with pytest.raises(ValueError, match="scale_range"):
        LabelAugmentConfig(scale_range=(0, 1))


# --------------------------------------------------------------------------- Sec. 2.5 fusion


def test_remove_lesion_structure_erases_inside_the_lesion_only():
    f = np.ones((8, 8), np.float32)
    label = np.zeros((8, 8), np.int64)
    label[2:5, 3:6] = 3
    out = remove_lesion_structure(f, label)
    np.testing.assert_array_equal(out, (label == 0).astype(np.float32))
    t = remove_lesion_structure_torch(torch.ones(1, 1, 8, 8), torch.tensor(label)[None, None])
    np.testing.assert_array_equal(t[0, 0].numpy(), out)


def test_label_inside_the_brain_is_accepted_and_outside_rejected():
    brain = disk(32, 12)
    mask = extract_mask(brain, 0)
    inside = np.zeros((32, 32), np.int64)
    inside[14:18, 14:18] = 1
    check = check_lesion_label(inside, mask)
    assert check.accepted and bool(check) and "inside" in check.reason
    outside = np.zeros((32, 32), np.int64)
    outside[0:3, 0:3] = 2  # the corner is background
    check = check_lesion_label(outside, mask)
    assert not check.accepted and "9 of 9" in check.reason
    straddling = inside.copy()
    straddling[14:18, 26:30] = 1  # partly beyond the disk's edge
    assert not check_lesion_label(straddling, mask)
    assert check_lesion_label(torch.tensor(inside), torch.tensor(mask)).accepted


def test_empty_label_follows_the_papers_rule_unless_a_lesion_is_required():
    mask = extract_mask(disk(16, 5), 0)
    empty = np.zeros((16, 16), np.int64)
    assert check_lesion_label(empty, mask).accepted
    assert not check_lesion_label(empty, mask, require_lesion=True).accepted


def test_fusion_channel_layout():
    f = np.zeros((4, 4), np.float32)
    f[0, :] = 1.0
    label = np.zeros((4, 4), np.int64)
    label[0, 0], label[2, 2] = 2, 1
    fused = fuse_label_structure(f, label, n_classes=3)
    assert fused.shape == (3, 4, 4) and fused.dtype == np.float32
    # channel c = 0.2 * onehot_c + 0.8 * f
    np.testing.assert_allclose(fused[:, 0, 0], [0.8, 0.8, 1.0])  # structure + class 2
    np.testing.assert_allclose(fused[:, 0, 1], [1.0, 0.8, 0.8])  # structure + background
    np.testing.assert_allclose(fused[:, 2, 2], [0.0, 0.2, 0.0])  # class 1, no structure
    np.testing.assert_allclose(fused[:, 3, 3], [0.2, 0.0, 0.0])  # background, no structure
    np.testing.assert_array_equal(one_hot_label(label, 3).sum(axis=0), np.ones((4, 4)))
    t = fuse_label_structure_torch(torch.tensor(f)[None, None], torch.tensor(label)[None, None], 3)
    np.testing.assert_allclose(t[0].numpy(), fused)


def test_fusion_rejects_bad_labels():
    f = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="class ids 0..2"):
        fuse_label_structure(f, np.full((4, 4), 3), n_classes=3)
    with pytest.raises(ValueError, match="integers"):
        fuse_label_structure(f, np.full((4, 4), 0.5), n_classes=3)
