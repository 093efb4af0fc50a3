"""The paper's downstream protocol: from a trained LAM to a policy that acts, and its return.

Stage 2, latent behaviour cloning: a pixel policy pi(o_{t-F+1..t}) -> z regresses the
frozen IDM's latent z_t = IDM(o_t, o_{t+1}) on every transition (no action is read,
except by its detached online probe, which only reports).
Stage 3, action decoding: with the latent policy frozen, an MLP z -> 256 -> 256 -> a is
fit to the true actions of the first `budget` transitions only: the labelled subset.
Evaluation: deterministic episodes of latent policy + decoder in the same distractor env
on evaluation backgrounds; normalised return = return / the expert's return there.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from actors.evaluate import evaluate
from common.checkpoint import write_checkpoint
from common.config import at_least, comma_list, config_to_dict, positive, positive_int
from common.envs import EnvConfig
from common.latent_policy import PixelPolicy, PixelPolicySpec, frames_to_input
from common.progress import Progress
from learner.data import TransitionData
from learner.lam.config import LAMConfig, MethodConfig
from learner.lam.model import LatentActionModel
from learner.lam.train import cosine_schedule
from learner.methods import latent_actions
from learner.probe import nmse
from learner.publish import encode_policy

ENCODE_BATCH = 256
RESULTS = "downstream.json"


@dataclass
class DownstreamConfig:
    """Latent behaviour cloning, action decoding and evaluation settings."""

    policy_frames: int = field(default=3, metadata={"help": "stacked RGB frames the latent policy sees"})
    policy_scale: int = field(default=1, metadata={"help": "latent policy IMPALA widths 16/32/32 x scale"})
    bc_updates: int = field(default=3_000, metadata={"help": "latent behaviour cloning updates"})
    bc_batch_size: int = field(default=64, metadata={"help": "latent behaviour cloning batch"})
    bc_lr: float = field(default=4e-4, metadata={"help": "latent behaviour cloning learning rate (AdamW, cosine)"})
    label_budgets: str = field(default="1000,4000,16000", metadata={
        "help": "comma-separated labelled-transition budgets for the action decoder; the last is the headline"})
    decoder_updates: int = field(default=3_000, metadata={"help": "action decoder updates per budget"})
    decoder_batch_size: int = field(default=256, metadata={"help": "action decoder batch"})
    decoder_lr: float = field(default=1e-3, metadata={"help": "action decoder learning rate (Adam, grad clip 1)"})
    eval_episodes: int = field(default=8, metadata={"help": "evaluation episodes per policy (0: the online learner evaluates none)"})
    eval_workers: int = field(default=1, metadata={"help": "parallel evaluation actors (1 = in-process)"})
    eval_seed: int = field(default=1_000, metadata={"help": "seed of the evaluation episodes (same for every policy)"})

    def budgets(self) -> list[int]:
        return comma_list(self, "label_budgets", positive_int, "a positive count of labelled transitions",
                          "pass counts such as 1000,4000,16000")

    def validate(self) -> None:
        at_least(self, 1, "policy_frames", "policy_scale", "bc_updates", "bc_batch_size", "decoder_updates",
                 "decoder_batch_size", "eval_workers")
        at_least(self, 0, "eval_episodes", "eval_seed")
        positive(self, "bc_lr", "decoder_lr")
        self.budgets()


@dataclass
class Transitions:
    """Rows t of a dataset where the policy's frame stack and the IDM's window both fit."""

    rows: np.ndarray  # int64 (N,), in dataset order (episodes as collected)
    policy_frames: int

    def policy_input(self, data: TransitionData, index: np.ndarray) -> torch.Tensor:
        rows = self.rows[index][:, None] + np.arange(1 - self.policy_frames, 1)[None, :]
        return frames_to_input(data.frames[rows])


def transition_window(policy_frames: int, method: MethodConfig) -> tuple[int, int]:
    """(position of row t, frames) of the shortest window around a transition t that holds the
    policy's frame stacks at t and t+1 and the IDM's window for t (frames t-c+1 .. t+f)."""
    back = max(policy_frames, method.context_frames) - 1
    return back, back + 1 + method.future_frames


def usable_transitions(data: TransitionData, policy_frames: int, lam_config: LAMConfig) -> Transitions:
    back, window = transition_window(policy_frames, lam_config.method)
    return Transitions(data.window_starts(window) + back, policy_frames)


def train_latent_bc(model: LatentActionModel, lam_config: LAMConfig, data: TransitionData, config: DownstreamConfig,
                    seed: int, label: str = "bc") -> tuple[PixelPolicy, dict]:
    """Stage 2: a fresh pixel policy whose latent policy regresses the IDM's latents."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    transitions = usable_transitions(data, config.policy_frames, lam_config)
    if len(transitions.rows) == 0:
        raise ValueError("no transition has the frames the latent policy and the IDM need")
    targets = torch.from_numpy(latent_actions(model, lam_config, data, transitions.rows))  # per model family
    actions = torch.from_numpy(data.actions[transitions.rows])
    spec = PixelPolicySpec(image_size=data.frames.shape[1], action_dim=data.action_dim,
                           latent_dim=lam_config.model.latent_dim, frames=config.policy_frames, scale=config.policy_scale)
    policy = PixelPolicy(spec)
    latent_policy = policy.latent_policy
    optimizer = torch.optim.AdamW(latent_policy.parameters(), lr=config.bc_lr)
    scheduler = cosine_schedule(optimizer, config.bc_updates)
    progress = Progress(label, config.bc_updates, unit="updates", interval_s=10.0)
    curve, recent = [], []
    for update in range(1, config.bc_updates + 1):
        index = rng.integers(len(transitions.rows), size=config.bc_batch_size)
        z = latent_policy(transitions.policy_input(data, index))
        bc_loss = F.mse_loss(z, targets[index])
        probe_loss = F.mse_loss(latent_policy.probe(z.detach()), actions[index])
        optimizer.zero_grad(set_to_none=True)
        (bc_loss + lam_config.optim.probe_coef * probe_loss).backward()
        optimizer.step()
        scheduler.step()
        recent.append((bc_loss.item(), probe_loss.item()))
        if update % 100 == 0 or update == config.bc_updates:
            bc_mean, probe_mean = np.mean(recent, axis=0)
            curve.append({"update": update, "bc_loss": float(bc_mean), "probe_loss": float(probe_mean)})
            recent = []
        progress.update(update, bc_loss=curve[-1]["bc_loss"] if curve else bc_loss.item())
    progress.close()
    latent_policy.eval()
    with torch.no_grad():  # the probe on the policy's latent, on the last 20% of transitions (least trained on)
        held = np.arange(int(0.8 * len(transitions.rows)), len(transitions.rows))[:4 * ENCODE_BATCH]
        predicted = latent_policy.probe(latent_policy(transitions.policy_input(data, held))).numpy()
    metrics = {"bc_loss": curve[-1]["bc_loss"], "bc_latent_variance": float(targets.var(0).mean()),
               "bc_probe_nmse_online": nmse(predicted, actions[held].numpy()).nmse, "bc_curve": curve}
    return policy, metrics


