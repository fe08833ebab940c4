"""Eval-time speed-ups for a trained generator: BatchNorm folding, ``torch.compile``, bf16.

All work on a copy prepared for inference; the training model is never changed.

* :func:`fold_batchnorm`: in eval mode a BatchNorm is a per-channel affine map
  ``y = γ (x - μ) / √(σ² + ε) + β`` with frozen statistics, so it can be folded into the
  convolution before it (PyTorch's ``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the
  arithmetic): one pass over the activations fewer per convolution, same values to float
  rounding (measured ≤ 2e-7 on UNet25D).
* :func:`compile_model`: ``torch.compile`` (inductor) with weight freezing, on CPU and CUDA.
  It costs minutes of compilation on a small CPU, so it is opt-in (``inference.compile``).
* bf16: ``inference.amp`` runs the model under ``torch.autocast(dtype=torch.bfloat16)`` on CUDA
  and on CPUs with native bf16 (AVX512-BF16 / AMX); :func:`amp_dtype` says which, and refuses
  clearly where bf16 would be emulated. Outputs differ from fp32 by ~1e-3 (bf16 has 8 bits of
  mantissa), so it is never on by default.

Measured figures and what is on by default: docs/inference.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medsyn.errors import ConfigError

__all__ = ["amp_dtype", "compile_model", "cpu_supports_bf16", "fold_batchnorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a convolution
    inside an ``nn.Sequential`` folded into that convolution (the BatchNorm becomes Identity).

    Only the Sequential pattern is folded because only there "follows" is certain from the module
    tree; a BatchNorm used elsewhere is left as is (still correct, just not faster). BatchNorms
    without running statistics (``track_running_stats=False``) normalise with batch statistics
    even in eval mode and are never folded.
    """
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = parent._modules[first], parent._modules[second]
            if (isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.track_running_stats
                    and norm.running_mean is not None and conv.out_channels == norm.num_features):
                parent._modules[first] = fuse_conv_bn_eval(conv, norm)
                parent._modules[second] = nn.Identity()
    return folded


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` with inductor and frozen weights (constant-folded, prepacked).

    Freezing is what makes inductor fast on CPU (oneDNN weight prepacking, BN folding); it is
    valid because inference never changes the weights. The first call compiles (minutes on two
    CPU cores for UNet25D); a new input shape or dtype compiles again.
    """
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model, backend="inductor", dynamic=False)


def cpu_supports_bf16() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device: torch.device, requested: bool) -> torch.dtype | None:
    """bf16 for ``torch.autocast`` when ``requested``, None otherwise.

    Raises :class:`ConfigError` for a CPU without native bf16 (it would be emulated and slower),
    naming the key to turn off.
    """
    if not requested:
        return None
    if device.type == "cpu" and not cpu_supports_bf16():
        raise ConfigError("inference.amp (--amp): this CPU has no native bf16 (AVX512-BF16/AMX); "
                          "bf16 would be emulated and slower — run without --amp")
    return torch.bfloat16
