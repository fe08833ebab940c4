"""Wang & Bovik's UQI (8×8 sliding uniform window, the index MedGAN cites) against a window-by-window
loop written from the paper's definition, and its special cases as in the authors' ``img_qi.m``."""

from __future__ import annotations

import numpy as np
import pytest

from medsyn.metrics import METRICS, uqi, uqi_wb


def reference_loop(p: np.ndarray, r: np.ndarray, n: int = 8) -> np.ndarray:
    """Q of every n×n window of a 2D pair, from means/variances/covariance (Wang & Bovik 2002, Eq. 1)."""
    out = np.empty((p.shape[0] - n + 1, p.shape[1] - n + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            a, b = p[i:i + n, j:j + n].ravel(), r[i:i + n, j:j + n].ravel()
            ma, mb = a.mean(), b.mean()
            va, vb = a.var(), b.var()
            cov = ((a - ma) * (b - mb)).mean()
            if (va + vb) * (ma**2 + mb**2) != 0:
                out[i, j] = 4 * cov * ma * mb / ((va + vb) * (ma**2 + mb**2))
            elif ma**2 + mb**2 != 0:
                out[i, j] = 2 * ma * mb / (ma**2 + mb**2)
            else:
                out[i, j] = 1.0
    return out


def test_equals_the_window_by_window_definition():
    rng = np.random.default_rng(0)
    r = rng.uniform(50, 300, (20, 23))
    p = r + rng.normal(0, 30, r.shape)
    q = reference_loop(p, r)
    assert uqi_wb(p, r) == pytest.approx(q.mean(), rel=1e-9)
    # a 3D volume is the mean over all slices' windows
    vol_p, vol_r = np.stack([p, p * 0.5 + 10], -1), np.stack([r, r], -1)
    both = np.concatenate([q.ravel(), reference_loop(vol_p[..., 1], vol_r[..., 1]).ravel()])
    assert uqi_wb(vol_p, vol_r) == pytest.approx(both.mean(), rel=1e-9)
    assert "uqi_wb" in METRICS


def test_special_cases_of_flat_windows_and_identity():
    r = np.random.default_rng(1).uniform(0, 1, (16, 16))
    assert uqi_wb(r, r) == pytest.approx(1.0)
    flat = np.full((10, 10), 3.0)
    assert uqi_wb(flat, flat) == 1.0  # img_qi.m: identical flat windows score 1 (torchmetrics' uqi: 0)
    assert uqi(np.full((12, 12), 3.0), np.full((12, 12), 3.0)) == pytest.approx(0.0, abs=1e-12)
    assert uqi_wb(np.full((10, 10), 1.0), np.full((10, 10), 3.0)) == pytest.approx(2 * 3 / (1 + 9))
    assert uqi_wb(np.zeros((9, 9)), np.zeros((9, 9))) == 1.0


def test_mask_selects_windows_by_their_centre_voxel():
    rng = np.random.default_rng(2)
    r = rng.uniform(0, 1, (20, 20))
    p = r + rng.normal(0, 0.2, r.shape)
    q = reference_loop(p, r)  # window (i, j) ↔ centre voxel (i + 3, j + 3)
    mask = np.zeros(r.shape, bool)
    mask[5:12, 8:15] = True
    sel = mask[3:3 + q.shape[0], 3:3 + q.shape[1]]
    assert uqi_wb(p, r, mask=mask) == pytest.approx(q[sel].mean(), rel=1e-9)
    assert np.isnan(uqi_wb(p, r, mask=np.zeros(r.shape, bool)))
    with pytest.raises(Exception, match="8×8"):
        uqi_wb(np.ones((7, 20)), np.ones((7, 20)))
