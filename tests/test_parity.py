"""Actors act without torch, with the numbers the learner's torch networks give.

The pixel policy (latent policy + decoder) reaches actors as an ONNX graph run with
onnxruntime (`learner.publish` -> `common.weights`), and so do the experts (`actor.onnx`,
`common.experts`). On real rendered frames and real states, the actor-side forward equals
the learner's torch forward within 1e-5; and an actor process never imports torch.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.policies import PixelPolicyBehaviour
from common.envs import EnvConfig, make_env
from common.experts import load_expert_graph
from common.latent_policy import PixelPolicy, PixelPolicySpec
from common.policy_graph import PolicyGraph
from common.policy_spec import FrameStacker
from common.weights import decode_policy
from learner.experts import ExpertConfig, load_expert, train_expert
from learner.publish import _pixel_policy_graph, encode_policy

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ROOT / "models" / "experts"
TOLERANCE = 1e-5


def rendered_stacks(env_config: EnvConfig, frames: int, steps: int = 12, seed: int = 0) -> np.ndarray:
    """uint8 (steps, frames, H, W, 3): the frame stack after each of `steps` random decisions."""
    env, rng = make_env(env_config), np.random.default_rng(seed)
    stacker, stacks = FrameStacker(1, frames), []
    observation, _ = env.reset(seed=seed)
    for _ in range(steps):
        stacker.push(0, observation["pixels"])
        stacks.append(stacker.batch()[0])
        observation, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    env.close()
    return np.stack(stacks)


def perturbed(policy: PixelPolicy, seed: int) -> PixelPolicy:
    """Every weight moved by 1 % of its scale, biases (zeros at initialisation) by 0.05: a graph
    that dropped or tied any weight would differ. The latent stays at the unit scale training gives."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in policy.parameters():
            scale = 0.05 if parameter.dim() == 1 else 0.01 * parameter.std().item()
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return policy


def test_published_pixel_policy_matches_the_torch_forward_on_real_frames():
    env_config = EnvConfig(env_id="HalfCheetah-v5", max_episode_steps=50)
    spec = PixelPolicySpec(image_size=env_config.image_size, action_dim=6, latent_dim=16)
    stacks = rendered_stacks(env_config, spec.frames)
    torch.manual_seed(0)
    policy = perturbed(PixelPolicy(spec), seed=0)
    behaviour = PixelPolicyBehaviour(len(stacks), spec.image_size, np.random.default_rng(0), fallback=None,
                                     action_dim=spec.action_dim)
    for version in (1, 2):  # the second publication reuses the first's export with new weights
        blob = encode_policy(policy, version)
        published = decode_policy(blob)
        with torch.no_grad():
            latent, actions = (t.numpy() for t in policy(torch.from_numpy(stacks)))
        outputs = published.graph.run(frames=stacks)
        assert np.abs(outputs["latent"] - latent).max() < TOLERANCE
        assert np.abs(outputs["actions"] - actions).max() < TOLERANCE
        assert behaviour.load(blob, version) == version
        assert np.abs(behaviour.policy.act(stacks) - actions).max() < TOLERANCE
        assert np.abs(latent).max() < 10 and latent.std(0).min() > 1e-3  # unit scale; the frames matter
        perturbed(policy, seed=version)


def test_publication_is_pure_the_cached_export_never_follows_a_live_network():
    """The export cached per spec is the same before a publication, after it, and after the
    published network trains on (in place, as the optimiser does); the same weights give the
    same blob whatever was published in between."""
    spec = PixelPolicySpec(image_size=16, action_dim=6, latent_dim=8)
    torch.manual_seed(0)
    policy, other = PixelPolicy(spec), perturbed(PixelPolicy(spec), seed=1)
    cached = _pixel_policy_graph(spec)
    first = encode_policy(policy, 1)
    snapshot = copy.deepcopy(policy)
    perturbed(policy, seed=2)
    assert _pixel_policy_graph(spec) == cached
    assert encode_policy(other, 2) != encode_policy(snapshot, 2)
    assert encode_policy(snapshot, 1) == first and _pixel_policy_graph(spec) == cached


def expert_states(record: dict, graph: PolicyGraph, steps: int = 24) -> np.ndarray:
    """float32 (steps, S): states of an episode the expert itself drives, at its control rate."""
    env = make_env(EnvConfig(env_id=record["env_id"], action_repeat=record["action_repeat"], image_size=16,
                             render_size=32, max_episode_steps=steps))
    observation, _ = env.reset(seed=0)
    states = []
    for _ in range(steps):
        states.append(observation["state"])
        observation, _, terminated, truncated, _ = env.step(graph.run(states=states[-1][None])["actions"][0])
        if terminated or truncated:
            observation, _ = env.reset()
    env.close()
    return np.stack(states).astype(np.float32)


@pytest.mark.parametrize("env_id", sorted(p.name for p in EXPERTS.iterdir() if (p / "actor.pt").is_file()))
def test_committed_expert_graph_matches_its_torch_actor_on_real_states(env_id):
    action_repeat = json.loads((EXPERTS / env_id / "expert.json").read_text())["action_repeat"]
    actor, record = load_expert(env_id, action_repeat, EXPERTS)
    graph, graph_record = load_expert_graph(env_id, action_repeat, EXPERTS)
    assert graph_record == record
    states = expert_states(record, graph)
    with torch.no_grad():
        expected = actor.deterministic(torch.from_numpy(states)).numpy()
    assert np.abs(graph.run(states=states)["actions"] - expected).max() < TOLERANCE
    assert np.abs(expected).max() > 0.1  # acting, not idling


def test_a_saved_expert_is_written_with_its_graph(tmp_path):
    train_expert(ExpertConfig(env_id="InvertedPendulum-v5", total_steps=20, learning_starts=10, eval_every=20,
                              eval_episodes=1, out=str(tmp_path)))
    actor, _ = load_expert("InvertedPendulum-v5", 0, tmp_path)
    graph, _ = load_expert_graph("InvertedPendulum-v5", 0, tmp_path)
    states = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    with torch.no_grad():
        expected = actor.deterministic(torch.from_numpy(states)).numpy()
    assert np.abs(graph.run(states=states)["actions"] - expected).max() < TOLERANCE


def test_actor_processes_import_neither_torch_nor_triton():
    """What a rollout or evaluation actor's process imports (a fresh interpreter)."""
    script = ("import sys, actors.rollout, actors.evaluate, actors.policies, common.experts, common.weights\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'triton', 'torchvision'}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout
