"""Reproduce MedGAN's comparisons on a prepared task with one training budget for every method.

Trains MedGAN, its baselines (Table II: pix2pix, PAN, ID-CGAN, Fila-sGAN), its loss ablations
(Table I: cGAN, perceptual, style-content, MedGAN-1G) and the CasNet depth study (Appendix A,
Fig. 6: pix2pix with 1–7 U-blocks) with the same config, seed, data and number of training
steps; predicts the held-out volumes with ``medsyn predict``'s code; scores every test image (an
axial slice holding foreground) with SSIM, PSNR, MSE, VIF, UQI (and LPIPS when weights are
supplied); writes ``table.md`` + ``results.json`` (mean ± std over test images) and the CasNet
depth curve ``casnet_depth.png``.

    # CPU, small networks, random VGG-19 features (no pretrained file here): the reported run
    python scripts/reproduce_medgan.py --task motion --small --steps 60 --random-vgg --out runs/medgan-repro

    # the paper's networks and budget on a GPU, with ImageNet VGG-19 weights
    python scripts/reproduce_medgan.py --task motion --epochs 200 --device cuda \\
        --vgg19-weights /models/vgg19.pth --set data.root=/data/motion_prepared --out runs/medgan-motion

One training step is one iteration of MedGAN's Algorithm 1 for every method (N_G = 3 generator
updates, then one discriminator update, on one training slice), so equal steps = equal updates
and equal training slices (same seed → same slices in the same order).

Metrics are computed in the target's own units (the MR scale), inside the foreground mask of the
reference (as ``medsyn evaluate --mask auto``), with the data range of each test subject
(max − min of the reference inside that mask), per axial slice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "motion": ("configs/medgan_motion.yaml", "MR motion correction (Table II b)"),
    "denoise": ("configs/medgan_denoise.yaml", "denoising (Table II c)"),
    "t1-t2": ("configs/medgan_t1_t2.yaml", "cross-modality translation T1 → T2 (in place of PET → CT, Table II a)"),
}
GROUPS = {
    "table2": ["pix2pix", "pan", "id-cgan", "fila-sgan", "medgan"],
    "table1": ["medgan-cgan", "medgan-perceptual", "medgan-style-content", "medgan-1g", "medgan"],
    "depth": [f"pix2pix-casnet-{n}" for n in range(1, 8)],
}
LABELS = {"pix2pix": "pix2pix", "pan": "PAN", "id-cgan": "ID-CGAN", "fila-sgan": "Fila-sGAN", "medgan": "MedGAN",
          "medgan-cgan": "cGAN", "medgan-perceptual": "Perceptual", "medgan-style-content": "Style-content",
          "medgan-1g": "MedGAN-1G", "medgan-noVGG": "MedGAN (no VGG)",
          "input": "input, uncorrected (reference row)"}
#: runs that are the same configuration under two names (trained once)
SAME_AS = {"pix2pix-casnet-1": "pix2pix"}
METRICS = ("ssim", "psnr", "mse", "vif", "uqi", "psnr8", "mse8")
#: UQI windows: Wang & Bovik's own 8×8 sliding uniform window (the index MedGAN cites; the default
#: here) or torchmetrics' 11×11 Gaussian (medsyn evaluate's ``uqi``); every table names its window
UQI_WINDOWS = {"wang-bovik-8": ("uqi_wb", "UQI (8×8 uniform)"), "gaussian-11": ("uqi", "UQI (11×11 Gaussian)")}
HEADERS = {"ssim": "SSIM", "psnr": "PSNR (dB)", "mse": "MSE", "vif": "VIF", "uqi": UQI_WINDOWS["wang-bovik-8"][1],
           "psnr8": "PSNR 8-bit (dB)", "mse8": "MSE 8-bit", "lpips": "LPIPS"}
#: the CPU preset: whole 2 mm sample slices (72×~90) in 96×96 inputs, 16-filter networks
SMALL = ["params.base_channels=16", "params.d_base_channels=16", "params.depth=5", "data.patch_size=[96,96]"]
#: the bundled sample: train on one subject, test on the other (the GLI case has flipped axes and a tumour)
SAMPLE_SPLIT = (["BraTS-MET-00110-000"], ["BraTS-GLI-00000-000"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--task", choices=sorted(TASKS), default="motion", help="prepared task (its MedGAN config)")
    p.add_argument("--config", type=Path, help="a config instead of the task's (methods are switched with method=)")
    p.add_argument("--out", type=Path, default=Path("runs/medgan-repro"), help="folder for runs, predictions, table")
    p.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=["table2", "table1", "depth"])
    p.add_argument("--methods", nargs="+", help="explicit method names instead of --groups")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="training steps per method (Alg. 1 iterations)")
    budget.add_argument("--epochs", type=int, default=None, help="epochs per method (the config's epoch size)")
    p.add_argument("--small", action="store_true", help="CPU preset: " + " ".join(SMALL))
    p.add_argument("--vgg19-weights", type=Path, help="ImageNet VGG-19 weights (torchvision layout, .pth/.safetensors)")
    p.add_argument("--random-vgg", action="store_true",
                   help="no pretrained file: use a seeded random-weight VGG-19 (style/content of random features; "
                        "labelled as such in the table)")
    p.add_argument("--lpips-weights", type=Path,
                   help="LPIPS v0.1 linear heads, e.g. lpips/weights/v0.1/alex.pth from the 'lpips' wheel "
                        "(the LPIPS column needs them)")
    p.add_argument("--lpips-backbone", type=Path,
                   help="ImageNet trunk for LPIPS in torchvision's alexnet/vgg16 layout (.pth/.safetensors)")
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"), help="LPIPS trunk")
    p.add_argument("--train", nargs="+", help="training subject ids (default: the config's split)")
    p.add_argument("--test", nargs="+", help="test subject ids (default: the config's split)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every method (repeatable)")
    p.add_argument("--uqi-window", choices=sorted(UQI_WINDOWS), default="wang-bovik-8",
                   help="UQI window: Wang & Bovik's 8×8 uniform (cited by MedGAN) or an 11×11 Gaussian")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-foreground", type=float, default=0.1,
                   help="a test image is an axial slice whose foreground is ≥ this share of the largest")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs found in --out")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a busy shared machine)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------


def method_list(args: argparse.Namespace) -> list[str]:
    if args.methods:
        return list(dict.fromkeys(args.methods))
    names: list[str] = []
    for g in args.groups:
        names += GROUPS[g]
    return list(dict.fromkeys(names))


def random_vgg_file(path: Path, seed: int = 0) -> Path:
    """A seeded random-weight VGG-19 in torchvision layout (safetensors), for runs without a pretrained file."""
    import torch
    from safetensors.torch import save_file

    from medsyn.models.vgg import VGG19

    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sd = {k: v.contiguous() for k, v in VGG19().state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(path))
    return path


def base_overrides(args: argparse.Namespace, vgg: Path | None, train: list[str] | None,
                   test: list[str] | None) -> list[str]:
    o = [f"train.seed={args.seed}", f"train.device={args.device}", "train.sample_every=0",
         "train.checkpoint_every=0", "data.val=[]", "train.log_every=10"]
    if args.small:
        o += SMALL
    if vgg is not None:
        o.append(f"params.vgg19_weights={vgg}")
    if train is not None:
        o.append(f"data.train=[{','.join(train)}]")
    if test is not None:
        o.append(f"data.test=[{','.join(test)}]")
    if args.steps is not None:
        o.append(f"train.max_steps={args.steps}")
    if args.epochs is not None:
        o.append(f"train.epochs={args.epochs}")
    return o + list(args.overrides)


def finished(run: Path, steps: int | None) -> bool:
    from medsyn.training import checkpoint as ckpt

    if not (run / "best.json").is_file():
        return False
    last = ckpt.list_checkpoints(run / "checkpoints")
    return bool(last) and (steps is None or json.loads((run / "best.json").read_text()).get("step") == steps)


def train_one(config: Path, method: str, overrides: list[str], run: Path) -> float:
    from medsyn.cli.main import main

    argv = ["train", str(config), "--set", f"method={method}", "--out", str(run)]
    for o in overrides:
        argv += ["--set", o]
    t0 = time.monotonic()
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"training {method} failed (exit {rc}); command: medsyn {' '.join(argv)}")
    return time.monotonic() - t0


def predict_one(run: Path, subjects: list[Any], out: Path) -> None:
    from medsyn.inference.predict import load_run, predict_subjects

    loaded = load_run(run, "last", "auto")
    predict_subjects(loaded, subjects, out, force=True)


# ------------------------------------------------------------------------------------------------
# metrics per test image
# ------------------------------------------------------------------------------------------------


def to_8bit(img: np.ndarray, lo: float, data_range: float) -> np.ndarray:
    """An image as an 8-bit picture of it: [lo, lo + data_range] → {0, …, 255}, clipped and rounded
    (how the paper's 8-bit test images hold intensities; MSE/PSNR on it sit next to Table II)."""
    return np.clip(np.rint((img - lo) / data_range * 255.0), 0, 255)


def slice_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, *, min_foreground: float = 0.1,
                  lpips_model: Any = None, uqi_window: str = "wang-bovik-8") -> dict[str, list[float]]:
    """Per axial slice (test image) of (X, Y, Z) volumes: SSIM, PSNR, MSE, VIF, UQI in ``ref``'s units,
    and MSE/PSNR on the 8-bit scale (``psnr8``, ``mse8``: :func:`to_8bit`, data range 255).

    The data range is the subject's (max − min of ``ref`` inside ``mask``, one value for all its
    slices); slices whose foreground is below ``min_foreground`` × the largest are not test images.
    UQI uses ``uqi_window`` (a key of :data:`UQI_WINDOWS`). With ``lpips_model``
    (:func:`medsyn.metrics.load_lpips`), LPIPS too, inside the slice's mask.
    """
    from medsyn.metrics import METRICS as ALL, data_range_of, lpips, mse, psnr, ssim, vif

    dr = data_range_of(ref, mask)
    lo = float(ref[mask].min()) if mask.any() else float(ref.min())
    area = mask.sum(axis=(0, 1))
    keep = np.flatnonzero(area >= min_foreground * area.max())
    fns = {"ssim": ssim, "psnr": psnr, "mse": mse, "vif": vif, "uqi": ALL.get(UQI_WINDOWS[uqi_window][0])}
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    if lpips_model is not None:
        out["lpips"] = []
    for k in keep:
        p, r, m = pred[:, :, k], ref[:, :, k], mask[:, :, k]
        for name, fn in fns.items():
            out[name].append(float(fn(p, r, data_range=dr, mask=m)))
        p8, r8 = to_8bit(p, lo, dr), to_8bit(r, lo, dr)
        out["psnr8"].append(float(psnr(p8, r8, data_range=255.0, mask=m)))
        out["mse8"].append(float(mse(p8, r8, data_range=255.0, mask=m)))
        if lpips_model is not None:
            out["lpips"].append(float(lpips(p, r, data_range=dr, mask=m, model=lpips_model)))
    return out


