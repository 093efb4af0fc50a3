"""The downstream protocol's parts: weights codec, latent BC, labelled subsets, action decoder, the
BC references' trainer (shifts, early stopping), evaluation rollouts and their floors."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch

from actors.evaluate import evaluate
from actors.policies import PixelPolicyBehaviour
from common.envs import EnvConfig
from common.latent_policy import PixelPolicy, PixelPolicySpec
from common.experts import ExpertNotFoundError
from common.weights import WeightsDecodeError, decode_policy
from conftest import transition_data_of
from learner.data import TransitionData
from learner.downstream import (DownstreamConfig, action_nmse, labelled_subset, policy_transitions, random_shift,
                                row_episodes, train_action_bc, train_decoder, train_latent_bc, usable_transitions,
                                validation_split)
from learner.experts import ExpertConfig, load_expert, train_expert
from learner.lam.config import LAMConfig, MethodConfig, ModelConfig
from learner.lam.train import build_model
from learner.publish import encode_policy

SIZE, ACTIONS = 16, 2


def cyclic_data(length: int = 96, period: int = 6, seed: int = 0) -> TransitionData:
    """Frames cycling through `period` random images: o_{t+1} is a function of o_t, so the IDM's
    latent of (o_t, o_{t+1}) is a function of what the policy sees."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (period, SIZE, SIZE, 3), dtype=np.uint8)
    frames = images[np.arange(length) % period]
    return transition_data_of(frames, np.ones((length, SIZE, SIZE), np.uint8),
                              rng.uniform(-1, 1, (length, ACTIONS)).astype(np.float32),
                              np.zeros((length, 2), np.float32),
                              chunk_length=np.full(length // 32, 32), chunk_episode=np.arange(length // 32))


def square_data(episodes: int, seed: int, length: int = 40) -> TransitionData:
    """A learnable toy for behaviour cloning: each frame shows a bright square on a dark floor,
    and the action is the square's position (so the last frame of a stack tells it)."""
    rng = np.random.default_rng(seed)
    n = episodes * length
    corner = rng.integers(0, SIZE - 4, (n, 2))
    frames = np.full((n, SIZE, SIZE, 3), 40, np.uint8)
    for i, (y, x) in enumerate(corner):
        frames[i, y:y + 4, x:x + 4] = 255
    actions = (0.8 * (corner / (SIZE - 4) * 2 - 1)).astype(np.float32)
    return transition_data_of(frames, np.ones((n, SIZE, SIZE), np.uint8), actions, np.zeros((n, 2), np.float32),
                              chunk_length=np.full(2 * episodes, length // 2),
                              chunk_episode=np.repeat(np.arange(episodes), 2))


def small_policy(latent_dim: int = 4, seed: int = 0, action_dim: int = ACTIONS) -> PixelPolicy:
    torch.manual_seed(seed)
    return PixelPolicy(PixelPolicySpec(image_size=SIZE, action_dim=action_dim, latent_dim=latent_dim, num_blocks=1))


def test_weights_round_trip_and_bad_blobs_are_refused():
    policy = small_policy()
    blob = encode_policy(policy, version=7)
    decoded = decode_policy(blob)  # an onnxruntime graph: what actors act with (tests/test_parity.py)
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        actions = policy(torch.from_numpy(frames))[1].numpy()
    assert decoded.version == 7 and np.abs(decoded.act(frames) - actions).max() < 1e-5

    header, graph = msgpack.unpackb(blob)  # more bad blobs: tests/test_weights_fuzz.py
    with pytest.raises(WeightsDecodeError, match="not valid msgpack"):
        decode_policy(blob[: len(blob) // 2])
    with pytest.raises(WeightsDecodeError, match="schema/kind"):
        decode_policy(msgpack.packb([{**header, "kind": "foreign"}, graph]))
    with pytest.raises(WeightsDecodeError, match="does not fit"):
        decode_policy(msgpack.packb([{**header, "spec": {**header["spec"], "latent_dim": 5}}, graph]))
    with pytest.raises(WeightsDecodeError, match="SHA-256"):
        decode_policy(msgpack.packb([header, graph[:-1]]))

    behaviour = PixelPolicyBehaviour(1, image_size=32, rng=np.random.default_rng(0), fallback=None)
    with pytest.raises(WeightsDecodeError, match="--image-size"):
        behaviour.load(blob)
    assert behaviour.policy is None  # the refused weights were not taken


def test_latent_bc_reduces_its_loss_on_a_fixed_idm():
    data = cyclic_data()
    lam = LAMConfig(ModelConfig(num_blocks=1, latent_dim=4), MethodConfig())
    torch.manual_seed(1)
    idm = build_model(lam, SIZE, ACTIONS)
    with torch.no_grad():  # an untrained IDM's latents barely vary; spread them to unit scale
        idm.idm.head.weight.mul_(10.0)
    config = DownstreamConfig(bc_updates=150, bc_batch_size=16, bc_lr=1e-3)
    policy, metrics = train_latent_bc(idm, lam, data, config, seed=0)
    curve = metrics["bc_curve"]
    assert curve[-1]["bc_loss"] < 0.3 * curve[0]["bc_loss"], curve
    assert curve[-1]["bc_loss"] < 0.3 * metrics["bc_latent_variance"]  # better than predicting the mean
    assert policy.spec.latent_dim == 4 and policy.spec.frames == config.policy_frames


def test_action_decoder_recovers_an_invertible_map_from_the_labelled_budget():
    data = cyclic_data(length=320, period=40)
    lam = LAMConfig(ModelConfig(num_blocks=1, latent_dim=ACTIONS), MethodConfig())
    policy = small_policy(latent_dim=ACTIONS)
    transitions = usable_transitions(data, policy.spec.frames, lam)
    with torch.no_grad():
        z = policy.latent_policy(transitions.policy_input(data, np.arange(len(transitions.rows)))).numpy()
    z = (z - z.mean(0)) / z.std(0)
    mixing = np.array([[1.0, 0.5], [-0.3, 1.0]], np.float32)  # invertible
    data.actions[transitions.rows] = 0.8 * np.tanh(z @ mixing)
    budget = 200
    fit = train_decoder(policy, data, transitions, budget, DownstreamConfig(decoder_updates=1500), seed=0)
    assert fit["labelled_transitions"] == budget and fit["decoder_train_nmse"] < 0.05
    held_out = np.setdiff1d(np.arange(len(transitions.rows)), labelled_subset(data, transitions.rows, budget, 0))
    assert len(held_out) == len(transitions.rows) - budget  # never labelled: the map generalises
    with torch.no_grad():
        predicted = policy.decoder.deterministic(policy.latent_policy(transitions.policy_input(data, held_out)))
    target = data.actions[transitions.rows[held_out]]
    assert ((predicted.numpy() - target) ** 2).mean() / target.var(0).mean() < 0.1


def test_labelled_subsets_are_whole_episodes_drawn_with_the_seed():
    data = square_data(episodes=8, seed=0)
    rows = policy_transitions(data, 3).rows
    per_episode = np.bincount(row_episodes(data, rows))
    subset = labelled_subset(data, rows, 80, seed=0)
    assert len(subset) == 80 and len(np.unique(subset)) == 80
    counts = np.bincount(row_episodes(data, rows[subset]), minlength=len(per_episode))
    touched = np.flatnonzero(counts)
    assert (counts[touched] == per_episode[touched]).sum() == len(touched) - 1  # whole episodes, the last one cut
    assert not np.array_equal(touched, np.arange(len(touched)))  # drawn at random, not the first episodes
    assert np.array_equal(labelled_subset(data, rows, 80, seed=0), subset)  # seeded
    assert not np.array_equal(labelled_subset(data, rows, 80, seed=1), subset)
    assert np.isin(labelled_subset(data, rows, 30, seed=0), subset).all()  # a smaller budget lies inside
    assert len(labelled_subset(data, rows, 10**6, seed=0)) == len(rows)  # more than there is: everything

    training, validation = validation_split(data, policy_transitions(data, 3), 0.25, seed=0)
    held = np.unique(row_episodes(data, validation.rows))
    assert len(held) == 2 and not np.isin(row_episodes(data, training.rows), held).any()
    assert len(training.rows) + len(validation.rows) == len(rows)


def test_random_shift_moves_each_sample_by_whole_pixels_with_its_edge_repeated():
    images = torch.rand(16, 9, 8, 8)
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="replicate")  # DrQ: pad, then crop at random
    offsets = []
    for b in range(len(images)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.allclose(padded[b, :, dy:dy + 8, dx:dx + 8], shifted[b], atol=1e-5)]
        assert len(matches) == 1, matches  # every channel (the whole frame stack) moved by one offset
        offsets.append(matches[0])
    assert len(set(offsets)) > 4  # each sample its own
    assert random_shift(images, 0, torch.Generator()) is images


def test_ground_truth_bc_lowers_the_held_out_action_error_and_early_stopping_keeps_the_best():
    train, heldout = square_data(episodes=8, seed=0), square_data(episodes=3, seed=1)
    transitions, scored = policy_transitions(train, 3), policy_transitions(heldout, 3)
    torch.manual_seed(0)
    untrained = action_nmse(PixelPolicy(PixelPolicySpec(image_size=SIZE, action_dim=ACTIONS, latent_dim=8)),
                            heldout, scored)
    training, validation = validation_split(train, transitions, 0.25, seed=0)
    config = DownstreamConfig(bc_updates=120, bc_batch_size=32, bc_lr=1e-3, bc_shift=1, bc_validate_every=30)
    policy, metrics = train_action_bc(train, training, config, seed=0, latent_dim=8, validation=validation)
    trained = action_nmse(policy, heldout, scored)  # episodes it never saw, nor validated on
    assert trained < 0.3 and trained < 0.3 * untrained, (trained, untrained)
    assert metrics["bc_curve"][-1]["bc_loss"] < metrics["bc_curve"][0]["bc_loss"]
    assert all(p.is_contiguous() for p in policy.parameters())  # exported fp32 in the standard layout
    scores = metrics["validation"]["scores"]
    assert [s["update"] for s in scores] == [30, 60, 90, 120] and metrics["bc_updates_run"] == 120
    best = min(scores, key=lambda s: s["nmse"])
    assert metrics["validation"]["best_update"] == best["update"]
    assert abs(action_nmse(policy, train, validation) - best["nmse"]) < 1e-5  # the best weights were kept

    diverging = DownstreamConfig(bc_updates=80, bc_batch_size=16, bc_lr=3e-2, bc_validate_every=5, bc_patience=1)
    _, metrics = train_action_bc(train, training, diverging, seed=0, latent_dim=8, validation=validation)
    scores = metrics["validation"]["scores"]
    assert metrics["bc_updates_run"] == scores[-1]["update"] < 80  # stopped at the first score without gain
    assert scores[-1]["nmse"] >= metrics["validation"]["best_nmse"]


def test_evaluation_rollouts_are_deterministic_for_a_seed_in_process_and_over_actors():
    env = EnvConfig(image_size=SIZE, render_size=32, action_repeat=3, max_episode_steps=15)
    blob = encode_policy(small_policy(action_dim=6), version=0)  # HalfCheetah's 6 torques
    first = evaluate(env, blob, episodes=3, seed=5)
    assert evaluate(env, blob, episodes=3, seed=5) == first
    assert evaluate(env, blob, episodes=3, seed=5, workers=2) == first  # same episodes through 2 Ray actors
    assert evaluate(env, blob, episodes=3, seed=6) != first
    assert len(set(first)) == 3  # each episode is its own
    random = evaluate(env, "random", episodes=3, seed=5)  # the floors: random actions repeat for a seed too
    assert evaluate(env, "random", episodes=3, seed=5, workers=2) == random
    assert evaluate(env, "random", episodes=3, seed=6) != random
    zero = evaluate(env, "zero", episodes=3, seed=5)
    assert zero == evaluate(env, "zero", episodes=3, seed=5) and zero != random


def test_expert_is_refused_at_another_control_rate(tmp_path):
    train_expert(ExpertConfig(env_id="InvertedPendulum-v5", total_steps=20, learning_starts=10, eval_every=20,
                              eval_episodes=1, out=str(tmp_path)))
    actor, record = load_expert("InvertedPendulum-v5", 0, tmp_path)  # 0 = the task default it was trained at
    assert record["obs_dim"] == 4 and actor.deterministic(torch.zeros(1, 4)).shape == (1, 1)
    with pytest.raises(ExpertNotFoundError, match="--action-repeat"):
        load_expert("InvertedPendulum-v5", 5, tmp_path)
    with pytest.raises(ExpertNotFoundError, match="python -m learner.experts"):
        load_expert("Hopper-v5", 0, tmp_path)
