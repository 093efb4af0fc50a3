"""Soft actor-critic (Haarnoja et al., 2018) on vector inputs, readable top to bottom.

The same agent trains the state-based experts (inputs: proprioceptive state) and, in the
distributed learner, fine-tunes the latent policy (inputs: the policy's features). It
knows nothing about where its batches come from: `update(batch)` takes tensors.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from common.config import at_least, in_range, positive
from common.nets import TanhGaussianActor, mlp


@dataclass
class SACConfig:
    """SAC hyper-parameters (the usual MuJoCo settings)."""

    hidden: int = field(default=256, metadata={"help": "width of the two hidden layers of actor and critics"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of actor, critics and temperature"})
    gamma: float = field(default=0.99, metadata={"help": "discount"})
    tau: float = field(default=0.005, metadata={"help": "Polyak rate of the target critics"})
    batch_size: int = field(default=256, metadata={"help": "transitions per update"})
    init_temperature: float = field(default=1.0, metadata={"help": "initial entropy temperature alpha"})

    def validate(self) -> None:
        at_least(self, 1, "hidden", "batch_size")
        positive(self, "lr", "init_temperature")  # the temperature is learned as its log
        in_range(self, "gamma", 0.0, 1.0)
        in_range(self, "tau", 0.0, 1.0)


class TwinCritic(nn.Module):
    """Two Q(s, a) heads; the minimum counters over-estimation."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int):
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, 1, hidden)
        self.q2 = mlp(obs_dim + action_dim, 1, hidden)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class SACAgent(nn.Module):
    """`actor`: the policy to train (default: a new one); the online learner passes the pixel
    policy's action decoder, so SAC fine-tunes the very network the actors act with.
    `critic_obs_dim`: the critics may see another observation than the actor (an asymmetric
    actor-critic); by default they see the actor's."""

    def __init__(self, obs_dim: int, action_dim: int, config: SACConfig, actor: TanhGaussianActor | None = None,
                 critic_obs_dim: int | None = None):
        super().__init__()
        self.config = config
        self.actor = actor if actor is not None else TanhGaussianActor(obs_dim, action_dim, config.hidden)
        self.critic = TwinCritic(critic_obs_dim or obs_dim, action_dim, config.hidden)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_temperature)))
        self.target_entropy = -float(action_dim)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.lr)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.actor.deterministic(obs) if deterministic else self.actor(obs)[0]

    def update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, critic_obs: torch.Tensor | None = None,
               next_critic_obs: torch.Tensor | None = None) -> dict[str, float]:
        """One gradient step of critics, actor and temperature; returns the losses.
        `critic_obs`/`next_critic_obs`: the critics' observations, if not the actor's."""
        critic_obs = obs if critic_obs is None else critic_obs
        next_critic_obs = next_obs if next_critic_obs is None else next_critic_obs
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_log_prob = self.actor(next_obs)
            target_q = torch.min(*self.target_critic(next_critic_obs, next_action)) - alpha * next_log_prob
            target = reward + self.config.gamma * (1.0 - terminated) * target_q
        q1, q2 = self.critic(critic_obs, action)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        new_action, log_prob = self.actor(obs)
        actor_loss = (alpha * log_prob - torch.min(*self.critic(critic_obs, new_action))).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()

        with torch.no_grad():
            for target_param, param in zip(self.target_critic.parameters(), self.critic.parameters()):
                target_param.lerp_(param, self.config.tau)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(),
                "alpha": alpha.item(), "q_mean": q1.mean().item()}
