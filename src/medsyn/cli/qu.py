"""``medsyn generate`` and ``medsyn segment-experiment``: Qu et al.'s synthetic data set and its
segmentation experiments (thin commands; the work is in medsyn.pipelines)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=False)


def generate(
    run_dir: Path = typer.Argument(..., help="A Qu et al. pipeline run folder (medsyn train configs/qu_brats.yaml)."),
    n: int = typer.Option(..., "--n", help="Number of synthetic subjects to write (≥ 1)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Data set with real lesion labels (<subject>/seg.nii.gz), or 'sample'; default: the run's own data set. Only labels the run trained on are used: its test/validation subjects and held-out slices never are."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the synthetic data set; never overwritten."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same run, labels, seed and options → identical files."),
    slices: int = typer.Option(1, "--slices", help="Synthetic slices stacked per subject (each generated independently)."),
    filter_mae: Optional[float] = typer.Option(None, "--filter-mae", help="Algorithm 3 threshold (default params.filter_mae = 0.05; ≥ 1 switches it off)."),
    min_dice: Optional[float] = typer.Option(None, "--min-dice", help="Keep a case when the real-trained segmenter's Dice ≥ this (default params.min_dice = 0.95; 0 switches it off)."),
    final_dice: Optional[float] = typer.Option(None, "--final-dice", help="Sec. 2.8's check of the finished set: its mean segmenter Dice must reach this (default params.final_dice = 0.99; 0 switches it off)."),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Attempts per slice before giving up (default params.max_attempts)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU if available), cpu, cuda or cuda:N."),
) -> None:
    """Generate registered multimodal cases + lesion labels from noise and real labels (Qu et al. Sec. 2.8)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medsyn.pipelines.qu_generate import generate as run_generate

    with Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as prog:
        task = prog.add_task("generate", total=max(n, 0))
        res = run_generate(run_dir, n, labels, out, seed=seed, slices_per_case=slices, filter_mae=filter_mae,
                           min_dice=min_dice, final_dice=final_dice, max_attempts=max_attempts, device=device,
                           progress=lambda done, total: prog.update(task, completed=done))
    c = res.record["counts"]
    console.print(f"wrote {len(res.subjects)} subjects to [bold]{res.out}[/] ({c['attempts']} attempts: "
                  f"{c['structure_rejected']} structure maps rejected by Algorithm 3, {c['label_rejected']} without a "
                  f"fitting label, {c['dice_rejected']} below the Dice threshold); record: {res.out / 'generate.json'}",
                  soft_wrap=True)
    fc = res.record["final_check"]
    if fc["enabled"]:
        verdict = "[green]passed[/]" if fc["passed"] else "[yellow]FAILED[/] — raise --min-dice or train longer"
        console.print(f"final check (Sec. 2.8): mean segmenter Dice of the set {fc['dice']:.4f} vs ≥ {fc['threshold']}: "
                      f"{verdict}", soft_wrap=True)


