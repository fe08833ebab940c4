"""Difficulty-aware attention loss of Nie et al. 2018, Sec. 2.4 (Eq. 7-8).

The local discriminator D2 gives a confidence map M = sigmoid(D2(G(X))) in [0, 1] for the
synthetic image: high where a region already looks real (easy), low where it does not (hard).
The attention weight

    F = (1 - M)^beta                          # Nie et al. Eq. 8

scales the voxel-wise reconstruction error

    L_AttG = mean(F * |Y - G(X)|^p)           # Nie et al. Eq. 7

so well-synthesised regions contribute little and hard regions (tumours, lesions) dominate.
F is a *weight*, not a path for gradients: it is computed from a detached M, so the attention
loss trains only the generator and never pushes D2 (D2 learns from Eq. 4 alone), and the
generator cannot lower the loss by changing M through its own output.

Choice of beta (the paper gives no value; default ``DEFAULT_BETA = 2``):

- The paper calls the mechanism "voxel-wise focal loss in regression"; focal loss (Lin et al.
  2017) uses (1 - p_t)^gamma with gamma = 2 as its recommended setting, and the first author's
  public code (ginobilinie/medSynthesisV1, ``nnBuildUnits.computeVoxelAttentionWeight``) computes
  exactly ``prob * prob`` with prob = 1 - confidence, i.e. beta = 2.
- The paper says F "largely suppresses" easy regions: beta = 2 gives a hard/easy contrast of
  (0.9 / 0.1)^2 = 81 between M = 0.1 and M = 0.9, against 9 for beta = 1.
- The cost: at D2's equilibrium M is about 0.5 everywhere, so F is about 0.5^beta = 0.25 (beta = 2)
  instead of 0.5 (beta = 1), shrinking the reconstruction term relative to the adversarial terms
  (lambda1 = 0.05, lambda2 = 0.1, Eq. 9) by 4x instead of 2x compared with plain L1. We accept
  it for fidelity to the focal form and the author's code; beta = 1 (gentler) and beta = 0
  (F = 1: plain Eq. 1, the "dual-D without attention" ablation) are one setting away.
"""

from __future__ import annotations

import torch

from medsyn.errors import ConfigError
from medsyn.losses.reconstruction import lp_loss

DEFAULT_BETA = 2.0


def difficulty_weight(confidence: torch.Tensor, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """F = (1 - M)^beta, Nie et al. Eq. 8, on a detached M.

    Args:
        confidence: M, D2's sigmoid confidence for the synthetic image, (B, 1, H, W) in [0, 1].
        beta: attention exponent, >= 0 (0 gives F = 1).

    Returns:
        F, same shape as ``confidence``, in [0, 1], with no gradient history.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
        raise ConfigError(f"beta: expected a number >= 0 (Nie et al. Eq. 8), got {beta!r}")
    one_minus_m = (1.0 - confidence.detach()).clamp(0.0, 1.0)
    return one_minus_m.pow(beta)


def attention_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    confidence: torch.Tensor,
    beta: float = DEFAULT_BETA,
    p: int = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_AttG = mean(F * |Y - G(X)|^p), Nie et al. Eq. 7, with F = (1 - M)^beta (Eq. 8).

    Args:
        pred: G(X), (B, 1, H, W), normalised intensities.
        target: Y, same shape.
        confidence: M = D2(G(X)) as probabilities, (B, 1, H, W) (or broadcastable to ``pred``);
            detached here.
        beta: attention exponent (see the module docstring for the default).
        p: 1 or 2 (L1 or L2).
        mask: optional boolean (B, 1, H, W): only these pixels count, the mean is over them
            (e.g. the brain, so background pixels do not dilute the loss).

    Returns:
        A scalar: the mean over all (masked) elements (not normalised by the sum of F). With
        M = 0 it equals :func:`~medsyn.losses.reconstruction.lp_loss`.
    """
    return lp_loss(pred, target, p=p, weight=difficulty_weight(confidence, beta), mask=mask)
