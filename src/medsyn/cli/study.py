"""``medsyn reader-study create|serve|analyse``: MedGAN's perceptual study (Sec. 3.2.3) as a product."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

study_app = typer.Typer(help="Reader studies: which image is real? Create, serve to radiologists, analyse (Table III).",
                        no_args_is_help=True)


@study_app.command("create")
def create(
    study: Path = typer.Argument(..., help="Study folder to create (must not exist or be empty)."),
    ref: str = typer.Option(..., "--ref", help="Reference dataset with the real images (or 'sample')."),
    modality: str = typer.Option(..., "--modality", help="Modality compared, e.g. t2w or ct."),
    method: list[str] = typer.Option(..., "--method", help="NAME=PREDICTION_FOLDER (repeatable), e.g. MedGAN=pred/medgan."),
    readers: str = typer.Option(..., "--readers", help="Comma-separated reader names; each gets a personal link."),
    trials: int = typer.Option(60, "--trials", help="Trials (MedGAN: 60 per task)."),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing slices and orders (recorded)."),
    size: int = typer.Option(256, "--size", help="Image side in pixels (MedGAN: 256); 0 = native size."),
    stratify: bool = typer.Option(True, "--stratify/--no-stratify", help="Alternate slices with and without tumour."),
    subjects: Optional[str] = typer.Option(None, "--subjects", help="Comma-separated subjects to draw from (default: all predicted)."),
    title: Optional[str] = typer.Option(None, "--title", help="Title shown to readers."),
) -> None:
    """Draw trials (the same slice from the reference and every method) and render them under opaque names."""
    from medsyn.cli.main import _split, console
    from medsyn.errors import ConfigError
    from medsyn.study.create import create_study, read_study

    methods = {}
    for m in method:
        if "=" not in m:
            raise ConfigError(f"--method {m!r}: expected NAME=PREDICTION_FOLDER")
        name, path = m.split("=", 1)
        if name in methods:
            raise ConfigError(f"--method: {name!r} given twice")
        methods[name] = path
    out = create_study(ref, methods, modality, study, readers=_split(readers) or [], trials=trials, seed=seed,
                       size=size, stratify=stratify, title=title, subjects=_split(subjects))
    _, tokens = read_study(out)
    console.print(f"created {out}: {trials} trials × {len(methods) + 1} images; readers: {', '.join(tokens)}")
    console.print(f"serve it with: medsyn reader-study serve {out}   (the links are printed there)")


@study_app.command("serve")
def serve(
    study: Path = typer.Argument(..., help="Study folder made by `medsyn reader-study create`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8765, "--port", help="Port."),
) -> None:
    """Run the reading web app; each reader opens a personal link. Answers are saved as they are submitted."""
    from medsyn.cli.main import console
    from medsyn.study.server import serve as run

    run(study, host=host, port=port, log=lambda m: console.print(m, highlight=False, soft_wrap=True))


@study_app.command("analyse")
def analyse(
    study: Path = typer.Argument(..., help="Study folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for table3.md and table3.json (default: the study folder)."),
    force: bool = typer.Option(False, "--force", help="Overwrite table3.md and table3.json already there (e.g. after more answers came in)."),
) -> None:
    """Table III: mean score and % judged real per method, per reader and overall; agreement; paired tests."""
    from medsyn.cli.main import _out_folder, console
    from medsyn.io.image import atomic_write_bytes, make_output_dir
    from medsyn.metrics.evaluate import json_safe
    from medsyn.study.analyse import analyse_study, to_markdown

    res = analyse_study(study)
    folder = make_output_dir(_out_folder(out or study, ["table3.md", "table3.json"], (".md", ".json"), force))
    md = to_markdown(res)
    atomic_write_bytes(Path(folder) / "table3.md", md.encode())
    atomic_write_bytes(Path(folder) / "table3.json", json.dumps(json_safe(res), indent=1).encode())
    console.print(md, highlight=False, markup=False)
    console.print(f"wrote {Path(folder) / 'table3.md'} and {Path(folder) / 'table3.json'}")
