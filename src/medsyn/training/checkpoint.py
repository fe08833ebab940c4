"""Checkpoints: safetensors weights + tensor/JSON state, checksummed, written atomically.

Layout of ``RUN_DIR/checkpoints/step_00001234/``::

    weights.safetensors   every network's state dict, keys prefixed "<network>."
    state.pt              optimisers, schedulers, step/epoch, sampler and RNG state —
                          plain tensors/containers, loaded with torch.load(weights_only=True)
    manifest.json         sha256 and size of both files, medsyn version, step, config hash,
                          number of processes and each rank's parameter fingerprint

A checkpoint folder is written under a temporary name (``.tmp-step_…``), fsynced and renamed
when complete, so a crash (even SIGKILL) never leaves a half-written checkpoint; the last
``keep`` are kept. Loading verifies the checksums and sizes (a truncated or corrupt file is
named) and refuses anything that would need unrestricted unpickling: weights are safetensors
(no code), the rest is read with ``torch.load(weights_only=True)`` — a checkpoint from
elsewhere cannot execute code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medsyn.io.image import file_sha256
from medsyn.models.weights import refused_pickle_reason, torch_load_plain
from medsyn.errors import CheckpointError, OutputError

PREFIX = "step_"
FILES = ("weights.safetensors", "state.pt")
#: name given to a checkpoint found corrupt on resume (no longer listed, kept for inspection)
CORRUPT_PREFIX = "corrupt-"


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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(ckpt_root: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 3, protect: set[str] | None = None, version: str = "",
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``step_<step>/`` atomically; prune to the newest ``keep`` (never the ``protect`` names).

    ``extra`` adds informative keys to manifest.json. A failed write (disk full, permissions)
    raises :class:`OutputError` and leaves the existing checkpoints as they were.
    """
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp: Path | None = None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".tmp-{PREFIX}{step:08d}-"))
        save_file(weights, str(tmp / "weights.safetensors"))
        torch.save(state, tmp / "state.pt")
        manifest = {"step": step, "medsyn_version": version, **(extra or {}), "files": {
            n: {"sha256": file_sha256(tmp / n), "bytes": (tmp / n).stat().st_size} for n in FILES}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for n in (*FILES, "manifest.json"):
            with open(tmp / n, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (validation, then the end of the run)
            aside = ckpt_root / f".old-{final.name}-{time.monotonic_ns()}"
            os.replace(final, aside)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except (OSError, SafetensorError, RuntimeError) as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, RuntimeError) and not _is_io_error(e):
            raise
        msg = getattr(e, "strerror", None) or str(e).splitlines()[0][:160]
        raise OutputError(f"{final}: cannot write the checkpoint ({msg}); earlier checkpoints are unchanged — "
                          "free disk space or fix permissions, then continue with --resume") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(ckpt_root, keep, protect or set())
    return final


def _is_io_error(e: BaseException) -> bool:
    """torch.save reports a failed write as RuntimeError ("... file write failed")."""
    text = str(e).lower()
    return any(w in text for w in ("write", "space", "disk", "permission", "i/o", "errno"))


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint folders (renamed into place), oldest first."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def prune(ckpt_root: Path, keep: int, protect: set[str]) -> None:
    for p in ckpt_root.iterdir():  # leftovers of a crash during a save
        if p.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(p, ignore_errors=True)
    ckpts = [p for p in list_checkpoints(ckpt_root) if p.name not in protect]
    for p in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def recover(ckpt_root: Path) -> None:
    """Undo a save interrupted between its two renames (``.old-step_X`` without ``step_X``)."""
    if not ckpt_root.is_dir():
        return
    for p in sorted(ckpt_root.iterdir()):
        if p.name.startswith(f".old-{PREFIX}"):
            final = ckpt_root / p.name[len(".old-"):].rsplit("-", 1)[0]
            if not final.exists():
                os.replace(p, final)


def read_manifest(path: Path) -> dict[str, Any]:
    mf = path / "manifest.json"
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{mf}: missing or unreadable ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mf}: not a medsyn checkpoint manifest (no 'files' table)")
    return manifest


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming the file when one is missing, truncated or corrupt."""
    files = read_manifest(path)["files"]
    if set(files) != set(FILES):
        raise CheckpointError(f"{path / 'manifest.json'}: lists {sorted(files)}, expected {list(FILES)}")
    for name in FILES:
        info, f = files[name], path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        try:
            size, digest = int(info["bytes"]), str(info["sha256"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path / 'manifest.json'}: entry for {name} has no size/sha256") from None
        actual = f.stat().st_size
        if actual != size:
            raise CheckpointError(f"{f}: {actual} bytes, the manifest says {size} (truncated or corrupt)")
        if file_sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch (corrupt)")


def quarantine(path: Path) -> Path:
    """Rename a corrupt checkpoint out of the list (kept for inspection); returns the new path."""
    dest = path.with_name(f"{CORRUPT_PREFIX}{path.name}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{CORRUPT_PREFIX}{path.name}.{n}")
        n += 1
    os.replace(path, dest)
    return dest


def load_state(path: Path) -> dict[str, Any]:
    """state.pt with ``weights_only=True``: a pickle that would run code is refused."""
    try:
        state = torch_load_plain(path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: {refused_pickle_reason(e)} (unpickling it could run code); medsyn checkpoints "
            "hold only tensors and plain data — use a checkpoint written by medsyn"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other failure of a damaged file is the user's to fix
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot read ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a mapping of training state, found {type(state).__name__}")
    return state


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
