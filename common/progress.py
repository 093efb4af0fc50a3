"""A one-line live progress display for long jobs (rewritten in place on a terminal)."""

from __future__ import annotations

import sys
import time
from collections import deque

RATE_WINDOW_S = 60.0  # the rate is the pace over this much of the latest updates
RATE_MIN_S = 10.0  # ... and which limit comes first is judged once it spans this much
SWITCH_MARGIN = 0.9  # the other limit must come 10 % sooner to take over (no flapping near a tie)


def clock(seconds: float) -> str:
    """`seconds` as m:ss (h:mm:ss from an hour), to the nearest second."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """`label` and how far the job is, on one line at most every `interval_s` seconds.

    A job ends at `total` units (0: no such limit), at `deadline` (time.monotonic(); None: no
    time limit), or at whichever comes first. The line leads with the limit that governs, the
    one the current rate reaches first, and shows the other beside it:

        learner 3:12 / 5:00 (64 %) | 14,496 steps, 75.3 steps/s | upd 1,234 | ...
        learner 14,496 / 100,000 steps (14 %), 75.3 steps/s, ETA 18:56 | 3:12 / 60:00 (5 %) | ...
        bc 100 / 300 updates (33 %), 5.2 updates/s, ETA 0:38 | 0:19 | bc_loss 0.1

    and says in a note when the limit that governs changes. The rate is over the latest
    RATE_WINDOW_S seconds, so it is the job's current pace: units done before it started (a
    resumed run's) never count. The clock runs from `started` (time.monotonic(); default now),
    so a command's time limit can count from the command's start.
    """

    def __init__(self, label: str, total: float, unit: str = "steps", interval_s: float = 1.0, stream=None,
                 deadline: float | None = None, started: float | None = None):
        self.label, self.total, self.unit, self.interval_s = label, total, unit, interval_s
        self.deadline = deadline
        self.stream = stream or sys.stderr
        self.start = time.monotonic() if started is None else started
        self.last_print = 0.0
        self.live = self.stream.isatty()
        self._samples: deque[tuple[float, float]] = deque()  # (time, done) of the latest updates
        # the limit that governs: "time", "units", or None while both are set and the rate is not yet known
        self.governing: str | None = ("time" if not total else "units" if deadline is None else None) \
            if total or deadline is not None else None

    def rate(self) -> float | None:
        """Units per second over the latest updates (None until two updates span some time)."""
        if len(self._samples) < 2 or self._samples[-1][0] <= self._samples[0][0]:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0)

    def update(self, done: float, force: bool = False, **extras) -> None:
        now = time.monotonic()
        self._samples.append((now, done))
        while now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        if not force and now - self.last_print < self.interval_s:
            return
        self.last_print = now
        rate = self.rate()
        units_eta = (self.total - done) / rate if self.total and rate else None
        self._judge(now, units_eta)
        units = (f"{done:,.0f} / {self.total:,.0f} {self.unit} ({100 * done / self.total:.0f} %)" if self.total
                 else f"{done:,.0f} {self.unit}")
        units += f", {rate:,.1f} {self.unit}/s" if rate is not None else f", -- {self.unit}/s"
        if self.total:
            units += f", ETA {clock(units_eta)}" if units_eta is not None else ", ETA --"
        elapsed = now - self.start
        if self.deadline is not None:
            limit = max(self.deadline - self.start, 1e-9)
            times = f"{clock(elapsed)} / {clock(limit)} ({100 * min(1.0, elapsed / limit):.0f} %)"
        else:
            times = clock(elapsed)
        parts = [units, times] if self.governing == "units" or self.deadline is None else [times, units]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                  for k, v in extras.items()]
        self._write(f"{self.label} " + " | ".join(parts))

    def _judge(self, now: float, units_eta: float | None) -> None:
        """Which limit comes first, by the current rate; a note when that changes."""
        if self.deadline is None or not self.total or units_eta is None \
                or self._samples[-1][0] - self._samples[0][0] < RATE_MIN_S:
            return
        time_left = max(0.0, self.deadline - now)
        if self.governing == "time":
            judged = "units" if units_eta < SWITCH_MARGIN * time_left else "time"
        elif self.governing == "units":
            judged = "time" if time_left < SWITCH_MARGIN * units_eta else "units"
        else:
            judged = "units" if units_eta < time_left else "time"
        if judged == self.governing:
            return
        self.governing = judged
        rate = self.rate()
        if judged == "units":
            self.note(f"{self.label}: the {self.unit} limit comes first: {self.total:,.0f} {self.unit} in about "
                      f"{clock(units_eta)} at {rate:,.1f} {self.unit}/s, {clock(time_left)} before the time limit")
        else:
            self.note(f"{self.label}: the time limit comes first: {clock(time_left)} left, and at {rate:,.1f} "
                      f"{self.unit}/s the {self.total:,.0f} {self.unit} would take about {clock(units_eta)}")

    def _write(self, line: str) -> None:
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
