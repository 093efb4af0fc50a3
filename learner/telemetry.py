"""What the learner reports: the run's counters, the LEARNER_* and REPLAY_* metrics, the
progress line and the summary. Nothing here changes what the learner learns.

The learner tells `Telemetry` of each sample and update as it happens (histograms and
counters). Everything else is polled, at most once per POLL_INTERVAL_S: the fleet is
checked (an actor's bug is raised here, in the learner), its totals are folded into the
run's counters, the replay's statistics are read, the gauges are set from the learner's
state, and the progress line is printed.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass

import numpy as np

from common import metrics as m
from common.progress import Progress
from common.replay import ReplayClient, ReplayStats
from learner.fleet import RECENT_RETURNS, ActorFleet, FleetTotals

POLL_INTERVAL_S = 1.0


@dataclass
class Counters:
    """What the run has done, over all its sessions (checkpointed, so --resume continues them)."""

    env_steps: int = 0
    chunks_inserted: int = 0
    steps_inserted: int = 0  # env steps in the inserted chunks
    windows_sampled: int = 0  # each a slice of one chunk
    lam_updates: int = 0
    policy_updates: int = 0
    weights_version: int = 0
    max_actor_weights_version: int = 0
    actor_restarts: int = 0  # rollout actors and segmenters
    update_seconds: float = 0.0
    data_wait_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def learner_updates(self) -> int:
        return self.lam_updates + self.policy_updates


class ChunkClock:
    """When each chunk id was inserted, to within a poll: ids grow with every insert, so the
    time the insert counter first reached an id dates that chunk (for the data-age metric).
    Chunks inserted before the first poll are dated by it."""

    def __init__(self):
        self.ids: list[int] = []
        self.times: list[float] = []

    def record(self, inserted_chunks: int) -> None:
        if not self.ids or inserted_chunks > self.ids[-1]:
            self.ids.append(inserted_chunks)
            self.times.append(time.monotonic())

    def ages(self, chunk_ids: np.ndarray) -> np.ndarray:
        if not self.ids:
            return np.zeros(0)
        index = np.minimum(np.searchsorted(self.ids, chunk_ids), len(self.ids) - 1)
        return time.monotonic() - np.asarray(self.times)[index]


class Telemetry:
    """The learner's metrics, progress line and summary; `history` and `losses` are the learner's
    (probe and evaluation records, the latest losses of each phase)."""

    def __init__(self, metrics: m.Metrics, fleet: ActorFleet | None, replay: ReplayClient):
        """`fleet` None: a learner on a replay that others fill (its totals stay zero)."""
        self.metrics, self.fleet, self.replay = metrics, fleet, replay
        self.stats = ReplayStats()  # as of the last poll
        self.clock = ChunkClock()
        self.progress: Progress | None = None
        self.session_base = Counters()  # the counters as this session started (a resumed run's)
        self.session_start = self.last_poll = time.monotonic()
        self.loop_seconds = 0.0
        self._restarts_exported = {"rollout": 0, "segmenter": 0}

    # -- a session ---------------------------------------------------------------------------
    def start_session(self, counters: Counters, progress: Progress | None) -> None:
        self.progress = progress
        self.session_base = dataclasses.replace(counters)
        self.session_start = time.monotonic()
        if progress is not None:
            self.note("progress line: " + "; ".join(f"{key} = {meaning}" for key, meaning in PROGRESS_LEGEND.items()))

    def note(self, message: str) -> None:
        """A phase change or a result: one line in the log, above the progress line."""
        if self.progress is not None:
            self.progress.note(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def end_session(self) -> None:
        self.loop_seconds = time.monotonic() - self.session_start

    # -- events ------------------------------------------------------------------------------
    def record_sample(self, wait_s: float, sample_s: float, chunk_ids: np.ndarray) -> None:
        """A batch sampled after `wait_s` in all (rate limiter and sampling), `sample_s` of it sampling."""
        self.metrics.observe(m.LEARNER_SAMPLE_SECONDS, sample_s)
        self.metrics.inc(m.LEARNER_DATA_WAIT_SECONDS, wait_s)
        for age in self.clock.ages(chunk_ids):
            self.metrics.observe(m.LEARNER_DATA_AGE_SECONDS, age)

    def record_update(self, phase: str, seconds: float, losses: dict[str, float]) -> None:
        self.metrics.inc(m.LEARNER_UPDATES, phase=phase)
        self.metrics.observe(m.LEARNER_UPDATE_SECONDS, seconds, phase=phase)
        for name, value in losses.items():
            self.metrics.set(m.LEARNER_LOSS, value, phase=phase, loss=name)

    # -- the poll ----------------------------------------------------------------------------
    def poll(self, counters: Counters, history: dict, losses: dict, force: bool = False) -> None:
        """At most once per POLL_INTERVAL_S (or now, if `force`): fleet and replay figures into
        `counters`, the metrics and the progress line."""
        now = time.monotonic()
        if not force and now - self.last_poll < POLL_INTERVAL_S:
            return
        self.last_poll = now
        if self.fleet is not None:
            self.fleet.check()
        fleet = self.fleet.totals() if self.fleet is not None else FleetTotals()
        base, c = self.session_base, counters
        c.env_steps = base.env_steps + fleet.env_steps
        c.chunks_inserted = base.chunks_inserted + fleet.chunks
        c.steps_inserted = base.steps_inserted + fleet.chunk_steps
        c.actor_restarts = base.actor_restarts + fleet.rollout_restarts + fleet.segmenter_restarts
        c.max_actor_weights_version = max(base.max_actor_weights_version, fleet.max_weights_version)
        c.wall_seconds = base.wall_seconds + now - self.session_start
        stats = self.replay.stats()
        self.clock.record(stats.inserted_chunks)
        self._export(stats, fleet, counters, history)
        self.stats = stats
        if self.progress is not None:
            self.progress.update(c.env_steps, force=force, **progress_extras(stats, fleet, counters, history, losses))

    def _export(self, stats: ReplayStats, fleet: FleetTotals, counters: Counters, history: dict) -> None:
        mt, previous, c = self.metrics, self.stats, counters
        mt.set(m.REPLAY_ITEMS, stats.stored_chunks)
        mt.set(m.REPLAY_READY_ITEMS, stats.ready_chunks_stored)
        mt.set(m.REPLAY_BYTES, stats.stored_bytes)
        mt.inc(m.REPLAY_EVICTED_ITEMS, max(0, stats.evicted_chunks - previous.evicted_chunks))
        mt.inc(m.REPLAY_DEAD_LETTER_ITEMS, max(0, stats.dead_letters - previous.dead_letters))
        if stats.inserted_steps:
            mt.set(m.LEARNER_SAMPLES_PER_INSERT, stats.sampled_steps / stats.inserted_steps)
        for role, restarts in (("rollout", fleet.rollout_restarts), ("segmenter", fleet.segmenter_restarts)):
            mt.inc(m.LEARNER_ACTOR_RESTARTS, restarts - self._restarts_exported[role], role=role)
            self._restarts_exported[role] = restarts
        if fleet.recent_returns:
            mt.set(m.LEARNER_EPISODE_RETURN, float(np.mean(fleet.recent_returns)))
        if c.weights_version:
            mt.set(m.LEARNER_WEIGHTS_VERSION, c.weights_version)
            mt.set(m.LEARNER_POLICY_LAG, c.weights_version - fleet.min_weights_version)
        if history["evals"]:
            mt.set(m.LEARNER_EVAL_RETURN, history["evals"][-1]["return"])
        if history["probes"] and history["probes"][-1]["probe_nmse"] is not None:
            mt.set(m.LEARNER_PROBE_NMSE, history["probes"][-1]["probe_nmse"])

    # -- the summary -------------------------------------------------------------------------
    def summary(self, counters: Counters, history: dict, losses: dict) -> dict:
        """Counters, rates of this session's loop, latest scores, losses and history (for summary.json)."""
        c, base, stats = counters, self.session_base, self.stats
        loop_s = max(self.loop_seconds, 1e-9)
        probes, evals = history["probes"], history["evals"]
        return {
            **dataclasses.asdict(c), "learner_updates": c.learner_updates,
            "probe_nmse": probes[-1]["probe_nmse"] if probes else None,
            "background_nmse": probes[-1]["background_nmse"] if probes else None,
            "eval_return": evals[-1]["return"] if evals else None,
            "initial_eval_return": evals[0]["return"] if evals else None,
            "final_losses": losses,
            "wall_seconds": c.wall_seconds - base.wall_seconds, "loop_seconds": self.loop_seconds,
            "total_wall_seconds": c.wall_seconds,
            "env_steps_per_s": (c.env_steps - base.env_steps) / loop_s,
            "learner_updates_per_s": (c.learner_updates - base.learner_updates) / loop_s,
            "data_wait_fraction": (c.data_wait_seconds - base.data_wait_seconds) / loop_s,
            "samples_per_insert": stats.sampled_steps / stats.inserted_steps if stats.inserted_steps else None,
            "replay": dataclasses.asdict(stats),
            # every actor's share, counted by the insert script: at scale, shows that each one wrote
            "chunks_by_actor": {str(actor): {"chunks": chunks, "steps": steps}
                                for actor, (chunks, steps) in sorted(self.replay.stored_by_actor().items())},
            "bootstrap": history["bootstrap"], "evals": evals, "probes": probes,
            "phases": phases(counters, history),
        }


