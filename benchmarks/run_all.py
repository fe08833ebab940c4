"""Side by side, in one run and on the same inputs: inference, training steps, data vs model.

    python benchmarks/run_all.py --quick            # small sizes: a few minutes on 2 busy CPU cores
    python benchmarks/run_all.py                    # paper-like sizes (long on CPU)
    python benchmarks/run_all.py --device cuda      # CPU, then the GPU with AMP

Sections (CPU always; the same on the GPU with AMP when ``--device cuda``/``auto`` finds one):

A. full-volume 2.5D inference of one network on one volume (the bundled sample's T1 with
   ``--quick``; a random 240×240×155 volume otherwise): medsyn's sliding window
   (``predict_volume_25d``) vs MONAI's ``sliding_window_inference`` vs a one-patch-at-a-time loop
   — the three functions of ``benchmarks/inference.py``, run here in one process, interleaved,
   fastest of ``--rounds`` each, outputs checked against each other;
B. one training step of each method vs a straightforward implementation of the same step on the
   same mini-batches and initial weights: Nie et al.'s variants (the full method's plain step is
   ``benchmarks/train_step.py``'s; the others are the same plain code with the paper's parts
   switched off), MedGAN (``benchmarks/medgan_step.py``'s plain step, when that script is there).
   Steps are interleaved (plain, medsyn, plain, …) and the median is reported;
C. data loading throughput (the engine's training sampler on the bundled data, samples/s) vs the
   model's consumption measured in B (samples drawn per step / seconds per step).

Prints every time and ratio, then writes ``OUT/run_all.json`` and a bar chart of the ratios
``OUT/run_all.png`` (``--out``, default ``benchmarks/results``). A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import inference as inference_bench  # noqa: E402  benchmarks/inference.py
import train_step as nie_bench  # noqa: E402  benchmarks/train_step.py

from medsyn.cli.bench import cycle, describe, machine_description, measure_data  # noqa: E402
from medsyn.losses.adversarial import gradient_penalty  # noqa: E402
from medsyn.methods import METHODS, Runtime  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"inference": {"volume": "sample", "patch": (64, 64), "base": 16, "batch": 16},
              "train": {"base": 8, "batch": 4, "patch": 64, "steps": 2, "warmup": 1,
                        "nie": ["nie-dual-attention", "nie-unet"]},
              "medgan": {"size": 64, "depth": 6, "base": 16, "steps": 2}, "rounds": 1},
    "full": {"inference": {"shape": (240, 240, 155), "patch": (144, 144), "base": 32, "batch": 16},
             "train": {"base": 32, "batch": 10, "patch": 144, "steps": 5, "warmup": 2,
                       "nie": ["nie-dual-attention", "nie-dual", "nie-sgan", "nie-sgan1", "nie-sgan2", "nie-unet", "nie-fcn"]},
             "medgan": {"size": 256, "depth": 8, "base": 64, "steps": 3}, "rounds": 2},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    return (torch.bfloat16 if device.type == "cuda" else None) if amp else None


# ---------------------------------------------------------------------------- A. inference


def bench_inference(p: dict[str, Any], device: torch.device, amp: bool, rounds: int, say: Callable[[str], None]) -> dict:
    from medsyn.data.dataset import sample_root

    argv = ["--patch", *map(str, p["patch"]), "--base", str(p["base"]), "--batch", str(p["batch"]), "--device", str(device)]
    if p.get("volume") == "sample":
        argv += ["--volume", str(sample_root() / "BraTS-GLI-00000-000" / "t1n.nii.gz")]
    else:
        argv += ["--shape", *map(str, p["shape"])]
    if amp and device.type == "cuda":
        argv.append("--amp")
    args = inference_bench.parse_args(argv)
    volume = inference_bench.load_volume(args)
    model, model_name = inference_bench.build_model(args, device)
    amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if args.amp else None
    runs = {"medsyn": inference_bench.run_medsyn, "monai": inference_bench.run_monai, "loop": inference_bench.run_loop}
    with torch.inference_mode():  # warm-up with each method's batch shape
        for b in {1, args.batch}:
            model(torch.zeros(b, inference_bench.model_in(args), *args.patch, device=device))
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, fn in runs.items():  # interleaved: load changes hit every method alike
            _sync(device)
            t0 = time.perf_counter()
            outputs[name] = np.asarray(fn(model, volume, args, device, amp_dtype))
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    m, x, y, z = volume.shape
    n_win = z * inference_bench._count(x, args.patch[0], args.overlap) * inference_bench._count(y, args.patch[1], args.overlap)
    best = {k: min(v) for k, v in times.items()}
    diffs = {f"{a}-{b}": float(np.abs(outputs[a] - outputs[b]).max()) for a, b in (("medsyn", "monai"), ("medsyn", "loop"))}
    tol = 5e-2 if args.amp else 1e-4
    res = {"volume": list(volume.shape), "source": "sample t1n" if args.volume else "random", "model": model_name,
           "base": args.base, "patch": list(args.patch), "overlap": args.overlap, "batch": args.batch, "context": args.context,
           "windows": n_win, "amp": bool(args.amp), "seconds": best, "all_seconds": times,
           "ratio_vs_medsyn": {k: best[k] / best["medsyn"] for k in ("monai", "loop")},
           "max_abs_diff": diffs, "agree": all(d <= tol for d in diffs.values()), "tolerance": tol}
    say(f"A. inference — volume (M, X, Y, Z) = {tuple(volume.shape)} ({res['source']}), {model_name} base {args.base}, "
        f"k = {args.context}, windows {tuple(args.patch)} at {args.overlap:.0%} overlap, {n_win} windows, batch {args.batch}, "
        f"AMP {'on' if args.amp else 'off'}; fastest of {rounds}")
    for k in runs:
        say(f"   {k:7s} {best[k]:8.2f} s  {1000 * best[k] / n_win:7.1f} ms/window")
    for k in ("monai", "loop"):
        r = res["ratio_vs_medsyn"][k]
        say(f"   medsyn vs {k:5s}: {r:5.2f}x {'faster' if r >= 1 else 'slower'}")
    say("   outputs " + ("agree" if res["agree"] else "DISAGREE") + " (" +
        ", ".join(f"max|{k}| = {v:.1e}" for k, v in diffs.items()) + f"; tol {tol:g})")
    return res


# ------------------------------------------------------------------------ B. training steps


def straightforward_nie(m, batches: list[tuple[torch.Tensor, torch.Tensor]], i: int, log: list) -> int:
    """Nie et al.'s step as one writes it first, for any variant (the parts its config switches on).

    D step: G's forward keeps its graph and is detached; D2 runs twice in G's step (once for M,
    once for the adversarial term); the discriminators accumulate gradients during G's step;
    every loss is read with ``.item()``; no AMP. Target-only conditioning (the paper's equations).
    """
    cfg = m.cfg
    G, o = m.networks["G"], m.optimizers
    D1 = m.networks["D1"] if cfg.use_d1 else None
    D2 = m.networks["D2"] if cfg.use_d2 else None
    items = []
    if D1 is not None or D2 is not None:
        x, y = batches[i % len(batches)]
        i += 1
        fake = G(x)
        if D1 is not None:
            o["D1"].zero_grad()
            if cfg.d1_loss == "wgan-gp":
                l1 = D1(fake.detach()).mean() - D1(y).mean() + gradient_penalty(D1, y, fake.detach(), lambda_gp=cfg.lambda_gp)
            else:
                lr_, lf_ = D1(y), D1(fake.detach())
                l1 = (F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_))
                      + F.binary_cross_entropy_with_logits(lf_, torch.zeros_like(lf_)))
            l1.backward()
            o["D1"].step()
            items.append(l1.item())
        if D2 is not None:
            o["D2"].zero_grad()
            lr_, lf_ = D2(y, return_logits=True), D2(fake.detach(), return_logits=True)
            l2 = (F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_))
                  + F.binary_cross_entropy_with_logits(lf_, torch.zeros_like(lf_)))
            l2.backward()
            o["D2"].step()
            items.append(l2.item())
    x, y = batches[i % len(batches)]
    i += 1
    fake = G(x)
    o["G"].zero_grad()
    if cfg.attention:
        M = torch.sigmoid(D2(fake, return_logits=True)).detach()
        loss = ((1 - M) ** cfg.beta * (fake - y).abs() ** cfg.p).mean()
    else:
        loss = ((fake - y).abs() ** cfg.p).mean()
    if D1 is not None:
        d = D1(fake)
        adv1 = -d.mean() if cfg.d1_loss == "wgan-gp" else F.binary_cross_entropy_with_logits(d, torch.ones_like(d))
        loss = loss + cfg.lambda1 * adv1
    if D2 is not None:
        la = D2(fake, return_logits=True)
        loss = loss + cfg.lambda2 * F.binary_cross_entropy_with_logits(la, torch.ones_like(la))
    loss.backward()
    o["G"].step()
    items.append(loss.item())
    log.append(items)
    return i


def bench_nie_step(name: str, p: dict[str, Any], device: torch.device, amp: bool) -> dict:
    """medsyn's ``train_step`` vs the plain step of the same variant: same weights, same batches."""
    spec = METHODS.get(name)
    params = spec.make_params({"base_filters": p["base"]})
    if params.condition != "target":
        raise ValueError(f"{name}: the plain reference conditions on the target only")
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(p["batch"], 5, p["patch"], p["patch"], generator=g).mul(2).sub(1).to(device),
              torch.rand(p["batch"], 1, p["patch"], p["patch"], generator=g).mul(2).sub(1).to(device)) for _ in range(4)]
    dicts = [{"source": x, "target": y, "mask": torch.ones_like(y)} for x, y in pairs]
    models = {}
    for kind in ("plain", "medsyn"):
        torch.manual_seed(0)
        m = spec.build(params, in_channels=5, out_channels=1, patch_size=(p["patch"], p["patch"])).to(device)
        m.train()
        if kind == "medsyn":
            m.runtime = Runtime(device, _amp_dtype(device, amp))
        models[kind] = m
    plain_fn = nie_bench.straightforward_step if name == "nie-dual-attention" else straightforward_nie
    next_batch, calls = cycle(dicts)
    state = {"i": 0, "step": 0}

    def plain() -> None:
        state["i"] = plain_fn(models["plain"], pairs, state["i"], [])

    def medsyn() -> None:
        state["step"] += 1
        models["medsyn"].train_step(next_batch, state["step"])

    for _ in range(p["warmup"]):
        plain()
        medsyn()
    calls["calls"] = 0
    times: dict[str, list[float]] = {"plain": [], "medsyn": []}
    for _ in range(p["steps"]):
        for kind, fn in (("plain", plain), ("medsyn", medsyn)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[kind].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_step = calls["calls"] / p["steps"] * p["batch"]
    return {"method": name, "reference": "benchmarks/train_step.py" if name == "nie-dual-attention" else "run_all.straightforward_nie",
            "s_per_step": med, "all_seconds": times, "ratio": med["plain"] / med["medsyn"], "samples_per_step": per_step,
            "samples_per_s": per_step / med["medsyn"], "amp": bool(_amp_dtype(device, amp))}


def bench_medgan_step(p: dict[str, Any], device: torch.device, amp: bool) -> dict:
    """benchmarks/medgan_step.py's two versions (its ``worker``), here in one process, same weights/batch."""
    import medgan_step as mg  # benchmarks/medgan_step.py
    from safetensors.torch import save_file

    from medsyn.models.vgg import VGG19

    with tempfile.TemporaryDirectory() as tmp:
        vgg = Path(tmp) / "vgg19_random.safetensors"
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in VGG19().state_dict().items()}, str(vgg))
        res = {}
        for version in ("plain", "medsyn"):
            argv = ["--worker", version, "--vgg", str(vgg), "--size", str(p["size"]), "--depth", str(p["depth"]),
                    "--base", str(p["base"]), "--device", str(device), "--steps", str(p["steps"])]
            if not amp:
                argv.append("--no-amp")
            res[version] = mg.worker(mg.parse_args(argv))
    med = {k: statistics.median(v["seconds"]) for k, v in res.items()}
    return {"method": "medgan", "reference": "benchmarks/medgan_step.py", "s_per_step": med,
            "all_seconds": {k: v["seconds"] for k, v in res.items()}, "ratio": med["plain"] / med["medsyn"],
            "samples_per_step": 1.0, "samples_per_s": 1.0 / med["medsyn"], "amp": bool(res["medsyn"].get("amp")),
            "size": p["size"], "depth": p["depth"], "base": p["base"]}


