"""The ``medsyn`` command line: thin typer commands that call the library.

User mistakes (bad data, config, checkpoint, output paths) raise :class:`medsyn.errors.MedsynError`
and are printed as one line on stderr with exit code 2 — no traceback. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from medsyn.errors import ConfigError, MedsynError

app = typer.Typer(
    name="medsyn",
    help="Medical image synthesis with GANs: train, predict and evaluate faithful implementations of "
    "published methods on NIfTI/DICOM volumes, keeping geometry and units.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: the files evaluate and report write into their --out folder
METRICS_JSON, METRICS_CSV, SEGMENTER_JSON = "metrics.json", "metrics.csv", "downstream.json"
REPORT_HTML, REPORT_MD = "report.html", "report.md"
#: exit code of interrupted work (Ctrl-C / SIGTERM), the shell's 128 + SIGINT
EXIT_INTERRUPTED = 130
console = Console(stderr=False)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from medsyn import __version__

        console.print(f"medsyn {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print medsyn's version and exit."),
) -> None:
    """Medical image synthesis with GANs: train, predict and evaluate faithful implementations of published
    methods on NIfTI/DICOM volumes, keeping geometry and units."""


def _split(value: Optional[str]) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _one_of(positional: Optional[Path], option: Optional[Path], name: str, flag: str) -> Path:
    """An input given either positionally or by its option (the older spelling), not both."""
    if positional is not None and option is not None and positional != option:
        raise ConfigError(f"{name} and {flag} both given ({positional} vs {option}); give one")
    value = positional if positional is not None else option
    if value is None:
        raise ConfigError(f"missing {name}: give it as an argument (or with {flag})")
    return value


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    """OutputError before any work when an output file exists and --force was not given."""
    from medsyn.errors import OutputError

    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise OutputError(f"{existing[0]}: exists; pass --force to overwrite it or choose another --out")


def _out_folder(out: Path, names: list[str], old_suffixes: tuple[str, ...], force: bool) -> Path:
    """``--out`` of a verb that writes several files: a folder (made if needed) that ``names`` are
    written into, as for train, predict, crossval and demo. Checked before any work: a file there
    (exit 2, also with --force: --force overwrites the verb's own outputs, never another file),
    an older file-style ``--out x.json`` that no folder of that name answers (refused with the
    new spelling), outputs already there (--force), and a place where no folder can be made."""
    from medsyn.errors import OutputError

    what = " and ".join(names)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: is a file; --out names the folder that {what} are written into; "
                          "choose a folder (a new one is made)")
    if not out.exists() and out.suffix.lower() in old_suffixes:
        raise OutputError(f"--out {out}: --out is a folder now ({what} are written into it), "
                          f"not a {out.suffix} file; give a folder, e.g. --out {out.with_suffix('')}")
    _refuse_overwrite([out / n for n in names], force)
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: cannot create the folder ({base} is not a writable folder); choose a writable --out")
    return out


# ------------------------------------------------------------------------------------------------
@app.command()
def verify(
    dataset: Path = typer.Argument(..., help="Dataset folder (subject folders of <modality>.nii.gz) or a CSV manifest."),
    modalities: Optional[str] = typer.Option(None, "--modalities", "-m", help="Comma-separated modalities every subject must have, e.g. t1n,t2w."),
    resample: bool = typer.Option(False, "--resample", help="Accept modalities on different grids (they will be resampled onto the first modality's grid)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="CSV manifest (subject, modality, path[, split]) instead of the folder layout."),
) -> None:
    """Check every subject: files fully readable, modalities present, one grid, finite values, masks, labels."""
    from medsyn.data.verify import verify_dataset

    rep = verify_dataset(dataset, _split(modalities), manifest=manifest, resample=resample)
    console.print(rep.layout_line, highlight=False, soft_wrap=True)
    table = Table(title=f"medsyn verify {rep.root}")
    table.add_column("subject")
    table.add_column("modalities")
    table.add_column("extra files")
    table.add_column("status")
    for s in rep.subjects:
        mods = ", ".join(f"{m} {d}" for m, d in s.modalities.items())
        table.add_row(s.id, mods, ", ".join(s.extra) or "-", "[green]ok[/]" if s.ok else f"[red]{len(s.problems)} problem(s)[/]")
    console.print(table)
    for p in rep.warnings:
        err_console.print(f"[yellow]warning[/] {p.message}", highlight=False, soft_wrap=True)
    if not rep.ok:
        for p in rep.problems:
            err_console.print(f"[red]error[/] {p.path}: {p.message}", highlight=False, soft_wrap=True)
        err_console.print(f"{len(rep.problems)} problem(s) in {sum(not s.ok for s in rep.subjects)} of {len(rep.subjects)} subjects")
        raise typer.Exit(2)
    console.print(f"[green]{len(rep.subjects)} subjects ok[/]")


# ------------------------------------------------------------------------------------------------
@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config or the name of a bundled one, e.g. nie2018_brats_t1_t2 (`medsyn configs` lists them; omit with --resume; omitted otherwise: the defaults)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train.batch_size=4 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to create (default runs/<method>-<time>)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N generator updates."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Stop after M minutes of training."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its newest good checkpoint."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change", help="Resume even if the config differs (the differences are listed)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (overrides train.device)."),
) -> None:
    """Train a method from a YAML config; the run folder holds everything to resume, predict and report."""
    from medsyn.config import load_config
    from medsyn.training.engine import Trainer, default_out
    from medsyn.training.run_dir import RunDir

    overrides = list(set_)
    if max_steps is not None:
        overrides.append(f"train.max_steps={max_steps}")
    if minutes is not None:
        overrides.append(f"train.minutes={minutes}")
    if device is not None:
        overrides.append(f"train.device={device}")
    if resume is not None:
        if not RunDir(resume).exists():
            from medsyn.errors import CheckpointError

            raise CheckpointError(f"--resume {resume}: not a medsyn run folder (no config.yaml), nothing to resume; "
                                  "start a new run with --out")
        base = config if config is not None else RunDir(resume).config_path
        cfg = load_config(base, overrides)
        run_path = resume
    else:
        cfg = load_config(config, overrides)  # no CONFIG: the defaults (Nie et al. on the sample)
        run_path = out or default_out(cfg)
    from medsyn.training.distributed import launch_train

    result = launch_train(cfg, run_path, resume=resume is not None, allow_config_change=allow_config_change, console=console)
    if result is not None:
        console.print(f"run folder: [bold]{result.run_dir}[/] (step {result.step}, {result.stopped})")
        if result.stopped == "interrupted":  # checkpoint saved; still not finished work
            raise typer.Exit(EXIT_INTERRUPTED)


# ------------------------------------------------------------------------------------------------
@app.command()
def preprocess(
    config: Optional[Path] = typer.Argument(None, help="YAML config whose data a training would read (omitted: the defaults)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set data.cache_dir=/scratch/cache (repeatable)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes building the cache (default data.cache_workers)."),
) -> None:
    """Build the preprocessed cache of CONFIG's training and validation subjects (what the first
    `medsyn train` does), checking every entry's checksum and rebuilding damaged or stale ones."""
    from medsyn.config import load_config
    from medsyn.data.cache import preprocess_dataset

    cache, metas = preprocess_dataset(load_config(config, list(set_)).data, workers=workers, log=console.print)
    console.print(f"[green]{len(metas)} subject(s) ready[/] in {cache.dir}")


