"""`python -m learner.main`: the distributed actor-learner run (docs/design.md §1, §5, §8).

1. Redis: `--redis-url` (or $MASKLAM_REDIS_URL), else a private embedded server; Ray:
   `--ray-address` (`auto` on a `ray up` head), else a local Ray with a logical CPU per
   actor, so even `--num-actors 64` runs on a laptop (the actors share its cores).
2. A held-out labelled set for the probe: episodes on evaluation backgrounds whose
   motion is independent of the action (rho = 0), collected once per settings under
   --data-dir (the same set `learner.compare` scores its headline probe on).
3. `--num-actors` rollout actors acting with the published pixel policy (their
   --actor.initial-policy until the first weights), and `--num-segmenters` mask services;
   actors send every chunk to the segmenter, so only masked chunks become ready.
4. The learner (learner/loop.py) until the time limit, `--total-env-steps` (the whole run)
   or Ctrl-C; then a last probe and evaluation. `--max-minutes` bounds this whole command
   from its start, start-up and the end included (learner/budget.py): the loop stops while
   the end still fits, and the end does what fits and says what it skipped or cut off.
   The first lines say which limit governs and what the progress line's figures are.
5. OUT/summary.json, OUT/config.json (resolved, without secrets), OUT/checkpoint.pt;
   `--resume` continues OUT/checkpoint.pt with its counters. Metrics are served on
   127.0.0.1:--metrics-port for Prometheus.

`--preset` sets the defaults of every other flag: `ci` (32 px frames, small networks and
batches, for two CPU cores) or `paper` (64 px, the authors' networks, for a GPU node); the
table is learner/presets.py. `--method` sets the defaults of the LAM's switches
(`--lam.method.*`). Flags are grouped by component (`--sac.lr`, `--lam.optim.batch-size`,
`--replay.capacity-chunks`, `--segmenter.imperfection.mask-radius`): see `--help`.
A fresh run (without --resume) clears its run's keys in Redis first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import ray
import torch
import tyro

from actors.rollout import ActorConfig
from common.cli import ConfigError, run_main
from common.cluster import check_ray_address, init_ray
from common.config import (at_least, blame, config_to_dict, from_dict, in_range, parse, positive, redis_url, require,
                           save_resolved_config, writable)
from common.devices import check_device, resolve_device
from common.envs import EnvConfig, env_spec
from common.latent_policy import PixelPolicySpec
from common.metrics import Metrics
from common.progress import Progress, clock
from common.replay import RateLimiterConfig, ReplayClient, ReplayConfig, redis_url_or_embedded
from learner.compute import ComputeConfig
from learner.data import DatasetSpec, ensure_dataset, load_dataset
from learner.downstream import DownstreamConfig, transition_window
from learner import presets
from learner.budget import CLOSE_S, FLEET_STOP_S, Budget, StartUp, StartupTimeLimit
from learner.fleet import ActorFleet, FleetFailed
from learner.lam.config import METHODS, OnlineLAMConfig, online_lam_config
from learner.loop import CHECKPOINT, Counters, Learner, ScheduleConfig, checkpoint_config, online_family
from learner.probe import ProbeSet, make_probe_set
from learner.rl.sac import SACConfig
from segmenter.config import SegmenterConfig

log = logging.getLogger("masklam.learner")
PROBE_DATA_SEED = 3  # learner.compare's seed for its eval set: equal settings share the dataset
# Settings a checkpoint's networks depend on, and their flags: --resume refuses to change them.
FIXED_ON_RESUME = {("preset",): "--preset", ("method",): "--method", ("env", "env_id"): "--env",
                   ("env", "image_size"): "--image-size", ("lam", "model"): "--lam.model.*",
                   ("lam", "method"): "--lam.method.*", ("downstream", "policy_frames"): "--downstream.policy-frames",
                   ("downstream", "policy_scale"): "--downstream.policy-scale", ("sac", "hidden"): "--sac.hidden"}
PROG = "python -m learner.main"


RUNS = "runs/learner"


@dataclass
class LearnerMainConfig:
    """The distributed actor-learner run: rollout actors, segmenter, Redis replay and the learner."""

    num_actors: int = field(default=4, metadata={"help": "rollout actors (one CPU each)"})
    preset: Literal["ci", "paper"] = field(default="ci", metadata={
        "help": "defaults of every other flag (learner/presets.py)"})
    method: Literal["lapo", "masklam", "masklam-paper"] = field(default="masklam", metadata={
        "help": f"defaults of the LAM's objective and switches (--lam.method.*), from {', '.join(METHODS)}"})
    num_segmenters: int = field(default=1, metadata={"help": "segmenter instances"})
    redis_url: str | None = field(default=None, metadata={
        "help": "Redis URL with credentials; default: $MASKLAM_REDIS_URL or a private embedded server"})
    ray_address: str | None = field(default=None, metadata={
        "help": "Ray cluster to join ('auto' on a ray-up head); default: a local Ray"})
    max_minutes: float | None = field(default=None, metadata={
        "help": "end this command within this many minutes of its start: start-up, learning and the final probe and "
                "evaluation (default: no time limit)"})
    total_env_steps: int | None = field(default=None, metadata={
        "help": "stop once the run (all sessions) has stepped this many decisions"})
    resume: bool = field(default=False, metadata={"help": "continue OUT/checkpoint.pt"})
    out: str = field(default="", metadata={
        "help": f"folder for summary, config and checkpoint (default: a new {RUNS}/run-<time>; with --resume, the "
                f"newest run in {RUNS})"})
    metrics_port: int = field(default=9100, metadata={"help": "serve Prometheus metrics on 127.0.0.1:PORT (0 = off)"})
    device: str = field(default="auto", metadata={"help": "torch device of the learner (auto = GPU if visible)"})
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    torch_threads: int = field(default=0, metadata={"help": "torch CPU threads of the learner (0 = torch's default)"})
    data_dir: str = field(default="data/lam", metadata={"help": "where the held-out probe set is collected and reused"})
    probe_steps: int = field(default=2_000, metadata={"help": "decisions in the held-out probe set"})
    probe_samples: int = field(default=2_000, metadata={"help": "held-out windows the probe uses"})
    max_restarts: int = field(default=3, metadata={"help": "Ray restarts of a crashed rollout actor"})
    max_replacements: int = field(default=2, metadata={
        "help": "new actors started in a slot whose actor is out of restarts; one more crash loop fails the run"})
    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=EnvConfig)  # the task, unprefixed
    lam: OnlineLAMConfig = field(default_factory=OnlineLAMConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    limiter: RateLimiterConfig = field(default_factory=RateLimiterConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def validate(self) -> None:
        """Each part checks itself (common.config.validate); here, what holds across the parts."""
        at_least(self, 1, "num_actors", "total_env_steps", "probe_steps", "probe_samples")
        at_least(self, 1 if self.actor.segment else 0, "num_segmenters")
        at_least(self, 0, "torch_threads", "max_restarts", "max_replacements")
        positive(self, "max_minutes", fix="pass minutes above 0 (no --max-minutes: no time limit)")
        in_range(self, "metrics_port", 0, 65535, fix="pass a free port, or 0 for none")
        redis_url(self)
        with blame("ray_address", "pass auto, local, ray://HOST:PORT or HOST:PORT"):
            check_ray_address(self.ray_address)
        writable(self, "out")
        writable(self, "data_dir")
        with blame("device", "pass auto, cpu, or a GPU this machine has"):
            check_device(self.device)
        with blame("actor"):
            self.actor.check_expert(self.env)
        frames = self.actor.chunk_length + 1  # a sampled window is a slice of one chunk
        for what, window in (("the LAM's window (--lam.method.*)", self.lam.method.window),
                             ("a policy transition's window (--downstream.policy-frames, --lam.method.*)",
                              transition_window(self.downstream.policy_frames, self.lam.method)[1])):
            require(window <= frames, "actor.chunk_length", f"gives chunks of {frames} frames, fewer than {what}, "
                    f"{window}", f"pass --actor.chunk-length {window - 1} or more")
        for radius in ("lam.method.mask_radius", "segmenter.imperfection.mask_radius"):
            value = self.lam.method.mask_radius if radius.startswith("lam") else self.segmenter.imperfection.mask_radius
            require(abs(value) < self.env.image_size, radius, f"reaches past the {self.env.image_size}-pixel frame",
                    f"pass a radius below {self.env.image_size}")
        replay_steps = self.replay.capacity_chunks * self.actor.chunk_length
        require(self.limiter.min_ready_steps <= replay_steps, "limiter.min_ready_steps", f"is more than the replay "
                f"holds ({replay_steps} steps: --replay.capacity-chunks x --actor.chunk-length), so the learner would "
                "never start", "pass fewer steps, or a larger replay")
        require(self.limiter.max_unsegmented_chunks < self.replay.capacity_chunks, "limiter.max_unsegmented_chunks",
                f"is not below --replay.capacity-chunks {self.replay.capacity_chunks}, so chunks could be evicted "
                "before they are segmented", "pass fewer chunks, or a larger replay")
        # The limiter's band must fit a whole sample and a whole insert, else both sides wait forever.
        limiter, batch = self.limiter, max(self.lam.optim.batch_size, self.sac.batch_size)
        band = limiter.samples_per_insert * self.actor.chunk_length + batch
        require(limiter.samples_per_insert == 0 or 2 * limiter.error_buffer >= band, "limiter.error_buffer",
                f"is too narrow: the band (twice it) must hold one chunk's samples and one batch ({band:g})",
                f"pass {band / 2:g} or more")
        for budget in self.downstream.budgets():
            require(budget <= self.schedule.bootstrap_steps, "downstream.label_budgets", f"has {budget}, more than "
                    f"the {self.schedule.bootstrap_steps} transitions the bootstrap trains on "
                    "(--schedule.bootstrap-steps)", "pass smaller budgets, or more bootstrap steps")


def defaults(preset: str, method: str) -> LearnerMainConfig:
    """The preset's row of learner/presets.py, with the LAM of that preset and method."""
    return from_dict(LearnerMainConfig, {**presets.preset(preset, "learner.main"), "preset": preset,
                                         "method": method, "lam": online_lam_config(preset, method)})


