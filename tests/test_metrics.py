"""Metrics: hand-computed values, agreement with scikit-image / torchmetrics, masks, regions,
summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.metrics import mean_squared_error as sk_mse
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure as tm_ms_ssim,
)
from torchmetrics.functional.image import universal_image_quality_index as tm_uqi
from torchmetrics.functional.image import visual_information_fidelity as tm_vif

from medsyn.errors import ConfigError, GeometryError
from medsyn.metrics import (
    METRICS,
    MS_SSIM_BETAS,
    data_range_of,
    evaluate_volume,
    lpips,
    mae,
    ms_ssim,
    ms_ssim_min_side,
    mse,
    psnr,
    region_masks,
    ssim,
    ssim3d,
    summarize,
    uqi,
    vif,
)
from medsyn.metrics.image import _vif_terms

SK_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
ALL = ["mae", "mse", "psnr", "ssim", "ssim3d", "ms_ssim", "uqi", "uqi_wb", "vif"]


def phantom(shape, seed=0):
    """Smooth positive 'anatomy' in MR-like units (0 … ~1000) plus fine texture."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), sigma=3)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return 800.0 * smooth + 50.0 * rng.random(shape) + 100.0


def perturb(ref, kind, seed=1):
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return ref + 40.0 * rng.standard_normal(ref.shape)
    if kind == "shift":
        return np.roll(ref, 2, axis=0)
    if kind == "scaling":
        return 0.8 * ref + 30.0
    raise AssertionError(kind)


