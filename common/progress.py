"""A one-line live progress display for long jobs (rewritten in place on a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Print `label done/total (pct) rate ETA | extras` at most every `interval_s` seconds
    (`label done rate | extras` without a total). A job that also stops at a time limit
    passes its `deadline` (time.monotonic()): share and ETA then say whichever ends first."""

    def __init__(self, label: str, total: float, unit: str = "steps", interval_s: float = 1.0, stream=None,
                 deadline: float | None = None):
        self.label, self.total, self.unit, self.interval_s = label, total, unit, interval_s
        self.deadline = deadline
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.last_print = 0.0
        self.live = self.stream.isatty()

    def update(self, done: float, force: bool = False, **extras) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < self.interval_s:
            return
        self.last_print = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta_s = (self.total - done) / rate if rate > 0 and self.total else float("inf")
        pct = 100.0 * done / self.total if self.total else 0.0
        if self.deadline is not None and self.deadline > self.start:
            eta_s = min(eta_s, max(0.0, self.deadline - now))
            pct = max(pct, 100.0 * min(1.0, elapsed / (self.deadline - self.start)))
        eta = f"{eta_s:,.0f}s" if eta_s != float("inf") else "--"
        timed = bool(self.total) or self.deadline is not None
        extra = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in extras.items())
        head = f"{done:,.0f}/{self.total:,.0f} {self.unit}" if self.total else f"{done:,.0f} {self.unit}"
        head += f" ({pct:5.1f}%)" if timed else ""
        line = (f"{self.label} {head} {rate:,.1f} {self.unit}/s" + (f" ETA {eta}" if timed else "")
                + (f" | {extra}" if extra else ""))
        if self.live:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """One line about the job (a phase change, a result) above the live progress line."""
        self.stream.write(("\r\033[K" if self.live else "") + message + "\n")
        self.stream.flush()
        self.last_print = 0.0  # redraw the progress line at the next update

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
