"""The two discriminators of Nie et al. (MICCAI 2018), Sec. 2.3 and 2.5.

- :class:`GlobalDiscriminator` (D1): a CNN Wasserstein critic trained with WGAN-GP (Eq. 2-3).
  One unbounded score per image.
- :class:`LocalDiscriminator` (D2): a dense FCN giving a per-pixel confidence map
  M in [0, 1] (Eq. 4-6), which also drives the difficulty-aware attention F = (1 - M)^beta
  (Eq. 7-8).

"In both of the discriminators, we apply the spectral normalization [13] for all the layers except
the last one" (Sec. 2.5): every convolution / linear layer is wrapped in
``torch.nn.utils.parametrizations.spectral_norm`` except the final one. Normalisation layers
carry no weight matrix and are not spectrally normalised.

Inputs are target-modality images (B, C, H, W) normalised to about [-1, 1]: C = 1 for the target
alone, as in the paper's equations (D1(Y), D2(G(X))), or 1 + source channels for a conditioned
discriminator (the source slab first, then the target channel: ``cat([x, y], 1)`` in
``NieDualGAN._d_input``, and the gradient penalty's ``condition_first=True``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medsyn.errors import ConfigError
from medsyn.models.registry import DISCRIMINATORS

GLOBAL_NORMS = ("batch", "layer", "none")
LOCAL_NORMS = ("batch", "instance", "none")


def _sn(layer: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(layer) if enabled else layer


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        # Layer norm over (C, H, W) of each sample, with a per-channel affine; size-agnostic.
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _check_choice(owner: str, key: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{owner} {key}: unknown {value!r}; expected one of {', '.join(allowed)}")


def _check_positive(owner: str, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner} {key}: expected a positive integer, got {value!r}")
    return value


@DISCRIMINATORS.register("nie_global")
class GlobalDiscriminator(nn.Module):
    """D1: the global WGAN-GP critic of Nie et al. 2018 (Sec. 2.3, architecture Sec. 2.5).

    Three stages of conv3x3 -> norm -> ReLU -> 2x2 max-pool with 32, 64, 128 filters, one conv3x3
    with 256 filters (+ ReLU; the paper names no activation there, a linear conv straight into a
    linear layer would be pointless), flatten, then fully connected 512 -> ReLU -> 128 -> ReLU -> 1.
    The last layer is linear: a Wasserstein critic's score is unbounded, no sigmoid.
    Spectral normalisation on the four convolutions and the first two linear layers, not on the
    last linear layer.

    Args:
        in_channels: 1 for the target image alone (paper's Eq. 2-3), 1 + source channels when the
            critic is conditioned on the source slab.
        input_size: patch H, W (int or pair) the critic is built for; the flatten -> FC layer's
            in-features are 256 * (H // 8) * (W // 8), as in the paper (144 -> 256 * 18 * 18).
        norm: ``"batch"`` (paper), ``"layer"`` (GroupNorm with one group: layer norm over C, H, W)
            or ``"none"``. Gulrajani et al. (2017, Sec. 4) advise against batch norm in a
            gradient-penalty critic: the penalty is a per-sample constraint on the input
            gradient, and batch norm makes each sample's score depend on the others in the batch
            (the interpolates x-hat are normalised with their own batch statistics). The paper
            says batch norm, so it stays the default; ``"layer"`` is the WGAN-GP recommendation.
        spectral_norm: wrap all layers but the last in spectral normalisation (paper: True).
        channels, conv_channels, fc_features: widths (paper: (32, 64, 128), 256, (512, 128));
            change only for small test networks.

    Shapes:
        ``forward(x)``: x (B, in_channels, H, W) with (H, W) == input_size -> (B, 1), unbounded.
    """

    def __init__(
        self,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 144,
        norm: str = "batch",
        spectral_norm: bool = True,
        channels: Sequence[int] = (32, 64, 128),
        conv_channels: int = 256,
        fc_features: Sequence[int] = (512, 128),
    ):
        super().__init__()
        owner = "GlobalDiscriminator"
        self.in_channels = _check_positive(owner, "in_channels", in_channels)
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(size) != 2:
            raise ConfigError(f"{owner} input_size: expected an int or (H, W), got {input_size!r}")
        for s in size:
            _check_positive(owner, "input_size", s)
        n_pool = len(channels)
        if min(size) < 2**n_pool:
            raise ConfigError(
                f"{owner} input_size: {size} is too small for {n_pool} max-poolings; "
                f"need at least {2 ** n_pool} pixels per side"
            )
        _check_choice(owner, "norm", norm, GLOBAL_NORMS)
        self.input_size = size
        self.norm = norm
        self.spectral_norm = bool(spectral_norm)
        sn = self.spectral_norm
        bias = norm == "none"

        layers: list[nn.Module] = []
        c_in = in_channels
        for width in channels:
            layers += [
                _sn(nn.Conv2d(c_in, width, 3, padding=1, bias=bias), sn),
                _norm(norm, width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = width
        layers += [_sn(nn.Conv2d(c_in, conv_channels, 3, padding=1), sn), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)

        h, w = size
        for _ in channels:
            h, w = h // 2, w // 2
        self.flat_features = conv_channels * h * w
        fc: list[nn.Module] = []
        f_in = self.flat_features
        for width in fc_features:
            fc += [_sn(nn.Linear(f_in, width), sn), nn.ReLU(inplace=True)]
            f_in = width
        self.fc = nn.Sequential(*fc)
        self.head = nn.Linear(f_in, 1)  # last layer: linear, no spectral norm, no sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.input_size:
            raise ConfigError(
                f"GlobalDiscriminator was built for inputs (B, {self.in_channels}, "
                f"{self.input_size[0]}, {self.input_size[1]}); got {tuple(x.shape)}. "
                "Set its input_size to the training patch size (its fully connected layer depends on it)."
            )
        x = self.features(x)
        x = self.fc(torch.flatten(x, 1))
        return self.head(x)


@DISCRIMINATORS.register("nie_local")
class LocalDiscriminator(nn.Module):
    """D2: the dense FCN local discriminator of Nie et al. 2018 (Sec. 2.3, architecture Sec. 2.5).

    "A typical FCN with three down-sampling and three up-sampling stages, followed by a
    convolutional layer with sigmoid activation" (000, Sec. 2.5). Layout (widths for base 32):

        down: [conv3x3 -> norm -> LeakyReLU -> max-pool 2x2] with 32, 64, 128 filters  (H/8)
        up:   [transposed conv 2x2 stride 2 -> norm -> LeakyReLU] with 64, 32, 32 filters (H)
        last: conv3x3 -> 1 channel (logits); sigmoid -> M

    No skip connections ("typical FCN", not a UNet). Choices the paper leaves open: widths
    (``base``), LeakyReLU with slope 0.2 (the DCGAN discriminator convention, keeps gradients
    flowing to the generator everywhere; ``negative_slope=0`` gives ReLU), batch norm by default
    (as the paper's D1 and generator; D2 is trained with BCE, not a gradient penalty, so batch
    norm raises no per-sample issue), transposed 2x2 convolutions as in the generator.
    Spectral normalisation on every convolution except the last.

    ``upsampling=False`` follows the later write-up (002, Sec. 2.4: "a typical FCN with three
    down-sampling"): the last conv acts at H/8 x W/8 and its logits are bilinearly upsampled to
    H x W, so the map can still weight the per-pixel loss (Eq. 7).

    Args:
        in_channels: 1 for the target image alone (paper), 1 + source channels when conditioned.
        base: width of the first stage.
        norm: ``"batch"``, ``"instance"`` or ``"none"``.
        spectral_norm: wrap all convolutions but the last in spectral normalisation (paper: True).
        upsampling: True (000: three up-sampling stages) or False (002: logits at 1/8, upsampled).
        negative_slope: LeakyReLU slope.

    Shapes:
        ``forward(x, return_logits=False)``: x (B, in_channels, H, W), H and W divisible by 8 ->
        (B, 1, H, W): confidence M in [0, 1] (probability that each pixel's neighbourhood is
        real), or the logits if ``return_logits`` (use those with BCE-with-logits).
    """

    n_stages = 3

    def __init__(
        self,
        in_channels: int = 1,
        base: int = 32,
        norm: str = "batch",
        spectral_norm: bool = True,
        upsampling: bool = True,
        negative_slope: float = 0.2,
    ):
        super().__init__()
        owner = "LocalDiscriminator"
        self.in_channels = _check_positive(owner, "in_channels", in_channels)
        _check_positive(owner, "base", base)
        _check_choice(owner, "norm", norm, LOCAL_NORMS)
        self.norm = norm
        self.spectral_norm = bool(spectral_norm)
        self.upsampling = bool(upsampling)
        sn = self.spectral_norm
        bias = norm == "none"

        def act() -> nn.Module:
            return nn.LeakyReLU(negative_slope, inplace=True)

        down: list[nn.Module] = []
        c_in = in_channels
        for stage in range(self.n_stages):
            width = base * 2**stage  # 32, 64, 128
            down += [
                _sn(nn.Conv2d(c_in, width, 3, padding=1, bias=bias), sn),
                _norm(norm, width),
                act(),
                nn.MaxPool2d(2),
            ]
            c_in = width
        self.down = nn.Sequential(*down)

        up: list[nn.Module] = []
        if self.upsampling:
            for stage in reversed(range(self.n_stages)):
                width = base * 2 ** max(stage - 1, 0)  # 64, 32, 32
                up += [
                    _sn(nn.ConvTranspose2d(c_in, width, kernel_size=2, stride=2, bias=bias), sn),
                    _norm(norm, width),
                    act(),
                ]
                c_in = width
        self.up = nn.Sequential(*up)
        self.head = nn.Conv2d(c_in, 1, 3, padding=1)  # last layer: no spectral norm

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (2**3)."""
        return 2**self.n_stages

    def forward(self, x: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"LocalDiscriminator expects input of shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ConfigError(
                f"LocalDiscriminator needs H and W divisible by {m} (three 2x2 poolings); got {h}x{w}. "
                f"Use a patch size that is a multiple of {m}."
            )
        logits = self.head(self.up(self.down(x)))
        if not self.upsampling:
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits if return_logits else torch.sigmoid(logits)
