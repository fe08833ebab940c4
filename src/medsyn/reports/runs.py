"""What a report reads from a run folder, tolerant of what a run lacks.

Only the run-folder contract is used (medsyn.training.run_dir): ``config.yaml``,
``normalization.json``, ``splits.json``, ``provenance.json``, ``metrics.jsonl``, ``best.json``,
``checkpoints/`` and ``samples/*.png``. A missing optional file becomes a note in the report,
not an error; a folder without ``config.yaml`` is not a run folder (CheckpointError).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsyn.errors import CheckpointError, MedsynError
from medsyn.training.run_dir import RunDir

#: record keys that are bookkeeping, not curves
NON_CURVE_KEYS = ("step", "epoch", "time_s")


@dataclass
class RunInfo:
    """One run folder, read once.

    config: the resolved configuration as a plain dict (``config.yaml``); cfg: the typed
    :class:`~medsyn.config.RunConfig`, or None when this medsyn does not know the method.
    spec: the registered :class:`~medsyn.methods.MethodSpec` or None. records: metrics.jsonl.
    notes: what is missing, said once per run in the report.
    """

    path: Path
    label: str
    config: dict[str, Any]
    cfg: Any = None
    spec: Any = None
    records: list[dict[str, Any]] = field(default_factory=list)
    splits: dict[str, list[str]] | None = None
    normalization: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def data(self) -> dict[str, Any]:
        return self.config.get("data") or {}

    @property
    def target(self) -> str | None:
        return self.data.get("target")

    @property
    def sources(self) -> list[str]:
        return list(self.data.get("source") or [])

    @property
    def predicts_volumes(self) -> bool:
        return self.spec is not None and bool(getattr(self.spec, "predicts_volumes", True)) and self.target is not None

    def eval_subjects(self) -> tuple[list[str], str]:
        """The subjects a report evaluates by default: the test split, else the validation split."""
        splits = self.splits or {}
        if splits.get("test"):
            return list(splits["test"]), "test"
        if splits.get("val"):
            return list(splits["val"]), "val"
        return [], "none"

    def curve_keys(self) -> list[str]:
        """Every logged scalar (losses, learning rates, validation metrics), in first-seen order."""
        keys: dict[str, None] = {}
        for r in self.records:
            for k, v in r.items():
                if k not in NON_CURVE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys.setdefault(k, None)
        return list(keys)

    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), (int, float))]
        return int(max(steps)) if steps else None

    def train_seconds(self) -> float | None:
        ts = [r["time_s"] for r in self.records if isinstance(r.get("time_s"), (int, float)) and math.isfinite(r["time_s"])]
        return float(max(ts)) if ts else None


def _optional_json(run: RunDir, name: str, notes: list[str]) -> Any:
    if not (run.path / name).is_file():
        notes.append(f"`{name}` is missing from the run folder")
        return None
    try:
        return run.read_json(name)
    except CheckpointError as e:
        notes.append(str(e))
        return None


def load_run_info(path: str | Path, label: str | None = None) -> RunInfo:
    """Read a run folder; raises CheckpointError when ``path`` is not one."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: run folder not found")
    if not run.exists():
        raise CheckpointError(f"{run.path}: no config.yaml; not a medsyn run folder (train one with `medsyn train`)")
    try:
        raw = yaml.safe_load(run.config_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CheckpointError(f"{run.config_path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{run.config_path}: expected a mapping of config keys, found {type(raw).__name__}")
    notes: list[str] = []
    info = RunInfo(run.path, label or run.path.name, raw, notes=notes)
    try:
        info.cfg = run.read_config()
        from medsyn.methods import METHODS

        info.spec = METHODS.get(info.cfg.method, key="method")
    except MedsynError as e:
        notes.append(f"this medsyn cannot rebuild the run's method ({e}); sections that need the model are skipped")
    info.records = run.read_metrics()
    if not info.records:
        notes.append("`metrics.jsonl` is missing or empty: no training curves")
    info.splits = _optional_json(run, "splits.json", notes)
    info.normalization = _optional_json(run, "normalization.json", notes)
    info.provenance = _optional_json(run, "provenance.json", notes)
    if (run.path / "best.json").is_file():
        info.best = _optional_json(run, "best.json", notes)
    return info


def unique_labels(paths: list[Path]) -> list[str]:
    """Short, distinct names for runs: the folder name, with parents added until they differ."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(p) for p in parts):
            break
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for lab in labels:  # the same folder twice
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out
