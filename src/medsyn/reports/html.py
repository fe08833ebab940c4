"""Run reports (issue: HTML report). Until it lands, ``medsyn report`` says so clearly."""

from __future__ import annotations

from pathlib import Path

from medsyn.errors import MedsynError


def write_report(run_dirs: list[Path], out: Path) -> Path:
    raise MedsynError("medsyn report is not available yet in this version; the run folder's metrics.jsonl, "
                      "samples/ and TensorBoard events (tensorboard --logdir RUN_DIR) hold the training record")
