"""allocator.py: large freed blocks are reused, not re-mapped (no page faults per step).

Each case runs in a fresh interpreter: mallopt settings are per process and cannot be undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")

# a "training step" in miniature: allocate and touch four large tensors (40–100 MiB, above glibc's
# 32 MiB mmap ceiling), free them; minor page faults of the last ten of twenty steps
PROBE = """
import json, resource
from medsyn.allocator import keep_freed_memory
applied = keep_freed_memory()
assert keep_freed_memory() is applied  # idempotent
import torch
faults = []
for step in range(20):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ts = [torch.ones(mib * 2**18) for mib in (64, 40, 100, 64)]
    del ts
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"applied": applied, "faults": sum(faults[10:])}))
"""
STEP_PAGES = (64 + 40 + 100 + 64) * 256  # 4 KiB pages touched per step


def _probe(code: str = PROBE, **env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("MEDSYN_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_allocator_reuses_large_blocks():
    tuned = _probe()
    assert set(tuned["applied"]) == {"M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD"}
    # after a few steps the heap holds the step's blocks: (almost) nothing is mapped again — the
    # heap may still grow once by a block, depending on what Python allocated in between
    assert tuned["faults"] < 0.1 * 10 * STEP_PAGES


def test_opt_out_keeps_glibc_default_which_refaults():
    default = _probe(MEDSYN_MALLOC="default")
    assert default["applied"] == {}
    assert default["faults"] > 0.9 * 10 * STEP_PAGES  # every block mapped and faulted in again, every step


def test_users_own_malloc_variables_win():
    assert _probe(MALLOC_TRIM_THRESHOLD_="1000000")["applied"] == {}


def test_trainer_applies_it(tmp_path):
    code = ("from medsyn.config import load_config\n"
            "from medsyn import allocator\n"
            "from medsyn.training.engine import Trainer\n"
            "assert allocator._applied is None\n"
            f"Trainer(load_config({str(ROOT / 'configs' / 'nie2018_unet.yaml')!r}), {str(tmp_path / 'run')!r})\n"
            "print(sorted(allocator._applied))\n")
    e = {k: v for k, v in os.environ.items() if k != "MEDSYN_MALLOC"}
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['M_MMAP_THRESHOLD', 'M_TRIM_THRESHOLD']"


# inference in miniature: a model whose every call allocates and frees large feature maps (48 MiB
# per window batch, above glibc's mmap ceiling), run by predict_volume_25d on a small volume;
# minor page faults of the last of three whole predictions
INFERENCE_PROBE = """
import json, resource, sys
import numpy as np, torch
from medsyn import allocator
from medsyn.inference.sliding_window import predict_volume_25d
assert allocator._applied is None
def model(x):  # (B, k, 32, 32) -> (B, 1, 32, 32) through a large temporary
    big = torch.ones(x.shape[0], 48 * 2**18 // x.shape[0])
    return x[:, 2:3] * big[:, :1].view(-1, 1, 1, 1)
vol = np.random.default_rng(0).standard_normal((1, 64, 64, 8)).astype(np.float32)
faults = []
for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = predict_volume_25d(model, vol, context=5, patch_size=(32, 32), batch_size=4, blend="uniform")
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
calls = -(-8 * 9 // 4)  # slices x windows per slice / batch
print(json.dumps({"applied": sorted(allocator._applied), "faults": faults[-1], "calls": calls,
                  "exact": bool(np.allclose(out[0], vol[0]))}))
"""


@pytest.mark.parametrize("malloc", ["medsyn", "default"])
def test_sliding_window_inference_keeps_freed_memory(malloc):
    r = _probe(INFERENCE_PROBE, **({"MEDSYN_MALLOC": "default"} if malloc == "default" else {}))
    assert r["exact"]  # the probe model passes the centre slice through
    pages_per_call = 48 * 256
    if malloc == "medsyn":
        assert r["applied"] == ["M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD"]
        assert r["faults"] < 0.1 * r["calls"] * pages_per_call  # the third prediction maps (almost) nothing
    else:
        assert r["applied"] == []
        assert r["faults"] > 0.9 * r["calls"] * pages_per_call  # glibc re-maps every call's block
