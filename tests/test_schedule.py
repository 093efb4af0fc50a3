"""The learner's schedule with small real parts, in seconds: a real replay in a real
redis-server filled with real chunks, the real (tiny) LAM and pixel policy, real SAC, real
weight publication. No actors: the learner runs on a replay that is already full
(`fleet=None`), which is also how a learner consumes a replay that other machines fill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.envs import EnvConfig
from common.latent_policy import PixelPolicySpec
from common.metrics import Metrics
from common.replay import RateLimiterConfig
from common.weights import WeightsChannel
from learner.downstream import DownstreamConfig
from learner.lam.config import lam_config
from learner.loop import Learner, ScheduleConfig, online_family
from learner.probe import make_probe_set
from learner.rl.sac import SACConfig
from tests.conftest import synthetic_chunk, transition_data_of

SIZE, ACTIONS = 16, 6  # HalfCheetah's action size: the bootstrap reads it from the env


def _learner(replay, tmp_path, schedule: ScheduleConfig, device: str = "cpu", **downstream) -> Learner:
    for episode in range(3):
        for part in range(4):
            replay.insert(synthetic_chunk(num_steps=8, size=SIZE, action_dim=ACTIONS, first_step=8 * part,
                                          episode_id=f"ep-{episode}"))
    frames = np.random.default_rng(0).integers(0, 255, (40, SIZE, SIZE, 3), dtype=np.uint8)
    probe_data = transition_data_of(frames, np.ones((40, SIZE, SIZE), np.uint8),
                                    np.zeros((40, ACTIONS), np.float32), np.zeros((40, 2), np.float32),
                                    chunk_length=[10] * 4, chunk_episode=[0, 1, 2, 3])
    config = lam_config("ci", "masklam")
    config.optim.batch_size = 4
    spec = PixelPolicySpec(image_size=SIZE, action_dim=ACTIONS, latent_dim=config.model.latent_dim)
    downstream = DownstreamConfig(**{"bc_updates": 2, "bc_batch_size": 4, "decoder_updates": 2,
                                     "decoder_batch_size": 4, "label_budgets": "20", "eval_episodes": 0, **downstream})
    limiter = RateLimiterConfig(samples_per_insert=0.0, min_ready_steps=1, error_buffer=1.0)
    return Learner(online_family("masklam"), config, spec, schedule, SACConfig(hidden=16, batch_size=4), downstream,
                   limiter, EnvConfig(image_size=SIZE), replay, None,
                   make_probe_set(probe_data, config.method.probe_window, 20, 0), Metrics(), tmp_path, 0,
                   torch.device(device), {})


def test_rounds_of_k_lam_and_m_policy_updates_bootstrap_gating_and_publish_cadence(replay_factory, tmp_path):
    """K = 3, M = 2, bootstrap after 6 LAM updates, publish every 4 policy updates, stop at 10:
    two LAM-only rounds, the bootstrap (weights v1), then five rounds of 3 + 2 updates with
    publications after policy updates 4 and 8 (v2, v3)."""
    replay = replay_factory()
    schedule = ScheduleConfig(lam_updates_per_round=3, policy_updates_per_round=2, publish_every=4,
                              bootstrap_after=6, bootstrap_steps=200, probe_every=10**6, eval_every=10**6,
                              checkpoint_minutes=1e6)
    learner = _learner(replay, tmp_path, schedule)
    lam_before_bootstrap = []
    bootstrap = learner._bootstrap

    def recording_bootstrap() -> None:  # the real bootstrap, noting when it ran
        lam_before_bootstrap.append(learner.counters.lam_updates)
        bootstrap()

    learner._bootstrap = recording_bootstrap
    learner.run(lambda counters: counters.policy_updates >= 10, progress=None)

    assert lam_before_bootstrap == [6]
    assert learner.history["bootstrap"]["lam_updates"] == 6
    assert (learner.counters.lam_updates, learner.counters.policy_updates) == (21, 10)
    assert learner.counters.weights_version == 3
    assert WeightsChannel(replay).version() == 3
    summary = learner.summary()
    assert summary["chunks_by_actor"] == {"0": {"chunks": 12, "steps": 96}}
    assert summary["phases"]["rl"]["policy_updates"] == 10 and summary["phases"]["bootstrap"]["lam_updates"] == 6


def test_no_policy_update_before_the_bootstrap(replay_factory, tmp_path):
    replay = replay_factory()
    schedule = ScheduleConfig(lam_updates_per_round=4, policy_updates_per_round=5, bootstrap_after=10**6,
                              probe_every=10**6, eval_every=10**6, checkpoint_minutes=1e6)
    learner = _learner(replay, tmp_path, schedule)
    learner.run(lambda counters: counters.lam_updates >= 12, progress=None)
    assert (learner.counters.lam_updates, learner.counters.policy_updates) == (12, 0)
    assert learner.counters.weights_version == 0 and learner.history["bootstrap"] is None


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_a_resumed_learner_continues_every_random_stream_and_the_bootstrap_reseeds_none(device, replay_factory,
                                                                                       tmp_path):
    """Run through the bootstrap into policy updates, checkpoint, and take one more policy update
    on a fixed batch; a new learner that loads the checkpoint takes that same update with the
    same losses (SAC's action noise comes from torch's global streams, which the checkpoint
    carries). The bootstrap trains on the learner's device and leaves those streams as it
    found them (it draws from a fork)."""
    replay = replay_factory()
    schedule = ScheduleConfig(lam_updates_per_round=2, policy_updates_per_round=2, publish_every=2,
                              bootstrap_after=2, bootstrap_steps=200, probe_every=10**6, eval_every=10**6,
                              checkpoint_minutes=1e6)
    learner = _learner(replay, tmp_path, schedule, device)
    streams: list[torch.Tensor] = []
    bootstrap = learner.rl.bootstrap

    def recording_bootstrap(*args, **kwargs) -> dict:  # the real bootstrap, with torch's CPU stream around it
        streams.append(torch.get_rng_state())
        metrics = bootstrap(*args, **kwargs)
        streams.append(torch.get_rng_state())
        return metrics

    learner.rl.bootstrap = recording_bootstrap
    learner.run(lambda counters: counters.policy_updates >= 4, progress=None)
    assert len(streams) == 2 and torch.equal(*streams)
    assert {p.device.type for p in learner.rl.policy.parameters()} == {device}
    path = learner.save_checkpoint()
    windows = replay.sample(4, learner.rl.window, np.random.default_rng(5))
    expected = learner.rl.update(windows, learner.lam, learner.generator)

    resumed = _learner(replay, tmp_path, schedule, device)  # seeds torch again, as a new process would
    resumed.load_checkpoint(path)
    assert resumed.rl.update(windows, resumed.lam, resumed.generator) == pytest.approx(expected, rel=1e-6)


def test_the_bootstrap_stops_between_updates_when_the_run_stops(replay_factory, tmp_path):
    """A bootstrap of 2,000 latent-BC updates, and the run asked to stop (time up, Ctrl-C) just
    after it began: it stops within an update, publishes nothing, and the loop ends."""
    replay = replay_factory()
    schedule = ScheduleConfig(lam_updates_per_round=2, policy_updates_per_round=2, bootstrap_after=2,
                              bootstrap_steps=200, probe_every=10**6, eval_every=10**6, checkpoint_minutes=1e6)
    learner = _learner(replay, tmp_path, schedule, bc_updates=2_000)
    asked: list[int] = []  # the bootstrap's questions, once it is under way
    bootstrap = learner.rl.bootstrap

    def asking_bootstrap(*args, should_stop, **kwargs) -> dict:
        def counted() -> bool:
            asked.append(1)
            return should_stop()
        return bootstrap(*args, should_stop=counted, **kwargs)

    learner.rl.bootstrap = asking_bootstrap
    learner.run(lambda counters: len(asked) >= 3 or counters.lam_updates >= 10, progress=None)
    assert len(asked) == 3  # it stopped at the third question: after two updates
    assert learner.history["bootstrap"] is None and learner.counters.weights_version == 0
    assert WeightsChannel(replay).version() == 0


def test_the_end_skips_a_final_probe_that_does_not_fit_and_says_so(replay_factory, tmp_path, capsys):
    replay = replay_factory()
    schedule = ScheduleConfig(lam_updates_per_round=2, bootstrap_after=10**6, probe_every=2, eval_every=10**6,
                              checkpoint_minutes=1e6)
    learner = _learner(replay, tmp_path, schedule)
    learner.run(lambda counters: counters.lam_updates >= 3, progress=None)  # probed after 2 updates, not after 4
    probes = len(learner.history["probes"])
    learner.finish(seconds_left=lambda: 0.0)
    assert len(learner.history["probes"]) == probes
    assert "final: probe skipped: 0 s left within the time limit" in capsys.readouterr().err
    learner.finish()  # no limit: the probe of the last LAM updates
    assert learner.history["probes"][-1]["lam_updates"] == learner.counters.lam_updates
    assert (tmp_path / "checkpoint.pt").is_file()
