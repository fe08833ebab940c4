"""``medsyn demo``: the whole pipeline on the bundled sample in a few minutes on a laptop CPU.

Trains Nie et al.'s dual-discriminator + difficulty-aware attention model (t1n → t2w) on one
bundled subject (BraTS-MET-00110-000), predicts the held-out one (BraTS-GLI-00000-000, which has
a tumour label), evaluates it per region (foreground, tumour, healthy, each label) and prints
where everything is. Networks are smaller than the paper's (base 16 filters, 64×64 patches of
the 2 mm sample) so that minutes of CPU training show something; the paper-size settings are in
configs/nie2018_brats_t1_t2.yaml.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medsyn.config import build_config

TRAIN_SUBJECT = "BraTS-MET-00110-000"
TEST_SUBJECT = "BraTS-GLI-00000-000"


def demo_config(minutes: float, device: str, max_steps: int | None) -> dict[str, Any]:
    return {
        "method": "nie-dual-attention",
        "params": {"base_filters": 16, "lr_g": 1e-3},
        "data": {"root": "sample", "source": ["t1n"], "target": "t2w", "train": [TRAIN_SUBJECT], "val": [],
                 "test": [TEST_SUBJECT], "patch_size": [64, 64], "patches_per_subject": 400},
        "train": {"batch_size": 10, "epochs": 1000, "minutes": minutes, "max_steps": max_steps, "device": device,
                  "log_every": 10, "sample_every": 100, "checkpoint_every": 100},
        "inference": {"batch_size": 32},
    }


def run_demo(*, minutes: float, out: Path, device: str, max_steps: int | None, console: Any) -> Path:
    from medsyn.data.dataset import discover, sample_root
    from medsyn.inference.predict import load_run, predict_subjects
    from medsyn.metrics.evaluate import evaluate_predictions, write_results
    from medsyn.training.distributed import launch_train
    from medsyn.cli.main import _print_summary

    folder = out / time.strftime("%Y%m%d-%H%M%S")
    cfg = build_config(demo_config(minutes, device, max_steps))
    console.print(f"[bold]medsyn demo[/]: {cfg.method}, t1n → t2w, train on {TRAIN_SUBJECT}, test on {TEST_SUBJECT}, "
                  f"{minutes:g} min budget")
    result = launch_train(cfg, folder / "run", console=console)
    if result.stopped == "interrupted":
        import typer

        from medsyn.cli.main import EXIT_INTERRUPTED

        raise typer.Exit(EXIT_INTERRUPTED)
    run = load_run(result.run_dir, "last", device)
    ds = discover(sample_root())
    pred_dir = folder / "predictions"
    predict_subjects(run, [ds.subjects[TEST_SUBJECT]], pred_dir, write_confidence=True)
    res = evaluate_predictions(pred_dir, sample_root(), "t2w")
    metrics_json, metrics_csv = write_results(res, folder / "metrics.json")
    _print_summary(res)
    console.print(f"run folder (config, checkpoints, samples, TensorBoard): {result.run_dir}")
    console.print(f"synthesised T2 (input geometry, T2 scale of the training data): {pred_dir / TEST_SUBJECT / 't2w.nii.gz'}")
    console.print(f"confidence map of the local discriminator: {pred_dir / TEST_SUBJECT / 't2w_confidence.nii.gz'}")
    console.print(f"metrics: {metrics_json} and {metrics_csv}")
    return folder