def phases(counters: Counters, history: dict) -> dict:
    """What each phase of the run did, in a few figures a reader can check at a glance."""
    probes, evals, boot = history["probes"], history["evals"], history["bootstrap"]
    return {
        "lam": {"updates": counters.lam_updates,
                "probe_nmse_first": probes[0]["probe_nmse"] if probes else None,
                "probe_nmse_last": probes[-1]["probe_nmse"] if probes else None},
        "bootstrap": None if boot is None else {k: boot[k] for k in ("lam_updates", "transitions", "seconds")},
        "rl": {"policy_updates": counters.policy_updates, "weights_published": counters.weights_version,
               "max_actor_weights_version": counters.max_actor_weights_version},
        "evaluation": {"count": len(evals), "returns": [e["return"] for e in evals],
                       "weights_versions": [e["weights_version"] for e in evals]},
    }


# What each figure after the limits on the progress line is (printed once as a session starts).
PROGRESS_LEGEND = {
    "upd": "learner updates (LAM + policy)", "ready": "segmented chunks in the replay (what the learner samples)",
    "v": "weights version published", "rec": "the LAM's latest reconstruction loss",
    "critic": "SAC's latest critic loss", "ret": f"mean return of the last {RECENT_RETURNS} training episodes",
    "eval": "mean return of the last evaluation", "probe": "held-out probe nMSE of the LAM's latent (lower is better)"}


def progress_extras(stats: ReplayStats, fleet: FleetTotals, counters: Counters, history: dict, losses: dict) -> dict:
    """The progress line's figures after the env steps (PROGRESS_LEGEND says what each is)."""
    c = counters
    extras = {"upd": c.learner_updates, "ready": stats.ready_chunks_stored, "v": c.weights_version,
              "rec": losses.get("lam", {}).get("reconstruction", float("nan"))}
    if "critic" in losses.get("policy", {}):
        extras["critic"] = losses["policy"]["critic"]
    if fleet.recent_returns:
        extras["ret"] = float(np.mean(fleet.recent_returns))
    if history["evals"]:
        extras["eval"] = history["evals"][-1]["return"]
    if history["probes"] and history["probes"][-1]["probe_nmse"] is not None:
        extras["probe"] = history["probes"][-1]["probe_nmse"]
    return extras
