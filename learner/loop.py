"""The central learner: K LAM updates, then M latent-policy updates, round after round.

Each update samples its own batch of ready (masked) chunks through the rate limiter, so
the learner waits when the actors are behind and the actors wait when the learner is.
Before the policy has been bootstrapped the rounds are LAM updates only and the actors
act with their initial policy; after `bootstrap_after` LAM updates the latent policy and
decoder are bootstrapped from the replay (learner/online_rl.py) and published, and from
then on every `publish_every` policy updates publish new weights. Along the way the
learner scores the LAM's latent with a ridge probe on held-out labelled data, evaluates
published policies in the background (learner/evaluation.py) and checkpoints
(common/checkpoint.py); learner/telemetry.py polls the fleet and the replay, and exports
the metrics, the progress line and the summary. `finish` ends a run within the time it
is given (learner/budget.py): what does not fit is skipped or cut off, and says so.

A resume continues every random stream the learner draws from: numpy's (sampling starts,
the LAM's batches), the LAM's torch generator, and torch's global streams (SAC's action
noise), all checkpointed; the bootstrap draws from a fork of them, so it never reseeds them.

The model family comes from the method registry (learner/methods.py); `online_family`
refuses a method whose family the online learner cannot train yet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import checkpoint
from common import metrics as m
from common.cli import ConfigError
from common.config import at_least, positive
from common.envs import EnvConfig
from common.latent_policy import PixelPolicySpec
from common.progress import Progress
from common.replay import RateLimiter, RateLimiterConfig, ReplayClient
from common.weights import WeightsChannel
from common.windows import Windows
from learner.compute import Compute, ComputeConfig
from learner.data import transition_data
from learner.downstream import DownstreamConfig, TrainingStopped
from learner.evaluation import BackgroundEvaluation
from learner.fleet import ActorFleet
from learner.methods import FAMILIES, METHODS, Family, family
from learner.online_rl import LatentPolicyRL
from learner.probe import ProbeSet, evaluate_probes
from learner.publish import encode_policy
from learner.rl.sac import SACConfig
from learner.telemetry import Counters, Telemetry

log = logging.getLogger("masklam.learner")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = frozenset({"config", "counters", "history", "lam", "lam_optimizer", "rl", "rng", "generator",
                             "torch_rng"})
MAX_EVALUATION_WAIT_S = 600.0  # the most the end of a run without a time limit waits for an evaluation


@dataclass
class ScheduleConfig:
    """When the learner does what (counted in updates unless named otherwise). The defaults are the
    `ci` preset's: every phase within the README's 5 minutes on 2 cores (a short LAM warm-up, then
    RL rounds with a publication every 50 and an evaluation every 200 policy updates)."""

    lam_updates_per_round: int = field(default=10, metadata={"help": "K: LAM updates per round"})
    policy_updates_per_round: int = field(default=10, metadata={"help": "M: latent-policy updates per round"})
    publish_every: int = field(default=50, metadata={"help": "P: policy updates between weight publications"})
    bootstrap_after: int = field(default=300, metadata={
        "help": "LAM updates before the latent policy and decoder are bootstrapped and first published"})
    bootstrap_steps: int = field(default=8_000, metadata={
        "help": "newest ready transitions the bootstrap trains on (the decoder's labelled subset, the last of "
                "--downstream.label-budgets, is drawn from them as whole episodes)"})
    probe_every: int = field(default=300, metadata={"help": "LAM updates between held-out probe scores"})
    eval_every: int = field(default=200, metadata={"help": "policy updates between evaluations of the weights"})
    checkpoint_minutes: float = field(default=5.0, metadata={"help": "minutes between checkpoints"})
    rl: bool = field(default=True, metadata={
        "help": "SAC in every policy update; off: latent BC only (the control that shows what RL adds)"})

    def validate(self) -> None:
        at_least(self, 1, "lam_updates_per_round", "policy_updates_per_round", "publish_every", "bootstrap_steps",
                 "probe_every", "eval_every")
        at_least(self, 0, "bootstrap_after")
        positive(self, "checkpoint_minutes")


class Learner:
    """The schedule, and what it trains: the LAM (a model of `family` configured by `lam_config`)
    and the pixel policy; with the run's counters and its history of probes and evaluations."""

    def __init__(self, family: Family, lam_config: Any, spec: PixelPolicySpec, schedule: ScheduleConfig, sac: SACConfig,
                 downstream: DownstreamConfig, limiter: RateLimiterConfig, env: EnvConfig, replay: ReplayClient,
                 fleet: ActorFleet | None, probe_set: ProbeSet, metrics: m.Metrics, out: Path, seed: int,
                 device: torch.device, run_config: dict, compute: ComputeConfig = ComputeConfig()):
        if family.online_step is None:
            raise ValueError(f"the {family.name} family has no online update (learner.main checks online_family)")
        self.family, self.lam_config, self.schedule = family, lam_config, schedule
        self.replay, self.probe_set = replay, probe_set
        self.out, self.seed, self.device, self.run_config = out, seed, device, run_config
        self.limiter = RateLimiter(replay, limiter)
        self.weights = WeightsChannel(replay)
        self.telemetry = Telemetry(metrics, fleet, replay)
        self.evaluation = BackgroundEvaluation(env, downstream)
        torch.manual_seed(seed)
        self.compute = Compute.resolve(compute, device)  # how every training step computes (learner/compute.py)
        self.lam = self.compute.prepare(family.build_model(lam_config, spec.image_size, spec.action_dim).to(device))
        self.lam_optimizer = torch.optim.AdamW(self.lam.parameters(), lr=lam_config.optim.lr,
                                               weight_decay=lam_config.optim.weight_decay)
        self.rl = LatentPolicyRL(spec, lam_config, sac, downstream, device, compute)
        self.lam_batch = lam_config.optim.batch_size
        self.policy_batch = sac.batch_size
        self.counters = Counters()
        self.history: dict = {"probes": [], "evals": [], "bootstrap": None}
        self.losses: dict[str, dict[str, float]] = {}
        self._last_probe = self._last_eval = -1
        self._probe_seconds = 0.0  # the last probe's time (the end of a time-limited run reserves it)
        self._last_checkpoint = time.monotonic()
        self._should_stop: Callable[[Counters], bool] = lambda counters: False
        self._published = b""  # the weights blob last published
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def bootstrapped(self) -> bool:
        return self.history["bootstrap"] is not None

    # -- the loop ----------------------------------------------------------------------------
    def run(self, should_stop: Callable[[Counters], bool], progress: Progress) -> None:
        """Rounds until `should_stop(counters)`; the data waits poll it too."""
        self._should_stop = should_stop
        self.telemetry.start_session(self.counters, progress)
        self._last_checkpoint = time.monotonic()
        if self.bootstrapped:  # a resumed run: actors on a fresh replay start from these weights
            self._publish(bump=False)
        self._poll(force=True)
        s = self.schedule
        self.telemetry.note(f"phase: LAM updates ({s.lam_updates_per_round} per round) once the replay holds ready "
                            f"data; the pixel policy is bootstrapped after {s.bootstrap_after} LAM updates"
                            if not self.bootstrapped else "phase: resumed after the bootstrap; LAM and RL rounds")
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
        self.telemetry.end_session()

    def _stopping(self) -> bool:
        self._poll()
        return self._should_stop(self.counters)

    def _poll(self, force: bool = False) -> None:
        self.telemetry.poll(self.counters, self.history, self.losses, force)

    def _sample(self, batch: int, window: int) -> Windows | None:
        """A batch of windows once the rate limiter allows it; None if the run stops meanwhile."""
        started = time.perf_counter()
        self.limiter.await_sample(batch, should_stop=self._stopping)
        if self._stopping():
            return None
        sampling = time.perf_counter()
        windows = self.replay.sample(batch, window, self.rng)
        done = time.perf_counter()
        self.telemetry.record_sample(done - started, done - sampling, windows.chunk_ids)
        self.counters.data_wait_seconds += done - started
        self.counters.windows_sampled += batch
        return windows

    def _lam_update(self) -> bool:
        windows = self._sample(self.lam_batch, self.lam_config.method.window)
        if windows is None:
            return False
        started = time.perf_counter()
        losses = self.family.online_step(self.lam, self.lam_optimizer, self.lam_config, windows, self.rng,
                                         self.generator, compute=self.compute)
        self.counters.lam_updates += 1
        named = {("total" if k == "loss" else k): float(v.detach()) for k, v in losses.items()}
        self._record_update("lam", time.perf_counter() - started, named)
        return True

    def _policy_update(self) -> bool:
        windows = self._sample(self.policy_batch, self.rl.window)
        if windows is None:
            return False
        started = time.perf_counter()
        losses = self.rl.update(windows, self.lam, self.generator, sac=self.schedule.rl)
        self.counters.policy_updates += 1
        self._record_update("policy", time.perf_counter() - started, losses)
        if self.counters.policy_updates % self.schedule.publish_every == 0:
            self._publish()
        return True

    def _record_update(self, phase: str, seconds: float, losses: dict[str, float]) -> None:
        self.counters.update_seconds += seconds
        self.telemetry.record_update(phase, seconds, losses)
        self.losses[phase] = losses

    # -- bootstrap, publication, evaluation, probes -------------------------------------------
    def _bootstrap(self) -> None:
        """Latent BC and the decoder on the newest ready chunks, then the first publication."""
        chunks = self.replay.newest_ready(self.schedule.bootstrap_steps)
        data = transition_data(chunks)
        if data is None or len(data.window_starts(self.rl.window)) == 0:
            log.warning("no ready chunk holds %d frames yet; bootstrap postponed", self.rl.window)
            return
        self.telemetry.note(f"phase: bootstrap: latent BC and the action decoder on the newest "
                            f"{data.num_transitions} transitions (after {self.counters.lam_updates} LAM updates)")
        started = time.perf_counter()
        try:
            metrics = self.rl.bootstrap(self.lam, data, self.seed, should_stop=self._stopping)
        except TrainingStopped as stopped:
            self.telemetry.note(f"phase: bootstrap stopped {stopped} (the run is stopping); no weights published")
            return
        self.history["bootstrap"] = {**metrics, "lam_updates": self.counters.lam_updates,
                                     "transitions": data.num_transitions, "seconds": time.perf_counter() - started}
        self._publish()
        self._start_evaluation()
        s = self.schedule
        kind = "latent BC + SAC" if s.rl else "latent BC only, RL off"
        self.telemetry.note(f"phase: policy: rounds of {s.lam_updates_per_round} LAM and "
                            f"{s.policy_updates_per_round} policy updates ({kind}); weights v1 published, then every "
                            f"{s.publish_every} policy updates (bootstrap took "
                            f"{self.history['bootstrap']['seconds']:.0f} s)")

    def _publish(self, bump: bool = True) -> None:
        """Publish the policy (as a new version unless `bump` is False: a resumed run re-publishing)."""
        self.counters.weights_version += bump
        self._published = encode_policy(self.rl.policy, self.counters.weights_version)
        self.weights.publish(self._published, self.counters.weights_version)

    def _start_evaluation(self) -> bool:
        """Evaluate the latest published weights in the background (unless one is still running);
        True if it started."""
        c = self.counters
        record = {"weights_version": c.weights_version, "policy_updates": c.policy_updates, "env_steps": c.env_steps}
        if not self.evaluation.start(self._published, record):
            return False
        self._last_eval = c.policy_updates
        return True

    def _collect_evaluation(self, timeout_s: float = 0.0) -> bool:
        """Record the running evaluation if it is done (waiting up to `timeout_s`); True if it was."""
        if (result := self.evaluation.collect(timeout_s)) is None:
            return False
        self.history["evals"].append(result)
        returns = np.asarray(result["returns"], dtype=float)
        sem = returns.std(ddof=1) / np.sqrt(len(returns)) if len(returns) > 1 else float("nan")
        self.telemetry.note(f"eval: weights v{result['weights_version']} after {result['policy_updates']} policy "
                            f"updates: return {returns.mean():.1f} ± {sem:.1f} (s.e., {len(returns)} episodes, "
                            f"{result['seconds']:.0f} s)")
        return True

    def probe(self) -> None:
        """Ridge-probe nMSE of the LAM's latent on the held-out labelled set."""
        started = time.monotonic()
        scores = evaluate_probes(self.lam, self.lam_config, {"eval": self.probe_set}, self.family.encode_probe_set)
        self.history["probes"].append({"lam_updates": self.counters.lam_updates,
                                       **{k: v for k, v in scores.items() if "per_dim" not in k}})
        self._last_probe = self.counters.lam_updates
        self._probe_seconds = time.monotonic() - started

    def _periodic(self) -> None:
        s = self.schedule
        if self.counters.lam_updates - self._last_probe >= s.probe_every:
            self.probe()
        self._collect_evaluation()
        if self.bootstrapped and self.counters.policy_updates - self._last_eval >= s.eval_every:
            self._start_evaluation()
        if time.monotonic() - self._last_checkpoint >= 60 * s.checkpoint_minutes:
            self.save_checkpoint()

    def end_reserve_s(self) -> float:
        """What the end of the run will take, by the last measured times: a final probe if the LAM
        changed since the last one; the rest of a running evaluation, and one of the latest
        weights if they have none yet."""
        probe = self._probe_seconds if self._last_probe != self.counters.lam_updates else 0.0
        expected = self._evaluation_seconds()
        running = max(0.0, expected - self.evaluation.running_seconds()) if self.evaluation.running else 0.0
        return probe + running + (expected if self._needs_final_evaluation() else 0.0)

    def _evaluation_seconds(self) -> float:
        """How long an evaluation takes: the last one's time (0 before any has finished)."""
        return self.history["evals"][-1].get("seconds", 0.0) if self.history["evals"] else 0.0

    def _needs_final_evaluation(self) -> bool:
        """Whether the latest weights are neither evaluated nor being evaluated."""
        version = self.counters.weights_version
        running = self.evaluation.running_record
        return (self.bootstrapped and self.evaluation.downstream.eval_episodes > 0
                and version not in [e["weights_version"] for e in self.history["evals"]]
                and (running is None or running["weights_version"] != version))

    def finish(self, seconds_left: Callable[[], float] = lambda: float("inf")) -> None:
        """The final probe and the evaluation of the last weights within `seconds_left()` (what the
        run's time limit leaves them), then a checkpoint. A probe that would not fit is skipped;
        an evaluation is started only if its last measured time fits, waited for until the time
        is up, and then cut off: each says so in a line."""
        note = self.telemetry.note
        if self._last_probe != self.counters.lam_updates:
            if seconds_left() > self._probe_seconds:
                self.probe()
                score = self.history["probes"][-1]["probe_nmse"]
                note(f"final: probe nMSE {'-' if score is None else f'{score:.4f}'} after "
                     f"{self.counters.lam_updates} LAM updates ({self._probe_seconds:.0f} s)")
            else:
                note(f"final: probe skipped: {max(0.0, seconds_left()):.0f} s left within the time limit, "
                     f"one takes about {self._probe_seconds:.0f} s")
        if self._await_evaluation(seconds_left) and self._needs_final_evaluation():
            version, expected = self.counters.weights_version, self._evaluation_seconds()
            if seconds_left() <= expected:
                note(f"final: evaluation of weights v{version} skipped: {max(0.0, seconds_left()):.0f} s left "
                     f"within the time limit, one takes about {expected:.0f} s")
            elif self._start_evaluation():
                note(f"final: evaluating weights v{version} ({self.evaluation.downstream.eval_episodes} episodes"
                     + (f", about {expected:.0f} s)" if expected else ")"))
                self._await_evaluation(seconds_left)
        self._poll(force=True)
        self.save_checkpoint()

    def _await_evaluation(self, seconds_left: Callable[[], float]) -> bool:
        """Wait for the running evaluation while the time allows (at most MAX_EVALUATION_WAIT_S);
        when the time is up, cancel it with a line that says so. False if it was cut off."""
        running = self.evaluation.running_record
        if running is None:
            return True
        wait_s = min(seconds_left(), MAX_EVALUATION_WAIT_S)
        if self._collect_evaluation(timeout_s=wait_s):
            return True
        ran = self.evaluation.running_seconds()
        self.evaluation.cancel()
        why = "the time limit" if wait_s < MAX_EVALUATION_WAIT_S else f"{MAX_EVALUATION_WAIT_S:.0f} s of waiting"
        self.telemetry.note(f"final: evaluation of weights v{running['weights_version']} cut off at {why} "
                            f"after {ran:.0f} s; not recorded")
        return False

    def summary(self) -> dict:
        """Counters, rates of this session, latest scores, losses and history (for summary.json)."""
        return self.telemetry.summary(self.counters, self.history, self.losses)

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Models, optimisers, counters, history and config to OUT/checkpoint.pt, atomically."""
        state = {"config": self.run_config, "counters": dataclasses.asdict(self.counters),
                 "history": json.dumps(self.history, default=float),
                 "lam": self.lam.state_dict(), "lam_optimizer": self.lam_optimizer.state_dict(),
                 "rl": self.rl.state_dict(), "rng": self.rng.bit_generator.state,
                 "generator": self.generator.get_state(), "torch_rng": torch_rng_state(self.device)}
        path = checkpoint.write_checkpoint(state, self.out / CHECKPOINT)
        self._last_checkpoint = time.monotonic()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path)  # on the CPU, as RNG states must be; load_state_dict moves the rest
        self.lam.load_state_dict(state["lam"])
        self.lam_optimizer.load_state_dict(state["lam_optimizer"])
        self.rl.load_state_dict(state["rl"])
        self.counters = Counters(**state["counters"])
        self.history = json.loads(state["history"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        set_torch_rng_state(state["torch_rng"], self.device)
        self._last_probe = self.history["probes"][-1]["lam_updates"] if self.history["probes"] else -1
        self._last_eval = self.history["evals"][-1]["policy_updates"] if self.history["evals"] else -1


def torch_rng_state(device: torch.device) -> dict:
    """torch's global random streams that the learner draws from: the CPU's, and `device`'s if a GPU."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_torch_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def read_checkpoint(path: Path) -> dict:
    """A checkpoint of `Learner.save_checkpoint` (on the CPU); ConfigError if the file is not one."""
    return checkpoint.read_checkpoint(path, kind="learner checkpoint", required=CHECKPOINT_KEYS,
                                      fix="resume a folder whose checkpoint learner.main wrote whole, "
                                          "or start a new run in another --out")


def checkpoint_config(path: Path) -> dict:
    """The run config a checkpoint was written with."""
    return read_checkpoint(path)["config"]


def online_family(method: str) -> Family:
    """The family of `method`, if the online learner can train it (ConfigError otherwise)."""
    online = [name for f in FAMILIES if f.online_step is not None for name in f.methods]
    if method not in online:
        kind = f"a {family(method).name} method, which has no online update yet" if method in METHODS else "unknown"
        raise ConfigError(f"--method {method} is {kind}",
                          f"choose one of {', '.join(online)} (learner.compare trains every method offline)")
    return family(method)
