"""Shared fixtures: one real redis-server for the session, a fresh replay per test; and
synthetic data (chunks, windows, datasets) for the tests that build their own."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import common.envs  # noqa: F401  (first: sets MUJOCO_GL before any test imports mujoco)
from common.codec import Chunk
from common.processes import command_line, process_tree
from common.replay import EmbeddedRedis, ReplayClient, ReplayConfig
from common.windows import Windows
from learner.data import TransitionData


@pytest.fixture(scope="session")
def redis_server():
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def replay_factory(redis_server):
    """Make replay clients on a fresh run prefix (same prefix for every call within a test)."""
    run_name = f"test-{uuid.uuid4().hex[:8]}"
    clients = []

    def make(**overrides) -> ReplayClient:
        client = ReplayClient(redis_server.url, ReplayConfig(run_name=run_name, **overrides))
        clients.append(client)
        return client

    yield make
    if clients:
        clients[0].clear()


def actor_pids(root_pid: int, actor_class: str) -> list[int]:
    """Ray worker processes of `actor_class` actors among the descendants of `root_pid`."""
    return [pid for pid in process_tree(root_pid) if f"ray::{actor_class}" in command_line(pid)]


def synthetic_chunk(num_steps: int = 8, size: int = 8, action_dim: int = 3, first_step: int = 0,
                    episode_id: str = "ep-0", actor_id: int = 0) -> Chunk:
    """A chunk whose frames, masks, actions and rewards all encode the global step index,
    so that any misalignment in storage or sampling shows up as a wrong number."""
    steps = np.arange(first_step, first_step + num_steps + 1)
    frames = np.broadcast_to((steps % 256).astype(np.uint8)[:, None, None, None], (num_steps + 1, size, size, 3))
    masks = np.broadcast_to((steps % 2).astype(np.uint8)[:, None, None], (num_steps + 1, size, size))
    actions = np.repeat(steps[:-1, None].astype(np.float32), action_dim, axis=1)
    return Chunk(
        env_id="Synthetic-v0", actor_id=actor_id, episode_id=episode_id, start_step=first_step,
        frames=frames.copy(), masks=masks.copy(), actions=actions,
        rewards=steps[:-1].astype(np.float32), terminated=np.zeros(num_steps, bool),
        truncated=np.zeros(num_steps, bool), states=np.repeat(steps[:, None], 4, axis=1).astype(np.float32),
        bg_velocity=np.stack([steps[:-1], -steps[:-1]], axis=1).astype(np.float32))


def windows_of(frames: np.ndarray, masks: np.ndarray, actions: np.ndarray, bg_velocity: np.ndarray) -> Windows:
    """Windows from arrays with one row per frame (B, W, ...): the steps are their first W - 1
    rows (the last frame leads nowhere); rewards and flags are zeros."""
    batch, window = frames.shape[:2]
    zeros = np.zeros((batch, window - 1), np.float32)
    return Windows(frames=frames, masks=masks, actions=actions[:, :-1], rewards=zeros, terminated=zeros.astype(bool),
                   truncated=zeros.astype(bool), bg_velocity=bg_velocity[:, :-1],
                   chunk_ids=np.zeros(batch, np.int64), starts=np.zeros(batch, np.int64))


def transition_data_of(frames: np.ndarray, masks: np.ndarray, actions: np.ndarray, bg_velocity: np.ndarray,
                       chunk_length: np.ndarray, chunk_episode: np.ndarray) -> TransitionData:
    """A dataset from flat arrays (one row per frame) and its chunks' lengths and episodes;
    rewards and flags are zeros."""
    chunk_length = np.asarray(chunk_length, np.int64)
    n = len(frames)
    return TransitionData(frames=frames, masks=masks, actions=actions, rewards=np.zeros(n, np.float32),
                          terminated=np.zeros(n, bool), truncated=np.zeros(n, bool), bg_velocity=bg_velocity,
                          chunk_start=np.cumsum(chunk_length) - chunk_length, chunk_length=chunk_length,
                          chunk_episode=np.asarray(chunk_episode, np.int64))
