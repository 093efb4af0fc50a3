"""`python -m benchmarks.system --out FILE`: the whole actor-learner system's throughput.

For each actor count, `python -m learner.main` runs as a user runs it (its own local Ray,
rate limiter on, the oracle segmenter) against a Redis this benchmark owns. Once the
policy has been bootstrapped and published (both update phases running), the benchmark
reads the replay's counters from Redis and the learner's counters from its metrics
endpoint at the start and end of a `--measure-seconds` window, then stops the run with
SIGTERM. Figures per actor count: env steps/s in total and per actor, learner updates/s,
the fraction of the window the learner waited for data (rate limiter and sampling), and
the fraction the actors waited for the learner (rate limiter). Beside them: the bare
render loop (benchmarks/rollout.py) and that rate times the cores, the ceiling when
rendering alone used every core. Prints a table, writes JSON and the resolved config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


from benchmarks.report import write_report
from benchmarks.rollout import bare_steps_per_s
from common.cli import run_main
from common.config import at_least, blame, comma_list, parse, positive, positive_int, writable
from common.envs import EnvConfig
from common.metrics import scrape_metrics
from common.replay import EmbeddedRedis, ReplayClient, ReplayConfig
from common.replay.redis_server import free_loopback_port
from learner.main import defaults, parse_learner_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SystemBenchConfig:
    """End-to-end throughput of learner.main with 1, 2, 4, 8 actors."""

    out: str = field(default="benchmarks/results/system.json", metadata={"help": "JSON file to write"})
    actor_counts: str = field(default="1,2,4,8", metadata={"help": "comma-separated actor counts"})
    measure_seconds: float = field(default=40.0, metadata={"help": "length of the measured window per count"})
    warmup_timeout_s: float = field(default=300.0, metadata={"help": "longest wait for the first published weights"})
    bare_steps: int = field(default=600, metadata={"help": "decisions of the bare render loop"})
    learner_args: str = field(
        default="--preset ci --schedule.bootstrap-after 100 --downstream.bc-updates 100 "
                "--downstream.decoder-updates 100 --probe-steps 1000 --probe-samples 500 "
                "--schedule.eval-every 1000000 --downstream.eval-episodes 1",
        metadata={"help": "extra learner.main flags (the env settings must match the bare loop's: the ci preset's)"})

    def counts(self) -> list[int]:
        return comma_list(self, "actor_counts", positive_int, "a positive actor count", "pass counts such as 1,2,4")

    def validate(self) -> None:
        writable(self, "out", folder=False)
        positive(self, "measure_seconds", "warmup_timeout_s")
        at_least(self, 1, "bare_steps")
        work = Path(tempfile.gettempdir()) / "bench-system"
        for count in self.counts():
            with blame("learner_args"):  # each learner.main run as the benchmark starts it, refused before it starts
                parse_learner_config(learner_argv(self, count, 0, work / f"actors{count}"))


@dataclass
class Reading:
    """Cumulative counters at one instant."""

    at: float
    env_steps: int
    insert_wait_s: float
    lam_updates: float
    policy_updates: float
    data_wait_s: float

    @classmethod
    def take(cls, replay: ReplayClient, port: int) -> "Reading":
        stats, metrics = replay.stats(), scrape_metrics(port)
        return cls(time.monotonic(), stats.inserted_steps, stats.insert_wait_s,
                   metrics.get("masklam_learner_updates_total|phase=lam", 0.0),
                   metrics.get("masklam_learner_updates_total|phase=policy", 0.0),
                   metrics.get("masklam_learner_data_wait_seconds_total", 0.0))


def learner_argv(config: SystemBenchConfig, num_actors: int, port: int, out: Path) -> list[str]:
    """The flags of the learner.main run measured with `num_actors` actors (its run folder `out`)."""
    return ["--num-actors", str(num_actors), "--replay.run-name", f"bench-system-{num_actors}",
            "--metrics-port", str(port), "--out", str(out), "--total-env-steps", "none",
            "--max-minutes", "30", *config.learner_args.split()]


def measure(num_actors: int, config: SystemBenchConfig, bare_env: EnvConfig, server: EmbeddedRedis,
            work: Path) -> dict:
    """One learner.main run with `num_actors` actors; figures over the measured window."""
    run_name, port = f"bench-system-{num_actors}", free_loopback_port()
    replay = ReplayClient(server.url, ReplayConfig(run_name=run_name, capacity_bytes=2**30))
    out = work / f"actors{num_actors}"
    command = [sys.executable, "-m", "learner.main", *learner_argv(config, num_actors, port, out)]
    env = {**os.environ, "MASKLAM_REDIS_URL": server.url}
    with (work / f"actors{num_actors}.log").open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + config.warmup_timeout_s
            while scrape_metrics(port).get("masklam_learner_weights_version", 0) < 1:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"learner.main with {num_actors} actors published no weights; "
                                       f"see {work / f'actors{num_actors}.log'}")
                time.sleep(1.0)
            time.sleep(5.0)  # the actors pick the weights up; both update phases run
            start = Reading.take(replay, port)
            time.sleep(config.measure_seconds)
            end = Reading.take(replay, port)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
    if json.loads((out / "config.json").read_text())["env"] != dataclasses.asdict(bare_env):
        raise RuntimeError("learner.main ran other env settings than the bare loop; fix --learner-args")
    seconds = end.at - start.at
    steps_per_s = (end.env_steps - start.env_steps) / seconds
    return {
        "num_actors": num_actors,
        "env_steps_per_s": steps_per_s,
        "steps_per_s_per_actor": steps_per_s / num_actors,
        "learner_updates_per_s": (end.lam_updates + end.policy_updates - start.lam_updates - start.policy_updates)
        / seconds,
        "lam_updates_per_s": (end.lam_updates - start.lam_updates) / seconds,
        "policy_updates_per_s": (end.policy_updates - start.policy_updates) / seconds,
        "learner_data_wait_fraction": (end.data_wait_s - start.data_wait_s) / seconds,
        "actor_insert_wait_fraction": (end.insert_wait_s - start.insert_wait_s) / (seconds * num_actors),
        "measured_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    config = parse(SystemBenchConfig, argv, "python -m benchmarks.system")
    out = Path(config.out)
    cores = os.cpu_count() or 1
    print(f"bare render loop: {config.bare_steps} steps ...", file=sys.stderr)
    env = defaults("ci", "masklam").env
    bare = bare_steps_per_s(env, config.bare_steps, seed=0)
    figures: dict = {"env": dataclasses.asdict(env), "cores": cores, "bare_steps_per_s": bare,
                     "bare_steps_per_s_x_cores": bare * cores, "load_average_at_start": os.getloadavg(), "runs": []}
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="bench-system-") as work:
        for count in config.counts():
            print(f"learner.main with {count} actor(s) ...", file=sys.stderr)
            figures["runs"].append(measure(count, config, env, server, Path(work)))
    figures["load_average_at_end"] = os.getloadavg()
    for run in figures["runs"]:
        run["per_actor_vs_bare"] = run["steps_per_s_per_actor"] / bare
        run["total_vs_bare_x_cores"] = run["env_steps_per_s"] / (bare * cores)
    print_table(figures)
    write_report(out, figures, config)
    return 0


def print_table(figures: dict) -> None:
    print(f"bare render loop {figures['bare_steps_per_s']:.0f} steps/s x {figures['cores']} cores = "
          f"{figures['bare_steps_per_s_x_cores']:.0f} steps/s")
    header = ("actors", "env steps/s", "per actor", "per actor / bare", "learner upd/s", "learner waits",
              "actors wait")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in figures["runs"]:
        print(f"| {r['num_actors']} | {r['env_steps_per_s']:.0f} | {r['steps_per_s_per_actor']:.0f} | "
              f"{r['per_actor_vs_bare']:.2f} | {r['learner_updates_per_s']:.2f} | "
              f"{100 * r['learner_data_wait_fraction']:.0f} % | {100 * r['actor_insert_wait_fraction']:.0f} % |")


if __name__ == "__main__":
    sys.exit(run_main(main))
