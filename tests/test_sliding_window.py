"""Sliding-window inference: sampler covers every border, identity is exact, 2.5D stacks pinned.

The peer implementation (medSynthesisV1) never reached the last rows/columns of a 240×240 slice;
every identity test here fails if a border pixel is missed or weighted wrongly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference

from medsyn.inference.sliding_window import (
    GridSampler,
    WeightedAggregator,
    blend_weights,
    foreground_box,
    predict_volume_25d,
    predict_volume_patches,
    window_starts,
)


def centre_slice_of_modality_0(context: int):
    """2.5D identity: returns channel 0·k + k//2 (modality 0, centre slice)."""
    return lambda x: x[:, context // 2 : context // 2 + 1].clone()


def random_volume(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def small_convnet(in_channels: int, out_channels: int = 2, dims: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(in_channels, 4, 3, padding=1), torch.nn.Tanh(), conv(4, out_channels, 3, padding=1)
    ).eval()


def monai_25d(model, volume: np.ndarray, context: int, roi, overlap, mode, sw_batch_size) -> np.ndarray:
    """The natural MONAI way: build the (Z, M·k, X, Y) stack tensor, slide 2D windows over it."""
    vol = torch.as_tensor(volume)
    n = vol.shape[-1]
    idx = torch.clamp(torch.arange(n)[:, None] + torch.arange(context)[None] - context // 2, 0, n - 1)
    m, x, y = vol.shape[:3]
    stack = vol[:, :, :, idx]  # (M, X, Y, Z, k)
    stack = stack.permute(3, 0, 4, 1, 2).reshape(n, m * context, x, y)  # (Z, M·k, X, Y)
    with torch.inference_mode():
        out = sliding_window_inference(stack, roi, sw_batch_size, model, overlap=overlap, mode=mode)
    return out.permute(1, 2, 3, 0).numpy()  # (C, X, Y, Z)


# ----------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize(
    ("size", "patch", "stride", "expected"),
    [
        (240, 144, 72, [0, 72, 96]),  # BraTS slice, 50 % overlap: last window ends at 240
        (240, 144, 144, [0, 96]),  # no overlap still reaches the border
        (7, 3, 2, [0, 2, 4]),
        (8, 3, 2, [0, 2, 4, 5]),
        (5, 5, 1, [0]),
        (5, 1, 1, [0, 1, 2, 3, 4]),
    ],
)
def test_window_starts_end_at_the_border(size, patch, stride, expected):
    starts = window_starts(size, patch, stride)
    assert starts.tolist() == expected
    assert starts[0] == 0 and starts[-1] + patch == size


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 30), min_size=1, max_size=3),
    data=st.data(),
)
def test_sampler_covers_every_pixel_and_matches_monai_positions(shape, data):
    ndim = len(shape)
    patch = data.draw(st.lists(st.integers(1, 34), min_size=ndim, max_size=ndim))
    overlap = data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]))
    sampler = GridSampler(shape, patch, overlap=overlap)
    assert sampler.padded_shape == tuple(max(s, p) for s, p in zip(shape, patch))
    for (before, after), s, p in zip(sampler.padding, shape, patch):
        assert before + after == max(p - s, 0) and after - before in (0, 1)
    coverage = np.zeros(sampler.padded_shape, dtype=int)
    locations = np.concatenate(list(sampler.batches(7)))
    assert len(locations) == len(sampler) == math.prod(len(s) for s in sampler.starts)
    for loc in locations:
        coverage[sampler.slices(loc)] += 1
    assert coverage.min() >= 1
    for axis in range(ndim):  # the last window along every axis touches the far border
        assert locations[:, axis].max() + sampler.patch_size[axis] == sampler.padded_shape[axis]
        assert locations[:, axis].min() == 0
    # same windows, same order as MONAI's dense_patch_slices
    monai_stride = [max(1, int(p * (1 - overlap))) if p != s else p for s, p in zip(sampler.padded_shape, patch)]
    monai = dense_patch_slices(sampler.padded_shape, patch, monai_stride, return_slice=False)
    assert [tuple(a for a, _ in w) for w in monai] == [tuple(loc) for loc in locations.tolist()]


def test_sampler_batches_are_bounded_and_in_order():
    sampler = GridSampler((5, 40, 33), (1, 16, 16), overlap=(0, 0.5, 0.5))
    batches = list(sampler.batches(4))
    assert all(len(b) <= 4 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), sampler.locations())
    assert len(batches) == math.ceil(len(sampler) / 4)