# ------------------------------------------------------------------------------------------------
@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder made by `medsyn train`."),
    inputs: list[Path] = typer.Argument(..., help="Subject folder(s), a dataset folder, or single image files."),
    out: Path = typer.Option(..., "--out", help="Output folder: <out>/<subject>/<target>.nii.gz."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    confidence: bool = typer.Option(False, "--confidence", help="Also write the method's confidence map (Nie et al.'s D2) as <target>_confidence.nii.gz."),
    confidence_bn: str = typer.Option("eval", "--confidence-bn", help="D2's batch norm for --confidence: eval (running statistics; each window's map depends on that window only, the default) or train (the statistics of each batch of windows, as during training; docs/nie2018.md)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (by validation metric) or last."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    missing: bool = typer.Option(False, "--missing", help="BraSyn run: per subject, synthesise the one absent contrast and write it with the dataset's own naming (e.g. <id>/<id>-t2w.nii.gz); exit 2 if any subject could not be completed."),
    full_fov: bool = typer.Option(False, "--full-fov", help="Compute every window of every slice (inference.region=full) instead of only the source foreground's box; needed only where values outside the mask matter."),
    amp: bool = typer.Option(False, "--amp", help="bf16 autocast (inference.amp): CUDA, or a CPU with native bf16; differs from fp32 by ~1e-3."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the generator (inference.compile): minutes of compilation first, pays off over many volumes."),
    continue_: bool = typer.Option(False, "--continue", help="Skip subjects whose output exists (resume an interrupted batch)."),
    overlap: Optional[float] = typer.Option(None, "--overlap", help="Sliding-window overlap in [0, 1) (overrides inference.overlap)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Windows per forward pass (overrides inference.batch_size)."),
    set_: list[str] = typer.Option([], "--set", help="Override an inference key of the run's config: --set inference.blend=uniform (repeatable)."),
) -> None:
    """Synthesise the run's target modality for whole volumes, in the input's geometry and real units.
    A subject that fails (bad input) is reported and the others are still written; exit code 2 then."""
    if missing:
        return _predict_missing(run_dir, inputs, out, force=force, checkpoint=checkpoint, device=device)

    from medsyn.inference.predict import collect_subjects, load_run, predict_subjects, with_inference_overrides
    from medsyn.training.progress import BarOrLines, stamp

    if checkpoint not in ("best", "last"):
        raise typer.BadParameter("--checkpoint must be best or last")
    if confidence_bn not in ("eval", "train"):
        raise typer.BadParameter(f"--confidence-bn must be eval or train, got {confidence_bn!r}")
    overrides = list(set_) + ([f"inference.overlap={overlap}"] if overlap is not None else []) + (
        [f"inference.batch_size={batch_size}"] if batch_size is not None else [])
    run = load_run(run_dir, checkpoint, device)
    if confidence_bn != "eval":
        if not hasattr(run.method, "confidence_bn"):
            raise typer.BadParameter(f"--confidence-bn: method {run.cfg.method!r} has no batch-normalised confidence map")
        run.method.confidence_bn = confidence_bn
    run.cfg = with_inference_overrides(run.cfg, overrides)
    inf = run.cfg.inference
    inf.region = "full" if full_fov else inf.region
    inf.amp, inf.compile = inf.amp or amp, inf.compile or compile_model
    subjects = collect_subjects(inputs, list(run.cfg.data.source))
    bars: dict[str, BarOrLines] = {}

    def cb(sid: str, done: int, total: int) -> None:
        if sid not in bars:
            for b in bars.values():
                b.stop()
            if not console.is_terminal:
                i = next(i for i, s in enumerate(subjects, 1) if s.id == sid)
                console.print(f"{stamp()} predict subject {i}/{len(subjects)}: {sid}", highlight=False, soft_wrap=True)
            bars[sid] = BarOrLines(f"predict {sid}", total, console, unit="window")
        bars[sid].update(done)

    failures: list[tuple[str, str]] = []
    try:
        written = predict_subjects(run, subjects, out, force=force, write_confidence=confidence, progress=cb,
                                   skip_existing=continue_, failures=failures if len(subjects) > 1 else None)
    finally:
        for b in bars.values():
            b.stop()
    for p in written:
        console.print(f"wrote {p}", soft_wrap=True)
    if failures:
        for sid, msg in failures:
            err_console.print(f"[red]error:[/] subject {sid}: {msg}", highlight=False, soft_wrap=True)
        err_console.print(f"{len(failures)} of {len(subjects)} subject(s) failed; the others were written "
                          "(fix the inputs and rerun with --continue)", soft_wrap=True)
        raise typer.Exit(2)


def _predict_missing(run_dir: Path, inputs: list[Path], out: Path, *, force: bool, checkpoint: str, device: str) -> None:
    """``predict --missing``: complete each subject's absent contrast (medsyn.methods.brasyn)."""
    from medsyn.methods.brasyn import predict_missing

    if checkpoint not in ("best", "last"):
        raise typer.BadParameter("--checkpoint must be best or last")
    res = predict_missing(run_dir, list(inputs), out, which=checkpoint, device=device, force=force)
    for p in res.written:
        console.print(f"wrote {p}", highlight=False, soft_wrap=True)
    for line in res.problems:
        err_console.print(f"[red]error[/] {line}", highlight=False, soft_wrap=True)
    if res.problems:
        err_console.print(f"{len(res.problems)} subject(s) not completed, {len(res.written)} completed")
        raise typer.Exit(2)


# ------------------------------------------------------------------------------------------------
@app.command()
def evaluate(
    pred_arg: Optional[Path] = typer.Argument(None, metavar="PRED", help="Prediction folder: <subject>/<modality>.nii.gz (or --pred)."),
    ref_arg: Optional[Path] = typer.Argument(None, metavar="REF", help="Reference dataset folder or 'sample' (or --ref)."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="Prediction folder (same as PRED)."),
    ref: Optional[Path] = typer.Option(None, "--ref", help="Reference dataset (same as REF)."),
    modality: Optional[str] = typer.Option(None, "--modality", help="Modality to compare, e.g. t2w or ct (required unless --segmenter)."),
    out: Path = typer.Option(Path("."), "--out", help="Folder for metrics.json and metrics.csv (made if needed; default: the current folder). With --segmenter: downstream.json."),
    mask: str = typer.Option("auto", "--mask", help="Foreground: auto (brainmask/bodymask, else computed), or a file name such as brainmask or seg."),
    data_range: str = typer.Option("ref", "--data-range", help="'ref' (per-subject max-min of the reference in the mask) or a number (e.g. 4024 for CT HU)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated metrics (default mae,mse,psnr,ssim,ssim3d,uqi; also ms_ssim, vif, and lpips with weights)."),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help="LPIPS v0.1 linear heads (.pth/.safetensors, e.g. lpips/weights/v0.1/alex.pth from the 'lpips' wheel); adds the lpips metric. Never downloaded."),
    lpips_backbone: Optional[Path] = typer.Option(None, "--lpips-backbone", help="ImageNet trunk for LPIPS in torchvision's alexnet/vgg16 state-dict layout (not needed if --lpips-weights holds a whole lpips.LPIPS state dict)."),
    lpips_net: str = typer.Option("alex", "--lpips-net", help="LPIPS trunk the files are for: alex or vgg."),
    protocol: str = typer.Option("default", "--protocol", help="default (medsyn's metrics), or a challenge's official scorer: brasyn, synthrad2023, synthrad2025 (docs/challenges.md)."),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="BraSyn downstream check: a Qu et al. pipeline run whose 4-contrast segmenter segments each subject with its real and with its completed contrasts (--pred: the completed contrasts); Dice per label and region."),
    force: bool = typer.Option(False, "--force", help="Overwrite metrics.json and metrics.csv (or downstream.json) already in --out."),
) -> None:
    """Per-subject and summary metrics (MAE, PSNR, SSIM, ...) per region, with the data range and mask stated.
    Inputs are positional as for predict and report: `medsyn evaluate PRED REF --modality t2w`."""
    from medsyn.data.dataset import resolve_root
    from medsyn.io.image import make_output_dir
    from medsyn.metrics.evaluate import evaluate_predictions, write_results

    pred, ref = _one_of(pred_arg, pred, "PRED", "--pred"), _one_of(ref_arg, ref, "REF", "--ref")
    if segmenter is not None:
        _out_folder(out, [SEGMENTER_JSON], (".json",), force)
        return _evaluate_segmenter(segmenter, pred, resolve_root(str(ref)), out / SEGMENTER_JSON)
    _out_folder(out, [METRICS_JSON, METRICS_CSV], (".json", ".csv"), force)
    if modality is None:
        raise ConfigError("--modality: give the modality to compare, e.g. --modality t2w (or --segmenter RUN)")

    model = None
    if lpips_weights is not None:
        from medsyn.metrics.lpips import load_lpips

        model = load_lpips(lpips_weights, lpips_backbone, net=lpips_net)
    elif lpips_backbone is not None:
        raise ConfigError("--lpips-backbone is given without --lpips-weights; LPIPS needs its linear heads too")
    res = evaluate_predictions(pred, resolve_root(str(ref)), modality, mask=mask, data_range=data_range,
                               metrics=_split(metrics), lpips_model=model, protocol=protocol)
    make_output_dir(out)
    j, c = write_results(res, out / METRICS_JSON)
    _print_summary(res)
    console.print(f"wrote {j} and {c}")


