"""Adversarial losses: WGAN-GP (Nie et al. 2018 D1), dense BCE (Nie et al. D2), generic BCE / LSGAN.

All functions are pure: they take network outputs (and, for the gradient penalty, the critic)
and return scalar tensors. Which tensors are detached is the method's business, except in
:func:`gradient_penalty`, which never lets gradients reach the generator.

Global (D1, Wasserstein critic, Sec. 2.3):

    L_D1 = E[D1(G(X))] - E[D1(Y)] + lambda * E[(||grad_xhat D1(xhat)||_2 - 1)^2]     Eq. 2
    L_G_ADV1 = -E[D1(G(X))]                                                        Eq. 3

Local (D2, dense confidence map, Sec. 2.3):

    L_D2 = L_BCE(D2(Y), 1) + L_BCE(D2(G(X)), 0)                                     Eq. 4
    L_BCE(Q_hat, Q) = -sum_{h,w} [Q log Q_hat + (1 - Q) log(1 - Q_hat)]             Eq. 5
    L_ADV2 = L_BCE(D2(G(X)), 1)                                                     Eq. 6

The dense BCE takes D2's *logits* and uses ``binary_cross_entropy_with_logits`` (log-sum-exp,
no log(0) when the sigmoid saturates).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from medsyn.errors import ConfigError

DEFAULT_LAMBDA_GP = 10.0  # Gulrajani et al. 2017; Nie et al. Eq. 2 names lambda without a value
REDUCTIONS = ("mean", "sum")


# --------------------------------------------------------------------------- WGAN-GP (D1)


def wgan_critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """E[D1(G(X))] - E[D1(Y)]: Nie et al. Eq. 2 without the gradient penalty.

    Args:
        d_real: critic scores of real targets D1(Y), (B, 1) or (B,), unbounded.
        d_fake: critic scores of synthetic targets D1(G(X)) (G(X) detached by the caller).
    """
    return d_fake.mean() - d_real.mean()


def wgan_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """-E[D1(G(X))]: Nie et al. Eq. 3 (the generator's global adversarial term)."""
    return -d_fake.mean()


def interpolation_weights(
    batch_size: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """alpha ~ U[0, 1), one per sample, shape (B, 1, 1, 1) (Gulrajani et al. 2017, Alg. 1)."""
    draw_device = generator.device if generator is not None else device
    alpha = torch.rand((batch_size, 1, 1, 1), generator=generator, device=draw_device, dtype=dtype)
    return alpha.to(device) if device is not None else alpha


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    lambda_gp: float = DEFAULT_LAMBDA_GP,
    *,
    condition: torch.Tensor | None = None,
    condition_first: bool = False,
    generator: torch.Generator | None = None,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """lambda * E[(||grad_xhat D1(xhat)||_2 - 1)^2]: the penalty term of Nie et al. Eq. 2 (WGAN-GP).

    xhat = alpha * real + (1 - alpha) * fake with alpha ~ U[0, 1) drawn per sample ("uniformly
    sampled along straight lines" between real and synthetic samples). The gradient of
    ``critic(xhat).sum()`` w.r.t. xhat is taken with ``create_graph=True`` so the penalty
    back-propagates into the critic's parameters; its L2 norm is taken per sample over all of
    (C, H, W), then lambda * mean over the batch of (norm - 1)^2.

    ``real`` and ``fake`` are detached here: the penalty is a critic regulariser and never sends
    gradients to the generator, whatever the caller passes.

    Args:
        critic: D1, maps (B, C_total, H, W) to (B, 1) or (B,). With batch norm in train mode the
            interpolates are normalised with their own batch statistics (see GlobalDiscriminator).
        real: real targets Y, (B, C, H, W).
        fake: synthetic targets G(X), same shape.
        lambda_gp: penalty weight lambda (default 10, Gulrajani et al.).
        condition: optional source slab (B, C_src, H, W) for a conditioned critic; concatenated
            unchanged along channels, not interpolated, and the gradient norm is taken w.r.t.
            xhat only (the condition is the same for real and fake, so the Lipschitz constraint
            concerns the target image). Pass ``real``/``fake`` *without* the condition.
        condition_first: channel order of the critic's input: ``cat([condition, xhat], 1)`` if
            True, ``cat([xhat, condition], 1)`` if False; must match how the method builds the
            critic's real and fake inputs.
        generator: optional ``torch.Generator`` for reproducible alpha.
        alpha: optional explicit interpolation weights (B, 1, 1, 1) (for tests); overrides the draw.

    Returns:
        A scalar tensor (already multiplied by lambda).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    real, fake = real.detach(), fake.detach()
    b = real.shape[0]
    if alpha is None:
        alpha = interpolation_weights(b, device=real.device, dtype=real.dtype, generator=generator)
    elif alpha.shape != (b, 1, 1, 1):
        raise ValueError(f"alpha must have shape ({b}, 1, 1, 1), got {tuple(alpha.shape)}")
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    if condition is None:
        critic_input = x_hat
    else:
        parts = [condition.detach(), x_hat] if condition_first else [x_hat, condition.detach()]
        critic_input = torch.cat(parts, dim=1)
    scores = critic(critic_input)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    grad_norm = torch.linalg.vector_norm(grad.flatten(1), ord=2, dim=1)  # per sample, (B,)
    return lambda_gp * (grad_norm - 1).square().mean()


# --------------------------------------------------------------------------- dense BCE (D2)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction: unknown {reduction!r}; expected one of {', '.join(REDUCTIONS)}")


def bce_map_loss(logits: torch.Tensor, target_is_real: bool, reduction: str = "mean") -> torch.Tensor:
    """Dense binary cross-entropy against an all-ones or all-zeros map: Nie et al. Eq. 5.

    Args:
        logits: D2's pre-sigmoid output, (B, 1, H, W).
        target_is_real: True for the label map Q = 1, False for Q = 0.
        reduction: ``"sum"``: the paper's Eq. 5, sum of per-pixel BCE over (C, H, W), then mean
            over the batch (E over samples). ``"mean"``: mean over all pixels, i.e. ``"sum"``
            divided by C*H*W. The default ``"mean"`` keeps the local adversarial term on the same
            per-pixel scale as the (mean) attention L1 of Eq. 7, so the paper's lambda2 = 0.1
            (Eq. 9) weighs two per-pixel quantities; with ``"sum"`` the term is 144*144 = 20736x
            larger and lambda2 = 0.1 would let it swamp the reconstruction loss.

    Returns:
        A scalar tensor.
    """
    _check_reduction(reduction)
    labels = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    per_pixel = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if reduction == "mean":
        return per_pixel.mean()
    return per_pixel.flatten(1).sum(dim=1).mean()


def d2_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """L_D2 = L_BCE(D2(Y), 1) + L_BCE(D2(G(X)), 0): Nie et al. Eq. 4 (logits in, G(X) detached by the caller)."""
    return bce_map_loss(logits_real, True, reduction) + bce_map_loss(logits_fake, False, reduction)


def d2_generator_loss(logits_fake: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """L_ADV2 = L_BCE(D2(G(X)), 1): Nie et al. Eq. 6 (the generator's local adversarial term)."""
    return bce_map_loss(logits_fake, True, reduction)


# --------------------------------------------------------------------------- generic helpers


def gan_bce(
    pred: torch.Tensor, is_real: bool, from_logits: bool = True, reduction: str = "mean"
) -> torch.Tensor:
    """Vanilla GAN binary cross-entropy against a constant label (Goodfellow et al. 2014).

    For PatchGAN-style discriminators (e.g. MedGAN): ``pred`` is a score or a (B, 1, h, w)
    patch map, as logits (``from_logits=True``, numerically stable) or as probabilities in
    [0, 1] (``from_logits=False``; log clamped at -100 by PyTorch). The generator's
    non-saturating loss is ``gan_bce(d(fake), True)``.

    Args:
        reduction: ``"mean"`` over all elements, or ``"sum"`` over each sample's elements then
            mean over the batch.
    """
    _check_reduction(reduction)
    labels = torch.full_like(pred, 1.0 if is_real else 0.0)
    if from_logits:
        per_elem = F.binary_cross_entropy_with_logits(pred, labels, reduction="none")
    else:
        per_elem = F.binary_cross_entropy(pred, labels, reduction="none")
    if reduction == "mean":
        return per_elem.mean()
    return per_elem.flatten(1).sum(dim=1).mean()


def lsgan_loss(
    pred: torch.Tensor, is_real: bool, real_label: float = 1.0, fake_label: float = 0.0
) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017): mean((pred - label)^2) on raw scores.

    The discriminator uses ``lsgan_loss(d(real), True) + lsgan_loss(d(fake), False)``; the
    generator ``lsgan_loss(d(fake), True)`` (the a = 0, b = c = 1 scheme).
    """
    label = real_label if is_real else fake_label
    return (pred - label).square().mean()
