"""The wall-time budget of one `learner.main` command, counted from its process's start.

`--max-minutes` bounds the whole command: start-up (Redis, the probe set, Ray, the actors),
the learning loop, and the end (stopping the fleet, the final probe and evaluation, the
checkpoint, Ray's shutdown). So the loop stops while the end still fits: it leaves the final
probe's and evaluation's measured times (`Learner.end_reserve_s`), FLEET_STOP_S and CLOSE_S.
The end gets what is left and no more: the fleet stops within FLEET_STOP_S, the final probe
runs only if it fits, the final evaluation is waited for until CLOSE_S before the limit and
then cut off, each with a line that says so (`Learner.finish`). Start-up offers no point to
stop at, so `StartUp` cuts it off with a signal, CLOSE_S before the limit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.progress import clock

FLEET_STOP_S = 10.0  # stopping the actors and segmenters (`ActorFleet.stop` keeps within it)
CLOSE_S = 10.0  # after the final evaluation: the last checkpoint, Ray's shutdown, the summary


def process_started() -> float:
    """When this process started, on time.monotonic()'s clock: its age from /proc on Linux
    (the interpreter's and the imports' seconds count too); elsewhere, now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc, or no CLOCK_BOOTTIME
        return time.monotonic()
    return time.monotonic() - max(0.0, age)


@dataclass(frozen=True)
class Budget:
    """`limit_s` seconds (None: no limit) from `started` (time.monotonic())."""

    started: float
    limit_s: float | None

    @classmethod
    def of_this_process(cls, max_minutes: float | None) -> "Budget":
        return cls(process_started(), None if max_minutes is None else 60.0 * max_minutes)

    @property
    def deadline(self) -> float | None:
        return None if self.limit_s is None else self.started + self.limit_s

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds until the limit (infinite without one; negative once it is past)."""
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


class StartupTimeLimit(Exception):
    """The time limit came while the command was still starting up (str: when, in which phase)."""


class StartUp:
    """A command's start-up, phase by phase: each phase timed, the whole cut off by SIGALRM
    `reserve_s` before the budget's limit, so that what follows has time to clean up; leaving
    the block then raises StartupTimeLimit, naming the phase. Start-up work (a probe set's
    collection, Ray, actors) offers no point to stop at, and a signal stops it anywhere; a
    dataset cut off is collected again (learner/data.py keeps one only once it is complete).
    The signal interrupts as Ctrl-C does (a KeyboardInterrupt, which Ray's waits turn into
    one of their own and no `except Exception` swallows). Main thread only."""

    def __init__(self, budget: Budget, reserve_s: float):
        self.budget, self.reserve_s = budget, reserve_s
        self.durations: dict[str, float] = {}
        self.current = "starting"
        self.expired: str | None = None  # when and where the limit came

    def __enter__(self) -> "StartUp":
        if self.budget.limit_s is not None:
            self._previous = signal.signal(signal.SIGALRM, self._expire)
            signal.setitimer(signal.ITIMER_REAL, max(0.001, self.budget.left() - self.reserve_s))
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.budget.limit_s is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
        if self.expired is not None and exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            raise StartupTimeLimit(self.expired) from None

    def _expire(self, signum, frame) -> None:
        self.expired = (f"{clock(self.budget.elapsed())} into the command, during {self.current}"
                        + (f" (after {self.describe()})" if self.durations else ""))
        raise KeyboardInterrupt(self.expired)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.current, started = name, time.monotonic()
        yield
        self.durations[name] = time.monotonic() - started

    def describe(self) -> str:
        return ", ".join(f"{name} {clock(seconds)}" for name, seconds in self.durations.items())
