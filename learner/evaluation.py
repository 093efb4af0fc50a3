"""Published weights evaluated in the background, so the learner never waits for episodes.

An evaluation is a Ray task (one CPU, plus its `eval_workers`) running the downstream
protocol's deterministic episodes (actors/evaluate.py) with one published weights blob.
At most one runs at a time; the learner collects it when it is done, or waits for it at
the end of the run.
"""

from __future__ import annotations

import numpy as np
import ray

from actors.evaluate import evaluate
from common.envs import EnvConfig
from learner.downstream import DownstreamConfig

evaluate_remote = ray.remote(num_cpus=1)(evaluate)


class BackgroundEvaluation:
    def __init__(self, env: EnvConfig, downstream: DownstreamConfig):
        self.env, self.downstream = env, downstream
        self._pending: tuple[ray.ObjectRef, dict] | None = None

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
                         record)
        return True

    def collect(self, timeout_s: float = 0.0) -> dict | None:
        """The running evaluation's record with its mean `return` and `returns`, once it is done
        (waiting up to `timeout_s`); None while it runs or if none was started."""
        if self._pending is None:
            return None
        ref, record = self._pending
        if not ray.wait([ref], timeout=timeout_s)[0]:
            return None
        returns = ray.get(ref)
        self._pending = None
        return {**record, "return": float(np.mean(returns)), "returns": returns}
