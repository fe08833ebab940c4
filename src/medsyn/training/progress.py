"""Progress for logs: timestamped lines at a steady rate when the output is not a terminal.

A rich progress bar redraws one line in a terminal; written to a file (a cluster job, CI,
``> log.txt``) it shows nothing until the end. There, :class:`LineProgress` prints one line every
``MEDSYN_PROGRESS_SECONDS`` seconds (default 30) and at the end::

    2026-12-01 04:50:12 train step 120/40000 (0.3 %), 0.52 s/step, ETA 5 h 46 min | d1/wgan=-0.31 g/att_l1=0.12
"""

from __future__ import annotations

import os
import time
from typing import Callable

#: seconds between two progress lines when the output is not a terminal
DEFAULT_SECONDS = 30.0


def progress_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("MEDSYN_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def duration(seconds: float) -> str:
    """4000 → '1 h 6 min'; 75 → '1 min 15 s'; 9 → '9 s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class LineProgress:
    """``update(done)`` prints ``what`` i/total with rate and ETA, at most every ``every`` seconds,
    always for the first update and at ``total``. ``unit``: what one count is (step, window)."""

    def __init__(self, what: str, total: int, emit: Callable[[str], None], *, unit: str = "step",
                 every: float | None = None, deadline: float | None = None):
        self.what, self.total, self.emit, self.unit = what, max(int(total), 0), emit, unit
        self.every = progress_seconds() if every is None else every
        self.deadline = deadline  # time.monotonic() when a time budget ends: the ETA never passes it
        self.t0, self.start = time.monotonic(), 0
        self.last: float | None = None

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if self.last is None:  # rates count from the first update (setup and warm-up excluded)
            self.t0, self.start = now, done
        elif now - self.last < self.every and done < self.total:
            return
        self.last = now
        n = done - self.start
        rate = (now - self.t0) / n if n > 0 else None
        pct = f" ({100 * done / self.total:.1f} %)" if self.total else ""
        speed = f", {rate:.3g} s/{self.unit}" if rate is not None else ""
        eta = ""
        if rate is not None and done < self.total:
            left = rate * (self.total - done)
            if self.deadline is not None and self.deadline - now < left:
                eta = f", ETA {duration(max(self.deadline - now, 0.0))} (time budget)"
            else:
                eta = f", ETA {duration(left)}"
        self.emit(f"{stamp()} {self.what} {self.unit} {done}/{self.total}{pct}{speed}{eta}" + (f" | {extra}" if extra else ""))


class BarOrLines:
    """A rich bar when ``console`` is a terminal, :class:`LineProgress` lines otherwise.

    ``set_extra(text)`` changes the text shown after the counts (e.g. the latest losses);
    ``update(done)`` moves on; ``stop()`` ends the bar.
    """

    def __init__(self, what: str, total: int, console, *, start: int = 0, unit: str = "step",  # noqa: ANN001
                 deadline: float | None = None):
        self.extra = ""
        self.bar = self.lines = None
        if getattr(console, "is_terminal", False):
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"[bold]{what}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[extra]}"),
                                console=console, transient=False)
            self.bar.start()
            self.task = self.bar.add_task(what, total=total, completed=start, extra="")
        else:
            self.lines = LineProgress(what, total, lambda m: console.print(m, highlight=False, soft_wrap=True),
                                      unit=unit, deadline=deadline)

    def set_extra(self, text: str) -> None:
        self.extra = text

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, extra=self.extra)
        else:
            self.lines.update(done, self.extra)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
