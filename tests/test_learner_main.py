"""`python -m learner.main` end to end: real Redis, a real local Ray, 4 actors, the oracle
segmenter, tiny frames. The first run is scraped for metrics while it runs and has the
processes of one rollout actor and of the segmenter killed; the second resumes its checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from actors.rollout import ActorConfig, RolloutWorker
from common.envs import EnvConfig
from common.latent_policy import PixelPolicy, PixelPolicySpec
from common.weights import WeightsChannel, encode_policy

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "ci", "--num-actors", "4", "--segmenter", "oracle", "--image-size", "16", "--render-size", "32",
        "--max-episode-steps", "60", "--chunk-length", "16", "--probe-steps", "400", "--probe-samples", "300",
        "--min-ready-steps", "300", "--bootstrap-after", "20", "--bootstrap-steps", "1000", "--bc-updates", "20",
        "--decoder-updates", "20", "--label-budgets", "400", "--publish-every", "5", "--probe-every", "40",
        "--eval-every", "100", "--eval-episodes", "1", "--checkpoint-minutes", "0.25"]


def test_actor_picks_up_published_weights_between_calls(redis_server, replay_factory):
    replay = replay_factory()
    env = EnvConfig(env_id="HalfCheetah-v5", image_size=16, render_size=32, max_episode_steps=30)
    worker = RolloutWorker(0, env, ActorConfig(policy="latent", chunk_length=8), redis_server.url, replay.config)
    channel = WeightsChannel(replay)
    assert channel.version() == 0 and channel.fetch_newer(0) is None
    first = worker.collect(8, flush_partial=False)
    assert first.policy_version == 0 and first.incarnation == worker.incarnation
    policy = PixelPolicy(PixelPolicySpec(image_size=16, action_dim=6, latent_dim=8))
    channel.publish(encode_policy(policy, version=3), version=3)
    assert channel.version() == 3 and channel.fetch_newer(3) is None and channel.fetch_newer(2) is not None
    second = worker.collect(8, flush_partial=False)
    worker.close()
    assert second.policy_version == 3
    assert replay.stats().inserted_steps == 16  # two full 8-step chunks (HalfCheetah never ends early)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    """Every sample on the learner's endpoint as name{labels} -> value (empty if not up yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _actor_pids(root_pid: int, actor_class: str) -> list[int]:
    """Ray worker processes of `actor_class` actors among the descendants of `root_pid`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            try:
                if f"ray::{actor_class}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
    return found


@contextlib.contextmanager
def _learner(args: list[str], redis_url: str, log: Path):
    """A learner.main process (output to `log`), stopped with SIGTERM if the test fails while it runs."""
    env = {**os.environ, "MASKLAM_REDIS_URL": redis_url, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    with log.open("w") as stream:
        process = subprocess.Popen([sys.executable, "-m", "learner.main", *TINY, *args], cwd=ROOT, env=env,
                                   stdout=stream, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the learner stops cleanly, Ray with it
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _finish(process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    process.wait(timeout=timeout_s)
    assert process.returncode == 0, log.read_text()[-4000:]


def test_learner_runs_publishes_weights_exports_metrics_survives_a_crash_and_resumes(redis_server, tmp_path):
    out, data, port = tmp_path / "run", tmp_path / "data", _free_port()
    common = ["--out", str(out), "--data-dir", str(data), "--run-name", f"learner-{port}"]
    scraped: dict[str, float] = {}
    killed: list[int] = []
    with _learner([*common, "--metrics-port", str(port), "--max-minutes", "1.0", "--total-env-steps", "none"],
                  redis_server.url, tmp_path / "first.log") as first:
        deadline = time.monotonic() + 240
        while first.poll() is None and time.monotonic() < deadline:
            scraped = _scrape(port) or scraped
            published = scraped.get('masklam_learner_weights_version{}', 0)
            if not killed and published >= 1:
                # Ray restarts both; the learner must count the restarts, and the run go on
                killed = [*_actor_pids(first.pid, "RolloutWorker")[:1], *_actor_pids(first.pid, "SegmenterService")]
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(1.0)
        _finish(first, tmp_path / "first.log", timeout_s=120)
    assert scraped.get('masklam_learner_updates_total{"phase": "lam"}', 0) > 0, sorted(scraped)[:40]
    assert scraped.get('masklam_replay_ready_items{}', 0) > 0
    assert len(killed) == 2, "no weights were published while the run was scraped"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["lam_updates"] > 0 and summary["policy_updates"] > 0
    assert summary["learner_updates"] == summary["lam_updates"] + summary["policy_updates"]
    assert summary["weights_version"] >= 1 and summary["max_actor_weights_version"] >= 1
    assert summary["chunks_inserted"] > 0 and summary["chunks_sampled"] > 0 and summary["env_steps"] > 0
    assert summary["actor_restarts"] >= 2
    assert summary["probe_nmse"] is not None and summary["eval_return"] is not None
    assert set(summary["final_losses"]) == {"lam", "policy"}
    assert (out / "checkpoint.pt").is_file()
    assert redis_server.password not in (out / "config.json").read_text()

    steps = summary["env_steps"] + 600
    with _learner([*common, "--resume", "--metrics-port", "0", "--total-env-steps", str(steps)], redis_server.url,
                  tmp_path / "second.log") as second:
        _finish(second, tmp_path / "second.log", timeout_s=300)
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["resumed"] and resumed["env_steps"] >= steps
    assert resumed["lam_updates"] > summary["lam_updates"]
    assert resumed["policy_updates"] > summary["policy_updates"]
    assert resumed["weights_version"] > summary["weights_version"]
    assert resumed["actor_restarts"] >= summary["actor_restarts"]
    assert resumed["evals"][:len(summary["evals"])] == summary["evals"]