def test_sampler_explicit_stride():
    sampler = GridSampler((10, 10), (4, 4), stride=(3, 4))
    assert sampler.starts[0].tolist() == [0, 3, 6] and sampler.starts[1].tolist() == [0, 4, 6]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(overlap=1.0),
        dict(overlap=-0.1),
        dict(overlap=None),
        dict(stride=5),  # larger than the patch: pixels would be skipped
        dict(stride=0),
    ],
)
def test_sampler_rejects_bad_overlap_or_stride(kwargs):
    with pytest.raises(ValueError):
        GridSampler((10, 10), (4, 4), **kwargs)


# ------------------------------------------------------------------------------ weights


@pytest.mark.parametrize("patch", [(144, 144), (7, 5), (1, 9), (16, 12, 8), (1,), (2, 3)])
def test_gaussian_weights_equal_monai_and_are_positive(patch):
    ours = blend_weights(patch, "gaussian")
    np.testing.assert_allclose(ours.numpy(), compute_importance_map(patch, "gaussian").numpy(), rtol=1e-6)
    assert ours.dtype == torch.float32 and float(ours.min()) >= 1e-3 and float(ours.max()) <= 1.0


def test_uniform_weights_and_unknown_mode():
    assert torch.equal(blend_weights((3, 4), "uniform"), torch.ones(3, 4))
    with pytest.raises(ValueError, match="gaussian"):
        blend_weights((3, 4), "cosine")


def test_aggregator_rejects_zero_weights_and_wrong_shapes():
    sampler = GridSampler((6, 6), (4, 4), overlap=0.5)
    with pytest.raises(ValueError, match="> 0"):
        WeightedAggregator(sampler, torch.zeros(4, 4))
    agg = WeightedAggregator(sampler, blend_weights((4, 4)))
    with pytest.raises(ValueError, match="spatial size"):
        agg.add(torch.zeros(1, 1, 3, 3), sampler.locations(0, 1))
    with pytest.raises(RuntimeError):
        agg.result()


