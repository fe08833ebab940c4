"""VGG-19 convolutional features for MedGAN's style and content losses (MedGAN Sec. 2.3, 2.5).

Defined here, without torchvision: :class:`VGG19` has torchvision's ``vgg19().features`` layout
(Simonyan & Zisserman configuration "E": 16 3×3 convolutions with ReLU, five 2×2 max-pools), so
a torchvision VGG-19 state dict (keys ``features.0.weight`` … ``features.34.bias``) loads into
it strictly; the ``classifier.*`` keys are ignored. medsyn never downloads weights: the file is
supplied by the user (``--set params.vgg19_weights=PATH``), ``.pth`` (read with
``torch.load(weights_only=True)``, never unrestricted pickle) or ``.safetensors``.

Which layers (``V_j``, MedGAN Sec. 2.3): "only the first layer of each convolutional block is
used", i.e. ``relu1_1, relu2_1, relu3_1, relu4_1, relu5_1`` — the layers Gatys et al. [60] use
for style (post-ReLU activations, as Gatys and Johnson et al.). Their weights (Sec. 2.5):

* style (λ_sj): only the first and last blocks → ``relu1_1`` and ``relu5_1``
  (:data:`MEDGAN_STYLE_WEIGHTS` = (1, 0, 0, 0, 1));
* content (λ_cj): all but the deepest block → ``relu1_1`` … ``relu4_1``
  (:data:`MEDGAN_CONTENT_WEIGHTS` = (1, 1, 1, 1, 0)).

The paper gives no values beyond which blocks count, so the non-zero weights are equal (1).

Preprocessing (:meth:`VGG19.preprocess`): medsyn images in [-1, 1] → (x + 1) / 2 in [0, 1] →
1 channel repeated to 3 (grey → RGB) → ImageNet normalisation
(mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225), the input statistics torchvision's
ImageNet weights were trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from medsyn.errors import ConfigError
from medsyn.models.weights import check_weights_path, load_exact, read_state_dict

#: torchvision ``cfgs["E"]``: conv widths, "M" = 2×2 max-pool.
VGG19_CONFIG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                       512, 512, 512, 512, "M", 512, 512, 512, 512, "M")

#: torchvision ``cfgs["D"]`` (VGG-16: 13 convolutions), the backbone of LPIPS-VGG.
VGG16_CONFIG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

#: V_j of MedGAN Sec. 2.3: the first layer of each of the 5 convolutional blocks (post-ReLU).
MEDGAN_VGG_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
#: λ_sj: "only the first and last convolutional blocks" (MedGAN Sec. 2.5).
MEDGAN_STYLE_WEIGHTS: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0)
#: λ_cj: "all but the deepest convolutional blocks" (MedGAN Sec. 2.5).
MEDGAN_CONTENT_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 0.0)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HOW_TO_SUPPLY = ("supply ImageNet VGG-19 weights with --set params.vgg19_weights=PATH "
                  "(torchvision vgg19 state-dict layout, keys features.0.weight …, .pth or .safetensors); "
                  "medsyn never downloads weights")


def vgg_features(config: Sequence[int | str]) -> nn.Sequential:
    """torchvision's ``vgg*().features`` for a configuration (e.g. :data:`VGG19_CONFIG`, or
    :data:`VGG16_CONFIG` for LPIPS): 3×3 convolutions (padding 1) each followed by a ReLU, "M" a
    2×2 max-pool; the module indices, and so the state-dict keys, are torchvision's."""
    mods: list[nn.Module] = []
    cin = 3
    for v in config:
        if v == "M":
            mods.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            mods += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*mods)


def layer_names() -> list[str]:
    """Name of every module of ``features`` in order: conv1_1, relu1_1, conv1_2, …, pool5."""
    names, block, idx = [], 1, 1
    for v in VGG19_CONFIG:
        if v == "M":
            names.append(f"pool{block}")
            block, idx = block + 1, 1
        else:
            names += [f"conv{block}_{idx}", f"relu{block}_{idx}"]
            idx += 1
    return names


