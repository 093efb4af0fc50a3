"""`python -m learner.main` end to end: real Redis, a real local Ray, 4 actors, the oracle
segmenter, tiny frames. The first run is scraped for metrics while it runs and has the
processes of one rollout actor and of the segmenter killed; every chunk it left in the replay
is then checked whole and counted, and the second run resumes its checkpoint. Another run has
its learner process killed, and is resumed from its last checkpoint. These runs end when the
test has seen what it waits for (SIGTERM, as Ctrl-C), not at a time limit, so a slow start-up
on a busy machine changes nothing; one run checks that `--max-minutes` bounds the whole command."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from actors.rollout import ActorConfig, RolloutWorker
from common.cli import ConfigError
from common.codec import decode_chunk
from common.envs import EnvConfig
from common.latent_policy import PixelPolicy, PixelPolicySpec
import common.progress as progress_module
from common.metrics import scrape_metrics
from common.progress import Progress
from common.processes import process_tree
from common.replay import ReplayClient, ReplayConfig
from common.replay.redis_server import free_loopback_port
from common.weights import WeightsChannel
from learner.loop import online_family, read_checkpoint
from learner.publish import encode_policy
from tests.conftest import actor_pids

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "ci", "--num-actors", "4", "--segmenter", "oracle", "--image-size", "16", "--render-size", "32",
        "--max-episode-steps", "60", "--actor.chunk-length", "16", "--probe-steps", "400", "--probe-samples", "300",
        "--limiter.min-ready-steps", "300", "--schedule.bootstrap-after", "20", "--schedule.bootstrap-steps", "1000",
        "--schedule.publish-every", "5", "--schedule.probe-every", "40", "--schedule.eval-every", "100",
        "--schedule.checkpoint-minutes", "0.25", "--downstream.bc-updates", "20", "--downstream.decoder-updates", "20",
        "--downstream.label-budgets", "400", "--downstream.eval-episodes", "1"]


def test_actor_picks_up_published_weights_between_calls(redis_server, replay_factory):
    replay = replay_factory()
    env = EnvConfig(env_id="HalfCheetah-v5", image_size=16, render_size=32, max_episode_steps=30)
    worker = RolloutWorker(0, env, ActorConfig(policy="latent", chunk_length=8), redis_server.url, replay.config)
    channel = WeightsChannel(replay)
    assert channel.version() == 0
    first = worker.collect(8, flush_partial=False)
    assert first.policy_version == 0 and first.incarnation == worker.incarnation
    policy = PixelPolicy(PixelPolicySpec(image_size=16, action_dim=6, latent_dim=8))
    channel.publish(encode_policy(policy, version=3), version=3)
    assert channel.version() == 3
    second = worker.collect(8, flush_partial=False)
    worker.close()
    assert second.policy_version == 3
    assert replay.stats().inserted_steps == 16  # two full 8-step chunks (HalfCheetah never ends early)


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


def _run_until(process: subprocess.Popen, port: int, log: Path, done: Callable[[dict[str, float]], bool],
               timeout_s: float = 900.0) -> dict[str, float]:
    """Scrape the learner's metrics until `done(metrics)`, then stop it as Ctrl-C does (SIGTERM)
    and wait for its clean end; returns the last metrics scraped. A run bounded by what it has
    done, not by time: however long start-up takes on a busy machine, it gets there."""
    scraped: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while not done(scraped):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(1.0)
        scraped = scrape_metrics(port) or scraped
    process.send_signal(signal.SIGTERM)
    _finish(process, log, timeout_s=600)
    return scraped


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory) -> Path:
    """One held-out probe set for the runs of this module (collected by the first)."""
    return tmp_path_factory.mktemp("probe-data")


def _check_replay_whole(replay: ReplayClient) -> dict[int, set[str]]:
    """Every chunk in the replay decodes, holds one frame more than steps, agrees with its info
    record, and continues its episode exactly where the chunk before it ended (frames included):
    a chunk in flight when its actor died is absent, never partial. The per-actor count the
    replay keeps agrees with the chunks, and all is counted once. Returns each actor id's
    incarnations (from its episode ids)."""
    ids = replay.chunk_ids_after(0, limit=100_000)
    episodes, steps, incarnations = defaultdict(list), defaultdict(int), defaultdict(set)
    for chunk_id, blob in zip(ids, replay.get_chunk_blobs(ids)):
        chunk = decode_chunk(blob)
        info = replay.redis.hget(replay.keys.info, chunk_id).decode()
        assert chunk.frames.shape[0] == chunk.num_steps + 1 == int(info.split(":")[0]) + 1, chunk_id
        episodes[chunk.episode_id].append(chunk)
        steps[chunk.actor_id] += chunk.num_steps
        incarnations[chunk.actor_id].add(chunk.episode_id.split("-")[2])
    for episode, chunks in episodes.items():
        chunks.sort(key=lambda c: c.start_step)
        assert chunks[0].start_step == 0, episode
        for before, after in zip(chunks, chunks[1:]):
            assert after.start_step == before.start_step + before.num_steps, episode
            np.testing.assert_array_equal(after.frames[0], before.frames[-1])
    stats = replay.stats()
    assert stats.evicted_chunks == 0 and stats.dead_letters == 0  # so every chunk inserted is here
    assert len(ids) == stats.inserted_chunks and sum(steps.values()) == stats.stored_steps == stats.inserted_steps
    assert {actor: count[1] for actor, count in replay.stored_by_actor().items()} == steps
    return incarnations


@pytest.mark.faults
def test_learner_runs_publishes_weights_exports_metrics_survives_a_crash_and_resumes(redis_server, tmp_path,
                                                                                     probe_data):
    out, port = tmp_path / "run", free_loopback_port()
    common = ["--out", str(out), "--data-dir", str(probe_data), "--replay.run-name", f"learner-{port}",
              "--total-env-steps", "none"]  # the torch-free actors could cover a step cap before an update
    killed: list[int] = []
    version_killed = [0]

    def kill_then_see_restarts(scraped: dict[str, float]) -> bool:
        """Once weights are published, SIGKILL one rollout actor and the segmenter (Ray restarts
        both); done once the learner has counted both restarts and published again."""
        version = scraped.get('masklam_learner_weights_version', 0)
        if not killed and version >= 1:
            killed.extend([*actor_pids(first.pid, "RolloutWorker")[:1], *actor_pids(first.pid, "SegmenterService")])
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            version_killed[0] = version
        return (bool(killed) and version > version_killed[0]
                and scraped.get('masklam_learner_actor_restarts_total|role=rollout', 0) >= 1
                and scraped.get('masklam_learner_actor_restarts_total|role=segmenter', 0) >= 1)

    with _learner([*common, "--metrics-port", str(port)], redis_server.url, tmp_path / "first.log") as first:
        scraped = _run_until(first, port, tmp_path / "first.log", kill_then_see_restarts)
    assert scraped.get('masklam_learner_updates_total|phase=lam', 0) > 0, sorted(scraped)[:40]
    assert scraped.get('masklam_replay_ready_items', 0) > 0
    assert len(killed) == 2

    summary = json.loads((out / "summary.json").read_text())
    assert summary["lam_updates"] > 0 and summary["policy_updates"] > 0
    assert summary["learner_updates"] == summary["lam_updates"] + summary["policy_updates"]
    assert summary["weights_version"] >= 1 and summary["max_actor_weights_version"] >= 1
    assert summary["chunks_inserted"] > 0 and summary["windows_sampled"] > 0 and summary["env_steps"] > 0
    assert summary["actor_restarts"] >= 2
    assert scraped.get('masklam_learner_actor_restarts_total|role=rollout', 0) >= 1

    # the actor killed mid-run: every chunk is whole, counted once, and its replacement wrote some
    replay = ReplayClient(redis_server.url, ReplayConfig(run_name=f"learner-{port}"))
    incarnations = _check_replay_whole(replay)
    stats = replay.stats()
    assert (summary["chunks_inserted"], summary["steps_inserted"]) == (stats.inserted_chunks, stats.inserted_steps)
    assert sorted(len(seen) for seen in incarnations.values()) == [1, 1, 1, 2]
    assert summary["probe_nmse"] is not None and summary["eval_return"] is not None
    assert set(summary["final_losses"]) == {"lam", "policy"}
    assert (out / "checkpoint.pt").is_file()
    assert redis_server.password not in (out / "config.json").read_text()

    port = free_loopback_port()
    with _learner([*common, "--resume", "--metrics-port", str(port)], redis_server.url,
                  tmp_path / "second.log") as second:
        _run_until(second, port, tmp_path / "second.log",
                   lambda scraped: scraped.get('masklam_learner_weights_version', 0) > summary["weights_version"])
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["limits"]["stopped_by"] == "Ctrl-C"
    assert resumed["resumed"] and resumed["env_steps"] > summary["env_steps"]
    assert resumed["lam_updates"] > summary["lam_updates"]
    assert resumed["policy_updates"] > summary["policy_updates"]
    assert resumed["weights_version"] > summary["weights_version"]
    assert resumed["actor_restarts"] >= summary["actor_restarts"]
    assert resumed["evals"][:len(summary["evals"])] == summary["evals"]


def test_max_minutes_bounds_the_whole_command(redis_server, tmp_path, probe_data):
    """`--max-minutes 2` ends the whole command within 2 minutes and 30 s of wall time, measured
    here from the process's start: start-up (Redis, the probe set, Ray, the actors), learning, and
    the end, whose evaluations of 20 episodes would take minutes to wait for. The summary says
    what stopped the loop and which limit governed. (On a machine so loaded that start-up alone
    takes the 2 minutes, the command ends in time with one line saying so instead.)"""
    out, log = tmp_path / "run", tmp_path / "limit.log"
    started = time.monotonic()
    with _learner(["--out", str(out), "--data-dir", str(probe_data), "--num-actors", "2", "--metrics-port", "0",
                   "--replay.run-name", f"limit-{free_loopback_port()}", "--max-minutes", "2",
                   "--total-env-steps", "none", "--downstream.eval-episodes", "20"], redis_server.url, log) as process:
        process.wait(timeout=600)
        wall = time.monotonic() - started
    text = log.read_text()
    print(f"learner.main --max-minutes 2: {wall:.1f} s of wall time, exit status {process.returncode}")
    assert wall <= 120 + 30, text[-4000:]
    if process.returncode == 1:
        (line,) = [line for line in text.splitlines() if line.startswith("error: ")]
        assert line.startswith("error: --max-minutes 2 ran out while the run was starting up"), text[-4000:]
        assert "Traceback" not in text, text[-4000:]
        return
    assert process.returncode == 0, text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["limits"]["stopped_by"] == summary["limits"]["governing"] == "time limit"
    assert summary["limits"]["command_seconds"] <= wall
    assert "limits: --max-minutes 2 (2:00 for the whole command" in text and "progress line: upd = " in text
    assert "final: the loop stopped at the time limit" in text
    print(f"  the command's own count: {summary['limits']['command_seconds']:.1f} s; start-up "
          f"{summary['limits']['start_up']}; {summary['lam_updates']} LAM and {summary['policy_updates']} policy "
          f"updates; evaluations {summary['phases']['evaluation']}")


def test_the_progress_line_leads_with_the_limit_that_governs_and_this_sessions_rate(monkeypatch):
    """A resumed run (500,000 steps before this session), 10 steps per update: the rate is this
    session's, not 500,000 over its seconds; the line leads with the time limit while the step
    cap is far, and with the step cap once it comes first, each change said in a note."""
    monkeypatch.setattr(progress_module, "RATE_MIN_S", 0.0)  # judge from the first two updates
    for total, first in ((1_000_000, "time"), (500_100, "units")):
        stream, started = io.StringIO(), time.monotonic()
        progress = Progress("learner", total, interval_s=0, stream=stream, deadline=started + 240,
                            started=started - 60)
        for i in range(4):
            progress.update(500_000 + 10 * i, upd=1_000 + i)
            time.sleep(0.05)
        lines = stream.getvalue().splitlines()
        assert progress.governing == first
        rate = float(re.search(r", ([\d,.]+) steps/s", lines[-1]).group(1).replace(",", ""))
        assert 0 < rate <= 10 / 0.05
        if first == "time":
            assert re.fullmatch(r"learner 1:0\d / 5:00 \(2\d %\) \| 500,030 / 1,000,000 steps \(50 %\), [\d,.]+ "
                                r"steps/s, ETA [\d:]+ \| upd 1,003", lines[-1]), lines[-1]
            assert any(line.startswith("learner: the time limit comes first: ") for line in lines)
        else:
            assert re.fullmatch(r"learner 500,030 / 500,100 steps \(100 %\), [\d,.]+ steps/s, ETA [\d:]+ \| "
                                r"1:0\d / 5:00 \(2\d %\) \| upd 1,003", lines[-1]), lines[-1]
            assert any(line.startswith("learner: the steps limit comes first: 500,100 steps in about ")
                       for line in lines)


def test_the_learner_takes_its_family_from_the_registry_and_refuses_one_it_cannot_train_online():
    assert online_family("masklam-paper").name == "lam"
    with pytest.raises(ConfigError, match="--method laom is a laom method, which has no online update yet") as error:
        online_family("laom")
    assert "lapo, masklam, masklam-paper" in error.value.fix
    with pytest.raises(ConfigError, match="--method nope is unknown"):
        online_family("nope")


@pytest.mark.faults
def test_a_killed_learner_resumes_from_its_last_checkpoint(redis_server, tmp_path, probe_data):
    """SIGKILL the learner process once it has checkpointed after publishing weights; started
    again with --resume it continues from that checkpoint: counters, weights version, history,
    optimiser state (its step count goes on), and every chunk of both sessions is whole."""
    out, log, run_name = tmp_path / "run", tmp_path / "first.log", f"killed-{free_loopback_port()}"
    checkpoint = out / "checkpoint.pt"
    common = ["--out", str(out), "--data-dir", str(probe_data), "--replay.run-name", run_name,
              "--schedule.checkpoint-minutes", "0.1", "--total-env-steps", "none"]
    with _learner([*common, "--metrics-port", "0"], redis_server.url, log) as first:
        deadline = time.monotonic() + 900
        while not (checkpoint.is_file() and read_checkpoint(checkpoint)["counters"]["weights_version"] >= 1):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        processes = {pid: _start_time(pid) for pid in process_tree(first.pid)[1:]}
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    _reap(processes)  # what Ray leaves running when its driver is killed
    last = read_checkpoint(checkpoint)  # the kill may have come after a later one
    before = last["counters"]

    port = free_loopback_port()
    with _learner([*common, "--resume", "--metrics-port", str(port)], redis_server.url,
                  tmp_path / "second.log") as second:
        _run_until(second, port, tmp_path / "second.log",
                   lambda scraped: scraped.get('masklam_learner_weights_version', 0) > before["weights_version"])
    assert (f"resumed {checkpoint}: {before['env_steps']} env steps, {before['lam_updates']} LAM and "
            f"{before['policy_updates']} policy updates, weights version {before['weights_version']}"
            in (tmp_path / "second.log").read_text())
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["resumed"] and resumed["env_steps"] > before["env_steps"]
    for counter in ("lam_updates", "policy_updates", "weights_version", "chunks_inserted", "steps_inserted"):
        assert resumed[counter] > before[counter], counter
    history = json.loads(last["history"])
    assert resumed["probes"][:len(history["probes"])] == history["probes"]
    assert resumed["evals"][:len(history["evals"])] == history["evals"]
    final = read_checkpoint(checkpoint)
    assert {int(s["step"]) for s in final["lam_optimizer"]["state"].values()} == {resumed["lam_updates"]}
    _check_replay_whole(ReplayClient(redis_server.url, ReplayConfig(run_name=run_name)))


def _start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot), to tell it from a later process with its number."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _reap(processes: dict[int, str | None], grace_s: float = 30.0) -> None:
    """Wait for these processes (pid: start time) to exit; SIGKILL those still there after `grace_s`."""
    deadline = time.monotonic() + grace_s
    alive = processes
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = {pid: start for pid, start in alive.items() if start is not None and _start_time(pid) == start}
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