def parse_learner_config(argv: list[str] | None = None) -> LearnerMainConfig:
    return parse(LearnerMainConfig, argv, PROG, defaults, choose_by=("preset", "method"))


def resolve_out(config: LearnerMainConfig) -> Path:
    """--out, or a fresh folder per run (so running the same command twice never collides),
    or for --resume the newest run that has a checkpoint."""
    if config.out:
        return Path(config.out)
    if not config.resume:
        return Path(RUNS) / time.strftime("run-%Y%m%d-%H%M%S")
    runs = sorted(Path(RUNS).glob(f"*/{CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError(f"--resume: no run with a {CHECKPOINT} under {RUNS}", "pass --out DIR of the run to resume")
    return runs[-1].parent


def check_resumable(config: LearnerMainConfig, checkpoint: Path) -> None:
    """Refuse to start over an existing checkpoint, or to resume one with other networks."""
    if not config.resume:
        if checkpoint.is_file():
            raise ConfigError(f"{checkpoint} exists", "pass --resume to continue it, or choose another --out")
        return
    if not checkpoint.is_file():
        raise ConfigError(f"--resume: there is no {checkpoint}", "run once without --resume, or fix --out")
    saved, current = checkpoint_config(checkpoint), config_to_dict(config)
    for path, flag in FIXED_ON_RESUME.items():
        before, now = saved, current
        for key in path:
            before, now = before[key], now[key]
        if before != now:
            raise ConfigError(f"{checkpoint} was trained with {flag} {before}, not {now}",
                              f"resume with {flag} {before}, or start a new run in another --out")


def held_out_probe_set(config: LearnerMainConfig, lam: OnlineLAMConfig, redis_url: str) -> ProbeSet:
    """Labelled episodes on evaluation backgrounds with rho = 0 (docs/design.md §5's headline probe),
    collected in this process through the run's Redis unless they are on disk already."""
    spec = DatasetSpec(dataclasses.replace(config.env, rho=0.0), "eval", PROBE_DATA_SEED, config.probe_steps,
                       chunk_length=config.actor.chunk_length)
    data = load_dataset(ensure_dataset(spec, config.data_dir, redis_url))
    return make_probe_set(data, lam.method.probe_window, config.probe_samples, config.actor.seed)


def serve_metrics(metrics: Metrics, port: int):
    """The metrics endpoint on 127.0.0.1:port (None for port 0)."""
    if not port:
        return None
    try:
        return metrics.serve(port)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on 127.0.0.1:{port} ({exc.strerror})",
                          "pass a free --metrics-port, or 0 for none") from None


class StopSignal:
    """The first Ctrl-C (or SIGTERM) asks the run to stop cleanly; a second one interrupts."""

    def __init__(self):
        self.event = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        print("\nstopping after this update (again to interrupt) ...", file=sys.stderr, flush=True)
        self.event.set()
        signal.signal(signum, signal.default_int_handler)


def describe_limits(config: LearnerMainConfig, budget: Budget, env_steps: int) -> str:
    """Which limits end the run, and which one governs (as far as it is known at the start)."""
    preset_steps = presets.preset(config.preset, "learner.main").get("total_env_steps")
    if budget.limit_s is not None:
        time_limit = (f"--max-minutes {config.max_minutes:g} ({clock(budget.limit_s)} for the whole command, "
                      f"{clock(budget.elapsed())} of it spent starting up)")
    if config.total_env_steps is not None:
        source = f"the {config.preset} preset's; " if config.total_env_steps == preset_steps else ""
        step_cap = (f"--total-env-steps {config.total_env_steps:,} ({source}over all sessions of the run, "
                    f"{env_steps:,} so far; none = no cap)")
    if budget.limit_s is not None and config.total_env_steps is not None:
        return (f"limits: {time_limit} and {step_cap}, whichever comes first; the progress line leads with the one "
                "the current rate reaches first, and a line says which once the rate is measured")
    if budget.limit_s is not None:
        return f"limits: {time_limit} governs (no step cap)"
    if config.total_env_steps is not None:
        return f"limits: {step_cap} governs (no time limit: no --max-minutes)"
    return "limits: none (no --max-minutes, --total-env-steps none): the run goes on until Ctrl-C"


def run(config: LearnerMainConfig, redis_url: str, budget: Budget) -> dict:
    """The whole run against `redis_url`, within `budget`; returns the summary."""
    out = Path(config.out)
    metrics = Metrics("prometheus")
    server = serve_metrics(metrics, config.metrics_port)
    try:
        return _run(config, redis_url, budget, metrics, out)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        ray.shutdown()


def _run(config: LearnerMainConfig, redis_url: str, budget: Budget, metrics: Metrics, out: Path) -> dict:
    with StartUp(budget, reserve_s=CLOSE_S) as start:
        replay = ReplayClient(redis_url, config.replay, metrics=metrics)  # a wrong address or password fails here
        device = resolve_device(config.device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        spec = env_spec(config.env)
        lam = config.lam
        policy_spec = PixelPolicySpec(image_size=config.env.image_size, action_dim=spec["action_dim"],
                                      latent_dim=lam.model.latent_dim, frames=config.downstream.policy_frames,
                                      scale=config.downstream.policy_scale)
        if not config.resume:
            replay.clear()
        with start.phase("the probe set"):
            probe_set = held_out_probe_set(config, lam, redis_url)
        with start.phase("Ray"):
            # a logical CPU for each actor, segmenter, the learner and the evaluation task (and its workers)
            init_ray(config.ray_address, config.num_actors + config.num_segmenters + 2 + config.downstream.eval_workers)
        with start.phase("the actors and segmenters"):
            fleet = ActorFleet(config.num_actors, config.env, config.actor, config.segmenter, config.num_segmenters,
                               redis_url, config.replay, config.limiter, config.max_restarts, config.max_replacements)
        with start.phase("the learner"):
            learner = Learner(online_family(config.method), lam, policy_spec, config.schedule, config.sac,
                              config.downstream, config.limiter, config.env, replay, fleet, probe_set, metrics, out,
                              config.actor.seed, device, config_to_dict(config), config.compute)
            if config.resume:
                learner.load_checkpoint(out / CHECKPOINT)
    stop_signal = StopSignal()
    print(f"started in {clock(budget.elapsed())}: {start.describe()}", file=sys.stderr, flush=True)
    if config.resume:
        c = learner.counters
        print(f"resumed {out / CHECKPOINT}: {c.env_steps} env steps, {c.lam_updates} LAM and {c.policy_updates} "
              f"policy updates, weights version {c.weights_version}", file=sys.stderr, flush=True)
    print(describe_limits(config, budget, learner.counters.env_steps), file=sys.stderr, flush=True)
    stopped_by: list[str] = []  # what ended the loop

    def should_stop(counters: Counters) -> bool:
        if not stopped_by:
            if stop_signal.event.is_set():
                stopped_by.append("Ctrl-C")
            elif budget.left() <= FLEET_STOP_S + CLOSE_S + learner.end_reserve_s():
                stopped_by.append("time limit")
            elif config.total_env_steps is not None and counters.env_steps >= config.total_env_steps:
                stopped_by.append("step cap")
        return bool(stopped_by)

    progress = Progress("learner", config.total_env_steps or 0, interval_s=2.0, deadline=budget.deadline,
                        started=budget.started)
    try:
        try:
            learner.run(should_stop, progress)
        except FleetFailed:
            learner.save_checkpoint()  # what was learned so far: --resume continues it once the cause is fixed
            raise
        finally:
            segmenters = fleet.stop(timeout_s=FLEET_STOP_S if budget.limit_s is not None else 30.0)
        progress.note(f"final: the loop stopped at the {stopped_by[0]} after {clock(budget.elapsed())}; the actors "
                      f"are stopped" + (f"; {clock(budget.left())} left for the final probe and evaluation"
                                        if budget.limit_s is not None else ""))
        learner.finish(lambda: budget.left() - CLOSE_S)  # the last probe and evaluation, with the actors' CPUs free
    finally:
        progress.close()
    governing = {"time": "time limit", "units": "step cap", None: None}[progress.governing]
    return {"env": spec, "preset": config.preset, "method": config.method, "segmenter": config.segmenter.backend,
            "num_actors": config.num_actors, "device": str(device), "compute": learner.compute.describe(),
            "resumed": config.resume,
            **learner.summary(), "segmenters": segmenters,
            "limits": {"max_minutes": config.max_minutes, "total_env_steps": config.total_env_steps,
                       "governing": governing, "stopped_by": stopped_by[0], "start_up": start.durations}}


def print_summary(summary: dict) -> None:
    def number(value, fmt: str = ".3f") -> str:
        return "-" if value is None else format(value, fmt)

    evaluations, limits = summary["phases"]["evaluation"], summary["limits"]
    losses = "; ".join(f"{phase}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                       for phase, values in summary["final_losses"].items())
    rows = [("env", f"{summary['env']['env_id']} / {summary['env']['distractor']['mode']} distractor, "
                    f"{summary['env']['image_size']} px"),
            ("method / segmenter", f"{summary['method']} / {summary['segmenter']}"),
            ("actors", summary["num_actors"]),
            ("env steps", f"{summary['env_steps']:,} ({summary['env_steps_per_s']:.1f}/s this session)"),
            ("chunks inserted / windows sampled", f"{summary['chunks_inserted']:,} / {summary['windows_sampled']:,}"),
            ("learner updates", f"{summary['learner_updates']:,} (LAM {summary['lam_updates']:,}, policy "
                                f"{summary['policy_updates']:,}; {summary['learner_updates_per_s']:.2f}/s)"),
            ("learner waiting for data", f"{100 * summary['data_wait_fraction']:.0f} % of the time"),
            ("weights published / max at actors", f"v{summary['weights_version']} / "
                                                  f"v{summary['max_actor_weights_version']}"),
            ("probe nMSE (held out, rho = 0)", number(summary["probe_nmse"])),
            ("bootstrap", "not reached" if (boot := summary["phases"]["bootstrap"]) is None else
                          f"after {boot['lam_updates']:,} LAM updates, on {boot['transitions']:,} transitions, "
                          f"{boot['seconds']:.0f} s"),
            ("evaluations (weights: return)", ", ".join(f"v{v}: {r:.1f}" for v, r in zip(
                evaluations["weights_versions"], evaluations["returns"])) or "none"),
            ("actor restarts", summary["actor_restarts"]),
            ("final losses", losses or "-"),
            ("loop stopped by", limits["stopped_by"]),
            ("wall time", f"{limits['command_seconds']:.0f} s for this command"
                          + ("" if limits["max_minutes"] is None else f" (limit {60 * limits['max_minutes']:.0f} s)")
                          + f", learning {summary['loop_seconds']:.0f} s; {summary['total_wall_seconds']:.0f} s of "
                            "learning over all sessions")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = parse_learner_config(argv)
    budget = Budget.of_this_process(config.max_minutes)  # counted from this process's start
    out = resolve_out(config)
    config = dataclasses.replace(config, out=str(out))
    check_resumable(config, out / CHECKPOINT)
    save_resolved_config(config, out)
    with redis_url_or_embedded(config.redis_url, config.replay) as url:
        try:
            summary = run(config, url, budget)
        except FleetFailed as exc:
            print(f"error: {exc} — fix that, then --resume continues from {out / CHECKPOINT}", file=sys.stderr)
            return 1
        except StartupTimeLimit as exc:
            print(f"error: --max-minutes {config.max_minutes:g} ran out while the run was starting up, {exc} — "
                  f"raise --max-minutes (a probe set, once collected, is kept in {config.data_dir}, so later starts "
                  "are faster)", file=sys.stderr)
            return 1
    summary["limits"]["command_seconds"] = budget.elapsed()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print_summary(summary)
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
