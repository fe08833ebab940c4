"""The run folder: enough to resume, predict and report.

::

    RUN_DIR/
      config.yaml            resolved configuration (every default written out)
      normalization.json     fitted normalisers (target scale learned from training targets)
      splits.json            subject ids per split
      provenance.json        medsyn version, git commit, package versions, config/data hashes
      metrics.jsonl          one JSON object per logged step / validation
      checkpoints/step_*/    see training/checkpoint.py; best.json names the best one
      samples/step_*.png     source | prediction | target | |error| | confidence
      tensorboard/           TensorBoard events
      .medsyn.lock           held (flock) by the process training into the folder; see RunLock
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from medsyn import __version__
from medsyn.config import RunConfig, build_config, config_hash, read_yaml, readable_dict
from medsyn.errors import CheckpointError, OutputError
from medsyn.io.image import atomic_write_bytes, make_output_dir

#: file in a run folder that the training process holds locked (not part of the run's content)
LOCK_NAME = ".medsyn.lock"

#: lock file descriptors this process holds; a forked child (e.g. a DataLoader worker) closes its
#: copies at once, so the lock ends with the training process even if a worker outlives it briefly
_HELD_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def has_content(self) -> bool:
        """True when the path is a file, or a folder holding anything but the lock file."""
        if not self.path.exists():
            return False
        return not self.path.is_dir() or any(p.name != LOCK_NAME for p in self.path.iterdir())

    # writers (atomic)
    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_bytes(self.path / name, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    def read_json(self, name: str) -> Any:
        p = self.path / name
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{p}: missing; is {self.path} a medsyn run folder?") from None
        except ValueError:
            raise CheckpointError(f"{p}: corrupt JSON") from None

    def write_config(self, cfg: RunConfig) -> None:
        # each normalisation with its kind's fields only; reads back to the same config (and hash)
        atomic_write_bytes(self.config_path, yaml.safe_dump(readable_dict(cfg), sort_keys=False).encode())

    def read_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path}: no config.yaml; not a medsyn run folder (train one with `medsyn train`)")
        return build_config(read_yaml(self.config_path))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop records logged after the checkpoint's step (they will be re-made)."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if rec.get("step", 0) <= step:
                keep.append(line)
        atomic_write_bytes(self.metrics_path, ("\n".join(keep) + ("\n" if keep else "")).encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def data_manifest_hash(files: list[Path]) -> str:
    """Hash of (name, size, mtime-free) of every data file used: changes when the data changes."""
    h = hashlib.sha256()
    for f in sorted(files):
        try:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        except OSError:
            h.update(f"{f.name}:missing".encode())
    return h.hexdigest()[:16]


def provenance(cfg: RunConfig, data_files: list[Path]) -> dict[str, Any]:
    pkgs = {}
    for name in ("torch", "numpy", "monai", "nibabel", "SimpleITK", "scikit-image", "torchmetrics", "safetensors"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"medsyn_version": __version__, "git_commit": git_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "packages": pkgs, "config_hash": config_hash(cfg),
            "data_manifest_hash": data_manifest_hash(data_files)}


class RunLock:
    """Exclusive hold on a run folder while one process trains into it (``with RunLock(path): ...``).

    An advisory ``flock`` on ``RUN/.medsyn.lock``, which records the holder (PID, host, start time)
    for the message a second process gets while the lock is held (emptied when released). The kernel releases the lock when its process ends in
    any way (also SIGKILL or a crash), so a lock file left by a killed run never blocks: the next
    run simply takes it. ``create``: make the folder if needed (a new run). When the ``with`` block
    ends without a run written (setup refused), the lock file made here and a folder made here
    (if empty) are removed again: a refused run leaves a folder as it found it.
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path, self.create = Path(path), create
        self._fd: int | None = None
        self._created = self._made_file = False

    def __enter__(self) -> "RunLock":
        if not self.path.is_dir():
            if not self.create:
                return self  # nothing to lock: the caller reports the missing run folder
            self._created = not self.path.exists()
            make_output_dir(self.path)
        lock = self.path / LOCK_NAME
        self._made_file = not lock.exists()
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{lock}: cannot create the run folder's lock file ({e.strerror or e}); "
                              "choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"{self.path}: another medsyn run is training into this folder ({holder}); wait for it "
                              "to finish or stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        _HELD_LOCK_FDS.add(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_LOCK_FDS.discard(fd)
        if self._made_file and not (self.path / "config.yaml").is_file():
            # no run was written (setup refused): leave the folder as it was, without our lock file
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            os.close(fd)
            if self._created:
                try:
                    self.path.rmdir()
                except OSError:
                    pass
            return
        os.ftruncate(fd, 0)  # the holder's line goes with the hold (a refused attempt leaves the file as it was)
        os.close(fd)  # releases the flock; the file stays (removing it would race with a new holder)
