"""Datasets prepared from the bundled sample on first use and cached: ``data.root: prepared:<task>``.

Configs whose task needs data the sample does not hold directly (a CT phantom for MRI→CT, motion-
corrupted or noisy MR for MedGAN's restoration tasks, 256×256 2D slice pairs) name it as
``prepared:<task>``. The first use writes the dataset into the cache folder
(``$MEDSYN_CACHE`` or ``~/.cache/medsyn``) with its generation parameters and seed
(``prepare.json``); later uses read it from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from medsyn import __version__
from medsyn.errors import ConfigError, OutputError
from medsyn.registry import Registry

PREPARED: Registry[Callable[[Path, Path], Path]] = Registry("prepared task")


def cache_dir() -> Path:
    return Path(os.environ.get("MEDSYN_CACHE", Path.home() / ".cache" / "medsyn")).expanduser()


def _register(name: str):
    def deco(fn: Callable[[Path, Path], Path]) -> Callable[[Path, Path], Path]:
        PREPARED.add(name, fn)
        return fn

    return deco


@_register("ct-phantom")
def _ct(src: Path, out: Path) -> Path:
    from medsyn.data.phantom import prepare_ct_phantom

    return prepare_ct_phantom(src, out, source="t1n", seed=0)


@_register("motion")
def _motion(src: Path, out: Path) -> Path:
    from medsyn.data.prepare import prepare_motion

    return prepare_motion(src, out, modality="t2w", seed=0)


@_register("denoise")
def _denoise(src: Path, out: Path) -> Path:
    from medsyn.data.prepare import prepare_denoise

    return prepare_denoise(src, out, modality="t1n", seed=0)


@_register("t1n-t2w-2d")
def _t1t2(src: Path, out: Path) -> Path:
    from medsyn.data.prepare import prepare_translation_2d

    return prepare_translation_2d(src, out, source="t1n", target="t2w", size=256)


def prepared_root(task: str) -> Path:
    """Path of the prepared dataset ``task``, preparing it from the bundled sample if needed."""
    from medsyn.data.dataset import sample_root

    if task not in PREPARED:
        raise ConfigError(PREPARED.unknown_message(task, "data.root (prepared:<task>)"))
    out = cache_dir() / "prepared" / f"{task}-v{__version__}"
    if (out / "prepare.json").is_file():
        return out
    try:
        PREPARED.get(task)(sample_root(), out)
    except OutputError:
        if not (out / "prepare.json").is_file():  # not a concurrent preparation that finished first
            raise
    return out
