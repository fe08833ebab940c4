"""``medsyn crossval``: K-fold or leave-one-out cross-validation of any method (training/crossval.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def crossval(
        config: Path = typer.Argument(..., help="YAML config of the method to cross-validate."),
        folds: str = typer.Option(..., "--folds", help="Number of folds (e.g. 5) or 'loo' (leave one subject out)."),
        out: Path = typer.Option(..., "--out", help="Folder for the fold runs, the pooled predictions and metrics.json; "
                                 "running the command again resumes it fold by fold."),
        set_: list[str] = typer.Option([], "--set", help="Override a config key (repeatable), e.g. --set train.max_steps=200."),
        device: str = typer.Option("auto", "--device", help="Device for the predictions: auto, cpu, cuda."),
    ) -> None:
        """Train one run per fold, predict each held-out fold with its run, and score all subjects in one table
        (medsyn evaluate's JSON; `medsyn report OUT` shows it)."""
        from medsyn.cli.main import _print_summary, console
        from medsyn.config import load_config
        from medsyn.training.crossval import METRICS, parse_folds, run_crossval

        k = parse_folds(folds)
        cfg = load_config(config, list(set_))
        res = run_crossval(cfg, out, k, device=device, console=console)
        _print_summary(res)
        console.print(f"wrote {Path(out) / METRICS}; report: medsyn report {out}")


__all__ = ["register"]