def bench_train_steps(p: dict[str, Any], pm: dict[str, Any], device: torch.device, amp: bool,
                      say: Callable[[str], None]) -> list[dict]:
    say(f"B. training step — plain vs medsyn on the same batches and weights; median of {p['steps']} interleaved steps "
        f"after {p['warmup']} warm-up; Nie: batch {p['batch']} × 5×{p['patch']}×{p['patch']}, UNet base {p['base']}; "
        f"MedGAN: batch 1 × {pm['size']}², depth {pm['depth']}, base {pm['base']}; AMP "
        f"{'bf16 (medsyn only)' if amp and device.type == 'cuda' else 'off'}")
    out = []
    jobs: list[tuple[str, Callable[[], dict]]] = [(n, lambda n=n: bench_nie_step(n, p, device, amp)) for n in p["nie"]]
    jobs.append(("medgan", lambda: bench_medgan_step(pm, device, amp)))
    for name, job in jobs:
        try:
            r = job()
        except Exception as e:  # noqa: BLE001 - a benchmark of another family must not stop the others
            say(f"   {name:20s} skipped: {type(e).__name__}: {e}")
            out.append({"method": name, "skipped": f"{type(e).__name__}: {e}"})
            continue
        s = r["s_per_step"]
        say(f"   {name:20s} plain {s['plain']:7.3f} s  medsyn {s['medsyn']:7.3f} s  → medsyn {r['ratio']:.2f}x "
            f"({r['samples_per_step']:.0f} samples/step, {r['samples_per_s']:.3g} samples/s)")
        out.append(r)
    others = sorted({spec.paper for n, spec in METHODS.items()} - {METHODS.get(n).paper for n in [*p["nie"], "medgan"]})
    if others:
        say(f"   not timed (no plain reference implementation in benchmarks/): {'; '.join(others)}")
    return out