def to_batch(a):
    """(X, Y, Z) numpy → (Z, 1, X, Y) float64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, 2, 0)[:, None]))


# ------------------------------------------------------------------ registry and signature


def test_registry_names_and_uniform_signature():
    assert METRICS.names() == sorted(ALL)
    ref = phantom((176, 180, 11))
    pred = perturb(ref, "noise")
    mask = np.zeros(ref.shape, bool)
    mask[40:120, 50:130, 4:6] = True
    for name in ALL:
        fn = METRICS.get(name)
        for m in (None, mask):
            value = fn(pred, ref, data_range=1000.0, mask=m)
            assert isinstance(value, float) and math.isfinite(value), name


def test_unknown_metric_names_the_close_match():
    with pytest.raises(ConfigError, match="did you mean 'ssim3d'"):
        METRICS.get("ssim_3d")


def test_lpips_needs_user_weights_and_is_not_registered():
    a = np.zeros((8, 8))
    with pytest.raises(ConfigError, match="weights"):
        lpips(a, a, data_range=1.0)
    assert "lpips" not in METRICS


# ------------------------------------------------------------------ identical images


def test_identical_images():
    ref = phantom((44, 44, 12))
    assert mae(ref, ref) == 0.0
    assert mse(ref, ref) == 0.0
    assert psnr(ref, ref, data_range=1000.0) == math.inf
    assert ssim(ref, ref, data_range=1000.0) == pytest.approx(1.0, abs=1e-12)
    assert ssim3d(ref, ref, data_range=1000.0) == pytest.approx(1.0, abs=1e-12)
    assert uqi(ref, ref) == pytest.approx(1.0, abs=1e-9)
    assert vif(ref, ref, data_range=1000.0) == pytest.approx(1.0, abs=1e-6)
    big = phantom((176, 180))
    assert ms_ssim(big, big, data_range=1000.0) == pytest.approx(1.0, abs=1e-5)


def test_worse_prediction_scores_worse():
    ref = phantom((176, 176, 2))
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(ref.shape)
    small, large = ref + 10 * noise, ref + 100 * noise
    for name in ALL:
        if name == "ssim3d":
            continue  # depth 2 < window
        fn = METRICS.get(name)
        a = fn(small, ref, data_range=1000.0)
        b = fn(large, ref, data_range=1000.0)
        assert (a < b) if name in ("mae", "mse") else (a > b), name


# ------------------------------------------------------------------ agreement with scikit-image


@pytest.mark.parametrize("kind", ["noise", "shift", "scaling"])
def test_agrees_with_scikit_image(kind):
    ref = phantom((48, 40, 14))
    pred = perturb(ref, kind)
    dr = float(ref.max() - ref.min())
    assert mse(pred, ref) == pytest.approx(sk_mse(ref, pred), abs=1e-4)
    assert psnr(pred, ref, data_range=dr) == pytest.approx(sk_psnr(ref, pred, data_range=dr), abs=1e-4)
    per_slice = [sk_ssim(ref[..., k], pred[..., k], data_range=dr, **SK_SSIM) for k in range(ref.shape[2])]
    assert ssim(pred, ref, data_range=dr) == pytest.approx(np.mean(per_slice), abs=1e-4)
    assert ssim3d(pred, ref, data_range=dr) == pytest.approx(sk_ssim(ref, pred, data_range=dr, **SK_SSIM), abs=1e-4)
    # and a 2D image is one slice
    assert ssim(pred[..., 0], ref[..., 0], data_range=dr) == pytest.approx(per_slice[0], abs=1e-4)


# ------------------------------------------------------------------ agreement with torchmetrics


@pytest.mark.parametrize("kind", ["noise", "shift", "scaling"])
def test_uqi_agrees_with_torchmetrics(kind):
    ref = phantom((40, 36, 5))
    pred = perturb(ref, kind)
    expected = float(tm_uqi(to_batch(pred), to_batch(ref)))
    assert uqi(pred, ref) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kind", ["noise", "shift", "scaling"])
def test_vif_agrees_with_torchmetrics(kind):
    ref = phantom((50, 45, 3)) / 1000.0 * 255.0  # torchmetrics' σn² = 2 assumes [0, 255]
    pred = perturb(ref, kind) / 4.0
    # per-slice VIF = num / den
    num, den = _vif_terms(pred, ref)
    expected = tm_vif(to_batch(pred), to_batch(ref), reduction="none").numpy()
    np.testing.assert_allclose(num / den, expected, atol=1e-4)
    # a 2D image with data_range 255 is torchmetrics exactly; a volume pools the slices
    assert vif(pred[..., 1], ref[..., 1], data_range=255.0) == pytest.approx(expected[1], abs=1e-4)
    assert vif(pred, ref, data_range=255.0) == pytest.approx(num.sum() / den.sum(), abs=1e-12)


def test_vif_maps_data_range_to_the_8_bit_scale():
    ref = phantom((50, 45)) / 1000.0  # ~[0.1, 0.95] with data_range 1
    pred = ref + 0.04 * np.random.default_rng(5).standard_normal(ref.shape)
    expected = float(tm_vif(torch.from_numpy(pred * 255.0)[None, None], torch.from_numpy(ref * 255.0)[None, None]))
    assert vif(pred, ref, data_range=1.0) == pytest.approx(expected, abs=1e-4)
    # the same images in other units with the matching range: same VIF; a wrong range: not
    assert vif(pred * 1000, ref * 1000, data_range=1000.0) == pytest.approx(expected, abs=1e-9)
    assert abs(vif(pred, ref, data_range=4.0) - expected) > 1e-2


@pytest.mark.parametrize("kind", ["noise", "shift", "scaling"])
def test_ms_ssim_agrees_with_torchmetrics(kind):
    ref = phantom((180, 176, 1))
    pred = perturb(ref, kind)
    dr = float(ref.max() - ref.min())
    expected = float(tm_ms_ssim(to_batch(pred), to_batch(ref), data_range=dr))  # float64, defaults
    assert ms_ssim(pred, ref, data_range=dr) == pytest.approx(expected, abs=1e-4)


def test_ms_ssim_fewer_scales_for_small_images():
    ref = phantom((64, 60, 2))
    pred = perturb(ref, "noise")
    with pytest.raises(ConfigError, match="176"):
        ms_ssim(pred, ref, data_range=1000.0)
    betas = MS_SSIM_BETAS[:3]
    assert ms_ssim_min_side(3) == 44
    expected = float(tm_ms_ssim(to_batch(pred), to_batch(ref), data_range=1000.0, betas=betas))
    assert ms_ssim(pred, ref, data_range=1000.0, betas=betas) == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------ masks


def test_masked_errors_equal_the_metric_on_the_extracted_voxels():
    ref = phantom((20, 24, 6))
    pred = perturb(ref, "noise")
    box = (slice(3, 11), slice(5, 20), slice(1, 4))
    mask = np.zeros(ref.shape, bool)
    mask[box] = True
    for fn in (mae, mse):
        assert fn(pred, ref, mask=mask) == pytest.approx(fn(pred[box], ref[box]), rel=1e-12)
    assert psnr(pred, ref, data_range=900.0, mask=mask) == pytest.approx(
        psnr(pred[box], ref[box], data_range=900.0), rel=1e-12
    )


def test_masked_errors_hand_made():
    ref = np.zeros((2, 2))
    pred = np.array([[1.0, -3.0], [10.0, 100.0]])
    mask = np.array([[True, True], [False, False]])
    assert mae(pred, ref, mask=mask) == 2.0
    assert mse(pred, ref, mask=mask) == 5.0
    assert psnr(pred, ref, data_range=10.0, mask=mask) == pytest.approx(10 * math.log10(100 / 5))
    assert psnr(pred, ref, data_range=10.0, mask=np.array([[False, False], [False, True]])) == pytest.approx(
        10 * math.log10(100 / 10000)
    )
    # a prediction exact on the masked voxels only
    assert psnr(ref, pred * ~mask, data_range=10.0, mask=mask) == math.inf


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_masked_mae_mse_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    ref, pred = rng.normal(size=(5, 6, 3)), rng.normal(size=(5, 6, 3))
    mask = rng.random(ref.shape) < 0.4
    if not mask.any():
        mask[0, 0, 0] = True
    assert mae(pred, ref, mask=mask) == pytest.approx(np.abs(pred[mask] - ref[mask]).mean(), rel=1e-12)
    assert mse(pred, ref, mask=mask) == pytest.approx(((pred[mask] - ref[mask]) ** 2).mean(), rel=1e-12)


def test_masked_ssim_averages_the_map_over_interior_masked_voxels():
    ref = phantom((40, 36, 3))
    pred = perturb(ref, "noise")
    dr = 900.0
    full = np.ones(ref.shape, bool)
    assert ssim(pred, ref, data_range=dr, mask=full) == pytest.approx(ssim(pred, ref, data_range=dr), abs=1e-12)
    mask = np.zeros(ref.shape, bool)
    mask[2:20, 10:30, 0] = True  # crosses the 5-voxel border band
    mask[15:25, 15:25, 2] = True
    maps = np.stack(
        [sk_ssim(ref[..., k], pred[..., k], data_range=dr, full=True, **SK_SSIM)[1] for k in range(3)], axis=2
    )
    interior = np.zeros(ref.shape, bool)
    interior[5:-5, 5:-5, :] = True
    expected = maps[mask & interior].mean()
    assert ssim(pred, ref, data_range=dr, mask=mask) == pytest.approx(expected, abs=1e-12)
    # a mask lying only in the border band has no evaluable voxel
    border = np.zeros(ref.shape, bool)
    border[0:3, :, :] = True
    assert math.isnan(ssim(pred, ref, data_range=dr, mask=border))


def test_masked_ssim3d_and_uqi_average_their_maps():
    ref = phantom((30, 32, 24))
    pred = perturb(ref, "noise")
    mask = np.zeros(ref.shape, bool)
    mask[8:22, 6:20, 7:18] = True
    _, smap = sk_ssim(ref, pred, data_range=900.0, full=True, **SK_SSIM)
    assert ssim3d(pred, ref, data_range=900.0, mask=mask) == pytest.approx(smap[mask].mean(), abs=1e-12)
    assert ssim3d(pred, ref, data_range=900.0, mask=np.ones(ref.shape, bool)) == pytest.approx(
        ssim3d(pred, ref, data_range=900.0), abs=1e-12
    )
    qmap = tm_uqi(to_batch(pred), to_batch(ref), reduction="none").numpy()[:, 0]  # (Z, X-10, Y-10)
    qmap = np.moveaxis(qmap, 0, 2)
    assert uqi(pred, ref, mask=mask) == pytest.approx(qmap[mask[5:-5, 5:-5, :]].mean(), abs=1e-6)


def test_masked_ms_ssim_uses_the_bounding_box_and_weights_slices():
    ref = phantom((200, 190, 3))
    pred = perturb(ref, "noise")
    mask = np.zeros(ref.shape, bool)
    mask[10:186, 5:181, 0] = True  # a 176 × 176 box on slice 0 …
    mask[50:60, 50:60, 2] = True  # … and 100 voxels inside it on slice 2; slice 1 has none
    box = (slice(10, 186), slice(5, 181))
    per_slice = [ms_ssim(pred[box][..., k], ref[box][..., k], data_range=900.0) for k in (0, 2)]
    expected = np.average(per_slice, weights=[176 * 176, 100])
    assert ms_ssim(pred, ref, data_range=900.0, mask=mask) == pytest.approx(expected, abs=1e-4)


def test_masked_vif_uses_the_bounding_box_grown_to_41():
    ref = phantom((80, 90, 2))
    pred = perturb(ref, "noise")
    mask = np.zeros(ref.shape, bool)
    mask[10:60, 20:70, :] = True  # large enough: the box itself
    assert vif(pred, ref, data_range=900.0, mask=mask) == pytest.approx(
        vif(pred[10:60, 20:70], ref[10:60, 20:70], data_range=900.0), abs=1e-12
    )
    small = np.zeros(ref.shape, bool)
    small[30:40, 0:4, 1] = True  # rows grown about their centre to 41; columns clamped at the edge
    expected = vif(pred[15:56, 0:41, 1], ref[15:56, 0:41, 1], data_range=900.0)
    assert vif(pred, ref, data_range=900.0, mask=small) == pytest.approx(expected, abs=1e-12)


def test_empty_mask_gives_nan_for_every_metric():
    ref = phantom((176, 176, 11))
    pred = perturb(ref, "noise")
    empty = np.zeros(ref.shape, bool)
    for name in ALL:
        assert math.isnan(METRICS.get(name)(pred, ref, data_range=900.0, mask=empty)), name


# ------------------------------------------------------------------ data range and input errors


def test_psnr_shifts_by_20_log10_of_the_range_ratio():
    ref = phantom((16, 16, 2))
    pred = perturb(ref, "noise")
    assert psnr(pred, ref, data_range=2000.0) - psnr(pred, ref, data_range=500.0) == pytest.approx(
        20 * math.log10(4.0), abs=1e-9
    )
    assert ssim(pred, ref, data_range=2000.0) > ssim(pred, ref, data_range=500.0) + 1e-3


@pytest.mark.parametrize("name", ["psnr", "ssim", "ssim3d", "ms_ssim", "vif"])
@pytest.mark.parametrize("bad", [None, 0.0, -1.0, float("nan"), float("inf")])
def test_data_range_is_required_and_positive(name, bad):
    a = np.ones((8, 8, 2))
    with pytest.raises(ValueError, match="data_range"):
        METRICS.get(name)(a, a, data_range=bad)


def test_input_errors():
    a = phantom((20, 20, 3))
    with pytest.raises(GeometryError, match="shape"):
        mae(a, a[:, :, :2])
    with pytest.raises(GeometryError, match="mask"):
        mae(a, a, mask=np.ones((20, 20), bool))
    with pytest.raises(ValueError, match="boolean"):
        mae(a, a, mask=np.ones(a.shape, np.uint8))
    b = a.copy()
    b[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        psnr(b, a, data_range=1.0)
    with pytest.raises(ValueError, match="3D"):
        ssim3d(a[..., 0], a[..., 0], data_range=1.0)
    with pytest.raises(ConfigError, match="41"):
        vif(a, a, data_range=1.0)
    with pytest.raises(ConfigError, match="11"):
        ssim3d(a, a, data_range=1.0)  # depth 3


def test_data_range_of():
    ref = np.array([[[-5.0, 1.0], [2.0, 40.0]]])
    assert data_range_of(ref) == 45.0
    mask = np.array([[[False, True], [True, False]]])
    assert data_range_of(ref, mask) == 1.0
    with pytest.raises(ValueError, match="empty"):
        data_range_of(ref, np.zeros_like(mask))
    with pytest.raises(ValueError, match="constant"):
        data_range_of(np.ones((3, 3)))


# ------------------------------------------------------------------ regions


def hand_made_subject():
    fg = np.zeros((4, 4, 1), bool)
    fg[1:4, 1:4, 0] = True  # 9 voxels
    label = np.zeros((4, 4, 1), np.int16)
    label[1, 1, 0] = 1
    label[2, 2, 0] = 3
    label[2, 3, 0] = 3
    label[0, 0, 0] = 1  # outside the foreground: still tumour
    return fg, label


def test_region_masks_hand_made():
    fg, label = hand_made_subject()
    regions = region_masks(fg, label)
    assert list(regions) == ["foreground", "tumour", "healthy", "label_1", "label_3"]
    assert regions["foreground"] is fg or np.array_equal(regions["foreground"], fg)
    assert regions["tumour"].sum() == 4 and regions["tumour"][0, 0, 0]
    assert regions["healthy"].sum() == 9 - 3 and not regions["healthy"][1, 1, 0]
    assert regions["label_1"].sum() == 2 and regions["label_3"].sum() == 2
    assert all(m.dtype == bool and m.shape == fg.shape for m in regions.values())


def test_region_masks_without_label_or_tumour():
    fg, label = hand_made_subject()
    assert list(region_masks(fg, None)) == ["foreground"]
    regions = region_masks(fg, np.zeros_like(label))
    assert list(regions) == ["foreground", "tumour", "healthy"]
    assert not regions["tumour"].any() and np.array_equal(regions["healthy"], fg)
    # a float label map of whole numbers is accepted
    assert list(region_masks(fg, label.astype(np.float32))) == list(region_masks(fg, label))


def test_region_masks_errors():
    fg, label = hand_made_subject()
    with pytest.raises(ValueError, match="boolean"):
        region_masks(fg.astype(np.uint8), label)
    with pytest.raises(GeometryError):
        region_masks(fg, label[:3])
    with pytest.raises(ValueError, match="non-integer"):
        region_masks(fg, label + 0.5)
    with pytest.raises(ValueError, match="negative"):
        region_masks(fg, label - 1)


def test_evaluate_volume_equals_direct_calls():
    ref = phantom((60, 56, 14))
    pred = perturb(ref, "noise")
    fg = np.zeros(ref.shape, bool)
    fg[8:50, 6:48, 1:13] = True
    label = np.zeros(ref.shape, np.int64)
    label[20:30, 25:40, 4:8] = 2
    regions = region_masks(fg, label)
    regions["all"] = None
    metrics = [m for m in ALL if m != "ms_ssim"]  # needs 176 px; its per-region loop is vif's
    out = evaluate_volume(pred, ref, data_range=900.0, regions=regions, metrics=metrics)
    assert list(out) == ["foreground", "tumour", "healthy", "label_2", "all"]
    for region, mask in regions.items():
        assert list(out[region]) == metrics
        for name in metrics:
            direct = METRICS.get(name)(pred, ref, data_range=900.0, mask=mask)
            assert out[region][name] == pytest.approx(direct, abs=1e-12), (region, name)
    assert out["tumour"]["mae"] != out["healthy"]["mae"]


def test_evaluate_volume_empty_tumour_and_unknown_metric():
    ref = phantom((24, 24, 2))
    fg = np.ones(ref.shape, bool)
    regions = region_masks(fg, np.zeros(ref.shape, np.uint8))
    out = evaluate_volume(ref + 1, ref, data_range=900.0, regions=regions, metrics=["mae", "ssim"])
    assert out["foreground"]["mae"] == pytest.approx(1.0)
    assert math.isnan(out["tumour"]["mae"]) and math.isnan(out["tumour"]["ssim"])
    with pytest.raises(ConfigError, match="did you mean 'psnr'"):
        evaluate_volume(ref, ref, data_range=1.0, regions=regions, metrics=["pnsr"])


# ------------------------------------------------------------------ summaries


def test_summarize_skips_nan_and_counts_inf():
    per_subject = {
        "s1": {"foreground": {"psnr": 30.0, "mae": 1.0}, "tumour": {"psnr": float("nan")}},
        "s2": {"foreground": {"psnr": 34.0, "mae": 3.0}, "tumour": {"psnr": 20.0}, "label_3": {"psnr": 5.0}},
        "s3": {"foreground": {"psnr": float("inf"), "mae": 2.0}, "tumour": {"psnr": float("nan")}},
    }
    s = summarize(per_subject)
    assert list(s) == ["foreground", "tumour", "label_3"]
    fp = s["foreground"]["psnr"]
    assert (fp["mean"], fp["median"], fp["n"], fp["n_inf"]) == (32.0, 32.0, 2, 1)
    assert fp["std"] == pytest.approx(math.sqrt(8.0))  # sample std of 30, 34
    fm = s["foreground"]["mae"]
    assert (fm["mean"], fm["median"], fm["n"], fm["n_inf"]) == (2.0, 2.0, 3, 0)
    assert fm["std"] == pytest.approx(1.0)
    t = s["tumour"]["psnr"]
    assert (t["mean"], t["median"], t["n"]) == (20.0, 20.0, 1) and math.isnan(t["std"])
    assert s["label_3"]["psnr"]["n"] == 1


def test_summarize_all_nan():
    s = summarize({"a": {"tumour": {"ssim": float("nan")}}, "b": {"tumour": {"ssim": float("nan")}}})
    t = s["tumour"]["ssim"]
    assert t["n"] == 0 and t["n_inf"] == 0
    assert math.isnan(t["mean"]) and math.isnan(t["median"]) and math.isnan(t["std"])
