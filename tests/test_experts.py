"""The SAC expert trainer learns: InvertedPendulum's return rises far above random."""

from __future__ import annotations

import json

import torch

from learner.experts import ExpertConfig, evaluate, make_expert_env, train_expert
from learner.rl.sac import SACAgent, SACConfig


def test_sac_expert_improves_return_and_saves_a_loadable_checkpoint(tmp_path):
    sac = SACConfig(hidden=64, batch_size=64, lr=1e-3)
    config = ExpertConfig(env_id="InvertedPendulum-v5", total_steps=2500, learning_starts=500, eval_every=500,
                          eval_episodes=3, out=str(tmp_path), sac=sac)
    torch.manual_seed(0)
    env = make_expert_env(config.env_id, 0)
    untrained = SACAgent(env.state_dim, env.action_dim, sac)
    random_return = sum(evaluate(untrained, env, 3, seed=10_000)) / 3
    summary = train_expert(config)
    assert summary["mean_return"] > max(5 * random_return, 60.0), (random_return, summary["history"])
    saved = json.loads((tmp_path / config.env_id / "expert.json").read_text())
    assert saved["action_repeat"] == env.action_repeat and saved["obs_dim"] == env.state_dim
    reloaded = SACAgent(env.state_dim, env.action_dim, sac)
    reloaded.actor.load_state_dict(torch.load(tmp_path / config.env_id / "actor.pt", weights_only=True))
    assert abs(sum(evaluate(reloaded, env, 3, seed=10_000)) / 3 - saved["mean_return"]) < 1e-6
    assert (tmp_path / config.env_id / "config.json").exists()
