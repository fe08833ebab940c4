"""``medsyn prepare``: write paired datasets for MedGAN's tasks (and the MRI→CT phantom) from real images.

Each command reads a dataset folder (subject folders of ``<modality>.nii.gz``, or ``sample`` for
the bundled sample) and writes a normal medsyn dataset into OUT, with ``prepare.json`` recording
the task, every generation parameter and the seed (per subject: the derived seed and the values
drawn). OUT must not exist or be empty unless ``--force`` (or its older spelling ``--overwrite``). Then train on it with
``--set data.root=OUT`` and the modalities printed at the end.

    medsyn prepare motion SRC OUT [--modality t2w] [--seed 0] [--size 256 --spacing 1]
    medsyn prepare denoise SRC OUT [--modality t1n] [--noise rician|poisson] [--level L] [--seed 0]
    medsyn prepare translation-2d SRC OUT [--source t1n] [--target t2w] [--size 256] [--spacing 1]
    medsyn prepare ct-phantom SRC OUT [--source t1n] [--seed 0]

User mistakes raise :mod:`medsyn.errors` exceptions: the CLI prints one line and exits with 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

prepare_app = typer.Typer(
    help="Write paired datasets from real images: MR motion correction, denoising, 2D cross-modality slices "
    "(MedGAN's tasks) and the MRI→CT phantom. Each records its parameters and seed in prepare.json.",
    no_args_is_help=True,
)

SRC_HELP = "Dataset folder of subject folders (<subject>/<modality>.nii.gz), or 'sample' for the bundled sample."
OUT_HELP = "Output dataset folder (must not exist or be empty, unless --force)."
SIZE_HELP = ("Reslice to SIZE×SIZE axial slices (MedGAN: 256) after the corruption; default: keep each "
             "subject's own grid.")
SPACING_HELP = "In-plane spacing in mm of the resliced slices (MedGAN's MR data: 1); needs --size. Default: native."


def _report(out: Path) -> None:
    from medsyn.cli.main import console

    info = {}
    manifest = out / "prepare.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
    pair = info.get("pair") or ({"source": [info["source_modality"]], "target": "ct"} if "source_modality" in info else {})
    n = len(info.get("subjects", []))
    console.print(f"wrote {out} ({n} subjects, task {info.get('task', '?')}, seed {info.get('seed')})",
                  markup=False, highlight=False)
    if pair:
        src = ",".join(pair.get("source", []))
        console.print(f"train on it with: --set data.root={out} --set data.source=[{src}] "
                      f"--set data.target={pair.get('target')}", markup=False, highlight=False, soft_wrap=True)


@prepare_app.command("motion")
def motion(
    src: str = typer.Argument(..., help=SRC_HELP),
    out: Path = typer.Argument(..., help=OUT_HELP),
    modality: str = typer.Option("t2w", "--modality", help="Modality to corrupt; writes <modality>_motion (source) and <modality> (target)."),
    seed: int = typer.Option(0, "--seed", help="Seed; each subject's own seed is derived from it and its id."),
    degrees: float = typer.Option(10.0, "--degrees", help="Rotations drawn from U(-d, d) degrees about each axis."),
    translation: float = typer.Option(10.0, "--translation", help="Translations drawn from U(-t, t) mm."),
    num_transforms: int = typer.Option(2, "--num-transforms", help="Number of movements during the acquisition."),
    ghosting: bool = typer.Option(False, "--ghosting", help="Also add ghosting artefacts (TorchIO RandomGhosting)."),
    size: Optional[int] = typer.Option(None, "--size", help=SIZE_HELP),
    spacing: Optional[float] = typer.Option(None, "--spacing", help=SPACING_HELP),
    overwrite: bool = typer.Option(False, "--force", "--overwrite", help="Replace a non-empty OUT (--overwrite: the older spelling)."),
) -> None:
    """MR motion correction (MedGAN Sec. 3.1 b): rigid-motion k-space artefacts → motion-free image."""
    from medsyn.data.prepare import prepare_motion

    _report(prepare_motion(src, out, modality=modality, seed=seed, degrees=degrees, translation=translation,
                           num_transforms=num_transforms, ghosting=ghosting, size=size, spacing=spacing,
                           overwrite=overwrite))


@prepare_app.command("denoise")
def denoise(
    src: str = typer.Argument(..., help=SRC_HELP),
    out: Path = typer.Argument(..., help=OUT_HELP),
    modality: str = typer.Option("t1n", "--modality", help="Modality to corrupt; writes <modality>_noisy (source) and <modality> (target)."),
    seed: int = typer.Option(0, "--seed", help="Seed; each subject's own seed is derived from it and its id."),
    noise: str = typer.Option("rician", "--noise", help="rician (MR magnitude) or poisson (PET-like low count)."),
    level: Optional[float] = typer.Option(None, "--level", help="rician: σ / mean foreground intensity (default 0.05); poisson: mean counts per foreground voxel (default 20)."),
    size: Optional[int] = typer.Option(None, "--size", help=SIZE_HELP),
    spacing: Optional[float] = typer.Option(None, "--spacing", help=SPACING_HELP),
    overwrite: bool = typer.Option(False, "--force", "--overwrite", help="Replace a non-empty OUT (--overwrite: the older spelling)."),
) -> None:
    """Denoising (MedGAN Sec. 3.1 c): noisy image → clean image."""
    from medsyn.data.prepare import prepare_denoise

    _report(prepare_denoise(src, out, modality=modality, seed=seed, noise=noise, level=level, size=size,
                            spacing=spacing, overwrite=overwrite))


@prepare_app.command("translation-2d")
def translation_2d(
    src: str = typer.Argument(..., help=SRC_HELP),
    out: Path = typer.Argument(..., help=OUT_HELP),
    source: str = typer.Option("t1n", "--source", help="Source modality."),
    target: str = typer.Option("t2w", "--target", help="Target modality."),
    size: int = typer.Option(256, "--size", help="Slice size in pixels (MedGAN: 256)."),
    spacing: Optional[float] = typer.Option(1.0, "--spacing", help="In-plane spacing in mm (MedGAN: 1)."),
    native_spacing: bool = typer.Option(False, "--native-spacing", help="Keep the native in-plane spacing (ignores --spacing)."),
    slices: Optional[tuple[int, int]] = typer.Option(None, "--slices", help="Axial slice range K0 K1 (default: the slices holding ≥ 10 % of the largest foreground)."),
    min_foreground: float = typer.Option(0.1, "--min-foreground", help="Keep slices whose foreground is at least this share of the largest."),
    overwrite: bool = typer.Option(False, "--force", "--overwrite", help="Replace a non-empty OUT (--overwrite: the older spelling)."),
) -> None:
    """Cross-modality 2D translation: axial SOURCE → TARGET slice pairs, SIZE×SIZE at SPACING mm (deterministic, no seed)."""
    from medsyn.data.prepare import prepare_translation_2d

    _report(prepare_translation_2d(src, out, source=source, target=target, size=size,
                                   spacing=None if native_spacing else spacing, slices=slices,
                                   min_foreground=min_foreground, overwrite=overwrite))


@prepare_app.command("ct-phantom")
def ct_phantom(
    src: str = typer.Argument(..., help=SRC_HELP),
    out: Path = typer.Argument(..., help=OUT_HELP),
    source: str = typer.Option("t1n", "--source", help="MR modality the CT phantom is built from."),
    seed: int = typer.Option(0, "--seed", help="Seed of the phantom's noise."),
    overwrite: bool = typer.Option(False, "--force", "--overwrite", help="Replace a non-empty OUT (--overwrite: the older spelling)."),
) -> None:
    """MRI → CT phantom: tissue classes of the MR mapped to Hounsfield units plus a skull (medsyn.data.phantom)."""
    from medsyn.data.dataset import resolve_root
    from medsyn.data.phantom import prepare_ct_phantom
    from medsyn.errors import DatasetError

    root = resolve_root(src)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass a folder of subject folders (or 'sample')")
    _report(prepare_ct_phantom(root, out, source=source, seed=seed, overwrite=overwrite))
