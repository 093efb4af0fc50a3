"""A one-line live progress display for long jobs (rewritten in place on a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Print `label done/total (pct) rate ETA | extras` at most every `interval_s` seconds
    (`label done rate | extras` without a total)."""

    def __init__(self, label: str, total: float, unit: str = "steps", interval_s: float = 1.0, stream=None):
        self.label, self.total, self.unit, self.interval_s = label, total, unit, interval_s
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
        eta = f"{(self.total - done) / rate:,.0f}s" if rate > 0 and self.total else "--"
        pct = 100.0 * done / self.total if self.total else 0.0
        extra = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in extras.items())
        head = f"{done:,.0f}/{self.total:,.0f} {self.unit} ({pct:5.1f}%)" if self.total else f"{done:,.0f} {self.unit}"
        line = (f"{self.label} {head} {rate:,.1f} {self.unit}/s" + (f" ETA {eta}" if self.total else "")
                + (f" | {extra}" if extra else ""))
        if self.live:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