# ----------------------------------------------------------------------- C. data vs model


def bench_data_vs_model(steps: list[dict], p: dict[str, Any], pm: dict[str, Any], say: Callable[[str], None]) -> list[dict]:
    from medsyn.cli.bench import verdict
    from medsyn.config import load_config

    root = HERE.parent
    cases = [("nie-dual-attention", root / "configs" / "nie2018_brats_t1_t2.yaml",
              [f"data.patch_size=[{p['patch']},{p['patch']}]", f"train.batch_size={p['batch']}"]),
             ("medgan", root / "configs" / "medgan_t1_t2.yaml",
              ["method=medgan-noVGG", f"data.patch_size=[{pm['size']},{pm['size']}]", "train.batch_size=1"])]
    say("C. data loading vs the model's consumption — the engine's training sampler on the bundled data (main process, "
        "as in training) vs samples/s of medsyn's step in B")
    out = []
    for name, config, overrides in cases:
        step = next((s for s in steps if s.get("method") == name and "samples_per_s" in s), None)
        if step is None:
            continue
        try:
            d = measure_data(load_config(config, overrides), batches=30, seconds=5.0)
        except Exception as e:  # noqa: BLE001
            say(f"   {name:20s} skipped: {type(e).__name__}: {e}")
            out.append({"method": name, "skipped": f"{type(e).__name__}: {e}"})
            continue
        text, share = verdict(d["samples_per_s"], step["samples_per_s"])
        ratio = d["samples_per_s"] / step["samples_per_s"]
        say(f"   {name:20s} data {d['samples_per_s']:9.1f} samples/s (prepare {d['setup_s']:.1f} s once)  model "
            f"{step['samples_per_s']:7.3g} samples/s  → data/model {ratio:.0f}x: {text.split(':')[0]}")
        out.append({"method": name, "config": str(config.relative_to(root)), "overrides": overrides,
                    "data_samples_per_s": d["samples_per_s"], "prepare_s": d["setup_s"],
                    "model_samples_per_s": step["samples_per_s"], "data_over_model": ratio, "data_wait_share": share,
                    "bottleneck": "data" if ratio < 1 else "model"})
    return out


