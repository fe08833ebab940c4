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
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from medsyn import __version__
from medsyn.config import RunConfig, build_config, config_hash, read_yaml, to_dict
from medsyn.errors import CheckpointError
from medsyn.io.image import atomic_write_bytes


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
        atomic_write_bytes(self.config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())

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
