"""Latent-policy RL: the pixel policy (latent policy + action decoder) fine-tuned online on replay data.

Bootstrap, once, before the first weights are published: the paper's stages 2 and 3
(`train_latent_bc`, `train_decoder` from learner/downstream.py) on the newest ready
chunks of the replay: the latent policy regresses the current IDM's latents, and the
decoder is fit to the true actions of the first `label budget` of those transitions.

Then every policy update, on one batch of windows sampled from the replay, does two things:
  * latent BC: the latent policy pi(o_{t-F+1..t}) regresses the current IDM's latent z_t.
    The LAM keeps training between policy updates; this keeps the policy in its latent space.
  * SAC (learner/rl/sac.py) whose actor is the action decoder a = d(z) on the detached latent
    z = pi(o), and whose critic Q(h, z, a) sees the latent policy's trunk features h of the
    frame stack (detached) besides z: the chunk's actions, rewards and termination flags.
Design choices. The critic's state is the trunk's features, not z alone: z is a predicted
latent *action*, and a critic cannot value a state from it (pose, velocities and where the
agent is in its gait are in the frames, hence in h, not in z). The policy still acts from
pixels only, so nothing privileged enters training. SAC's gradients stop at z and h: the
latent policy is the part learned from video and stays a latent-action predictor, trained
by latent BC alone; RL adapts what turns latents into torques (the decoder, which the label
budget fits only roughly). Letting a critic that starts from noise push gradients into the
CNN would pull z away from the IDM's latent space the decoder is built on, and on a CPU it
would triple an update's cost.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from common.latent_policy import PixelPolicy, PixelPolicySpec, frames_to_input
from common.windows import Windows
from learner.compute import Compute, ComputeConfig
from learner.data import TransitionData, idm_windows
from learner.downstream import (DownstreamConfig, latent_bc_step, train_decoder, train_latent_bc,
                                transition_window, usable_transitions)
from learner.lam.config import LAMConfig
from learner.lam.model import LatentActionModel
from learner.lam.train import encode_windows
from learner.rl.sac import SACAgent, SACConfig


class LatentPolicyRL:
    """The pixel policy, its critic and their optimisers; `window` frames per sampled transition.
    Every step runs in `compute`'s layout and precision (learner/compute.py)."""

    def __init__(self, spec: PixelPolicySpec, lam_config: LAMConfig, sac: SACConfig, downstream: DownstreamConfig,
                 device: torch.device, compute: ComputeConfig = ComputeConfig()):
        self.spec, self.lam_config, self.downstream, self.device = spec, lam_config, downstream, device
        self.compute_config, self.compute = compute, Compute.resolve(compute, device)
        self.policy = PixelPolicy(spec).to(device)
        self.compute.prepare(self.policy.latent_policy)
        critic_obs_dim = self.policy.latent_policy.feature_dim + spec.latent_dim
        self.agent = SACAgent(spec.latent_dim, spec.action_dim, sac, actor=self.policy.decoder,
                              critic_obs_dim=critic_obs_dim).to(device)
        self.bc_optimizer = torch.optim.AdamW(self.policy.latent_policy.parameters(), lr=downstream.bc_lr)
        # Row t of a sampled window sits at `back` (the same rows `usable_transitions` picks offline).
        self.back, self.window = transition_window(spec.frames, lam_config.method)

    def bootstrap(self, lam_model: LatentActionModel, data: TransitionData, seed: int,
                  should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Latent BC and the decoder from labelled actions, trained as offline on the LAM's device
        (the learner's); returns their metrics. Seeded by `seed` on a fork of torch's global
        random streams, so the streams SAC draws from go on as they were. TrainingStopped
        (the policy unchanged) if `should_stop()` says so between two updates."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            policy, metrics = train_latent_bc(lam_model, self.lam_config, data, self.downstream, seed,
                                              label="latent bc", compute=self.compute_config, should_stop=should_stop)
            budget = self.downstream.budgets()[-1]
            transitions = usable_transitions(data, self.spec.frames, self.lam_config)
            metrics |= train_decoder(policy, data, transitions, budget, self.downstream, seed, self.compute_config,
                                     should_stop)
        self.policy.load_state_dict(policy.state_dict())
        metrics.pop("bc_curve")
        return metrics

    def update(self, windows: Windows, lam_model: LatentActionModel, generator: torch.Generator,
               sac: bool = True) -> dict[str, float]:
        """One latent-BC step and (unless `sac` is False) one SAC step on a batch of
        `self.window`-frame windows."""
        b, frames = self.back, self.spec.frames
        method = self.lam_config.method
        target = encode_windows(lam_model, self.lam_config, idm_windows(windows, b, method), generator)[0]
        latent_policy, compute = self.policy.latent_policy, self.compute
        now = compute.layout(frames_to_input(windows.frames[:, b - frames + 1:b + 1]).to(self.device))
        bc_loss = latent_bc_step(latent_policy, self.bc_optimizer, now, target, compute)["bc"]
        if not sac:
            return {"bc": bc_loss.item()}

        following = compute.layout(frames_to_input(windows.frames[:, b - frames + 2:b + 2]).to(self.device))
        with torch.no_grad(), compute.autocast():
            features = latent_policy.features(torch.cat([now, following])).float()
            latents = latent_policy.head(features).float()
            z, next_z = latents.chunk(2)
            critic_state, next_critic_state = torch.cat([features, latents], dim=1).chunk(2)
        step = {name: torch.from_numpy(np.ascontiguousarray(array[:, b])).float().to(self.device)
                for name, array in (("action", windows.actions), ("reward", windows.rewards),
                                    ("terminated", windows.terminated))}
        losses = self.agent.update(z, step["action"], step["reward"], next_z, step["terminated"],
                                   critic_obs=critic_state, next_critic_obs=next_critic_state)
        return {"bc": bc_loss.item(), "critic": losses["critic_loss"], "actor": losses["actor_loss"],
                "alpha": losses["alpha"], "q_mean": losses["q_mean"]}

    def state_dict(self) -> dict:
        agent = self.agent
        return {"policy": self.policy.state_dict(), "agent": agent.state_dict(),
                "bc_optimizer": self.bc_optimizer.state_dict(), "actor_optimizer": agent.actor_optimizer.state_dict(),
                "critic_optimizer": agent.critic_optimizer.state_dict(),
                "alpha_optimizer": agent.alpha_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.agent.load_state_dict(state["agent"])
        self.bc_optimizer.load_state_dict(state["bc_optimizer"])
        for name in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):
            getattr(self.agent, name).load_state_dict(state[name])