# ------------------------------------------------------------------------------------ chart


def chart(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    labels, values, colours = [], [], []
    for dev, sec in results["devices"].items():
        inf = sec.get("inference")
        if inf:
            for k, v in inf["ratio_vs_medsyn"].items():
                labels.append(f"[{dev}] inference: {k} / medsyn")
                values.append(v)
                colours.append("tab:blue")
        for s in sec.get("train_steps", []):
            if "ratio" in s:
                labels.append(f"[{dev}] step {s['method']}: plain / medsyn")
                values.append(s["ratio"])
                colours.append("tab:orange")
        for c in sec.get("data_vs_model", []):
            if "data_over_model" in c:
                labels.append(f"[{dev}] data / model samples/s ({c['method']})")
                values.append(c["data_over_model"])
                colours.append("tab:green")
    fig = Figure(figsize=(8, 0.42 * len(labels) + 1.2), layout="constrained")
    ax = fig.subplots()
    yy = np.arange(len(labels))[::-1]
    v = np.asarray(values, dtype=float)
    ax.barh(yy, v - 1.0, left=1.0, color=colours)  # from 1×: a ratio below 1 points left
    ax.axvline(1.0, color="0.2", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(min(0.3, v.min() / 2), max(10.0, v.max() * 4))
    ax.set_yticks(yy, labels, fontsize=8)
    for y, v in zip(yy, values):
        ax.text(v, y, f" {v:.2f}x" if v < 100 else f" {v:.0f}x", va="center", fontsize=7)
    ax.set_xlabel("ratio (> 1: medsyn faster / data faster than the model)", fontsize=8)
    ax.set_title(f"medsyn benchmarks ({results['preset']}) — {results['machine']['cpu']}", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    fig.savefig(path, dpi=100)


# ------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (see PRESETS): minutes on a laptop CPU")
    ap.add_argument("--device", default="auto", help="auto (CPU, plus CUDA if present), cpu, or cuda")
    ap.add_argument("--no-amp", action="store_true", help="on the GPU: no AMP for medsyn")
    ap.add_argument("--rounds", type=int, default=None, help="inference rounds, fastest kept (default: 1 quick, 2 full)")
    ap.add_argument("--sections", nargs="+", choices=("inference", "train", "data"), default=["inference", "train", "data"])
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for run_all.json and run_all.png")
    args = ap.parse_args(argv)
    from medsyn.allocator import keep_freed_memory

    keep_freed_memory()  # the training steps run as under `medsyn train` (no page-fault churn)
    preset = "quick" if args.quick else "full"
    P = PRESETS[preset]
    devices = [torch.device("cpu")]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        print("no CUDA device: running the CPU sections only")
    machine = machine_description(devices[-1])
    print(f"machine: {describe(machine)}")
    print(f"preset: {preset}\n")
    results: dict[str, Any] = {"preset": preset, "machine": machine, "presets": P, "devices": {}}
    t_start = time.perf_counter()
    for dev in devices:
        amp = dev.type == "cuda" and not args.no_amp
        print(f"===== {dev.type.upper()}" + (" (AMP: bf16 autocast for medsyn)" if amp else "") + " =====")
        sec: dict[str, Any] = {}
        if "inference" in args.sections:
            sec["inference"] = bench_inference(P["inference"], dev, amp, args.rounds or P["rounds"], print)
            print()
        if "train" in args.sections or "data" in args.sections:
            sec["train_steps"] = bench_train_steps(P["train"], P["medgan"], dev, amp, print)
            print()
        if "data" in args.sections:
            sec["data_vs_model"] = bench_data_vs_model(sec["train_steps"], P["train"], P["medgan"], print)
            print()
        results["devices"][dev.type] = sec
    results["seconds_total"] = time.perf_counter() - t_start
    results["machine_after"] = machine_description(devices[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    jpath, ppath = args.out / "run_all.json", args.out / "run_all.png"
    jpath.write_text(json.dumps(results, indent=1, default=str))
    chart(results, ppath)
    print(f"total {results['seconds_total']:.0f} s; 1-min load average {machine['load_1min']:.1f} before, "
          f"{results['machine_after']['load_1min']:.1f} after (other processes share this machine)")
    print(f"wrote {jpath} and {ppath}")
    ok = all(sec.get("inference", {}).get("agree", True) for sec in results["devices"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
