"""Time per training step of Nie et al.'s dual-D + attention: medsyn's step vs a straightforward one.

    python benchmarks/train_step.py [--device cpu|cuda] [--amp] [--base 32] [--steps 5] [--batch 10]

Both steps run the same networks (2.5D UNet G, WGAN-GP critic D1, dense-FCN D2), the same losses
and the same algorithm (D1 and D2 on one mini-batch, then G on another — Sec. 2.3), on the same
pre-generated batches in memory (5 × 144 × 144 → 1 × 144 × 144, batch 10). The straightforward
version is what one writes first: G's forward for the D step keeps its graph and is detached,
D2 runs twice in G's step (once for M, once for the adversarial term), the discriminators'
weights accumulate gradients during G's step, every loss is read with ``.item()``, no AMP.
medsyn's step (methods/nie2018.py) runs G under no_grad for the D step, freezes D during G's
step, reuses D2's logits, keeps losses on the device, and uses bf16 autocast on CUDA with --amp.
Prints seconds per step for both and the speed-up ratio (goal: ≥ 1.0× on CPU, ≥ 1.3× on GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
import torch.nn.functional as F

from medsyn.losses.adversarial import gradient_penalty
from medsyn.methods.base import Runtime
from medsyn.methods.nie2018 import NieConfig, NieDualGAN


def straightforward_step(m: NieDualGAN, batches, i: int, log: list) -> int:
    cfg = m.cfg
    G, D1, D2 = m.networks["G"], m.networks["D1"], m.networks["D2"]
    o = m.optimizers
    x, y = batches[i % len(batches)]
    fake = G(x)  # graph kept, then detached
    o["D1"].zero_grad()
    l1 = D1(fake.detach()).mean() - D1(y).mean() + gradient_penalty(D1, y, fake.detach(), lambda_gp=cfg.lambda_gp)
    l1.backward()
    o["D1"].step()
    o["D2"].zero_grad()
    lr_, lf_ = D2(y, return_logits=True), D2(fake.detach(), return_logits=True)
    l2 = F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_)) + F.binary_cross_entropy_with_logits(lf_, torch.zeros_like(lf_))
    l2.backward()
    o["D2"].step()
    x, y = batches[(i + 1) % len(batches)]
    fake = G(x)
    o["G"].zero_grad()
    M = torch.sigmoid(D2(fake, return_logits=True)).detach()
    att = ((1 - M) ** cfg.beta * (fake - y).abs()).mean()
    adv1 = -D1(fake).mean()
    la = D2(fake, return_logits=True)
    adv2 = F.binary_cross_entropy_with_logits(la, torch.ones_like(la))
    lg = att + cfg.lambda1 * adv1 + cfg.lambda2 * adv2
    lg.backward()
    o["G"].step()
    log.append([l1.item(), l2.item(), att.item(), adv1.item(), adv2.item(), lg.item()])
    return i + 2


def medsyn_step(m: NieDualGAN, batches, i: int, log: list) -> int:
    state = {"i": i}

    def next_batch():
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        return {"source": x, "target": y}

    log.append(m.train_step(next_batch, i))
    return state["i"]


def bench(kind: str, args, batches, device) -> dict:
    torch.manual_seed(0)
    cfg = NieConfig(base_filters=args.base)
    m = NieDualGAN(cfg, in_channels=5, patch_size=(args.patch, args.patch)).to(device)
    m.train()
    if kind == "medsyn" and args.amp and device.type == "cuda":
        m.runtime = Runtime(device, torch.bfloat16)
    step = medsyn_step if kind == "medsyn" else straightforward_step
    log: list = []
    i = 0
    for _ in range(args.warmup):
        i = step(m, batches, i, log)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        i = step(m, batches, i, log)
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"s_per_step": dt, "peak_mem_gib": mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for medsyn's step (CUDA only)")
    ap.add_argument("--base", type=int, default=32, help="UNet base filters (paper config: 64)")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--patch", type=int, default=144)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(args.batch, 5, args.patch, args.patch, generator=g).mul(2).sub(1).to(device),
                torch.rand(args.batch, 1, args.patch, args.patch, generator=g).mul(2).sub(1).to(device)) for _ in range(4)]
    res = {k: bench(k, args, batches, device) for k in ("straightforward", "medsyn")}
    ratio = res["straightforward"]["s_per_step"] / res["medsyn"]["s_per_step"]
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {desc}; batch {args.batch} × 5×{args.patch}×{args.patch}, UNet base {args.base}, AMP {'bf16' if args.amp and device.type == 'cuda' else 'off'}")
    print(f"{'':16s} {'s/step':>8s} {'peak mem GiB':>13s}")
    for k, v in res.items():
        print(f"{k:16s} {v['s_per_step']:8.3f} {v['peak_mem_gib']:13.2f}")
    print(f"speed-up medsyn vs straightforward: {ratio:.2f}×")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": desc, "args": vars(args), "results": res, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