def _evaluate_segmenter(run: Path, pred: Path, ref: Path, out: Path) -> None:
    """``evaluate --segmenter``: Dice with real vs completed inputs (medsyn.metrics.downstream)."""
    from medsyn.metrics.downstream import segmenter_dice, write_segmenter_results

    res = segmenter_dice(run, pred, ref)
    table = Table(title=f"segmenter Dice, mean over {len(res['per_subject'])} subjects")
    table.add_column("inputs", no_wrap=True)
    keys = list(res["summary"]["real"])
    for k in keys:
        table.add_column(k)
    for kind in ("real", "completed", "difference"):
        table.add_row(kind, *(f"{res['summary'][kind][k]:+.4f}" if kind == "difference" else f"{res['summary'][kind][k]:.4f}"
                              for k in keys))
    console.print(table)
    console.print(f"wrote {write_segmenter_results(res, out)}")


def _print_summary(res: dict) -> None:
    table = Table(title="summary (mean ± std over subjects)")
    table.add_column("region", no_wrap=True)
    metrics = res["settings"]["metrics"]
    for m in metrics:
        table.add_column(m)
    for region, vals in res["summary"].items():
        row = []
        for m in metrics:
            v = vals.get(m, {})
            mean, std = v.get("mean"), v.get("std")
            if mean is None or mean != mean:
                row.append("-")
            else:
                row.append(f"{mean:.4g}" + (f" ± {std:.2g}" if std is not None and std == std else ""))
        table.add_row(region, *row)
    console.print(table)