LAYER_INDEX: dict[str, int] = {n: i for i, n in enumerate(layer_names())}  # relu1_1 → 1 … relu5_1 → 29


class VGG19(nn.Module):
    """torchvision-compatible VGG-19 ``features``, frozen, returning the requested activations.

    Args:
        layers: names from :data:`LAYER_INDEX` (default relu1_1 … relu5_1), returned in this order.

    forward(x): x (B, 1 or 3, H, W) in [-1, 1] (``preprocess=True``, default) or already
    ImageNet-normalised RGB (``preprocess=False``) → list of (B, d_j, h_j, w_j) feature maps.
    Parameters are frozen (``requires_grad=False``); gradients still flow to ``x``.
    """

    def __init__(self, layers: Sequence[str] = MEDGAN_VGG_LAYERS):
        super().__init__()
        unknown = [n for n in layers if n not in LAYER_INDEX]
        if unknown or not layers:
            raise ConfigError(f"VGG-19 layers: unknown {unknown or 'empty list'}; known: {', '.join(LAYER_INDEX)}")
        self.layers = tuple(layers)
        self.features = vgg_features(VGG19_CONFIG)
        # not persistent: the state dict stays exactly torchvision's ``features.*`` keys
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._last = max(LAYER_INDEX[n] for n in self.layers)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1|3, H, W) in [-1, 1] → ImageNet-normalised (B, 3, H, W)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGG19 expects (B, 1 or 3, H, W) images in [-1, 1], got {tuple(x.shape)}")
        x = (x + 1.0) / 2.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor, preprocess: bool = True) -> list[torch.Tensor]:
        if preprocess:
            x = self.preprocess(x)
        wanted = {LAYER_INDEX[n]: n for n in self.layers}
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in wanted:
                out[wanted[i]] = x
            if i >= self._last:
                break
        return [out[n] for n in self.layers]

    def train(self, mode: bool = True) -> "VGG19":
        # a fixed feature extractor: no layer behaves differently in train mode, stay in eval
        return super().train(False)


def require_vgg_weights(path: str | Path | None, needed_by: str = "style/content losses") -> Path:
    """Check, before training starts, that a VGG-19 weights file is given and exists.

    Returns the path; raises ConfigError saying how to supply one otherwise. The file's content
    is checked by :func:`load_vgg19_weights`.
    """
    if path is None or str(path).strip() == "":
        raise ConfigError(f"params.vgg19_weights is not set, but the {needed_by} need a pre-trained VGG-19 "
                          f"(MedGAN Sec. 2.5): {_HOW_TO_SUPPLY}")
    return check_weights_path(path, key="params.vgg19_weights", how=_HOW_TO_SUPPLY, needed_by=needed_by)


def read_vgg19_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a VGG-19 weights file (.pth/.pt or .safetensors).

    ``.pth`` files are read with ``torch.load(weights_only=True)``; a checkpoint dict holding the
    weights under ``"state_dict"`` is unwrapped. Raises ConfigError naming the file when it is
    missing, unreadable or not a state dict.
    """
    p = require_vgg_weights(path)
    sd = read_state_dict(p, key="params.vgg19_weights", how=_HOW_TO_SUPPLY, needed_by="style/content losses")
    return {k: v for k, v in sd.items() if k.startswith("features.")}


def load_vgg19_weights(path: str | Path, layers: Sequence[str] = MEDGAN_VGG_LAYERS) -> VGG19:
    """A frozen :class:`VGG19` with the weights of a torchvision-layout VGG-19 file.

    Raises ConfigError naming the file and the problem: missing, unreadable, missing or
    unexpected ``features.*`` keys, or tensors of the wrong shape.
    """
    p = Path(path).expanduser() if path is not None else None
    sd = read_vgg19_state_dict(p)
    model = VGG19(layers)
    load_exact(model, sd, key="params.vgg19_weights", path=p, name="VGG-19",
               layout="torchvision's vgg19 layout features.0.weight … features.34.bias",
               shape_hint="is it VGG-19, not VGG-16 or a batch-norm variant?")
    return model
