"""The learner's side of its actors: rollout actors kept collecting, segmenters kept serving.

A background thread keeps `CALLS_IN_FLIGHT` `collect` calls queued on every rollout
actor, each a chunk's worth of steps (so an actor checks for new weights between
chunks, and queueing two hides the round trip), and folds every returned report into
`FleetTotals`. The learner reads `totals()` and never waits on an actor.

Chunks and steps stored are each actor's own count as of its latest report, less what
its actor id had stored before the fleet started (a resumed run's replay). The replay's
insert script keeps that count (`ReplayClient.stored_by_actor`), so a crash loses none of
it: the chunks a killed actor stored in its unfinished call are in its successor's first
report. `stop()` reads the count once more after the actors are gone, for the chunks of
calls it cut off.

Restarts: Ray restarts a crashed rollout actor or segmenter and re-runs the call the crash
interrupted. A rollout actor's next report carries a new `incarnation`, a segmenter's
summary (asked for every SEGMENTER_CHECK_S) a new `consumer` name: each change is counted
as a restart. One out of restarts is replaced by a new one in its slot (also counted), at
most `max_replacements` times per slot: a slot that needs more is in a crash loop (an env
or backend that keeps dying), which no new actor fixes, and the fleet stops with
`FleetFailed` instead of letting the learner wait for data forever. An actor that dies
before it ever reported, or an exception raised by actor code (a bug, not a crash), stops
the fleet too; `check()` raises the error in the learner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import RayActorError, TaskCancelledError

from actors.rollout import ActorConfig, RolloutReport, start_rollout_actors
from common.envs import EnvConfig
from common.replay import RateLimiterConfig, ReplayClient, ReplayConfig
from segmenter.config import SegmenterConfig
from segmenter.service import start_segmenters

log = logging.getLogger("masklam.fleet")
CALLS_IN_FLIGHT = 2
SEGMENTER_CHECK_S = 5.0
RECENT_RETURNS = 20


class FleetFailed(RuntimeError):
    """A slot's actor kept crashing after every replacement: the run cannot go on."""


@dataclass
class FleetTotals:
    """What the actors reported since the fleet started."""

    env_steps: int = 0  # decisions stepped (a crashed actor's unfinished call is not reported)
    chunks: int = 0  # chunks stored
    chunk_steps: int = 0  # env steps in the stored chunks
    episodes: int = 0
    insert_wait_s: float = 0.0
    max_weights_version: int = 0  # highest version any actor acted with
    min_weights_version: int = 0  # oldest version among the actors' latest reports
    rollout_restarts: int = 0
    segmenter_restarts: int = 0
    recent_returns: list[float] = field(default_factory=list)  # of the last finished training episodes


