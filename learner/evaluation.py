"""Published weights evaluated in the background, so the learner never waits for episodes.

An evaluation is a Ray task (one CPU, plus its `eval_workers`) running the downstream
protocol's deterministic episodes (actors/evaluate.py) with one published weights blob.
At most one runs at a time; the learner collects it when it is done, or waits for it at
the end of the run, as long as the run's time allows, and cancels it when the time is up.
Each record says how long its evaluation took (`seconds`, to within the learner's polling),
which is what the end of a time-limited run reserves for the final one.
"""

from __future__ import annotations

import time

import numpy as np
import ray

from actors.evaluate import evaluate
from common.envs import EnvConfig
from learner.downstream import DownstreamConfig

evaluate_remote = ray.remote(num_cpus=1)(evaluate)


class BackgroundEvaluation:
    def __init__(self, env: EnvConfig, downstream: DownstreamConfig):
        self.env, self.downstream = env, downstream
        self._pending: tuple[ray.ObjectRef, dict, float] | None = None  # the task, its record, when it started

    @property
    def running(self) -> bool:
        return self._pending is not None

    def start(self, weights: bytes, record: dict) -> bool:
        """Start evaluating `weights` (`record` says which: version, updates, env steps); False if
        an evaluation is still running or evaluation is off (`eval_episodes` 0)."""
        if self.running or self.downstream.eval_episodes == 0:
            return False
        d = self.downstream
        self._pending = (evaluate_remote.remote(self.env, weights, d.eval_episodes, d.eval_seed, d.eval_workers),
                         record, time.monotonic())
        return True

    @property
    def running_record(self) -> dict | None:
        """The record of the running evaluation (None if none runs)."""
        return None if self._pending is None else self._pending[1]

    def running_seconds(self) -> float:
        """How long the running evaluation has run (0 if none runs)."""
        return 0.0 if self._pending is None else time.monotonic() - self._pending[2]

    def collect(self, timeout_s: float = 0.0) -> dict | None:
        """The running evaluation's record with its mean `return`, `returns` and `seconds`, once it
        is done (waiting up to `timeout_s`); None while it runs or if none was started."""
        if self._pending is None:
            return None
        ref, record, started = self._pending
        if not ray.wait([ref], timeout=max(0.0, timeout_s))[0]:
            return None
        returns = ray.get(ref)
        self._pending = None
        return {**record, "return": float(np.mean(returns)), "returns": returns,
                "seconds": time.monotonic() - started}

    def cancel(self) -> None:
        """Stop the running evaluation (its worker is killed; nothing is recorded)."""
        if self._pending is not None:
            ray.cancel(self._pending[0], force=True)
            self._pending = None
