"""LPIPS — learned perceptual image patch similarity (Zhang et al., CVPR 2018), from user weights.

medsyn never downloads weights and does not depend on torchvision, so LPIPS runs only from files
the user supplies (the metric is therefore not in :data:`~medsyn.metrics.METRICS`; see
:func:`lpips_metric` and ``medsyn evaluate --lpips-weights``):

* **linear heads** (``--lpips-weights``): the "v0.1" weights of the authors' ``lpips`` package,
  e.g. ``lpips/weights/v0.1/alex.pth`` inside its PyPI wheel (keys ``lin0.model.1.weight`` …
  ``lin4.model.1.weight``, shapes (1, C_l, 1, 1)); a whole ``lpips.LPIPS().state_dict()`` (which
  also holds the backbone as ``net.slice{s}.{i}.*``) is accepted as well;
* **backbone** (``--lpips-backbone``, unless the heads file holds it): ImageNet weights in
  torchvision's layout — ``alexnet`` (keys ``features.0.weight`` … ``features.10.bias``) or
  ``vgg16`` (``features.0.weight`` … ``features.28.bias``); ``classifier.*`` keys are ignored.

The distance (Zhang et al. Eq. 1, the ``lpips`` package's v0.1 forward): inputs in [-1, 1] are
shifted and scaled per channel (shift −0.030, −0.088, −0.188; scale 0.458, 0.448, 0.450), run
through the backbone; at each tapped layer l the features are unit-normalised along the channels
(``f / (‖f‖₂ + 1e-10)``), their squared difference is weighted per channel by the 1×1 head
``w_l`` and averaged over the layer's h_l × w_l positions; the five layer terms are summed.
Taps: AlexNet relu1 … relu5 (``features`` indices 1, 4, 7, 9, 11); VGG-16 relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3 (indices 3, 8, 15, 22, 29).

Medical images (choices documented here, the paper's images are RGB photographs):

* grey → RGB by repeating the channel (as the VGG-19 of MedGAN's losses);
* intensities → [-1, 1] with the explicit ``data_range``: ``lo`` = the reference's minimum over
  the whole image (the background: 0 for skull-stripped MR, air for CT), so every region of a
  subject uses the same mapping; ``x ↦ clip(2 (x − lo) / data_range − 1, −1, 1)`` for both
  images;
* a volume ``(X, Y, Z)`` is scored slice by slice (axial slices ``[:, :, k]``, the network is 2D);
* a mask restricts the spatial average: each layer's distance map is averaged with the mask's
  area fraction at that layer's resolution as weights (all-ones mask = the plain average, exactly),
  and slices are pooled weighted by their number of masked voxels; without a mask every slice
  counts equally. An empty mask gives NaN, as for every medsyn metric.

LPIPS is a distance: 0 for identical images, larger is worse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsyn.errors import ConfigError
from medsyn.io.image import file_sha256
from medsyn.metrics.image import _as_stack, _check, _check_range, _empty, _need_side
from medsyn.models.vgg import VGG16_CONFIG, vgg_features
from medsyn.models.weights import few, load_exact, read_state_dict
from medsyn.registry import Registry

#: the ``lpips`` package's ScalingLayer (v0.1): (x − shift) / scale per RGB channel.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10  # lpips.normalize_tensor

_HOW = ("give --lpips-weights LIN.pth (the v0.1 linear heads, e.g. lpips/weights/v0.1/alex.pth from the "
        "'lpips' wheel on PyPI) and --lpips-backbone BACKBONE.pth (ImageNet weights in torchvision's "
        "alexnet/vgg16 state-dict layout, .pth or .safetensors); medsyn never downloads weights")


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` (indices and therefore state-dict keys match)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


@dataclass(frozen=True)
class Backbone:
    """One LPIPS trunk: how to build torchvision's ``features``, where LPIPS taps it."""

    features: Callable[[], nn.Sequential]
    taps: tuple[int, ...]  # indices in ``features`` whose outputs are compared (post-ReLU)
    channels: tuple[int, ...]
    min_side: int  # smallest image side the trunk accepts up to its last tap
    torchvision: str  # the torchvision constructor whose state dict loads


BACKBONES: Registry[Backbone] = Registry("LPIPS backbone")
BACKBONES.add("alex", Backbone(alexnet_features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), 31, "alexnet"))
BACKBONES.add("vgg", Backbone(lambda: vgg_features(VGG16_CONFIG), (3, 8, 15, 22, 29),
                                   (64, 128, 256, 512, 512), 16, "vgg16"))