# ------------------------------------------------------------- identity: exact at every border


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((2, 23, 17, 9), (8, 8)),  # odd sizes, several windows
        ((1, 13, 11, 6), (13, 5)),  # window = one full axis
        ((2, 5, 7, 3), (16, 9)),  # slice smaller than the window: padded and cropped back
    ],
)
def test_identity_25d_is_exact(shape, patch, slice_axis, overlap, blend):
    volume = random_volume(shape)
    out = predict_volume_25d(
        centre_slice_of_modality_0(3),
        volume,
        slice_axis=slice_axis,
        context=3,
        patch_size=patch,
        overlap=overlap,
        blend=blend,
        batch_size=5,
    )
    assert out.shape == (1, *shape[1:]) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], volume[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("context", [1, 5])
def test_identity_25d_brats_slice_size(context):
    """240×240 slices, 144² windows, 50 % overlap: the case the peer code got wrong."""
    volume = random_volume((1, 240, 240, 2))
    out = predict_volume_25d(centre_slice_of_modality_0(context), volume, context=context, batch_size=16)
    np.testing.assert_allclose(out[0], volume[0], rtol=0, atol=1e-6)
    assert np.abs(out[0, -1, :, :] - volume[0, -1, :, :]).max() <= 1e-6  # last row
    assert np.abs(out[0, :, -1, :] - volume[0, :, -1, :]).max() <= 1e-6  # last column


def test_identity_25d_with_stride_and_torch_input():
    volume = torch.as_tensor(random_volume((1, 19, 21, 4)))
    out = predict_volume_25d(centre_slice_of_modality_0(5), volume, patch_size=6, stride=(4, 5))
    np.testing.assert_allclose(out[0], volume[0].numpy(), rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 26), st.integers(1, 26), st.integers(1, 7)),
    patch=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    overlap=st.floats(0.0, 0.95),
    slice_axis=st.sampled_from([0, 1, 2]),
    context=st.sampled_from([1, 3, 5, 7]),
    blend=st.sampled_from(["gaussian", "uniform"]),
    batch_size=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_identity_25d_property(shape, patch, overlap, slice_axis, context, blend, batch_size, seed):
    volume = random_volume(shape, seed)
    out = predict_volume_25d(
        centre_slice_of_modality_0(context),
        volume,
        slice_axis=slice_axis,
        context=context,
        patch_size=patch,
        overlap=overlap,
        blend=blend,
        batch_size=batch_size,
    )
    np.testing.assert_allclose(out[0], volume[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [
        ((2, 17, 12, 9), (8, 8, 4), 0.5),
        ((1, 9, 10, 11), (4, 16, 3), 0.75),  # one axis smaller than the window
        ((1, 9, 10, 11), 5, 0.0),
        ((3, 21, 19), (8, 8), 0.25),  # 2D image, 2D patches
    ],
)
def test_identity_patches_is_exact(shape, patch, overlap, blend):
    volume = random_volume(shape)
    out = predict_volume_patches(lambda x: x.clone(), volume, patch, overlap=overlap, blend=blend, batch_size=3)
    assert out.shape == shape
    np.testing.assert_allclose(out, volume, rtol=0, atol=1e-6)


# -------------------------------------------------------------------- 2.5D stack convention


@pytest.mark.parametrize("context", [3, 5])
@pytest.mark.parametrize("slice_axis", [0, 2])
def test_25d_channel_order_and_edge_replication(context, slice_axis):
    """Channel m·k + j holds modality m at slice clamp(s + j - k//2): pinned on a hand-made volume."""
    n_slices = 4  # context 5 on 4 slices: the first two and last two stacks need replication
    value = np.empty((2, n_slices), dtype=np.float32)  # value[m, s] = 100·m + s, constant in-plane
    for m in range(2):
        value[m] = 100 * m + np.arange(n_slices)
    in_plane = (3, 5)
    volume = np.broadcast_to(value[:, :, None, None], (2, n_slices, *in_plane))  # (M, S, A, B)
    volume = np.moveaxis(volume, 1, 1 + slice_axis).copy()  # slice axis where asked
    for m in range(2):
        for j in range(context):
            channel = m * context + j
            out = predict_volume_25d(
                lambda x, c=channel: x[:, c : c + 1].clone(),
                volume,
                slice_axis=slice_axis,
                context=context,
                patch_size=(2, 4),
                overlap=0.5,
            )
            out = np.moveaxis(out[0], slice_axis, 0)  # (S, A, B)
            for s in range(n_slices):
                expected = 100 * m + min(max(s + j - context // 2, 0), n_slices - 1)
                assert np.all(out[s] == expected), (m, j, s)


def test_25d_single_slice_replicates_it_in_every_channel():
    volume = random_volume((2, 6, 7, 1))
    seen = []

    def model(x):
        seen.append(x.clone())
        return x[:, :1]

    predict_volume_25d(model, volume, context=5, patch_size=(6, 7))
    batch = torch.cat(seen)
    for m in range(2):
        for j in range(5):
            torch.testing.assert_close(batch[0, m * 5 + j], torch.as_tensor(volume[m, :, :, 0]))


def test_pad_value_per_modality_default_minimum_and_given():
    volume = random_volume((2, 3, 4, 2))  # axial slices 3×4, window 8×8: 52 padded pixels per window
    seen = []

    def model(x):
        seen.append(x.clone())
        return x[:, :1]

    predict_volume_25d(model, volume, context=1, patch_size=(8, 8))
    first = seen[0][0]  # (M, 8, 8)
    for m in range(2):
        assert int((first[m] == float(volume[m].min())).sum()) >= 52
    torch.testing.assert_close(first[:, 2:5, 2:6], torch.as_tensor(volume[:, :, :, 0]))  # symmetric pad
    seen.clear()
    predict_volume_25d(model, volume, context=1, patch_size=(8, 8), pad_value=(-7.0, 9.0))
    first = seen[0][0]
    assert int((first[0] == -7.0).sum()) == 52 and int((first[1] == 9.0).sum()) == 52


# ------------------------------------------------------------- batching, agreement, options


def test_batch_size_does_not_change_the_result():
    volume = random_volume((2, 20, 17, 6))
    model = small_convnet(2 * 3)
    results = [
        predict_volume_25d(model, volume, context=3, patch_size=(8, 8), overlap=0.5, batch_size=b)
        for b in (1, 4, 7, 1000)
    ]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-6)


def test_model_called_batch_by_batch_with_progress():
    volume = random_volume((1, 20, 20, 5))
    calls, reports = [], []

    def model(x):
        calls.append(x.shape[0])
        return x[:, :1]

    predict_volume_25d(model, volume, context=1, patch_size=(8, 8), batch_size=6, progress=lambda d, t: reports.append((d, t)))
    total = 5 * 4 * 4  # 5 slices × (0, 4, 8, 12) × (0, 4, 8, 12)
    assert sum(calls) == total and max(calls) <= 6 and len(calls) == math.ceil(total / 6)
    assert reports[-1] == (total, total) and [d for d, _ in reports] == sorted(d for d, _ in reports)


@pytest.mark.parametrize(("blend", "monai_mode"), [("gaussian", "gaussian"), ("uniform", "constant")])
@pytest.mark.parametrize("shape", [(2, 30, 27, 5), (1, 9, 6, 3)])  # second: slices smaller than the window
def test_agrees_with_monai_on_a_conv_net(blend, monai_mode, shape):
    volume = random_volume(shape)
    context = 3
    model = small_convnet(shape[0] * context)
    ours = predict_volume_25d(
        model, volume, context=context, patch_size=(12, 12), overlap=0.5, blend=blend, batch_size=4, pad_value=0.0
    )
    ref = monai_25d(model, volume, context, (12, 12), 0.5, monai_mode, 4)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_patches_3d_agree_with_monai():
    volume = random_volume((2, 15, 18, 11))
    model = small_convnet(2, dims=3)
    ours = predict_volume_patches(model, volume, (8, 8, 8), overlap=0.25, batch_size=3, pad_value=0.0)
    with torch.inference_mode():
        ref = sliding_window_inference(torch.as_tensor(volume)[None], (8, 8, 8), 3, model, overlap=0.25, mode="gaussian")
    np.testing.assert_allclose(ours, ref[0].numpy(), rtol=1e-4, atol=1e-5)


def test_module_runs_in_eval_mode_and_mode_is_restored():
    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)
            self.modes = []

        def forward(self, x):
            self.modes.append(self.training)
            assert not torch.is_grad_enabled()
            return x

    model = Probe().train()
    predict_volume_25d(model, random_volume((1, 8, 8, 2)), context=1, patch_size=(8, 8))
    assert model.modes and not any(model.modes) and model.training


def test_autocast_bfloat16_returns_float32_close_to_float32():
    volume = random_volume((1, 16, 16, 3))
    model = small_convnet(3)
    ref = predict_volume_25d(model, volume, context=3, patch_size=(8, 8))
    out = predict_volume_25d(model, volume, context=3, patch_size=(8, 8), autocast_dtype=torch.bfloat16)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=5e-2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(context=4), "odd"),
        (dict(context=0), "odd"),
        (dict(slice_axis=3), "slice_axis"),
        (dict(overlap=1.0), "overlap"),
        (dict(stride=(9, 2)), "stride"),
        (dict(blend="max"), "blend"),
        (dict(batch_size=0), "batch_size"),
        (dict(pad_value=(1.0, 2.0, 3.0), patch_size=(20, 20)), "pad_value"),
        (dict(pad_value=(1.0, 2.0, 3.0)), "pad_value"),  # reported even when no padding is needed
    ],
)
def test_user_errors_name_the_argument(kwargs, match):
    args = dict(context=3, patch_size=(8, 8)) | kwargs
    with pytest.raises(ValueError, match=match):
        predict_volume_25d(centre_slice_of_modality_0(3), random_volume((2, 10, 10, 4)), **args)


