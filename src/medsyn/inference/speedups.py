"""Eval-time speed-ups for a trained generator: BatchNorm folding, ``torch.compile``, bf16.

All work on a copy prepared for inference; the training model is never changed.

* :func:`fold_batchnorm`: in eval mode a BatchNorm is a per-channel affine map
  ``y = γ (x - μ) / √(σ² + ε) + β`` with frozen statistics, so it can be folded into the
  convolution before it (PyTorch's ``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the
  arithmetic): one pass over the activations fewer per convolution, same values to float
  rounding (measured ≤ 2e-7 on UNet25D).
* :func:`fuse_conv_relu` (CPU): every convolution followed by a ReLU (after folding) becomes
  one oneDNN call with the ReLU as a post-op, the weights are stored channels-last (the layout
  the batches arrive in, so no per-call weight reorder), and where a network concatenates two
  maps only to convolve them (UNet25D's decoders, :meth:`DoubleConv.forward_cat`), the
  convolution is split over the two inputs and summed inside oneDNN instead of materialising
  the concatenation. Same arithmetic up to the order of a sum (measured ≤ 1e-7 on UNet25D);
  anything else (CUDA, autograd, autocast, NCHW input) falls back to the eager ops.
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

__all__ = ["ConvReLU2d", "amp_dtype", "compile_model", "cpu_supports_bf16", "fold_batchnorm", "fuse_conv_relu",
           "prepare_for_inference"]

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


def _pointwise_ops():
    """oneDNN's fused convolution ops (the ones inductor emits on CPU), or None where absent."""
    try:
        ops = torch.ops.mkldnn
        return ops._convolution_pointwise.default, ops._convolution_pointwise.binary
    except (AttributeError, RuntimeError):
        return None


class ConvReLU2d(nn.Module):
    """``relu(conv(x))`` as one oneDNN call on CPU (ReLU as the convolution's post-op).

    Holds the original ``nn.Conv2d`` (``self.conv``, weights channels-last). The fused call is
    used for a float32 channels-last CPU input outside autograd and autocast; otherwise the
    eager ``relu(conv(x))``. Shapes: ``(B, C_in, H, W) → (B, C_out, H', W')`` as the conv.
    :meth:`forward_cat` caches the two halves of the weight at its first call: prepare a new
    copy (:func:`prepare_for_inference`) for new weights rather than loading them into this one.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self._ops = _pointwise_ops()
        self._split: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _fusable(self, *xs: torch.Tensor) -> bool:
        c = self.conv
        return (self._ops is not None and not torch.is_grad_enabled() and c.padding_mode == "zeros"
                and not isinstance(c.padding, str) and c.weight.device.type == "cpu"
                and c.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and all(x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                        and x.is_contiguous(memory_format=torch.channels_last) for x in xs))

    def _args(self) -> tuple:
        c = self.conv
        return list(c.padding), list(c.stride), list(c.dilation), c.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fusable(x):
            return self._ops[0](x, self.conv.weight, self.conv.bias, *self._args(), "relu", [None], "")
        return torch.relu(self.conv(x))

    def forward_cat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``self(torch.cat([a, b], 1))`` without the concatenation: ``relu(conv_a(a) + conv_b(b))``
        with the weight split along its input channels (``a``'s first) and the sum fused."""
        if not self._fusable(a, b) or self.conv.groups != 1:
            return self(torch.cat([a, b], 1))
        n_a = a.shape[1]
        if self._split is None or self._split[0] != n_a:
            w = self.conv.weight
            self._split = (n_a, w[:, :n_a].contiguous(memory_format=torch.channels_last),
                           w[:, n_a:].contiguous(memory_format=torch.channels_last))
        _, w_a, w_b = self._split
        y = self._ops[0](b, w_b, self.conv.bias, *self._args(), "none", [None], "")
        return self._ops[1](a, y, w_a, None, *self._args(), "add", None, "relu", [None], "")


def fuse_conv_relu(model: nn.Module) -> nn.Module:
    """``model`` (an eval-mode inference copy, BatchNorm already folded) with every ``Conv2d`` that
    a ReLU follows inside an ``nn.Sequential`` (Identity layers, i.e. folded norms, in between
    allowed) replaced by a :class:`ConvReLU2d` and the ReLU by Identity; on CPU the 4-D weights
    are made channels-last. Changes ``model`` in place and returns it. Values: as the eager
    ops (the ReLU is the same clamp; ``forward_cat`` sums in another order, ≤ 1e-7 measured).
    """
    if _pointwise_ops() is None:
        return model
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for i, name in enumerate(names):
            conv = parent._modules[name]
            if type(conv) is not nn.Conv2d:
                continue
            j = i + 1
            while j < len(names) and isinstance(parent._modules[names[j]], nn.Identity):
                j += 1
            if j < len(names) and isinstance(parent._modules[names[j]], nn.ReLU):
                parent._modules[name] = ConvReLU2d(conv)
                parent._modules[names[j]] = nn.Identity()
    if all(p.device.type == "cpu" for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


def prepare_for_inference(model: nn.Module, *, fold: bool = True) -> nn.Module:
    """The eval-mode copy ``medsyn predict`` runs: BatchNorm folded (:func:`fold_batchnorm`) and
    conv+ReLU fused (:func:`fuse_conv_relu`) when ``fold``; else ``model`` itself."""
    return fuse_conv_relu(fold_batchnorm(model)) if fold else model


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
