"""Checkpoints: safetensors weights + tensor/JSON state, checksummed, written atomically.

Layout of ``RUN_DIR/checkpoints/step_00001234/``::

    weights.safetensors   every network's state dict, keys prefixed "<network>."
    state.pt              optimisers, schedulers, step/epoch, sampler and RNG state —
                          plain tensors/containers, loaded with torch.load(weights_only=True)
    manifest.json         sha256 and size of both files, medsyn version, step

A checkpoint folder is written under a temporary name and renamed when complete, so a crash
never leaves a half-written checkpoint; the last ``keep`` are kept. Loading verifies the
checksums and refuses anything that would need unrestricted unpickling.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medsyn.errors import CheckpointError

PREFIX = "step_"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def flatten_weights(networks: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    out = {}
    for name, net in networks.items():
        for k, v in net.state_dict().items():
            out[f"{name}.{k}"] = v.detach().cpu().contiguous().clone()
    return out


def split_weights(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        name, _, rest = k.partition(".")
        out.setdefault(name, {})[rest] = v
    return out


def save_checkpoint(ckpt_root: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 3, protect: set[str] | None = None, version: str = "") -> Path:
    """Write ``step_<step>/`` atomically; prune to the newest ``keep`` (never the ``protect`` names)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".tmp-{PREFIX}{step:08d}-"))
    try:
        save_file(weights, str(tmp / "weights.safetensors"))
        torch.save(state, tmp / "state.pt")
        manifest = {"step": step, "medsyn_version": version, "files": {
            n: {"sha256": _sha256(tmp / n), "bytes": (tmp / n).stat().st_size}
            for n in ("weights.safetensors", "state.pt")}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for n in ("weights.safetensors", "state.pt", "manifest.json"):
            with open(tmp / n, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(ckpt_root, keep, protect or set())
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint folders (renamed into place), oldest first."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def prune(ckpt_root: Path, keep: int, protect: set[str]) -> None:
    for p in ckpt_root.iterdir():  # leftovers of a crash during a save
        if p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
    ckpts = [p for p in list_checkpoints(ckpt_root) if p.name not in protect]
    for p in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError when files are missing or their checksums do not match."""
    mf = path / "manifest.json"
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: manifest.json missing or unreadable ({type(e).__name__})") from None
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            raise CheckpointError(f"{f}: checksum mismatch (truncated or corrupt)")


def load_state(path: Path) -> dict[str, Any]:
    """state.pt with ``weights_only=True``: a pickle that would run code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load — it contains objects that need unrestricted unpickling "
            f"(possible code execution); medsyn checkpoints hold only tensors and plain data ({str(e).splitlines()[0][:120]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read ({str(e).splitlines()[0][:160]})") from None


def load_weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    try:
        return split_weights(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({str(e).splitlines()[0][:160]})") from None


def load_checkpoint(path: Path, verify: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    if verify:
        verify_checkpoint(path)
    return load_weights(path / "weights.safetensors"), load_state(path / "state.pt")


def latest_good(ckpt_root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """Newest checkpoint that verifies, and the (path, problem) of newer ones that do not."""
    bad = []
    for p in reversed(list_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(p)
            return p, bad
        except CheckpointError as e:
            bad.append((p, str(e)))
    return None, bad
