"""The central learner: K LAM updates, then M latent-policy updates, round after round.

Each update samples its own batch of ready (masked) chunks through the rate limiter, so
the learner waits when the actors are behind and the actors wait when the learner is.
Before the policy has been bootstrapped the rounds are LAM updates only and the actors
act with their initial policy; after `bootstrap_after` LAM updates the latent policy and
decoder are bootstrapped from the replay (learner/online_rl.py) and published, and from
then on every `publish_every` policy updates publish new weights. Along the way the
learner scores the LAM's latent with a ridge probe on held-out labelled data, evaluates
published policies in the background (a Ray task), checkpoints atomically, exports the
LEARNER_* and REPLAY_* metrics and prints a progress line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from actors.evaluate import evaluate
from common import metrics as m
from common.cli import ConfigError
from common.codec import decode_chunk
from common.envs import EnvConfig
from common.latent_policy import PixelPolicySpec
from common.progress import Progress
from common.replay import RateLimiter, RateLimiterConfig, ReplayClient, ReplayStats, TransitionWindows
from common.weights import WeightsChannel, encode_policy
from learner.data import transition_data
from learner.downstream import DownstreamConfig
from learner.fleet import ActorFleet, FleetTotals
from learner.lam.batch import make_batch
from learner.lam.config import LAMConfig
from learner.lam.train import ProbeSet, build_model, evaluate_probes, lam_losses
from learner.online_rl import LatentPolicyRL
from learner.rl.sac import SACConfig

log = logging.getLogger("masklam.learner")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = frozenset({"config", "counters", "history", "lam", "lam_optimizer", "rl", "rng", "generator"})
POLL_INTERVAL_S = 1.0
evaluate_remote = ray.remote(num_cpus=1)(evaluate)


@dataclass
class ScheduleConfig:
    """When the learner does what (counted in updates unless named otherwise)."""

    lam_updates_per_round: int = field(default=10, metadata={"help": "K: LAM updates per round"})
    policy_updates_per_round: int = field(default=10, metadata={"help": "M: latent-policy updates per round"})
    publish_every: int = field(default=50, metadata={"help": "P: policy updates between weight publications"})
    bootstrap_after: int = field(default=1_000, metadata={
        "help": "LAM updates before the latent policy and decoder are bootstrapped and first published"})
    bootstrap_steps: int = field(default=8_000, metadata={
        "help": "newest ready transitions the bootstrap trains on (its first --label-budgets are labelled)"})
    lam_batch_size: int = field(default=0, metadata={"help": "LAM batch (0 = the preset's)"})
    probe_every: int = field(default=500, metadata={"help": "LAM updates between held-out probe scores"})
    eval_every: int = field(default=1_000, metadata={"help": "policy updates between evaluations of the weights"})
    checkpoint_minutes: float = field(default=5.0, metadata={"help": "minutes between checkpoints"})


@dataclass
class Counters:
    """What the run has done, over all its sessions (checkpointed, so --resume continues them)."""

    env_steps: int = 0
    chunks_inserted: int = 0
    steps_inserted: int = 0  # env steps in the inserted chunks
    chunks_sampled: int = 0  # windows sampled: each is a slice of one chunk
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


class Learner:
    def __init__(self, lam: LAMConfig, spec: PixelPolicySpec, schedule: ScheduleConfig, sac: SACConfig,
                 downstream: DownstreamConfig, limiter: RateLimiterConfig, env: EnvConfig, replay: ReplayClient,
                 fleet: ActorFleet, probe_set: ProbeSet, metrics: m.Metrics, out: Path, seed: int,
                 device: torch.device, run_config: dict):
        self.lam_config, self.schedule, self.downstream, self.env = lam, schedule, downstream, env
        self.replay, self.fleet, self.probe_set, self.metrics = replay, fleet, probe_set, metrics
        self.out, self.seed, self.device, self.run_config = out, seed, device, run_config
        self.limiter = RateLimiter(replay, limiter)
        self.weights = WeightsChannel(replay)
        torch.manual_seed(seed)
        self.lam = build_model(lam, spec.image_size, spec.action_dim).to(device)
        self.lam_optimizer = torch.optim.AdamW(self.lam.parameters(), lr=lam.optim.lr,
                                               weight_decay=lam.optim.weight_decay)
        self.rl = LatentPolicyRL(spec, lam, sac, downstream, device)
        self.lam_batch = schedule.lam_batch_size or lam.optim.batch_size
        self.policy_batch = sac.batch_size
        self.counters = Counters()
        self.history: dict = {"probes": [], "evals": [], "bootstrap": None}
        self.losses: dict[str, dict[str, float]] = {}
        self._session_base = Counters()
        self._last_probe = self._last_eval = -1
        self._pending_eval: tuple[ray.ObjectRef, dict] | None = None
        self._clock = ChunkClock()
        self._stats = ReplayStats()
        self._last_poll = self._last_checkpoint = self._session_start = time.monotonic()
        self._progress: Progress | None = None
        self._should_stop: Callable[[Counters], bool] = lambda counters: False
        self._restarts_exported = {"rollout": 0, "segmenter": 0}
        self._loop_seconds = 0.0
        self._published = b""  # the weights blob last published
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def bootstrapped(self) -> bool:
        return self.history["bootstrap"] is not None

    # -- the loop ----------------------------------------------------------------------------
    def run(self, should_stop: Callable[[Counters], bool], progress: Progress) -> None:
        """Rounds until `should_stop(counters)`; the data waits poll it too."""
        self._progress, self._should_stop = progress, should_stop
        self._session_base = dataclasses.replace(self.counters)
        self._session_start = self._last_checkpoint = time.monotonic()
        if self.bootstrapped:  # a resumed run: actors on a fresh replay start from these weights
            self._publish(bump=False)
        self._poll(force=True)
        while not self._stopping():
            for _ in range(self.schedule.lam_updates_per_round):
                if not self._lam_update():
                    break
            if self.bootstrapped:
                for _ in range(self.schedule.policy_updates_per_round):
                    if not self._policy_update():
                        break
            elif self.counters.lam_updates >= self.schedule.bootstrap_after and not self._stopping():
                self._bootstrap()
            self._periodic()
        self._poll(force=True)
        self._loop_seconds = time.monotonic() - self._session_start

    def _stopping(self) -> bool:
        self._poll()
        return self._should_stop(self.counters)

    def _sample(self, batch: int, window: int) -> TransitionWindows | None:
        """A batch of windows once the rate limiter allows it; None if the run stops meanwhile."""
        started = time.perf_counter()
        self.limiter.await_sample(batch, should_stop=self._stopping)
        if self._stopping():
            return None
        sampling = time.perf_counter()
        windows = self.replay.sample(batch, window, self.rng)
        done = time.perf_counter()
        self.metrics.observe(m.LEARNER_SAMPLE_SECONDS, done - sampling)
        self.metrics.inc(m.LEARNER_DATA_WAIT_SECONDS, done - started)
        for age in self._clock.ages(windows.chunk_ids):
            self.metrics.observe(m.LEARNER_DATA_AGE_SECONDS, age)
        self.counters.data_wait_seconds += done - started
        self.counters.chunks_sampled += batch
        return windows

    def _lam_update(self) -> bool:
        method = self.lam_config.method
        windows = self._sample(self.lam_batch, method.window)
        if windows is None:
            return False
        started = time.perf_counter()
        offsets = self.rng.integers(1, method.max_future_offset + 1, size=self.lam_batch)
        batch = make_batch(windows, method, self.lam_config.model, offsets, self.generator).to(self.device)
        losses = lam_losses(self.lam, self.lam_config, batch)
        self.lam_optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.lam_optimizer.step()
        self.counters.lam_updates += 1
        named = {("total" if k == "loss" else k): float(v.detach()) for k, v in losses.items()}
        self._record_update("lam", time.perf_counter() - started, named)
        return True

    def _policy_update(self) -> bool:
        windows = self._sample(self.policy_batch, self.rl.window)
        if windows is None:
            return False
        started = time.perf_counter()
        losses = self.rl.update(windows, self.lam, self.generator)
        self.counters.policy_updates += 1
        self._record_update("policy", time.perf_counter() - started, losses)
        if self.counters.policy_updates % self.schedule.publish_every == 0:
            self._publish()
        return True

    def _record_update(self, phase: str, seconds: float, losses: dict[str, float]) -> None:
        self.counters.update_seconds += seconds
        self.metrics.inc(m.LEARNER_UPDATES, phase=phase)
        self.metrics.observe(m.LEARNER_UPDATE_SECONDS, seconds, phase=phase)
        for name, value in losses.items():
            self.metrics.set(m.LEARNER_LOSS, value, phase=phase, loss=name)
        self.losses[phase] = losses

    # -- bootstrap, publication, evaluation, probes -------------------------------------------
    def _bootstrap(self) -> None:
        """Latent BC and the decoder on the newest ready chunks, then the first publication."""
        chunks = newest_ready_chunks(self.replay, self.schedule.bootstrap_steps)
        data = transition_data(chunks)
        if data is None or len(data.window_starts(self.rl.window)) == 0:
            log.warning("no ready chunk holds %d frames yet; bootstrap postponed", self.rl.window)
            return
        log.info("bootstrapping the pixel policy on %d transitions", data.num_transitions)
        started = time.perf_counter()
        metrics = self.rl.bootstrap(self.lam, data, self.seed)
        self.history["bootstrap"] = {**metrics, "lam_updates": self.counters.lam_updates,
                                     "transitions": data.num_transitions, "seconds": time.perf_counter() - started}
        self._publish()
        self._start_evaluation()

    def _publish(self, bump: bool = True) -> None:
        """Publish the policy (as a new version unless `bump` is False: a resumed run re-publishing)."""
        self.counters.weights_version += bump
        self._published = encode_policy(self.rl.policy, self.counters.weights_version)
        self.weights.publish(self._published, self.counters.weights_version)
        self.metrics.set(m.LEARNER_WEIGHTS_VERSION, self.counters.weights_version)

    def _start_evaluation(self) -> None:
        """Evaluate the latest published weights in a Ray task (at most one at a time)."""
        if self._pending_eval is not None or not self.bootstrapped:
            return
        d = self.downstream
        ref = evaluate_remote.remote(self.env, self._published, d.eval_episodes, d.eval_seed, d.eval_workers)
        self._pending_eval = (ref, {"weights_version": self.counters.weights_version,
                                    "policy_updates": self.counters.policy_updates,
                                    "env_steps": self.counters.env_steps})
        self._last_eval = self.counters.policy_updates

    def _collect_evaluation(self, timeout_s: float = 0.0) -> None:
        if self._pending_eval is None:
            return
        ref, record = self._pending_eval
        if not ray.wait([ref], timeout=timeout_s)[0]:
            return
        returns = ray.get(ref)
        self._pending_eval = None
        self.history["evals"].append({**record, "return": float(np.mean(returns)), "returns": returns})
        self.metrics.set(m.LEARNER_EVAL_RETURN, float(np.mean(returns)))

    def probe(self) -> None:
        """Ridge-probe nMSE of the LAM's latent on the held-out labelled set."""
        scores = evaluate_probes(self.lam, self.lam_config, {"eval": self.probe_set})
        self.history["probes"].append({"lam_updates": self.counters.lam_updates,
                                       **{k: v for k, v in scores.items() if "per_dim" not in k}})
        if scores["probe_nmse"] is not None:
            self.metrics.set(m.LEARNER_PROBE_NMSE, scores["probe_nmse"])
        self._last_probe = self.counters.lam_updates

    def _periodic(self) -> None:
        s = self.schedule
        if self.counters.lam_updates - self._last_probe >= s.probe_every:
            self.probe()
        self._collect_evaluation()
        if self.bootstrapped and self.counters.policy_updates - self._last_eval >= s.eval_every:
            self._start_evaluation()
        if time.monotonic() - self._last_checkpoint >= 60 * s.checkpoint_minutes:
            self.save_checkpoint()

    def finish(self, eval_timeout_s: float = 600.0) -> None:
        """Final probe and evaluation of the last weights, then a checkpoint."""
        if self._last_probe != self.counters.lam_updates:
            self.probe()
        self._collect_evaluation(timeout_s=eval_timeout_s)
        if self.bootstrapped and (not self.history["evals"]
                                  or self.history["evals"][-1]["weights_version"] != self.counters.weights_version):
            self._start_evaluation()
            self._collect_evaluation(timeout_s=eval_timeout_s)
        self._poll(force=True)
        self.save_checkpoint()

    def summary(self) -> dict:
        """Counters, rates of this session's loop, latest scores, losses and history (for summary.json)."""
        c, base = self.counters, self._session_base
        loop_s = max(self._loop_seconds, 1e-9)
        probes, evals = self.history["probes"], self.history["evals"]
        stats = self._stats
        return {
            **dataclasses.asdict(c), "learner_updates": c.learner_updates,
            "probe_nmse": probes[-1]["probe_nmse"] if probes else None,
            "background_nmse": probes[-1]["background_nmse"] if probes else None,
            "eval_return": evals[-1]["return"] if evals else None,
            "initial_eval_return": evals[0]["return"] if evals else None,
            "final_losses": self.losses,
            "wall_seconds": c.wall_seconds - base.wall_seconds, "loop_seconds": self._loop_seconds,
            "total_wall_seconds": c.wall_seconds,
            "env_steps_per_s": (c.env_steps - base.env_steps) / loop_s,
            "learner_updates_per_s": (c.learner_updates - base.learner_updates) / loop_s,
            "data_wait_fraction": (c.data_wait_seconds - base.data_wait_seconds) / loop_s,
            "samples_per_insert": stats.sampled_steps / stats.inserted_steps if stats.inserted_steps else None,
            "replay": dataclasses.asdict(stats),
            "bootstrap": self.history["bootstrap"], "evals": evals, "probes": probes,
        }

    # -- bookkeeping -------------------------------------------------------------------------
    def _poll(self, force: bool = False) -> None:
        """At most once per POLL_INTERVAL_S: fleet and replay figures into counters, metrics, progress."""
        now = time.monotonic()
        if not force and now - self._last_poll < POLL_INTERVAL_S:
            return
        self._last_poll = now
        self.fleet.check()
        fleet, base, c = self.fleet.totals(), self._session_base, self.counters
        c.env_steps = base.env_steps + fleet.env_steps
        c.chunks_inserted = base.chunks_inserted + fleet.chunks
        c.steps_inserted = base.steps_inserted + fleet.chunk_steps
        c.actor_restarts = base.actor_restarts + fleet.rollout_restarts + fleet.segmenter_restarts
        c.max_actor_weights_version = max(base.max_actor_weights_version, fleet.max_weights_version)
        c.wall_seconds = base.wall_seconds + now - self._session_start
        stats = self.replay.stats()
        self._clock.record(stats.inserted_chunks)
        self._export(stats, fleet)
        self._stats = stats
        if self._progress is not None:
            self._progress.update(c.env_steps, force=force, **self.progress_extras(stats, fleet))

    def _export(self, stats: ReplayStats, fleet: FleetTotals) -> None:
        mt, previous, c = self.metrics, self._stats, self.counters
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
            mt.set(m.LEARNER_POLICY_LAG, c.weights_version - fleet.min_weights_version)

    def progress_extras(self, stats: ReplayStats, fleet: FleetTotals) -> dict:
        c = self.counters
        extras = {"upd": c.learner_updates, "ready": stats.ready_chunks_stored, "v": c.weights_version,
                  "rec": self.losses.get("lam", {}).get("reconstruction", float("nan"))}
        if "policy" in self.losses:
            extras["critic"] = self.losses["policy"]["critic"]
        if fleet.recent_returns:
            extras["ret"] = float(np.mean(fleet.recent_returns))
        if self.history["evals"]:
            extras["eval"] = self.history["evals"][-1]["return"]
        if self.history["probes"] and self.history["probes"][-1]["probe_nmse"] is not None:
            extras["probe"] = self.history["probes"][-1]["probe_nmse"]
        return extras

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Models, optimisers, counters, history and config to OUT/checkpoint.pt, atomically."""
        state = {"config": self.run_config, "counters": dataclasses.asdict(self.counters),
                 "history": json.dumps(self.history, default=float),
                 "lam": self.lam.state_dict(), "lam_optimizer": self.lam_optimizer.state_dict(),
                 "rl": self.rl.state_dict(), "rng": self.rng.bit_generator.state,
                 "generator": self.generator.get_state()}
        path = write_checkpoint(state, self.out / CHECKPOINT)
        self._last_checkpoint = time.monotonic()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path, self.device)
        self.lam.load_state_dict(state["lam"])
        self.lam_optimizer.load_state_dict(state["lam_optimizer"])
        self.rl.load_state_dict(state["rl"])
        self.counters = Counters(**state["counters"])
        self.history = json.loads(state["history"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        self._last_probe = self.history["probes"][-1]["lam_updates"] if self.history["probes"] else -1
        self._last_eval = self.history["evals"][-1]["policy_updates"] if self.history["evals"] else -1


def newest_ready_chunks(replay: ReplayClient, max_steps: int) -> list:
    """The newest ready chunks holding up to `max_steps` transitions, oldest first, each with
    the masks the segmenter served (not the ground truth it carries)."""
    keys, chunks, steps, start = replay.keys, [], 0, 0
    while steps < max_steps:
        ids = replay.call(replay.redis.zrevrange, keys.ready, start, start + 63)
        if not ids:
            break
        start += len(ids)
        blobs = replay.get_chunk_blobs([int(i) for i in ids])
        masks = replay.call(replay.redis.mget, [keys.mask(i.decode()) for i in ids])
        for blob, mask in zip(blobs, masks):
            if not isinstance(blob, bytes) or mask is None:
                continue  # evicted (or refused) since it was listed
            chunk = decode_chunk(blob)
            chunk.masks = np.frombuffer(mask, np.uint8).reshape(chunk.masks.shape)
            chunks.append(chunk)
            steps += chunk.num_steps
            if steps >= max_steps:
                break
    return chunks[::-1]


def write_checkpoint(state: dict, path: Path) -> Path:
    """Write `state` to `path` atomically: into `<path>.tmp`, flushed to disk, then renamed over
    `path`. A process killed mid-write leaves the previous checkpoint whole, and the partial
    file under another name, which nothing reads (the next write replaces it)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as stream:
        torch.save(state, stream)
        stream.flush()
        os.fsync(stream.fileno())  # the rename must not reach the disk before the data
    os.replace(tmp, path)
    return path


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint of `Learner.save_checkpoint`: tensors and plain containers only, so it is read
    with `weights_only=True` (nothing unpickled). ConfigError if the file is not one."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ConfigError(f"{path} could not be read as a learner checkpoint "
                          f"({type(exc).__name__}: {str(exc)[:200]})",
                          "resume a run folder whose checkpoint is whole, or start a new run in another --out") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        raise ConfigError(f"{path} is not a learner checkpoint (it lacks {sorted(CHECKPOINT_KEYS)})",
                          "resume a folder written by learner.main, or start a new run in another --out")
    return state


def checkpoint_config(path: Path) -> dict:
    """The run config a checkpoint was written with."""
    return read_checkpoint(path)["config"]

