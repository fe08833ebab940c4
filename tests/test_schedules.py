"""train.lr_schedule "cosine": values over a step or time budget, resume, and the engine's use of it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medsyn.training.schedules import BudgetCosine

LR0 = {"G": 1e-3, "D1": 1e-4}


def _optimizers() -> dict[str, torch.optim.Optimizer]:
    return {n: torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr) for n, lr in LR0.items()}


def _lrs(opts) -> dict[str, float]:
    return {n: o.param_groups[0]["lr"] for n, o in opts.items()}


def test_cosine_over_steps_starts_at_the_configured_rates_and_ends_at_zero():
    opts = _optimizers()
    s = BudgetCosine(opts, minutes=None, total_steps=100)
    s.start(0)
    seen = []
    for step in range(100):  # the engine's order: apply, step, update
        s.apply()
        seen.append(_lrs(opts))
        s.update(step + 1, elapsed_s=1e9)  # time does not count without a time budget
    assert seen[0] == LR0
    assert seen[50]["G"] == pytest.approx(0.5e-3) and seen[50]["D1"] == pytest.approx(0.5e-4)
    assert seen[25]["G"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert all(a["G"] > b["G"] for a, b in zip(seen, seen[1:]))  # strictly decreasing
    assert seen[-1]["G"] < 1e-3 * 3e-4  # the last step is at ~0
    s.apply()
    assert _lrs(opts) == {"G": 0.0, "D1": 0.0}  # at the budget's end


def test_cosine_over_minutes_follows_the_clock_and_the_earlier_end_wins():
    opts = _optimizers()
    s = BudgetCosine(opts, minutes=10, total_steps=10_000)
    s.start(0)
    s.update(3, elapsed_s=300)  # half the time, few steps
    assert s.apply() == pytest.approx(0.5) and _lrs(opts)["G"] == pytest.approx(0.5e-3)
    s.update(4, elapsed_s=600)
    assert s.apply() == pytest.approx(0.0, abs=1e-15)
    s.update(5, elapsed_s=900)  # past the budget (the loop stops there): stays at 0
    assert s.progress == 1.0 and s.apply() == pytest.approx(0.0, abs=1e-15)
    fast = BudgetCosine(_optimizers(), minutes=10, total_steps=100)  # max_steps ends first
    fast.start(0)
    fast.update(50, elapsed_s=60)
    assert fast.progress == pytest.approx(0.5)


def test_resume_continues_the_cosine_from_the_saved_progress():
    # step budget unchanged: the resumed rates are the uninterrupted run's
    a = BudgetCosine(_optimizers(), minutes=None, total_steps=10)
    a.start(0)
    for step in range(1, 5):
        a.update(step, 0.0)
    state = json.loads(json.dumps(a.state_dict()))  # what the checkpoint holds
    b = BudgetCosine(_optimizers(), minutes=None, total_steps=10)
    b.load_state_dict(state)
    b.start(4)
    for step in range(5, 11):
        a.update(step, 0.0)
        b.update(step, 0.0)
        assert b.progress == pytest.approx(a.progress) == pytest.approx(step / 10)
    # a time budget is one invocation's: the rest of the cosine is annealed over the new budget
    t = BudgetCosine(_optimizers(), minutes=60, total_steps=10_000)
    t.start(0)
    t.update(400, elapsed_s=40 * 60)  # stopped after 40 of 60 minutes
    r = BudgetCosine(opts := _optimizers(), minutes=20, total_steps=10_000)
    r.load_state_dict(t.state_dict())
    r.start(400)
    assert r.apply() == pytest.approx(t.factor(2 / 3))  # continuous at the resume
    r.update(500, elapsed_s=10 * 60)  # 50 of 60 minutes in all
    assert r.progress == pytest.approx(5 / 6)
    r.update(600, elapsed_s=20 * 60)
    r.apply()
    assert _lrs(opts)["G"] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="cosine"):
        r.load_state_dict({"kind": "step", "progress": 0.2})


def test_engine_cosine_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    """A cosine run stopped at step 3 of 6 (a SIGTERM) and resumed sets the same learning rates and
    reaches the same weights as the uninterrupted run; the checkpoint holds the schedule's progress."""
    from medsyn.cli.main import EXIT_INTERRUPTED, main
    from medsyn.training import checkpoint as ckpt
    from medsyn.training.engine import Trainer
    from test_pipeline import TINY, _weights

    args = ["train", "configs/nie2018_unet_small.yaml", *TINY, "--set", "train.checkpoint_every=0", "--max-steps", "6"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--out", str(a)]) == 0
    agree = Trainer._agree_on_step

    def stop_after_step_3(self, vals, t0):
        if self.step == 2:  # during step 3: as a SIGTERM arriving then
            self._stop_signal = "SIGTERM"
        return agree(self, vals, t0)

    monkeypatch.setattr(Trainer, "_agree_on_step", stop_after_step_3)
    assert main([*args, "--out", str(b)]) == EXIT_INTERRUPTED
    monkeypatch.setattr(Trainer, "_agree_on_step", agree)
    _, state = ckpt.load_checkpoint(ckpt.list_checkpoints(b / "checkpoints")[-1])
    assert state["step"] == 3 and state["lr_schedule"] == {"kind": "cosine", "progress": pytest.approx(0.5)}
    assert main(["train", "--resume", str(b)]) == 0
    la = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr/G"] for r in la]
    assert lrs == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)])
    assert [r["lr/G"] for r in lb] == pytest.approx(lrs)
    wa, wb = _weights(a), _weights(b)
    for k in wa["G"]:
        assert torch.equal(wa["G"][k], wb["G"][k]), k