class LPIPS(nn.Module):
    """The LPIPS network: frozen trunk + one 1×1 linear head per tapped layer.

    Args:
        net: "alex" (the ``lpips`` package's default) or "vgg" (VGG-16).

    forward(x0, x1, weight=None): images (B, 1 or 3, H, W) in [-1, 1]; ``weight`` an optional
    (B, 1, H, W) map ≥ 0 (a mask) for the spatial average → distances (B,).
    State dict keys: ``features.*`` (torchvision's) and ``lins.{l}.weight`` (1, C_l, 1, 1).
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.net = net
        self.spec = BACKBONES.get(net, key="--lpips-net")
        self.features = self.spec.features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self.spec.channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        #: provenance (net, weight files and their sha256), filled by :func:`load_lpips`
        self.source: dict[str, str] = {"net": net}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # a fixed metric network: no dropout, ever

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, last = [], self.spec.taps[-1]
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.spec.taps:
                out.append(x)
            if i == last:
                break
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x0.shape != x1.shape or x0.ndim != 4 or x0.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS expects two (B, 1 or 3, H, W) images in [-1, 1], got {tuple(x0.shape)} "
                             f"and {tuple(x1.shape)}")
        if min(x0.shape[-2:]) < self.spec.min_side:
            raise ConfigError(f"metric 'lpips' ({self.net}): images of {tuple(x0.shape[-2:])} are too small; "
                              f"the trunk needs sides ≥ {self.spec.min_side}")
        b = x0.shape[0]
        x = torch.cat([x0, x1]).expand(-1, 3, -1, -1)
        feats = self._taps((x - self.shift) / self.scale)
        total = x0.new_zeros(b)
        for f, lin in zip(feats, self.lins):
            f = f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + LPIPS_EPS)
            d = lin((f[:b] - f[b:]) ** 2)  # (B, 1, h, w)
            if weight is None:
                total = total + d.mean(dim=(1, 2, 3))
            else:
                w = F.interpolate(weight, size=d.shape[-2:], mode="area")
                total = total + (d * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))
        return total


# ---------------------------------------------------------------------------------------------
# loading the user's files

_LIN_KEY = re.compile(r"^(?:lin(\d+)\.model\.[01]|lins\.(\d+))\.weight$")
_SLICE_KEY = re.compile(r"^net\.slice\d+\.(\d+)\.(weight|bias)$")


def load_lpips(weights: str | Path, backbone: str | Path | None = None, net: str = "alex") -> LPIPS:
    """A frozen :class:`LPIPS` from the user's linear-head file and backbone file.

    Args:
        weights: the linear heads, ``lin{l}.model.1.weight`` (the ``lpips`` package's v0.1 files;
            ``model.0`` without dropout, and medsyn's own ``lins.{l}.weight``, are accepted). A
            file that also holds the trunk (``net.slice*`` keys, a saved ``lpips.LPIPS``) needs
            no ``backbone``.
        backbone: torchvision ``alexnet``/``vgg16`` state dict (``features.*``), .pth or .safetensors.
        net: "alex" or "vgg": which trunk the files are for.

    Raises:
        ConfigError: naming the option and the file — missing or unreadable file, missing or
            unexpected keys, wrong shapes (e.g. AlexNet heads with a VGG trunk), no trunk at all.
    """
    model = LPIPS(net)
    spec = model.spec
    if weights is None or str(weights).strip() == "":
        raise ConfigError(f"metric 'lpips' needs weights: {_HOW}")
    wpath = Path(weights).expanduser()
    sd = read_state_dict(wpath, key="--lpips-weights", how=_HOW, needed_by="LPIPS metric")  # checks the path too
    lins: dict[str, torch.Tensor] = {}
    trunk: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}  # our key → the file's
    for k, v in sd.items():
        m = _LIN_KEY.match(k)
        if m:
            ours = f"lins.{m.group(1) or m.group(2)}.weight"
            lins[ours], names[ours] = v, k
            continue
        m = _SLICE_KEY.match(k)
        if m:
            ours = f"features.{m.group(1)}.{m.group(2)}"
            trunk[ours], names[ours] = v, k
    if not lins:
        raise ConfigError(f"--lpips-weights: {wpath}: no LPIPS linear heads (keys lin0.model.1.weight …) among "
                          f"{few(sorted(sd))}; {_HOW}")
    load_exact(_holder(lins=model.lins), lins, key="--lpips-weights", path=wpath,
               name=f"LPIPS-{net}", layout=f"{len(spec.channels)} heads lin0 … lin{len(spec.channels) - 1} "
                                           f"with {', '.join(map(str, spec.channels))} channels",
               shape_hint=f"heads for another trunk? --lpips-net is {net!r}", file_keys=names)
    if backbone is not None and str(backbone).strip() != "":
        bpath = Path(backbone).expanduser()
        trunk = {k: v for k, v in read_state_dict(bpath, key="--lpips-backbone", how=_HOW,
                                                  needed_by="LPIPS metric").items() if k.startswith("features.")}
        source, key, names = bpath, "--lpips-backbone", {}
    elif trunk:
        source, key = wpath, "--lpips-weights"
    else:
        raise ConfigError(f"metric 'lpips': {wpath} holds the linear heads only; the {spec.torchvision} trunk "
                          f"is needed too: {_HOW}")
    load_exact(_holder(features=model.features), trunk, key=key, path=source,
               name=spec.torchvision, layout=f"torchvision's {spec.torchvision} layout features.*",
               shape_hint=f"is it {spec.torchvision}? --lpips-net is {net!r}", file_keys=names)
    #: provenance, stated in ``medsyn evaluate``'s settings
    model.source = {"net": net, "weights": str(wpath), "weights_sha256": file_sha256(wpath),
                    "backbone": str(source), "backbone_sha256": file_sha256(source)}
    return model


def _holder(**modules: nn.Module) -> nn.Module:
    """A module whose state-dict keys are ``<name>.…`` for the given (shared) sub-modules."""
    holder = nn.Module()
    for name, module in modules.items():
        holder.add_module(name, module)
    return holder


# ---------------------------------------------------------------------------------------------
# the metric on medsyn arrays


def lpips(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    data_range: float,
    mask: Optional[np.ndarray] = None,
    model: Optional[LPIPS] = None,
    batch_size: int = 8,
) -> float:
    """LPIPS distance between ``pred`` and ``ref`` (2D image or (X, Y, Z) volume), see the module doc.

    Args:
        pred, ref: same shape, same units.
        data_range: intensity span mapped to [-1, 1], from the reference's minimum.
        mask: boolean, the image's shape; restricts the average; empty → NaN.
        model: a loaded :class:`LPIPS` (:func:`load_lpips`); without one, a ConfigError says how
            to supply the weights.
        batch_size: slices per network call (memory is bounded by it, not by the volume).

    Returns:
        the distance ≥ 0 (0 for identical images).
    """
    if model is None:
        raise ConfigError(f"metric 'lpips' needs pretrained backbone + linear-head weights: {_HOW}")
    dr = _check_range(data_range, "lpips")
    p, r, mask = _check(pred, ref, mask, "lpips")
    if _empty(mask):
        return float("nan")
    lo = float(r.min())
    p3, r3 = _as_stack(p), _as_stack(r)
    m3 = None if mask is None else _as_stack(mask)
    _need_side(p3.shape, (0, 1), model.spec.min_side, "lpips", f"the {model.spec.torchvision} trunk's pooling")
    ks = np.arange(p3.shape[2]) if m3 is None else np.flatnonzero(m3.any(axis=(0, 1)))
    device = next(model.parameters()).device

    def to_net(a: np.ndarray) -> torch.Tensor:  # (X, Y, n) → (n, 1, X, Y) in [-1, 1]
        t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, 2, 0), dtype=np.float32))[:, None]
        return (2.0 * (t - lo) / dr - 1.0).clamp_(-1.0, 1.0).to(device)

    values, weights = [], []
    with torch.inference_mode():
        for i in range(0, len(ks), batch_size):
            sel = ks[i:i + batch_size]
            w = None
            if m3 is not None:
                mk = m3[:, :, sel]
                w = torch.from_numpy(np.moveaxis(mk, 2, 0).astype(np.float32))[:, None].to(device)
                weights.append(mk.sum(axis=(0, 1)).astype(np.float64))
            values.append(model(to_net(p3[:, :, sel]), to_net(r3[:, :, sel]), w).double().cpu().numpy())
    v = np.concatenate(values)
    if m3 is None:
        return float(v.mean())
    wt = np.concatenate(weights)
    return float((v * wt).sum() / wt.sum())


def lpips_metric(model: LPIPS) -> Callable[..., float]:
    """``fn(pred, ref, *, data_range, mask=None)`` — LPIPS with ``model``, in the metric signature
    of :data:`~medsyn.metrics.METRICS`, for :func:`~medsyn.metrics.evaluate_volume`'s ``extra``."""

    def fn(pred, ref, *, data_range, mask=None):
        return lpips(pred, ref, data_range=data_range, mask=mask, model=model)

    fn.__name__ = f"lpips_{model.net}"
    return fn
