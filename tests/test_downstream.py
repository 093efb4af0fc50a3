"""The downstream protocol's parts: weights codec, latent BC, action decoder, evaluation rollouts."""

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
from learner.downstream import DownstreamConfig, train_decoder, train_latent_bc, usable_transitions
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
    held_out = np.arange(budget, len(transitions.rows))  # never labelled: the map generalises
    with torch.no_grad():
        predicted = policy.decoder.deterministic(policy.latent_policy(transitions.policy_input(data, held_out)))
    target = data.actions[transitions.rows[held_out]]
    assert ((predicted.numpy() - target) ** 2).mean() / target.var(0).mean() < 0.1


def test_evaluation_rollouts_are_deterministic_for_a_seed_in_process_and_over_actors():
    env = EnvConfig(image_size=SIZE, render_size=32, action_repeat=3, max_episode_steps=15)
    blob = encode_policy(small_policy(action_dim=6), version=0)  # HalfCheetah's 6 torques
    first = evaluate(env, blob, episodes=3, seed=5)
    assert evaluate(env, blob, episodes=3, seed=5) == first
    assert evaluate(env, blob, episodes=3, seed=5, workers=2) == first  # same episodes through 2 Ray actors
    assert evaluate(env, blob, episodes=3, seed=6) != first
    assert len(set(first)) == 3  # each episode is its own


def test_expert_is_refused_at_another_control_rate(tmp_path):
    train_expert(ExpertConfig(env_id="InvertedPendulum-v5", total_steps=20, learning_starts=10, eval_every=20,
                              eval_episodes=1, out=str(tmp_path)))
    actor, record = load_expert("InvertedPendulum-v5", 0, tmp_path)  # 0 = the task default it was trained at
    assert record["obs_dim"] == 4 and actor.deterministic(torch.zeros(1, 4)).shape == (1, 1)
    with pytest.raises(ExpertNotFoundError, match="--action-repeat"):
        load_expert("InvertedPendulum-v5", 5, tmp_path)
    with pytest.raises(ExpertNotFoundError, match="python -m learner.experts"):
        load_expert("Hopper-v5", 0, tmp_path)
