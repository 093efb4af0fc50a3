"""One window type with one length convention (common/windows.py): the replay's sampler and
an offline dataset cut the same windows out of the same chunks, and the IDM's window for row
t is the same whether it comes from a dataset or out of a wider window the learner sampled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.windows import Windows
from conftest import synthetic_chunk, windows_of
from learner.data import gather_windows, idm_windows, transition_data
from learner.downstream import transition_window
from learner.lam.config import MethodConfig
from learner.laom.config import LAOMMethodConfig


def _assert_same(first: Windows, second: Windows, skip: tuple[str, ...] = ()) -> None:
    for field in dataclasses.fields(Windows):
        if field.name not in skip:
            np.testing.assert_array_equal(getattr(first, field.name), getattr(second, field.name), err_msg=field.name)


def test_the_replay_and_a_dataset_cut_the_same_windows_from_the_same_chunks(replay_factory):
    replay = replay_factory()
    chunks = [synthetic_chunk(num_steps=16, size=8, first_step=20 * i, episode_id=f"ep{i}") for i in range(3)]
    ids = [replay.insert(chunk) for chunk in chunks]
    sampled = replay.sample(40, 5, np.random.default_rng(0))
    assert sampled.window == 5 and sampled.actions.shape == (40, 4, 3)  # 5 frames, the 4 steps between them
    data = transition_data(chunks)
    number = np.array([ids.index(chunk_id) for chunk_id in sampled.chunk_ids])
    offline = gather_windows(data, data.chunk_start[number] + sampled.starts, 5)
    _assert_same(sampled, offline, skip=("chunk_ids",))  # a replay id there, the chunk's number here
    np.testing.assert_array_equal(offline.chunk_ids, number)


@pytest.mark.parametrize("method", [MethodConfig(context_frames=2, future_frames=2),
                                    LAOMMethodConfig(frame_stack=3)], ids=["lam", "laom"])
def test_the_idm_window_of_row_t_is_the_same_from_a_dataset_and_from_a_sampled_window(method):
    data = transition_data([synthetic_chunk(num_steps=30, size=8)])
    rows = np.array([5, 9, 20])
    direct = idm_windows(data, rows, method)
    c = method.context_frames
    assert direct.window == method.probe_window
    np.testing.assert_array_equal(direct.frames[:, c - 1, 0, 0, 0], rows)  # frame c-1 is o_t
    np.testing.assert_array_equal(direct.actions[:, c - 1, 0], rows)  # step c-1 is a_t
    back, window = transition_window(3, method)  # the online learner's layout: row t at `back`
    _assert_same(direct, idm_windows(gather_windows(data, rows - back, window), back, method))


def test_windows_refuse_a_step_per_frame():
    frames = np.zeros((2, 4, 8, 8, 3), np.uint8)
    good = windows_of(frames, np.zeros((2, 4, 8, 8), np.uint8), np.zeros((2, 4, 3), np.float32),
                      np.zeros((2, 4, 2), np.float32))
    with pytest.raises(ValueError, match="a window of W frames holds W - 1 steps"):
        dataclasses.replace(good, actions=np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="cannot cut 3 frames from frame 2"):
        good.cut(2, 3)
