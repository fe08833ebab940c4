"""Reading pre-trained weights that the user supplies (medsyn never downloads any).

One reader for every frozen network medsyn borrows — MedGAN's VGG-19 (:mod:`medsyn.models.vgg`)
and LPIPS's backbone and linear heads (:mod:`medsyn.metrics.lpips`): ``.pth``/``.pt`` files are
read with ``torch.load(weights_only=True)`` (never an unrestricted pickle), ``.safetensors`` with
safetensors. Every error is a :class:`~medsyn.errors.ConfigError` naming the option, the file
and how to supply a good one.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from medsyn.errors import ConfigError

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


def check_weights_path(path: str | Path, *, key: str, how: str, needed_by: str) -> Path:
    """``path`` as a Path, after checking that it is an existing file with a weights suffix.

    Args:
        path: the file the user named (not None; "not set" messages belong to the caller).
        key: the option or config key that named it, e.g. ``params.vgg19_weights``.
        how: how to supply a good file (appended to every message).
        needed_by: what needs the file, e.g. "style/content losses".
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "not found"
        raise ConfigError(f"{key}: {p}: {what}; needed by the {needed_by}: {how}")
    if not p.name.lower().endswith(WEIGHT_SUFFIXES):
        raise ConfigError(f"{key}: {p}: unsupported file type; expected one of {', '.join(WEIGHT_SUFFIXES)} ({how})")
    return p


def torch_load_plain(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, without torch's warnings on the console."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=True)


def refused_pickle_reason(e: BaseException) -> str:
    """One whole clause from torch's long weights-only error: what the file holds that was refused."""
    m = re.search(r"GLOBAL (\S+)", str(e))
    return f"it holds {m.group(1)}, which is not a tensor or plain data" if m else "it holds objects other than tensors and plain data"


def read_state_dict(path: str | Path, *, key: str, how: str, needed_by: str) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file, by name (a checkpoint's ``"state_dict"`` entry is unwrapped).

    Raises:
        ConfigError: naming ``key`` and the file, when it is missing, of another type, unreadable
            (truncated, corrupt, a pickle of arbitrary objects), or not a mapping of tensors.
    """
    p = check_weights_path(path, key=key, how=how, needed_by=needed_by)
    try:
        if p.name.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch_load_plain(p)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # no refused object: bytes that are not a pickle of tensors at all
            m = re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
            why = m.group(1).strip() if m else str(e).splitlines()[0]
            raise ConfigError(f"{key}: {p}: cannot read weights ({why[:200]}); the file may be "
                              f"truncated or not a weights file; {how}") from None
        raise ConfigError(f"{key}: {p}: refused to load: {refused_pickle_reason(e)} (unpickling it could run code); "
                          f"{how}") from None
    except Exception as e:  # noqa: BLE001 - corrupt zip/pickle, refused pickle globals, SafetensorError …
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}: {p}: cannot read weights ({msg[:200]}); the file may be truncated "
                          f"or not a weights file; {how}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{key}: {p}: not a state dict of tensors (found {type(sd).__name__}); {how}")
    return dict(sd)


def load_exact(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, key: str, path: Path | str,
               name: str, layout: str, shape_hint: str = "", file_keys: Mapping[str, str] | None = None) -> None:
    """Load ``sd`` into ``module`` strictly, as float32, with a ConfigError naming the first problem.

    Args:
        name: what the file should hold, e.g. "VGG-19".
        layout: the expected layout in words, for the message (e.g. "torchvision's vgg19 layout
            features.0.weight … features.34.bias").
        shape_hint: appended to a wrong-shape message (e.g. "is it VGG-19, not VGG-16?").
        file_keys: ``sd`` key → the key as the file spells it, where they differ (for messages).
    """
    file_keys = file_keys or {}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd), key=key_order)
    unexpected = sorted(set(sd) - set(expected), key=key_order)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {few(unexpected)}")
        raise ConfigError(f"{key}: {path}: not a {name} state dict: {'; '.join(parts)} (expected {layout})")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ConfigError(f"{key}: {path}: {file_keys.get(k, k)} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)} "
                              f"({shape_hint or layout})")
    module.load_state_dict({k: t.to(torch.float32) for k, t in sd.items()}, strict=True)


def key_order(k: str) -> tuple:
    """Sort key for ``features.10.weight``-style names: by layer number, then by name."""
    parts = k.split(".")
    return tuple(int(x) if x.isdigit() else 0 for x in parts[1:2]) + (k,)


def few(keys: Iterable[str], n: int = 4) -> str:
    """The first ``n`` keys, and how many there are in all."""
    keys = list(keys)
    s = ", ".join(keys[:n])
    return s + (f" … ({len(keys)} in all)" if len(keys) > n else "")