def test_wrong_volume_rank_and_shrinking_model_are_reported():
    with pytest.raises(ValueError, match=r"\(M, X, Y, Z\)"):
        predict_volume_25d(lambda x: x, random_volume((10, 10, 4)))
    with pytest.raises(ValueError, match="spatial size"):
        predict_volume_25d(lambda x: x[:, :1, 1:-1, 1:-1], random_volume((1, 10, 10, 3)), context=1, patch_size=(8, 8))


# ------------------------------------------------------------- foreground-aware inference


def blob_mask(shape, seed=0) -> np.ndarray:
    """A brain-like blob (ellipsoid) plus one stray voxel on a slice of its own, (X, Y, Z) bool."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    mask = (x / 0.45) ** 2 + ((y - 0.1) / 0.6) ** 2 + (z / 0.6) ** 2 <= 1
    mask[2, 3, shape[2] - 1] = True  # a slice with a single foreground voxel near a corner
    return mask


def unet(in_channels: int, seed: int = 0) -> torch.nn.Module:
    from medsyn.models.generators.unet25d import UNet25D

    torch.manual_seed(seed)
    return UNet25D(in_channels, 1, base=4, depth=2).eval()


def test_skipping_windows_and_slices_equals_the_full_computation_inside_the_mask():
    """Same tiling, windows/slices without foreground skipped: identical inside, background outside."""
    volume = random_volume((2, 40, 36, 12))
    mask = blob_mask(volume.shape[1:])
    model = unet(2 * 3)
    calls = []
    counted = lambda x: (calls.append(len(x)), model(x))[1]  # noqa: E731
    full = predict_volume_25d(model, volume, context=3, patch_size=(16, 16), batch_size=5)
    ours = predict_volume_25d(counted, volume, context=3, patch_size=(16, 16), batch_size=5, mask=mask,
                              crop_to_mask=False, background=-3.0)
    assert np.abs(ours[0][mask] - full[0][mask]).max() <= 1e-5
    assert (ours[0][~mask] == -3.0).all()
    n_full = 12 * len(window_starts(40, 16, 8)) * len(window_starts(36, 16, 8))
    assert 0 < sum(calls) < n_full  # windows were skipped


def test_crop_to_the_mask_box_equals_the_full_computation_on_that_box():
    volume = random_volume((1, 48, 40, 10))
    mask = blob_mask(volume.shape[1:])
    mask[2, 3, -1] = False
    model = unet(3)
    ours = predict_volume_25d(model, volume, context=3, patch_size=(16, 16), batch_size=7, mask=mask)
    box = foreground_box(mask.any(axis=2), (16, 16))
    on_box = predict_volume_25d(model, volume[:, box[0], box[1]], context=3, patch_size=(16, 16), batch_size=7)
    inside = mask[box[0], box[1]]
    assert np.abs(ours[0, box[0], box[1]][inside] - on_box[0][inside]).max() <= 1e-5
    assert (ours[0][~mask] == 0).all()


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("slice_axis", [0, 2])
def test_identity_with_a_mask_is_exact_inside_and_background_outside(crop, slice_axis):
    """Position-independent model: any tiling gives the input back, so the crop must too."""
    volume = random_volume((1, 30, 26, 14))
    mask = blob_mask(volume.shape[1:])
    out = predict_volume_25d(centre_slice_of_modality_0(3), volume, slice_axis=slice_axis, context=3,
                             patch_size=(8, 8), overlap=0.5, mask=mask, crop_to_mask=crop, background=7.0)
    np.testing.assert_allclose(out[0][mask], volume[0][mask], rtol=0, atol=1e-6)
    assert (out[0][~mask] == 7.0).all()


def test_foreground_box_grows_to_one_window_and_stays_inside():
    mask = np.zeros((20, 30), bool)
    mask[1:3, 25:28] = True
    box = foreground_box(mask, (8, 8))
    assert box == (slice(0, 8), slice(22, 30))  # widened to 8, shifted inside the image
    assert foreground_box(np.zeros((5, 6), bool), (8, 8)) == (slice(0, 5), slice(0, 6))
    assert foreground_box(mask, (40, 4)) == (slice(0, 20), slice(25, 29))


def test_empty_mask_gives_background_and_sampler_counts_kept_windows():
    volume = random_volume((1, 16, 16, 4))
    out = predict_volume_25d(small_convnet(3, 1), volume, context=3, patch_size=(8, 8),
                             mask=np.zeros((16, 16, 4), bool), background=2.0)
    assert out.shape == (1, 16, 16, 4) and (out == 2.0).all()
    sampler = GridSampler((4, 16, 16), (1, 8, 8))
    mask = np.zeros((4, 16, 16), bool)
    mask[1, 0, 0] = mask[3, 15, 15] = True
    sampler.keep_windows_touching(mask)
    assert sampler.grid_size == 36 and len(sampler) == 2
    assert sampler.locations().tolist() == [[1, 0, 0], [3, 8, 8]]


def test_mask_of_the_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="mask"):
        predict_volume_25d(centre_slice_of_modality_0(3), random_volume((1, 10, 10, 4)), context=3,
                           patch_size=(8, 8), mask=np.ones((10, 10, 5), bool))