def summarise(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """mean ± std (population) over test images, finite values only; n counts them."""
    res = {}
    for name, v in values.items():
        a = np.asarray([x for x in v if math.isfinite(x)], dtype=np.float64)
        res[name] = {"mean": float(a.mean()) if a.size else float("nan"),
                     "std": float(a.std()) if a.size else float("nan"), "n": int(a.size)}
    return res


def score(pred_dir: Path, ref_root: Path, subjects: list[str], target: str, *, min_foreground: float,
          lpips_model: Any = None, pred_name: str | None = None, uqi_window: str = "wang-bovik-8",
          ) -> dict[str, list[float]]:
    """Per-image metrics of ``pred_dir/<subject>/<pred_name or target>.nii.gz`` against the reference."""
    from medsyn.data.dataset import discover
    from medsyn.data.masks import as_mask, compute_mask
    from medsyn.data.dataset import MASK_NAMES
    from medsyn.io.image import read_image

    ds = discover(ref_root)
    values: dict[str, list[float]] = {}
    for sid in subjects:
        subj = ds.subjects[sid]
        ref_v = read_image(subj.path(target))
        pred_v = read_image(pred_dir / sid / f"{pred_name or target}.nii.gz")
        mname = next((n for n in MASK_NAMES if n in subj.files), None)
        mask = as_mask(read_image(subj.path(mname)).array) if mname else compute_mask(ref_v.array)
        per = slice_metrics(pred_v.array.astype(np.float64), ref_v.array.astype(np.float64), mask,
                            min_foreground=min_foreground, lpips_model=lpips_model, uqi_window=uqi_window)
        for k, v in per.items():
            values.setdefault(k, []).extend(v)
    return values


# ------------------------------------------------------------------------------------------------
# tables and the depth curve
# ------------------------------------------------------------------------------------------------


def _fmt(name: str, s: dict[str, float]) -> str:
    if not math.isfinite(s["mean"]):
        return "–"
    digits = {"ssim": 4, "vif": 4, "uqi": 4, "lpips": 4, "psnr": 2, "mse": 1}.get(name, 4)
    if name == "mse" and abs(s["mean"]) < 10:
        return f"{s['mean']:.4g} ± {s['std']:.2g}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown_table(rows: list[tuple[str, dict[str, dict[str, float]]]], metrics: Sequence[str]) -> str:
    """A Markdown table: one row per (label, summary), columns ``metrics`` as mean ± std."""
    lines = ["| Method | " + " | ".join(HEADERS.get(m, m) for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for label, summ in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(m, summ[m]) if m in summ else "–" for m in metrics) + " |")
    return "\n".join(lines)


def depth_plot(depth: dict[int, dict[str, dict[str, float]]], path: Path, metrics: Sequence[str]) -> Path:
    """Fig. 6: each metric (mean ± std over test images) against the number of U-blocks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(depth)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0))
    for ax, m in zip(np.atleast_1d(axes), metrics):
        mean = [depth[n][m]["mean"] for n in ns]
        std = [depth[n][m]["std"] for n in ns]
        ax.errorbar(ns, mean, yerr=std, marker="o", capsize=3)
        ax.set_xlabel("U-blocks in the CasNet")
        ax.set_title(HEADERS.get(m, m))
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
    fig.suptitle("pix2pix with a CasNet of N U-blocks (MedGAN Appendix A, Fig. 6)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> str:
    metrics = list(METRICS) + (["lpips"] if meta.get("lpips") else [])
    summ = {name: r["summary"] for name, r in results.items()}
    parts = [f"# MedGAN reproduction — {meta['task_title']}", "",
             f"Command: `{meta['command']}`", "",
             f"Data: `{meta['data_root']}` ({meta['source']} → {meta['target']}); trained on {', '.join(meta['train'])}, "
             f"tested on {', '.join(meta['test'])}: {meta['n_images']} test images (axial slices with foreground). "
             f"Every method: {meta['budget']}, seed {meta['seed']}, device {meta['device']}"
             + (f", CPU preset ({' '.join(SMALL)})" if meta.get("small") else "") + ".", "",
             f"VGG-19: {meta['vgg']}. LPIPS: {meta['lpips'] or 'not computed (needs --lpips-weights)'}.", "",
             "Metrics: mean ± std over test images, in the target's units inside the reference's foreground "
             "(data range = max − min of each test subject's reference there). "
             f"UQI window: {meta.get('uqi_window', 'wang-bovik-8')}. PSNR/MSE 8-bit: the same images mapped to "
             "0–255 by that range and rounded, as 8-bit test images (Table II's scale).", ""]

    def block(title: str, names: list[str]) -> None:
        rows = [(LABELS.get(n, n), summ[n]) for n in names if n in summ]
        if rows:
            parts.extend([f"## {title}", "", markdown_table(rows, metrics), ""])

    block("Table II: comparison with the baselines", (["input"] if "input" in summ else []) + GROUPS["table2"])
    block("Table I: loss ablations (one U-block except MedGAN)", GROUPS["table1"])
    block("Appendix A, Fig. 6: pix2pix with a CasNet of N U-blocks", GROUPS["depth"])
    others = [n for n in summ if n != "input" and not any(n in g for g in GROUPS.values())]
    block("Other methods", others)
    if meta.get("plot"):
        parts += [f"CasNet depth curve: `{meta['plot']}`", ""]
    times = ", ".join(f"{LABELS.get(n, n)} {r['train_seconds']:.0f} s" for n, r in results.items() if r.get("train_seconds"))
    parts += [f"Training time: {times}.", ""]
    text = "\n".join(parts)
    (out / "table.md").write_text(text)
    from medsyn.metrics.evaluate import json_safe  # inf → "inf", NaN → null: strict JSON

    (out / "results.json").write_text(json.dumps(json_safe({"meta": meta, "results": results}), indent=1))
    return text


# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    HEADERS["uqi"] = UQI_WINDOWS[args.uqi_window][1]  # every table names the UQI window it used
    sys.path.insert(0, str(ROOT / "src"))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from medsyn.config import load_config
    from medsyn.data.dataset import discover, resolve_root
    from medsyn.errors import MedsynError
    from medsyn.inference.predict import collect_subjects
    from medsyn.methods import METHODS
    from medsyn.metrics import load_lpips

    config = args.config or ROOT / TASKS[args.task][0]
    title = TASKS[args.task][1] if args.config is None else str(config)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.vgg19_weights and args.random_vgg:
        raise SystemExit("--vgg19-weights and --random-vgg exclude each other")
    vgg = args.vgg19_weights or (random_vgg_file(out / "vgg19_random_seed0.safetensors") if args.random_vgg else None)
    try:
        lpips_model = None
        if args.lpips_weights is not None:  # read and checked before hours of training, not after
            lpips_model = load_lpips(args.lpips_weights, args.lpips_backbone, net=args.lpips_net)
        elif args.lpips_backbone is not None:
            raise SystemExit("--lpips-backbone needs --lpips-weights (the linear heads) too")
        cfg = load_config(config, [f"params.vgg19_weights={vgg}"] if vgg else ["method=medgan-noVGG"])
        root = resolve_root(cfg.data.root)
        train, test = args.train, args.test
        if test is None and not (cfg.data.test or []):
            ids = discover(root).ids()
            if ids == sorted(SAMPLE_SPLIT[0] + SAMPLE_SPLIT[1]):
                train, test = (train or SAMPLE_SPLIT[0]), SAMPLE_SPLIT[1]
            else:
                from medsyn.data.pipeline import make_splits

                test = make_splits(discover(root), cfg.data)["test"]
        if not test:
            raise SystemExit(f"{root}: no test subjects; pass --test SUBJECT ...")
        overrides = base_overrides(args, vgg, train, test)
        methods = method_list(args)
        results: dict[str, Any] = {}
        for name in methods:  # every config is valid (VGG weights given where needed) before any training
            c = load_config(config, overrides + [f"method={name}"])
            METHODS.get(c.method).make_params(c.params).check_vgg_weights()
        for name in methods:
            src = SAME_AS.get(name) if SAME_AS.get(name) in methods else None
            run = out / "runs" / (src or name)
            secs = 0.0
            if not (args.reuse and finished(run, args.steps)) and src is None:
                if run.exists():
                    raise SystemExit(f"{run}: exists; remove it or pass --reuse")
                print(f"== training {name}", flush=True)
                secs = train_one(config, name, overrides, run)
            if not secs and (run / "metrics.jsonl").is_file():  # a reused run: its own logged training time
                recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
                secs = float(recs[-1].get("time_s", 0.0)) if recs else 0.0
            run_cfg = load_config(run / "config.yaml")
            pred_dir = out / "pred" / (src or name)
            subjects = collect_subjects([root / s for s in test], list(run_cfg.data.source))
            predict_one(run, subjects, pred_dir)
            values = score(pred_dir, root, test, run_cfg.data.target, min_foreground=args.min_foreground,
                           lpips_model=lpips_model, uqi_window=args.uqi_window)
            results[name] = {"summary": summarise(values), "per_image": values, "run": str(run),
                             "train_seconds": secs or (results.get(src, {}).get("train_seconds") if src else None)}
            print(markdown_table([(LABELS.get(name, name), results[name]["summary"])], list(values)), flush=True)
        src_mod = list(cfg.data.source)
        if len(src_mod) == 1 and src_mod[0].startswith(cfg.data.target + "_"):  # restoration: score the input too
            values = score(root, root, test, cfg.data.target, min_foreground=args.min_foreground,
                           lpips_model=lpips_model, pred_name=src_mod[0], uqi_window=args.uqi_window)
            results["input"] = {"summary": summarise(values), "per_image": values, "run": None, "train_seconds": None}
    except MedsynError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    depth = {int(n.rsplit("-", 1)[1]): r["summary"] for n, r in results.items() if n.startswith("pix2pix-casnet-")}
    plot = depth_plot(depth, out / "casnet_depth.png", METRICS) if len(depth) > 1 else None
    n_images = len(next(iter(results.values()))["per_image"]["ssim"]) if results else 0
    budget = (f"{args.steps} training steps (× 3 G + 1 D updates)" if args.steps is not None else
              f"{args.epochs if args.epochs is not None else cfg.train.epochs} epochs")
    meta = {"task": args.task, "task_title": title, "config": str(config), "data_root": str(cfg.data.root),
            "source": ",".join(cfg.data.source), "target": cfg.data.target, "train": list(train or []),
            "test": list(test), "n_images": n_images, "budget": budget, "seed": args.seed, "device": args.device,
            "small": args.small, "uqi_window": args.uqi_window, "vgg": (str(args.vgg19_weights) if args.vgg19_weights else
                                          "random weights (seed 0), no pretrained file supplied" if args.random_vgg
                                          else "none (methods needing it fail)"),
            "lpips": (f"{args.lpips_net}: heads {args.lpips_weights}, trunk {args.lpips_backbone or args.lpips_weights}"
                      if args.lpips_weights else None),
            "plot": str(plot) if plot else None,
            "command": "python scripts/reproduce_medgan.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(write_report(out, results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
