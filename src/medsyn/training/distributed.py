"""Processes: single-process training today; torchrun/DDP is added here (and only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsyn.config import RunConfig
from medsyn.training.engine import TrainResult, Trainer


def launch_train(cfg: RunConfig, out: str | Path, **kw: Any) -> TrainResult | None:
    """Train in this process and return the result."""
    return Trainer(cfg, out, **kw).fit()
