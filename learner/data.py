"""Offline datasets for the LAM comparison: collected through the actors, held in memory.

`ensure_dataset` collects a dataset with `actors.collect` (or reuses one already on
disk with the same settings), and `load_dataset` concatenates its chunks into flat
arrays so that a batch of windows (`common.windows.Windows`, the type the replay samples
too) is one numpy fancy-index. A window never crosses a chunk (hence never an episode),
and windows are drawn uniformly over all valid starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.codec import Chunk
from common.config import config_to_dict
from common.dataset import DatasetWriter, iter_chunks, read_description
from common.envs import EnvConfig, env_spec
from common.experts import expert_record
from common.paths import in_repo
from common.replay import ReplayClient, ReplayConfig
from common.windows import STEP_ARRAYS, Windows

if TYPE_CHECKING:
    from actors.collect import CollectConfig
    from learner.lam.config import MethodConfig
    from learner.laom.config import LAOMMethodConfig


@dataclass
class TransitionData:
    """All frames of a dataset, chunk after chunk; row i's step (action, reward, flags, background
    motion) leads from frame i to i+1. The last frame of each chunk leads nowhere: its step is zeros."""

    frames: np.ndarray  # uint8 (N, H, W, 3)
    masks: np.ndarray  # uint8 (N, H, W)
    actions: np.ndarray  # float32 (N, A)
    rewards: np.ndarray  # float32 (N,)
    terminated: np.ndarray  # bool (N,)
    truncated: np.ndarray  # bool (N,)
    bg_velocity: np.ndarray  # float32 (N, 2)
    chunk_start: np.ndarray  # int64 (C,) row of each chunk's first frame
    chunk_length: np.ndarray  # int64 (C,) frames in each chunk
    chunk_episode: np.ndarray  # int64 (C,) episode number of each chunk

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_transitions(self) -> int:
        return int((self.chunk_length - 1).sum())

    def window_starts(self, window: int, episodes: np.ndarray | None = None) -> np.ndarray:
        """Rows i such that frames i .. i+window-1 lie in one chunk (optionally of `episodes`)."""
        keep = self.chunk_length >= window
        if episodes is not None:
            keep &= np.isin(self.chunk_episode, episodes)
        starts = [np.arange(s, s + n - window + 1) for s, n in zip(self.chunk_start[keep], self.chunk_length[keep])]
        return np.concatenate(starts) if starts else np.zeros(0, np.int64)


def gather_windows(data: TransitionData, starts: np.ndarray, window: int) -> Windows:
    """The windows of `window` frames from dataset rows `starts` (each within one chunk)."""
    frames = starts[:, None] + np.arange(window)[None, :]
    chunk = np.searchsorted(data.chunk_start, starts, side="right") - 1
    return Windows(frames=data.frames[frames], masks=data.masks[frames],
                   **{name: getattr(data, name)[frames[:, :-1]] for name in STEP_ARRAYS},
                   chunk_ids=chunk, starts=starts - data.chunk_start[chunk])


def idm_windows(source: TransitionData | Windows, rows: np.ndarray | int,
                method: MethodConfig | LAOMMethodConfig) -> Windows:
    """The IDM's window for row t (future offset 1): frames t-c+1 .. t-c+P, where c is the
    method's `context_frames` and P its `probe_window` (both model families define them).

    `source` is a dataset with `rows` its row numbers, or a batch of windows with `rows` the
    position of t inside every window (the online learner's case)."""
    first = rows - method.context_frames + 1
    if isinstance(source, Windows):
        return source.cut(first, method.probe_window)
    return gather_windows(source, first, method.probe_window)


def sample_windows(data: TransitionData, starts: np.ndarray, batch: int, window: int,
                   rng: np.random.Generator) -> Windows:
    """`batch` windows drawn uniformly (with replacement) from the valid `starts`."""
    return gather_windows(data, starts[rng.integers(len(starts), size=batch)], window)


def load_dataset(directory: str | Path) -> TransitionData:
    """Decode every chunk of a dataset written by `python -m actors.collect --save-dataset`."""
    data = transition_data(iter_chunks(directory))
    if data is None:
        raise ValueError(f"dataset {directory} holds no chunks")
    return data


def transition_data(chunks: Iterable[Chunk]) -> TransitionData | None:
    """Chunks (in order) as flat arrays; None if there are none."""
    frames, masks, lengths, episodes = [], [], [], []
    steps: dict[str, list[np.ndarray]] = {name: [] for name in STEP_ARRAYS}
    episode_ids: dict[str, int] = {}
    for chunk in chunks:
        frames.append(chunk.frames)
        masks.append(chunk.masks)
        for name, parts in steps.items():  # the chunk's last frame leads nowhere: a zero step
            array = getattr(chunk, name)
            parts.append(np.concatenate([array, np.zeros((1, *array.shape[1:]), array.dtype)]))
        lengths.append(chunk.num_steps + 1)
        episodes.append(episode_ids.setdefault(chunk.episode_id, len(episode_ids)))
    if not frames:
        return None
    lengths_array = np.array(lengths, np.int64)
    return TransitionData(
        frames=np.concatenate(frames), masks=np.concatenate(masks),
        **{name: np.concatenate(parts) for name, parts in steps.items()},
        chunk_start=np.cumsum(lengths_array) - lengths_array, chunk_length=lengths_array,
        chunk_episode=np.array(episodes, np.int64))


@dataclass
class DatasetSpec:
    """What to collect: env settings, background split, seed, size and behaviour policy
    (iid uniform random actions, or the committed expert with Gaussian action noise)."""

    env: EnvConfig
    split: str
    seed: int
    steps: int
    num_actors: int = 1
    chunk_length: int = 32
    policy: str = "random"
    action_noise: float = 0.0
    expert_dir: str = "models/experts"

    def key(self) -> str:
        """A short hash of everything that decides the data (not the actor count); for expert
        data this includes the expert's own record, so a retrained expert means new data."""
        payload = {"env": config_to_dict(self.env), "split": self.split, "seed": self.seed, "steps": self.steps,
                   "chunk_length": self.chunk_length, "policy": "iid-uniform"}
        if self.policy == "expert":
            record = expert_record(self.env.env_id, self.env.action_repeat, self.expert_dir)
            payload |= {"policy": "expert", "action_noise": self.action_noise, "expert": record}
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def collection_bytes(spec: DatasetSpec) -> int:
    """Replay capacity that holds all of `spec`'s collection until it is saved: per step a frame,
    its mask twice (in the blob, and as served) and 4 KiB of state and step arrays, doubled for
    the extra frame each chunk carries (at most one chunk per step). Sized to the data, it fits
    under the memory cap (`maxmemory`) of the run's own Redis."""
    pixels = spec.env.image_size ** 2
    return 2 * spec.steps * (5 * pixels + 4096) + 2**20


def ensure_dataset(spec: DatasetSpec, root: str | Path, redis_url: str) -> Path:
    """Collect `spec` under ROOT/<key>/ unless a complete dataset with that key is there
    (a relative ROOT is the repository's, `common.paths`: every command shares one cache).

    One actor runs in this process (the same `RolloutWorker` class, without Ray's start-up
    cost); more run as Ray actors through `actors.collect`.
    """
    from actors.collect import CollectConfig, run_collection  # heavy (Ray); only when collecting
    from actors.rollout import ActorConfig

    directory = in_repo(root) / f"{spec.env.env_id}-{spec.env.distractor}-{spec.split}-{spec.key()}"
    done = directory / "complete.json"
    if done.is_file():
        return directory
    if directory.exists():  # an interrupted collection: start it again from scratch
        for path in directory.iterdir():
            path.unlink()
    config = CollectConfig(
        num_actors=spec.num_actors, total_env_steps=spec.steps, out=str(directory), save_dataset=True,
        check_batch=16, env=dataclasses.replace(spec.env),
        actor=ActorConfig(chunk_length=spec.chunk_length, policy=spec.policy, action_correlation=0.0,
                          action_noise=spec.action_noise, expert_dir=spec.expert_dir, split=spec.split, seed=spec.seed),
        replay=ReplayConfig(run_name=f"lamdata-{spec.key()}", capacity_chunks=10**6,
                            capacity_bytes=collection_bytes(spec)))
    replay = ReplayClient(redis_url, config.replay)
    replay.clear()
    if spec.num_actors > 1:
        summary = run_collection(config, redis_url)
    else:
        summary = _collect_in_process(config, replay, redis_url)
    replay.clear()  # the dataset is on disk now; free Redis
    done.write_text(json.dumps({"spec": {**dataclasses.asdict(spec), "key": spec.key()},
                                "description": read_description(directory), "summary": summary},
                               indent=2, default=str) + "\n")
    return directory


def _collect_in_process(config: CollectConfig, replay: ReplayClient, redis_url: str) -> dict:
    """One rollout worker in this process fills the replay; its chunks are then saved in order."""
    from actors.collect import drain_new_chunks
    from actors.rollout import RolloutWorker

    worker = RolloutWorker(0, config.env, config.actor, redis_url, config.replay)
    try:
        report = worker.collect(config.total_env_steps)
    finally:
        worker.close()
    writer = DatasetWriter(config.out, {"env": env_spec(config.env), "collect": config_to_dict(config)})
    drain_new_chunks(replay, writer, last_id=0)
    writer.close(env_steps=report.env_steps)
    return dataclasses.asdict(report)