class ActorFleet:
    """N rollout actors and the segmenters of a run, kept busy by a background thread."""

    def __init__(self, num_actors: int, env: EnvConfig, actor: ActorConfig, segmenter: SegmenterConfig,
                 num_segmenters: int, replay_url: str, replay: ReplayConfig, limiter: RateLimiterConfig,
                 max_restarts: int = 3, max_replacements: int = 2):
        self._start_args = (env, actor, replay_url, replay, limiter)
        self.max_restarts, self.max_replacements = max_restarts, max_replacements
        self._replaced = {"rollout": [0] * num_actors, "segmenter": [0] * num_segmenters}
        self.steps_per_call = actor.chunk_length * actor.envs_per_actor
        self.segmenter_config, self.replay_url, self.replay_config = segmenter, replay_url, replay
        self._replay = ReplayClient(replay_url, replay)
        before = self._replay.stored_by_actor()
        # (chunks, steps) per actor slot: at the start, and as of its latest report
        self._stored_before = {index: before.get(index, (0, 0)) for index in range(num_actors)}
        self._stored = dict(self._stored_before)
        self.segmenters = start_segmenters(num_segmenters, segmenter, replay_url, replay) if num_segmenters else []
        self.actors = start_rollout_actors(num_actors, env, actor, replay_url, replay, limiter,
                                           max_restarts=max_restarts, max_task_retries=-1)
        # a bad backend setting fails here, loudly
        self._consumers = [summary["consumer"] for summary in ray.get([s.summary.remote() for s in self.segmenters])]
        self._runs = {s.run.remote(): i for i, s in enumerate(self.segmenters)}
        self._checks: dict[ray.ObjectRef, int] = {}
        self._next_check = time.monotonic() + SEGMENTER_CHECK_S
        self._calls: dict[ray.ObjectRef, int] = {}
        self._incarnations: list[str | None] = [None] * num_actors
        self._versions = [0] * num_actors
        self._returns: deque[float] = deque(maxlen=RECENT_RETURNS)
        self._totals = FleetTotals()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for index in range(num_actors):
            for _ in range(CALLS_IN_FLIGHT):
                self._submit(index)
        self._thread = threading.Thread(target=self._serve, name="actor-fleet", daemon=True)
        self._thread.start()

    # -- what the learner sees ---------------------------------------------------------------
    def totals(self) -> FleetTotals:
        with self._lock:
            chunks = sum(self._stored[i][0] - self._stored_before[i][0] for i in self._stored)
            steps = sum(self._stored[i][1] - self._stored_before[i][1] for i in self._stored)
            return replace(self._totals, chunks=chunks, chunk_steps=steps, recent_returns=list(self._returns),
                           min_weights_version=min(self._versions, default=0))

    def check(self) -> None:
        """Raise the error that stopped the fleet, if one did (FleetFailed as it is)."""
        if isinstance(self._error, FleetFailed):
            raise self._error
        if self._error is not None:
            raise RuntimeError("the actor fleet stopped") from self._error

    def stop(self, timeout_s: float = 30.0, drain_s: float = 2.0) -> list[dict]:
        """Stop collecting: queued calls are cancelled, running ones that finish soon are counted,
        the others (e.g. held back by the rate limiter) are cut off with their actors; stop the
        segmenters (they finish their open batch, if it takes no longer than the time left).
        Then take what the actors stored from the replay's own count. All within about
        `timeout_s` (a time-limited run passes what it can spare). Returns the segmenters' summaries."""
        deadline = time.monotonic() + timeout_s

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        self._stop.set()
        self._thread.join(timeout=left())
        if self._calls:
            _, running = ray.wait(list(self._calls), num_returns=len(self._calls), timeout=min(drain_s, left()))
            for ref in running:
                ray.cancel(ref)  # a queued call never starts; a running one is not interrupted
        for segmenter in self.segmenters:
            segmenter.stop.remote()
        done = ray.wait(list(self._runs), num_returns=len(self._runs), timeout=left())[0] if self._runs else []
        summaries = []
        for ref in done:
            try:
                summaries.append(ray.get(ref))
            except RayActorError:
                pass
        for handle in [*self.actors, *self.segmenters]:
            ray.kill(handle, no_restart=True)
        self._fold_finished_calls(left())
        stored = self._replay.stored_by_actor()  # the actors are gone: nothing more is stored
        with self._lock:
            self._stored = {index: stored.get(index, (0, 0)) for index in self._stored}
        return summaries

    def _fold_finished_calls(self, timeout_s: float) -> None:
        """Fold the reports of calls that finished before their actor was killed; wait for the
        others to fail, which Ray reports once the actor's process is gone."""
        ready, _ = ray.wait(list(self._calls), num_returns=len(self._calls), timeout=timeout_s)
        for ref in ready:
            try:
                report = ray.get(ref)
            except (RayActorError, TaskCancelledError):
                continue
            with self._lock:
                self._fold(self._calls[ref], report)
        self._calls.clear()

    # -- the thread --------------------------------------------------------------------------
    def _submit(self, index: int) -> None:
        ref = self.actors[index].collect.remote(self.steps_per_call, flush_partial=False)
        self._calls[ref] = index

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._checks and time.monotonic() >= self._next_check:
                    self._checks = {s.summary.remote(): i for i, s in enumerate(self.segmenters)}
                    self._next_check = time.monotonic() + SEGMENTER_CHECK_S
                done, _ = ray.wait([*self._calls, *self._runs, *self._checks], num_returns=1, timeout=0.5)
                for ref in done:
                    if ref in self._calls:
                        self._finish_collect(ref)
                    elif ref in self._runs:
                        self._finish_segmenter(ref)
                    else:
                        self._check_segmenter(ref)
        except FleetFailed as exc:  # surfaced in the learner by check()
            log.error("%s", exc)
            self._error = exc
        except BaseException as exc:
            log.exception("actor fleet stopped")
            self._error = exc

    def _finish_collect(self, ref: ray.ObjectRef) -> None:
        index = self._calls.pop(ref)
        try:
            report: RolloutReport = ray.get(ref)
        except RayActorError as exc:
            if self._incarnations[index] is None:
                raise  # it never got going: a setting or environment problem, not a crash
            self._replace_actor(index, exc)
            return
        with self._lock:
            self._fold(index, report)
        if not self._stop.is_set():
            self._submit(index)

    def _fold(self, index: int, report: RolloutReport) -> None:
        totals = self._totals
        if self._incarnations[index] not in (None, report.incarnation):
            totals.rollout_restarts += 1
            log.warning("rollout actor %d restarted", index)
        self._incarnations[index] = report.incarnation
        self._versions[index] = report.policy_version
        self._stored[index] = max(self._stored[index], (report.stored_chunks, report.stored_steps))
        totals.env_steps += report.env_steps
        totals.episodes += report.episodes
        totals.insert_wait_s += report.insert_wait_s
        totals.max_weights_version = max(totals.max_weights_version, report.policy_version)
        self._returns.extend(report.episode_returns)

    def _spend_replacement(self, role: str, index: int, error: RayActorError) -> None:
        """Count a replacement of slot `index`; FleetFailed once the slot has had all of its own."""
        replaced = self._replaced[role]
        if replaced[index] >= self.max_replacements:
            raise FleetFailed(
                f"{role} actor {index} ran out of its {self.max_restarts} restarts {replaced[index] + 1} times "
                f"(--max-restarts {self.max_restarts}, --max-replacements {self.max_replacements}): it is crashing "
                f"in a loop ({str(error).splitlines()[0][:200]}); its log is in the Ray session's logs/ folder "
                "(/tmp/ray/session_latest/logs for a local Ray)") from error
        replaced[index] += 1
        log.warning("%s actor %d is out of restarts; starting a new one (replacement %d of %d)", role, index,
                    replaced[index], self.max_replacements)

    def _replace_actor(self, index: int, error: RayActorError) -> None:
        """Ray gave up restarting this actor: start a new one in its slot (its first report counts the restart)."""
        self._spend_replacement("rollout", index, error)
        for ref in [r for r, i in self._calls.items() if i == index]:
            del self._calls[ref]
        env, actor, url, replay, limiter = self._start_args
        (self.actors[index],) = start_rollout_actors(1, env, actor, url, replay, limiter, self.max_restarts,
                                                     max_task_retries=-1, first_id=index)
        for _ in range(CALLS_IN_FLIGHT):
            self._submit(index)

    def _check_segmenter(self, ref: ray.ObjectRef) -> None:
        index = self._checks.pop(ref)
        try:
            consumer = ray.get(ref)["consumer"]
        except RayActorError:
            return  # out of restarts: its `run` call fails too, and that replaces it
        if consumer != self._consumers[index]:
            log.warning("segmenter %d restarted", index)
            with self._lock:
                self._totals.segmenter_restarts += 1
            self._consumers[index] = consumer

    def _finish_segmenter(self, ref: ray.ObjectRef) -> None:
        index = self._runs.pop(ref)
        if self._stop.is_set():
            return
        try:
            ray.get(ref)
        except RayActorError as exc:
            self._spend_replacement("segmenter", index, exc)
            with self._lock:
                self._totals.segmenter_restarts += 1
            (self.segmenters[index],) = start_segmenters(1, self.segmenter_config, self.replay_url,
                                                         self.replay_config)
            self._consumers[index] = ray.get(self.segmenters[index].summary.remote())["consumer"]
        self._runs[self.segmenters[index].run.remote()] = index