# ------------------------------------------------------------------------------------------------
@app.command()
def methods() -> None:
    """List the available methods, baselines and ablations with one line each."""
    from medsyn.methods import METHODS

    table = Table(title="medsyn methods")
    table.add_column("name")
    table.add_column("what it is")
    for name, spec in METHODS.items():
        table.add_row(name, spec.summary)
    console.print(table)


@app.command()
def configs() -> None:
    """List the bundled paper configs: `medsyn train NAME` runs one from any folder."""
    from medsyn.config import config_dirs, read_yaml

    table = Table(title="medsyn configs")
    table.add_column("name")
    table.add_column("method")
    table.add_column("extends")
    seen = set()
    for d in config_dirs():
        for p in sorted(d.glob("*.yaml")):
            if p.stem not in seen:
                seen.add(p.stem)
                data = read_yaml(p)
                table.add_row(p.stem, str(data.get("method", "(from extends)")), str(data.get("extends", "-")))
    console.print(table)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run folders."),
    out: Path = typer.Option(Path("."), "--out", help="Folder for report.html, report.md and report_files/ (made if needed; default: the current folder)."),
    pred: list[Path] = typer.Option([], "--pred", help="Prediction folder (<subject>/<target>.nii.gz) to evaluate instead of predicting; one per run, in order (repeatable)."),
    ref: Optional[Path] = typer.Option(None, "--ref", help="Reference dataset for the metrics (default: each run's data.root; 'sample' for the bundled sample)."),
    subjects: Optional[str] = typer.Option(None, "--subjects", help="Comma-separated subjects to predict and show (default: the run's test split, else val); with --pred, the subjects to show."),
    device: str = typer.Option("auto", "--device", help="Device for the report's own predictions: auto, cpu, cuda."),
    study: Optional[Path] = typer.Option(None, "--study", help="A reader-study folder (medsyn reader-study): adds its Table III."),
    force: bool = typer.Option(False, "--force", help="Overwrite a report already in --out."),
) -> None:
    """HTML report of one or more runs: config, data, training curves, metric tables, image grids, error analysis,
    a comparison table with paired tests, and a model card in each run folder."""
    from medsyn.reports.html import write_report

    _out_folder(out, [REPORT_HTML, REPORT_MD], (".html", ".htm", ".md"), force)  # write_report makes the folder
    path = write_report(run_dirs, out / REPORT_HTML, pred_dirs=pred, ref=str(ref) if ref is not None else None,
                        subjects=_split(subjects), device=device, log=lambda m: console.print(m, highlight=False),
                        study=study)
    console.print(f"wrote {path}")


