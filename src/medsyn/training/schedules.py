"""Learning-rate schedules the engine owns (``train.lr_schedule``); a method's own schedule
(e.g. Nie et al.'s step decay every 2 epochs) lives with the method as torch schedulers.

``cosine``: every optimiser's rate goes from its configured value to 0 along half a cosine over
the run's budget, as the usual fixed-budget recipe (Loshchilov & Hutter's SGDR without restarts):

    lr = lr_0 · ½ (1 + cos(π · progress)),   progress ∈ [0, 1]

``progress`` is the share of the budget used: the wall-clock share when ``train.minutes`` is
set, the share of ``total_steps`` (``train.max_steps``, else epochs × steps per epoch) otherwise,
and the larger of the two when both are set (the run stops at whichever ends first). A per-epoch
step schedule cannot do this: it does not know when a time budget ends.

Resume: the progress reached after the last step is saved in the checkpoint, and a resumed
invocation anneals what is left of the cosine over what is left of its own budget. From the saved
progress p₀ at step s₀,

    progress = p₀ + (1 − p₀) · max((step − s₀) / (total_steps − s₀), elapsed / budget)

— continuous at the resume, 0 at the end of the resumed run's budget. ``train.minutes`` is the
budget of one invocation, so a run stopped at 40 of 60 minutes and resumed with ``--minutes 20``
follows the uninterrupted run's curve; with an unchanged step budget the resumed rates equal the
uninterrupted run's exactly (p₀ = s₀ / total_steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch


class BudgetCosine:
    """Cosine annealing to 0 over the run's time or step budget (module docstring).

    ``optimizers``: by network name, freshly built (their learning rates are the configured
    ``lr_0``). ``minutes``: the invocation's wall-clock budget or None. ``total_steps``: the
    generator updates the run would do without a time budget. The engine calls :meth:`start` once
    the checkpoint (if any) is loaded, :meth:`apply` before each step and :meth:`update` after it.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], *, minutes: float | None, total_steps: int):
        self.optimizers = optimizers
        self.base = {name: [float(g["lr"]) for g in opt.param_groups] for name, opt in optimizers.items()}
        self.budget_s = minutes * 60.0 if minutes is not None else None
        self.total_steps = max(1, int(total_steps))
        self.start_progress, self.start_step = 0.0, 0  # where this invocation started (a resume: > 0)
        self.progress = 0.0  # after the steps done so far: what the next step uses

    def start(self, step: int) -> None:
        """This invocation begins after ``step`` updates, at the current (saved) progress."""
        self.start_progress, self.start_step = self.progress, int(step)

    def progress_at(self, step: int, elapsed_s: float) -> float:
        """Share of the budget used after ``step`` updates and ``elapsed_s`` seconds of this invocation."""
        left = self.total_steps - self.start_step
        used = (step - self.start_step) / left if left > 0 else 1.0
        if self.budget_s is not None:
            used = max(used, elapsed_s / self.budget_s)
        p0 = self.start_progress
        return min(1.0, max(0.0, p0 + (1.0 - p0) * used))

    @staticmethod
    def factor(progress: float) -> float:
        """lr / lr_0 at ``progress`` ∈ [0, 1]: 1 at the start, 0 at the end of the budget."""
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))

    def apply(self) -> float:
        """Set every optimiser's rate for the next update from the progress; returns the factor."""
        f = self.factor(self.progress)
        for name, opt in self.optimizers.items():
            for g, lr0 in zip(opt.param_groups, self.base[name]):
                g["lr"] = lr0 * f
        return f

    def update(self, step: int, elapsed_s: float) -> None:
        """After update number ``step``, ``elapsed_s`` seconds into this invocation."""
        self.progress = self.progress_at(step, elapsed_s)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "cosine", "progress": float(self.progress)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's progress (call :meth:`start` next)."""
        if state.get("kind") != "cosine":
            raise ValueError(f"a {state.get('kind')!r} schedule's state, expected 'cosine'")
        self.progress = min(1.0, max(0.0, float(state["progress"])))
