"""Voxel-wise reconstruction losses.

``lp_loss`` is Nie et al. 2018, Eq. 1: L_G(X, Y) = ||Y - G(X)||^p with p = 1 or 2, taken as the
mean over elements (so its scale does not depend on patch size or batch size). With ``weight`` it
is the weighted form used by the difficulty-aware attention loss (Eq. 7, see
:mod:`medsyn.losses.attention`).

``gradient_difference_loss`` is the image gradient difference loss (GDL) of Mathieu et al. 2016,
used by Nie et al. 2017's sGAN ([15] of Nie et al. 2018) to keep edges sharp.

Tensors are (B, C, H, W) (or any layout, as long as ``pred`` and ``target`` have the same shape),
intensities in the normalised convention of the data (about [-1, 1]).
"""

from __future__ import annotations

import torch

from medsyn.errors import ConfigError


def _check_broadcast(name: str, other: torch.Tensor, shape: torch.Size) -> None:
    try:
        out = torch.broadcast_shapes(other.shape, shape)
    except RuntimeError:
        out = None
    if out != shape:
        raise ValueError(
            f"{name} of shape {tuple(other.shape)} does not broadcast to the prediction's shape {tuple(shape)}"
        )


def _bool_mask(mask: torch.Tensor, shape: torch.Size, hint: str = "") -> torch.Tensor:
    """``mask`` checked (boolean, broadcastable to ``shape``) and expanded to ``shape``."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor, got {mask.dtype}{hint}")
    _check_broadcast("mask", mask, shape)
    return mask.expand(shape)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` (same shape) is True; 0, still attached to the graph, if none is."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1)


def lp_error(pred: torch.Tensor, target: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Element-wise |Y - G(X)|^p, p in {1, 2}; same shape as ``pred``."""
    if p not in (1, 2):
        raise ConfigError(f"p: expected 1 (L1) or 2 (L2) as in Nie et al. Eq. 1, got {p!r}")
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape "
            "(no silent broadcasting)"
        )
    diff = target - pred
    return diff.abs() if p == 1 else diff.square()


def lp_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    p: int = 1,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``weight * |target - pred|^p`` over elements; Nie et al. 2018, Eq. 1.

    Args:
        pred: G(X), (B, C, H, W).
        target: Y, same shape.
        p: 1 (L1, mean absolute error) or 2 (L2, mean squared error).
        weight: optional non-negative per-element weight broadcastable to ``pred`` (e.g. the
            attention map F of Eq. 8, (B, 1, H, W)). The result is still divided by the number of
            elements, not by the sum of weights, as in Eq. 7.
        mask: optional boolean tensor broadcastable to ``pred``; only ``True`` elements count and
            the mean is over them. An empty mask gives 0 (still attached to the graph).

    Returns:
        A scalar tensor.
    """
    err = lp_error(pred, target, p)
    if weight is not None:
        _check_broadcast("weight", weight, err.shape)
        err = err * weight
    if mask is None:
        return err.mean()
    return _masked_mean(err, _bool_mask(mask, err.shape, "; use weight= for soft weights"))


def gradient_difference_loss(
    pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L_GDL = mean | |∂_h Y| − |∂_h G(X)| |^α + mean | |∂_w Y| − |∂_w G(X)| |^α  (Mathieu et al. 2016,
    Eq. 5; Nie et al. 2017, the sGAN baseline [15] of Nie et al. 2018, with α = 2).

    ∂ are forward differences between neighbouring pixels along H and W of (B, C, H, W) tensors
    (along D too for (B, C, D, H, W)); each term is a mean over its differences, so the scale does
    not depend on patch or batch size. Returns a scalar tensor (0 for identical images).

    ``mask`` (optional, boolean, broadcastable to ``pred``): only differences between two
    neighbours that are both ``True`` count, and each term is the mean over those — the same
    region as ``lp_loss(..., mask=)``, so a loss restricted to the brain does not also fit the
    predicted background's edges. A term with no such pair is 0 (still attached to the graph).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.dim() < 4:
        raise ValueError(f"gradient_difference_loss expects (B, C, H, W) or (B, C, D, H, W), got {tuple(pred.shape)}")
    if mask is not None:
        mask = _bool_mask(mask, pred.shape)
    total = pred.new_zeros(())
    for axis in range(2, pred.dim()):
        n = pred.shape[axis]
        if n < 2:
            continue
        d_pred = pred.narrow(axis, 1, n - 1) - pred.narrow(axis, 0, n - 1)
        d_true = target.narrow(axis, 1, n - 1) - target.narrow(axis, 0, n - 1)
        term = (d_true.abs() - d_pred.abs()).abs().pow(alpha)
        if mask is None:
            total = total + term.mean()
        else:
            pair = mask.narrow(axis, 1, n - 1) & mask.narrow(axis, 0, n - 1)
            total = total + _masked_mean(term, pair)
    return total