@app.command()
def demo(
    minutes: float = typer.Option(3.0, "--minutes", help="Training time budget in minutes."),
    out: Path = typer.Option(Path("medsyn-demo"), "--out", help="Folder for the demo's run, predictions and metrics."),
    device: str = typer.Option("auto", "--device", help="auto (GPU if available), cpu, cuda."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap the training steps (for a quick check)."),
) -> None:
    """Train Nie et al.'s dual-discriminator + attention model (t1n → t2w) on the bundled sample, predict the
    held-out subject, evaluate it, and print where everything is."""
    from medsyn.cli.demo import run_demo

    run_demo(minutes=minutes, out=out, device=device, max_steps=max_steps, console=console)


# ------------------------------------------------------------------------------------------------
# Sub-command groups of other modules (one line each):
# medsyn-subcommands
from medsyn.cli.qu import register as _register_qu; _register_qu(app)  # noqa: E402
from medsyn.cli.bench import register as _register_bench; _register_bench(app)  # noqa: E402
from medsyn.cli.crossval import register as _register_crossval; _register_crossval(app)  # noqa: E402
from medsyn.cli.prepare import prepare_app; app.add_typer(prepare_app, name="prepare")  # noqa: E402
from medsyn.cli.study import study_app; app.add_typer(study_app, name="reader-study")  # noqa: E402


# ------------------------------------------------------------------------------------------------
_default_formatwarning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """medsyn's own warnings as one line (no source file and line); others as Python prints them."""
    from medsyn.errors import MedsynWarning

    if issubclass(category, MedsynWarning):
        return f"warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line and exit code 2 for user errors; tracebacks only for bugs."""
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    warnings.formatwarning = _format_warning
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:monai")
    from medsyn.training.distributed import exit_after_distributed

    return exit_after_distributed(_run(argv))


def _run(argv: list[str] | None) -> int:
    from typer._click.exceptions import ClickException
    from typer.exceptions import Abort, Exit

    try:
        rc = app(args=argv, standalone_mode=False)  # returns typer.Exit's code in this mode
    except MedsynError as e:
        err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except Exit as e:
        return e.exit_code
    except Abort:
        err_console.print("aborted")
        return EXIT_INTERRUPTED
    except ClickException as e:
        e.show()
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return EXIT_INTERRUPTED
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