def segment_experiment(
    run_dir: Path = typer.Argument(..., help="A Qu et al. pipeline run folder: its data set and split give the real slices."),
    synthetic: list[str] = typer.Option(..., "--synthetic", help="Table 2: the synthetic data set folder. Table 1: VARIANT=DIR, repeatable (e.g. 4SEG=syn-4seg)."),
    out: Path = typer.Option(..., "--out", help="Folder for table<k>.md and table<k>.json (never overwritten)."),
    table: int = typer.Option(2, "--table", help="2: real/synthetic/augmented mixes (Table 2); 1: real-trained segmenter on real and synthetic data (Table 1)."),
    experiments: str = typer.Option("all", "--experiments", help="Table 2 rows, e.g. 1,2,15,16,17,22 (the paper's numbers), or all."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per training phase (default params.segmenter_epochs = 100)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Fixed updates per experiment instead of epochs (quick runs)."),
    repeats: int = typer.Option(1, "--repeats", help="Train each experiment this many times (the paper: 4). Table 2: the best (Sec. 3.1) and mean ± std; Table 1: mean ± std."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    run_segmenter: bool = typer.Option(False, "--run-segmenter", help="Table 1: test the run's segmenter stage instead of training one on the experiment's real training slices."),
    examples: int = typer.Option(4, "--examples", help="Test slices (largest lesions) kept with every segmenter's predictions in table<k>_examples.npz for `medsyn qu figure` (Figs. 9–10); 0: none."),
    device: str = typer.Option("auto", "--device", help="auto (GPU if available), cpu, cuda or cuda:N."),
) -> None:
    """Train lesion segmenters on real, synthetic and mixed data; write Qu et al.'s Table 2 (or Table 1)."""
    from medsyn.errors import ConfigError
    from medsyn.pipelines.qu_segment import run_table1, run_table2

    command = shlex.join(["medsyn", "segment-experiment", str(run_dir)]
                         + [x for item in synthetic for x in ("--synthetic", item)]
                         + ["--out", str(out), "--table", str(table)]
                         + (["--experiments", experiments] if table == 2 else [])
                         + (["--epochs", str(epochs)] if epochs is not None else [])
                         + (["--steps", str(steps)] if steps is not None else [])
                         + ["--repeats", str(repeats), "--seed", str(seed)]
                         + (["--run-segmenter"] if run_segmenter else []) + ["--examples", str(examples), "--device", device])
    log = lambda msg: console.print(msg, soft_wrap=True, highlight=False)  # noqa: E731
    if table == 2:
        if len(synthetic) != 1 or "=" in synthetic[0]:
            raise ConfigError("--synthetic: Table 2 takes exactly one synthetic data set folder")
        rec = run_table2(run_dir, synthetic[0], out, experiments=experiments, epochs=epochs, steps=steps,
                         repeats=repeats, seed=seed, device=device, log=log, command=command, examples=examples)
        name = "table2"
    elif table == 1:
        pairs = {}
        for item in synthetic:
            if "=" not in item:
                raise ConfigError(f"--synthetic {item!r}: Table 1 takes VARIANT=DIR, e.g. 4SEG=runs/syn-4seg")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v.strip()
        rec = run_table1(run_dir, pairs, out, epochs=epochs, steps=steps, repeats=repeats, seed=seed, device=device,
                         use_run_segmenter=run_segmenter, log=log, command=command, examples=examples)
        name = "table1"
    else:
        raise ConfigError(f"--table: got {table}, expected 1 or 2")
    console.print((out / f"{name}.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out / f'{name}.md'} and {out / f'{name}.json'}")


def convert_brats2015(
    src: Path = typer.Argument(..., help="The extracted BRATS2015 folder (HGG/, LGG/ with VSD.*.mha files)."),
    out: Path = typer.Argument(..., help="Output data set folder: <case>/{t1n,t1c,t2w,t2f,seg}.nii.gz; existing cases are skipped."),
) -> None:
    """Convert BRATS2015 (Qu et al.'s data, .mha) into medsyn's subject folders (t1n, t1c, t2w, t2f, seg)."""
    from medsyn.data.brats2015 import convert_brats2015 as run_convert

    rec = run_convert(src, out, progress=lambda i, n, name: console.print(f"[{i}/{n}] {name}", highlight=False))
    n = len(rec["cases"])
    lab = sum(c["labelled"] for c in rec["cases"].values())
    console.print(f"wrote {n - rec['skipped_existing']} case(s) to [bold]{out}[/] ({rec['skipped_existing']} already "
                  f"there; {lab} with labels 0–4). Train Qu et al. on it with --set data.root={out} "
                  "--set params.n_classes=5", soft_wrap=True)


def figure(
    source: Path = typer.Argument(..., help="A synthetic data set (medsyn generate) or a segment-experiment folder (its table<k>_examples.npz)."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    n: int = typer.Option(4, "--n", help="Synthetic set: cases shown (its first ones)."),
    rows: Optional[str] = typer.Option(None, "--rows", help="Table 2 folder: the rows whose segmenters are shown, e.g. 1,2,17,22 (default: all)."),
    view: Optional[str] = typer.Option(None, "--view", help="Segmentation figures: the modality shown under the labels (default: the last, e.g. t2f)."),
) -> None:
    """Qu et al.'s figures: synthetic structure maps, masks and modalities (Figs. 7–8) or segmentation examples
    on real and synthetic test slices (Fig. 9, Table 1) and of segmenters trained on different data (Fig. 10, Table 2)."""
    from medsyn.reports.qu_figures import figure as draw

    console.print(f"wrote {draw(source, out, n=n, rows=rows, view=view)}")


qu_app = typer.Typer(help="Qu et al. data tools.", no_args_is_help=True)
qu_app.command("convert-brats2015")(convert_brats2015)
qu_app.command("figure")(figure)


def register(app: typer.Typer) -> None:
    """Add ``generate``, ``segment-experiment`` and ``qu …`` to the ``medsyn`` command line."""
    app.command("generate")(generate)
    app.command("segment-experiment")(segment_experiment)
    app.add_typer(qu_app, name="qu")
