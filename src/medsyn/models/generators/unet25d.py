"""2.5D UNet generator of Nie et al. (MICCAI 2018), Sec. 2.2 and 2.5; with ``skip=False`` the FCN baseline.

"2.5D" means the k adjacent source slices around a centre slice (times M source modalities) are
stacked as input channels, and the network predicts the target modality's centre slice:

    input  (B, k*M, H, W)  source slices, normalised to about [-1, 1]
    output (B, 1,   H, W)  target centre slice, same convention

The paper trains on 5 x 144 x 144 source patches and 1 x 144 x 144 target patches (Sec. 2.5).

Architecture (the paper says only "a typical UNet"; the choices below are ours, written down):

- ``depth`` levels of [conv3x3 -> norm -> ReLU] x 2, each followed by 2x2 max-pooling, then a
  bottleneck of the same two convolutions; widths ``base * 2**level`` (32-64-128 | 256 for the
  defaults).
- Up-sampling by a learned 2x2 transposed convolution with stride 2 that halves the channels
  (Ronneberger et al.'s "up-convolution", and the first author's public 2D UNet). Why not
  upsample + conv: with kernel = stride = 2 the transposed convolution's footprints do not
  overlap, so it has no uneven-overlap checkerboard, and it is what makes the parameter count
  agree with the measured 1.9 M (base 32) / 7.7 M (base 64); bilinear upsample + conv3x3 would
  add ~15 % parameters for no documented gain.
- The up-sampled map is concatenated with the encoder map of the same level (``skip=True``), then
  two conv3x3 -> norm -> ReLU. ``skip=False`` drops the concatenation and is the paper's "FCN"
  baseline (Table 1): same encoder/decoder, no skip connections.
- A 1x1 convolution to ``out_channels``, then ``final_activation``:
  ``"tanh"`` (default) because the data convention clips targets to [-1, 1], so tanh's range
  is exactly the target range and a generator cannot produce out-of-range values a
  discriminator could key on; ``"none"`` (linear) for targets that are z-scored without
  clipping, where tanh would saturate on the tails.
- Convolutions followed by a normalisation have no bias (the norm's shift makes it redundant).

Input size: H and W must be divisible by ``2**depth`` (8 by default; 144 and 240 both are). A
non-multiple raises :class:`~medsyn.errors.ConfigError` instead of being padded silently, because
padding changes what the border pixels see; samplers that need to pad can read
:attr:`UNet25D.size_multiple`.
"""

from __future__ import annotations

import torch
from torch import nn

from medsyn.errors import ConfigError
from medsyn.models.registry import GENERATORS

NORMS = ("batch", "instance", "none")
FINAL_ACTIVATIONS = ("tanh", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """[conv3x3 (padding 1) -> norm -> ReLU] x 2; (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward_cat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``self(torch.cat([a, b], dim=1))``; a first layer with its own ``forward_cat`` (the
        inference-time fused conv+ReLU, medsyn.inference.speedups) does it without the copy."""
        first = self[0]
        if not hasattr(first, "forward_cat"):
            return self(torch.cat([a, b], dim=1))
        x = first.forward_cat(a, b)
        for layer in list(self)[1:]:
            x = layer(x)
        return x


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"UNet25D {key}: expected a positive integer, got {value!r}")
    return value


@GENERATORS.register("unet25d")
class UNet25D(nn.Module):
    """2.5D UNet (Nie et al. 2018, Sec. 2.2) mapping k source slices to the target centre slice.

    Args:
        in_channels: number of input channels, k adjacent slices x M source modalities
            (paper: 5 slices of T1, so 5).
        out_channels: target channels (1: the centre slice of the target modality).
        base: width of the first level; level ``l`` has ``base * 2**l`` channels.
            base 32 -> ~1.93 M parameters, base 64 -> ~7.7 M (depth 3, 5 input slices).
        depth: number of 2x2 max-poolings (3: 144 -> 72 -> 36 -> 18).
        norm: ``"batch"`` (default), ``"instance"`` or ``"none"``.
        skip: ``True`` for the UNet; ``False`` for the FCN baseline (no skip concatenations).
        final_activation: ``"tanh"`` (targets clipped to [-1, 1]) or ``"none"`` (linear).

    Shapes:
        ``forward(x)``: x (B, in_channels, H, W), H and W divisible by ``2**depth``, intensities
        normalised to about [-1, 1] -> (B, out_channels, H, W), in (-1, 1) with tanh, unbounded
        with ``"none"``.
    """

    def __init__(
        self,
        in_channels: int = 5,
        out_channels: int = 1,
        base: int = 32,
        depth: int = 3,
        norm: str = "batch",
        skip: bool = True,
        final_activation: str = "tanh",
    ):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        base = _positive_int(base, "base")
        self.depth = _positive_int(depth, "depth")
        if norm not in NORMS:
            raise ConfigError(f"UNet25D norm: unknown {norm!r}; expected one of {', '.join(NORMS)}")
        if final_activation not in FINAL_ACTIVATIONS:
            raise ConfigError(
                f"UNet25D final_activation: unknown {final_activation!r}; "
                f"expected one of {', '.join(FINAL_ACTIVATIONS)}"
            )
        self.skip = bool(skip)
        self.final_activation = final_activation

        widths = [base * 2**level for level in range(depth + 1)]  # 32, 64, 128 | 256
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoders.append(DoubleConv(channels, width, norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], norm)

        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            coarse, fine = widths[level + 1], widths[level]
            self.ups.append(nn.ConvTranspose2d(coarse, fine, kernel_size=2, stride=2))
            self.decoders.append(DoubleConv(2 * fine if self.skip else fine, fine, norm))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        self.activation = nn.Tanh() if final_activation == "tanh" else nn.Identity()

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ConfigError` if ``x`` is not (B, in_channels, H, W) with H, W multiples of 2**depth."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"UNet25D expects input of shape (B, {self.in_channels}, H, W) "
                f"(k slices x M modalities as channels); got {tuple(x.shape)}. "
                "Check the generator's in_channels against the 2.5D slab size."
            )
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ConfigError(
                f"UNet25D with depth {self.depth} needs H and W divisible by {m}; got {h}x{w}. "
                f"Use a patch size that is a multiple of {m} (e.g. {m * (h // m)} or {m * (h // m + 1)}), "
                "or pad the slice before prediction."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = []
        for encoder in self.encoders:
            x = encoder(x)
            features.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, bridge in zip(self.ups, self.decoders, reversed(features)):
            x = up(x)
            x = decoder.forward_cat(x, bridge) if self.skip else decoder(x)
        return self.activation(self.head(x))