def train_decoder(policy: PixelPolicy, data: TransitionData, transitions: Transitions, budget: int,
                  config: DownstreamConfig, seed: int) -> dict:
    """Stage 3: fit `policy.decoder` on the first `budget` transitions (the latent policy frozen)."""
    labelled = np.arange(min(budget, len(transitions.rows)))
    with torch.no_grad():
        z = torch.cat([policy.latent_policy(transitions.policy_input(data, labelled[i:i + ENCODE_BATCH]))
                       for i in range(0, len(labelled), ENCODE_BATCH)])
    actions = torch.from_numpy(data.actions[transitions.rows[labelled]])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(policy.decoder.parameters(), lr=config.decoder_lr)
    for _ in range(config.decoder_updates):
        index = torch.from_numpy(rng.integers(len(labelled), size=config.decoder_batch_size))
        loss = F.mse_loss(policy.decoder.deterministic(z[index]), actions[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.decoder.parameters(), 1.0)
        optimizer.step()
    with torch.no_grad():
        fit = nmse(policy.decoder.deterministic(z).numpy(), actions.numpy()).nmse
    return {"labelled_transitions": len(labelled), "decoder_loss": loss.item(), "decoder_train_nmse": fit}


def run_downstream(model: LatentActionModel, lam_config: LAMConfig, data: TransitionData, env: EnvConfig,
                   config: DownstreamConfig, expert_return: float, seed: int, out: str | Path,
                   label: str = "downstream") -> dict:
    """Stages 2 and 3 and evaluation for every label budget; OUT/downstream.json (reused when
    the same settings already ran). The headline `return` is the largest budget's."""
    out = Path(out)
    settings = {"downstream": config_to_dict(config), "env": config_to_dict(env), "seed": seed,
                "expert_return": expert_return}
    path = out / RESULTS
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            return saved
    out.mkdir(parents=True, exist_ok=True)
    policy, metrics = train_latent_bc(model, lam_config, data, config, seed, label=f"{label} bc")
    transitions = usable_transitions(data, config.policy_frames, lam_config)
    budgets = []
    for budget in config.budgets():
        decoded = copy.deepcopy(policy)
        fit = train_decoder(decoded, data, transitions, budget, config, seed)
        returns = evaluate(env, encode_policy(decoded, version=0), config.eval_episodes, config.eval_seed,
                           config.eval_workers)
        budgets.append({"label_budget": budget, **fit, "returns": returns, "return": float(np.mean(returns)),
                        "normalized_return": float(np.mean(returns)) / expert_return})
        print(f"  {label}: budget {budget:>6}: return {budgets[-1]['return']:8.1f} "
              f"(normalised {budgets[-1]['normalized_return']:.3f})", flush=True)
        if budget == config.budgets()[-1]:
            write_checkpoint(decoded.state_dict(), out / "pixel_policy.pt")
    result = {"settings": settings, **metrics, "budgets": budgets, "return": budgets[-1]["return"],
              "normalized_return": budgets[-1]["normalized_return"]}
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def expert_reference(env: EnvConfig, config: DownstreamConfig, expert_dir: str = "models/experts") -> dict:
    """The committed expert's return on the same env, backgrounds and episodes as the policies."""
    returns = evaluate(dataclasses.replace(env), None, config.eval_episodes, config.eval_seed,
                       config.eval_workers, expert_dir)
    return {"returns": returns, "return": float(np.mean(returns))}
