"""The paper's downstream protocol: from a trained LAM to a policy that acts, and its return.

Stage 2, latent behaviour cloning: a pixel policy pi(o_{t-F+1..t}) -> z regresses the
frozen IDM's latent z_t = IDM(o_t, o_{t+1}) on every transition (no action is read,
except by its detached online probe, which only reports).
Stage 3, action decoding: with the latent policy frozen, an MLP z -> 256 -> 256 -> a is
fit to the true actions of `budget` labelled transitions only: whole episodes drawn at
random with the run's seed (`labelled_subset`), the same for every method.
Evaluation: deterministic episodes of latent policy + decoder in the same distractor env
on evaluation backgrounds, at rho = 0 (the headline: the background's motion says nothing
about the action) and at the training rho (`eval_rhos`); normalised return = return / the
expert's return on the same episodes at the same rho. Beside it, the open-loop action nMSE
of the final pixel policy on the held-out evaluation dataset (`action_nmse`).

The reference rows (learner/references.py) train the same pixel network end to end on true
actions (`train_action_bc`, whose `action_bc_step` is the end-to-end twin of
`latent_bc_step`), with the same batches (`PolicyBatches`, optionally shifted per sample:
`random_shift`) and update loop (`run_updates`) as stage 2.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from actors.evaluate import EvaluatedPolicy, evaluate
from common.checkpoint import write_checkpoint
from common.config import at_least, comma_list, config_to_dict, positive, positive_int, require
from common.envs import EnvConfig
from common.latent_policy import LatentPolicy, PixelPolicy, PixelPolicySpec, frames_to_input
from common.progress import Progress
from learner.compute import Compute, ComputeConfig
from learner.data import TransitionData
from learner.lam.config import LAMConfig, MethodConfig
from learner.lam.model import LatentActionModel
from learner.lam.train import cosine_schedule
from learner.laom.augment import warp
from learner.methods import latent_actions
from learner.probe import nmse
from learner.publish import encode_policy

ENCODE_BATCH = 256
RESULTS = "downstream.json"
LABEL_STREAM, VALIDATION_STREAM = 1, 2  # spawn keys: the labelled subset's and the validation split's random streams


@dataclass
class DownstreamConfig:
    """Latent behaviour cloning, action decoding and evaluation settings."""

    policy_frames: int = field(default=3, metadata={"help": "stacked RGB frames the latent policy sees"})
    policy_scale: int = field(default=1, metadata={"help": "latent policy IMPALA widths 16/32/32 x scale"})
    bc_updates: int = field(default=3_000, metadata={"help": "latent behaviour cloning updates (and the BC references')"})
    bc_batch_size: int = field(default=64, metadata={"help": "latent behaviour cloning batch"})
    bc_lr: float = field(default=4e-4, metadata={"help": "latent behaviour cloning learning rate (AdamW, cosine)"})
    bc_shift: int = field(default=0, metadata={
        "help": "random shift of up to ±k pixels per sample (its whole frame stack, edge-padded: DrQ) in every "
                "pixel-policy behaviour-cloning update: latent BC and the labels-only and ground-truth BC references; "
                "0 = off"})
    bc_validation_fraction: float = field(default=0.0, metadata={
        "help": "ground-truth BC reference: fraction of the training episodes (whole episodes, seeded) held out to "
                "score its action nMSE every --downstream.bc-validate-every updates, the best-scoring weights kept "
                "(early stopping); 0 = off: every episode is trained on and the last weights kept"})
    bc_validate_every: int = field(default=500, metadata={
        "help": "ground-truth BC updates between validation scores (with --downstream.bc-validation-fraction)"})
    bc_patience: int = field(default=0, metadata={
        "help": "ground-truth BC with a validation split: stop after this many scores without improvement "
                "(0 = run all --downstream.bc-updates, still keeping the best weights)"})
    label_budgets: str = field(default="1000,4000,16000", metadata={
        "help": "comma-separated labelled-transition budgets for the action decoder (random whole episodes, seeded "
                "by the run's seed); the last is the headline"})
    decoder_updates: int = field(default=3_000, metadata={"help": "action decoder updates per budget"})
    decoder_batch_size: int = field(default=256, metadata={"help": "action decoder batch"})
    decoder_lr: float = field(default=1e-3, metadata={"help": "action decoder learning rate (Adam, grad clip 1)"})
    eval_episodes: int = field(default=8, metadata={
        "help": "deterministic evaluation episodes per policy and rho (a modest default; a table to judge methods by "
                "wants 32 or more; 0: the online learner evaluates none)"})
    eval_workers: int = field(default=1, metadata={"help": "parallel evaluation actors (1 = in-process)"})
    eval_seed: int = field(default=1_000, metadata={"help": "seed of the evaluation episodes (same for every policy)"})

    def budgets(self) -> list[int]:
        return comma_list(self, "label_budgets", positive_int, "a positive count of labelled transitions",
                          "pass counts such as 1000,4000,16000")

    def validate(self) -> None:
        at_least(self, 1, "policy_frames", "policy_scale", "bc_updates", "bc_batch_size", "decoder_updates",
                 "decoder_batch_size", "eval_workers", "bc_validate_every")
        at_least(self, 0, "eval_episodes", "eval_seed", "bc_shift", "bc_patience")
        require(0.0 <= self.bc_validation_fraction < 1.0, "bc_validation_fraction", "must be in [0, 1)",
                "pass 0 (off) or a fraction such as 0.1")
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


def policy_transitions(data: TransitionData, policy_frames: int) -> Transitions:
    """Rows t with the policy's frame stack and a real step (frame t+1 exists): every transition
    a pixel policy can be cloned on or scored on without an IDM."""
    return Transitions(data.window_starts(policy_frames + 1) + policy_frames - 1, policy_frames)


def row_episodes(data: TransitionData, rows: np.ndarray) -> np.ndarray:
    """The episode number of each dataset row."""
    return data.chunk_episode[np.searchsorted(data.chunk_start, rows, side="right") - 1]


def shuffled_episodes(data: TransitionData, seed: int, stream: int) -> np.ndarray:
    """The dataset's episodes in a random order drawn from (`seed`, `stream`)."""
    generator = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
    return generator.permutation(np.unique(data.chunk_episode))


def labelled_subset(data: TransitionData, rows: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Positions in `rows` of `budget` labelled transitions: whole episodes in a random order
    drawn from `seed` (one order for every budget and every caller, so a smaller budget's
    subset lies inside a larger one's, and every method with that seed labels the same
    episodes), the last episode cut to fit the budget exactly. Sorted."""
    episodes = row_episodes(data, rows)
    order = shuffled_episodes(data, seed, LABEL_STREAM)
    by_episode = np.concatenate([np.flatnonzero(episodes == e) for e in order])
    return np.sort(by_episode[:budget])


def validation_split(data: TransitionData, transitions: Transitions, fraction: float,
                     seed: int) -> tuple[Transitions, Transitions]:
    """(training, validation) transitions: `fraction` of the episodes (at least one, whole,
    drawn from `seed`) held out, the rest trained on."""
    order = shuffled_episodes(data, seed, VALIDATION_STREAM)
    if len(order) < 2:
        raise ValueError("a validation split needs at least 2 episodes in the training data; "
                         "pass --downstream.bc-validation-fraction 0 or collect more (--train-steps)")
    held = np.isin(row_episodes(data, transitions.rows), order[:max(1, round(fraction * len(order)))])
    return (Transitions(transitions.rows[~held], transitions.policy_frames),
            Transitions(transitions.rows[held], transitions.policy_frames))


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each sample (B, C, H, W: all its channels, so a frame stack moves as one) shifted by its
    own whole-pixel offset in [-pad, pad]^2, the edge repeated beyond the frame: DrQ's pad and
    random crop. In fp32, outside any autocast (it prepares inputs). `pad` 0: unchanged."""
    if pad == 0:
        return images
    n, side = images.shape[0], images.shape[-1]
    translations = torch.eye(3).repeat(n, 1, 1)
    translations[:, :2, 2] = torch.randint(-pad, pad + 1, (n, 2), generator=generator).float() * 2.0 / side
    with torch.autocast(images.device.type, enabled=False):
        return warp(images, translations)


class PolicyBatches:
    """A pixel policy's behaviour-cloning batches: `bc_batch_size` positions in `transitions`
    drawn uniformly (seeded) and their frame stacks, each randomly shifted by up to
    `bc_shift` pixels, on `device`."""

    def __init__(self, data: TransitionData, transitions: Transitions, config: DownstreamConfig, seed: int,
                 device: torch.device):
        self.data, self.transitions, self.config, self.device = data, transitions, config, device
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self) -> tuple[np.ndarray, torch.Tensor]:
        index = self.rng.integers(len(self.transitions.rows), size=self.config.bc_batch_size)
        policy_input = random_shift(self.transitions.policy_input(self.data, index), self.config.bc_shift,
                                    self.generator)
        return index, policy_input.to(self.device)


def latent_bc_step(latent_policy: LatentPolicy, optimizer: torch.optim.Optimizer, policy_input: torch.Tensor,
                   target: torch.Tensor, compute: Compute, action: torch.Tensor | None = None,
                   probe_coef: float = 0.0) -> dict[str, torch.Tensor]:
    """One latent behaviour-cloning update: the latent policy's MSE to the IDM's latents `target`
    (plus `probe_coef` x its detached probe's MSE to `action`, when given), forward under
    `compute`'s autocast, losses in fp32. The step of stage 2, the online learner and benchmarks.lam."""
    with compute.autocast():
        z = latent_policy(compute.layout(policy_input))
        probe_prediction = latent_policy.probe(z.detach()) if action is not None else None
    losses = {"bc": F.mse_loss(z.float(), target)}
    loss = losses["bc"]
    if probe_prediction is not None:
        losses["probe"] = F.mse_loss(probe_prediction.float(), action)
        loss = loss + probe_coef * losses["probe"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return losses


def action_bc_step(policy: PixelPolicy, optimizer: torch.optim.Optimizer, policy_input: torch.Tensor,
                   action: torch.Tensor, compute: Compute) -> dict[str, torch.Tensor]:
    """One end-to-end behaviour-cloning update of the whole pixel policy (latent policy and
    decoder) on true actions: the MSE of its deterministic action, forward under `compute`'s
    autocast, the loss in fp32; `latent_bc_step`'s twin for the BC references."""
    with compute.autocast():
        predicted = policy.decoder.deterministic(policy.latent_policy(compute.layout(policy_input)))
    losses = {"bc": F.mse_loss(predicted.float(), action)}
    optimizer.zero_grad(set_to_none=True)
    losses["bc"].backward()
    optimizer.step()
    return losses


class TrainingStopped(Exception):
    """The caller's `should_stop` ended a training stage between two updates (str: how far it got)."""


def run_updates(label: str, updates: int, step: Callable[[], dict[str, torch.Tensor]],
                scheduler: torch.optim.lr_scheduler.LRScheduler, should_stop: Callable[[], bool], stage: str,
                finished: Callable[[int], bool] = lambda update: False) -> list[dict]:
    """Up to `updates` calls of `step` (one update each; its losses, "bc" among them), the
    scheduler stepped after each, with a progress line; the curve holds each loss's mean over
    every 100 updates (as `<name>_loss`). `finished(update)` True ends early (early stopping);
    TrainingStopped if `should_stop()` (asked before every update) says so."""
    progress = Progress(label, updates, unit="updates", interval_s=10.0)
    curve: list[dict] = []
    recent: list[dict[str, float]] = []
    for update in range(1, updates + 1):
        if should_stop():
            raise TrainingStopped(f"after {update - 1} of {updates} {stage} updates")
        recent.append({name: loss.item() for name, loss in step().items()})
        scheduler.step()
        done = finished(update)
        if update % 100 == 0 or update == updates or done:
            curve.append({"update": update, **{f"{name}_loss": float(np.mean([r[name] for r in recent]))
                                               for name in recent[0]}})
            recent = []
        progress.update(update, bc_loss=curve[-1]["bc_loss"] if curve else recent[-1]["bc"])
        if done:
            break
    progress.close()
    return curve


def train_latent_bc(model: LatentActionModel, lam_config: LAMConfig, data: TransitionData, config: DownstreamConfig,
                    seed: int, label: str = "bc", compute: ComputeConfig = ComputeConfig(),
                    should_stop: Callable[[], bool] = lambda: False) -> tuple[PixelPolicy, dict]:
    """Stage 2: a fresh pixel policy whose latent policy regresses the IDM's latents, each step in
    `compute`'s layout and precision (the returned policy is fp32 in the standard layout), on the
    LAM's device. TrainingStopped if `should_stop()` (asked before every update) says so."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    transitions = usable_transitions(data, config.policy_frames, lam_config)
    if len(transitions.rows) == 0:
        raise ValueError("no transition has the frames the latent policy and the IDM need")
    targets = torch.from_numpy(latent_actions(model, lam_config, data, transitions.rows)).to(device)  # per family
    actions = torch.from_numpy(data.actions[transitions.rows]).to(device)
    spec = PixelPolicySpec(image_size=data.frames.shape[1], action_dim=data.action_dim,
                           latent_dim=lam_config.model.latent_dim, frames=config.policy_frames, scale=config.policy_scale)
    policy = PixelPolicy(spec).to(device)
    latent_policy = policy.latent_policy
    step_compute = Compute.resolve(compute, next(policy.parameters()).device)
    step_compute.prepare(latent_policy)
    optimizer = torch.optim.AdamW(latent_policy.parameters(), lr=config.bc_lr)
    scheduler = cosine_schedule(optimizer, config.bc_updates)
    batches = PolicyBatches(data, transitions, config, seed, device)

    def step() -> dict[str, torch.Tensor]:
        index, policy_input = batches.draw()
        return latent_bc_step(latent_policy, optimizer, policy_input, targets[index], step_compute, actions[index],
                              lam_config.optim.probe_coef)

    curve = run_updates(label, config.bc_updates, step, scheduler, should_stop, "latent-BC")
    policy.to(memory_format=torch.contiguous_format)
    latent_policy.eval()
    with torch.no_grad():  # the probe on the policy's latent, on the last 20% of transitions (least trained on)
        held = np.arange(int(0.8 * len(transitions.rows)), len(transitions.rows))[:4 * ENCODE_BATCH]
        predicted = latent_policy.probe(latent_policy(transitions.policy_input(data, held).to(device))).cpu().numpy()
    metrics = {"bc_loss": curve[-1]["bc_loss"], "bc_latent_variance": float(targets.var(0).mean()),
               "bc_probe_nmse_online": nmse(predicted, actions[held].cpu().numpy()).nmse, "bc_curve": curve}
    return policy, metrics


def train_decoder(policy: PixelPolicy, data: TransitionData, transitions: Transitions, budget: int,
                  config: DownstreamConfig, seed: int, compute: ComputeConfig = ComputeConfig(),
                  should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Stage 3: fit `policy.decoder` on `budget` labelled transitions, whole episodes drawn with
    `seed` (`labelled_subset`; the latent policy frozen), each step under `compute`'s autocast
    (an MLP: no layout to change), on the policy's device. TrainingStopped if `should_stop()`
    (asked before every update) says so."""
    device = next(policy.parameters()).device
    labelled = labelled_subset(data, transitions.rows, budget, seed)
    with torch.no_grad():
        z = torch.cat([policy.latent_policy(transitions.policy_input(data, labelled[i:i + ENCODE_BATCH]).to(device))
                       for i in range(0, len(labelled), ENCODE_BATCH)])
    actions = torch.from_numpy(data.actions[transitions.rows[labelled]]).to(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(policy.decoder.parameters(), lr=config.decoder_lr)
    step_compute = Compute.resolve(compute, z.device)
    for update in range(config.decoder_updates):
        if should_stop():
            raise TrainingStopped(f"after {update} of {config.decoder_updates} decoder updates")
        index = torch.from_numpy(rng.integers(len(labelled), size=config.decoder_batch_size))
        with step_compute.autocast():
            predicted = policy.decoder.deterministic(z[index])
        loss = F.mse_loss(predicted.float(), actions[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.decoder.parameters(), 1.0)
        optimizer.step()
    with torch.no_grad():
        fit = nmse(policy.decoder.deterministic(z).cpu().numpy(), actions.cpu().numpy()).nmse
    return {"labelled_transitions": len(labelled),
            "labelled_episodes": len(np.unique(row_episodes(data, transitions.rows[labelled]))),
            "decoder_loss": loss.item(), "decoder_train_nmse": fit}


def action_nmse(policy: PixelPolicy, data: TransitionData, transitions: Transitions) -> float | None:
    """Open-loop action nMSE of `policy`'s deterministic action on `transitions` (fp32, the
    standard layout or the training one: whichever the policy is in)."""
    device = next(policy.parameters()).device
    index = np.arange(len(transitions.rows))
    with torch.no_grad():
        predicted = torch.cat([policy.decoder.deterministic(policy.latent_policy(
            transitions.policy_input(data, index[i:i + ENCODE_BATCH]).to(device)))
            for i in range(0, len(index), ENCODE_BATCH)])
    return nmse(predicted.cpu().numpy(), data.actions[transitions.rows]).nmse


def train_action_bc(data: TransitionData, transitions: Transitions, config: DownstreamConfig, seed: int,
                    latent_dim: int, device: torch.device | str = "cpu", label: str = "action bc",
                    compute: ComputeConfig = ComputeConfig(), validation: Transitions | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> tuple[PixelPolicy, dict]:
    """A fresh pixel policy, stage 2's network, trained end to end on the true actions of
    `transitions` with stage 2's batches, optimiser, schedule and update budget: the BC
    references (labels-only: the labelled subset; ground truth: every transition). With
    `validation`, its action nMSE there every `bc_validate_every` updates decides which weights
    are kept (the best), and `bc_patience` scores without improvement end it. Returned fp32 in
    the standard layout."""
    torch.manual_seed(seed)
    device = torch.device(device)
    if len(transitions.rows) == 0:
        raise ValueError("no transition has the frames the pixel policy needs")
    actions = torch.from_numpy(data.actions[transitions.rows]).to(device)
    spec = PixelPolicySpec(image_size=data.frames.shape[1], action_dim=data.action_dim, latent_dim=latent_dim,
                           frames=config.policy_frames, scale=config.policy_scale)
    policy = PixelPolicy(spec).to(device)
    step_compute = Compute.resolve(compute, device)
    step_compute.prepare(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.bc_lr)
    scheduler = cosine_schedule(optimizer, config.bc_updates)
    batches = PolicyBatches(data, transitions, config, seed, device)
    scores: list[dict] = []
    best: dict = {}

    def step() -> dict[str, torch.Tensor]:
        index, policy_input = batches.draw()
        return action_bc_step(policy, optimizer, policy_input, actions[index], step_compute)

    def finished(update: int) -> bool:
        if validation is None or (update % config.bc_validate_every and update != config.bc_updates):
            return False
        scores.append({"update": update, "nmse": action_nmse(policy, data, validation)})
        if not best or scores[-1]["nmse"] < best["nmse"]:
            best.update(scores[-1], state=copy.deepcopy(policy.state_dict()))
        stale = len(scores) - 1 - next(i for i, s in enumerate(scores) if s["update"] == best["update"])
        return config.bc_patience > 0 and stale >= config.bc_patience

    curve = run_updates(label, config.bc_updates, step, scheduler, should_stop, "BC", finished)
    metrics = {"bc_loss": curve[-1]["bc_loss"], "bc_updates_run": curve[-1]["update"], "bc_curve": curve,
               "train_transitions": len(transitions.rows)}
    if validation is not None:
        policy.load_state_dict(best.pop("state"))
        metrics["validation"] = {"transitions": len(validation.rows), "best_update": best["update"],
                                 "best_nmse": best["nmse"], "scores": scores}
    policy.to(memory_format=torch.contiguous_format)
    policy.eval()
    return policy, metrics


def eval_rhos(env: EnvConfig) -> list[float]:
    """The rho values every policy is evaluated at: 0 first (the headline: the background's
    motion is independent of the action), then the training rho where the distractor has one."""
    return [0.0] + ([env.rho] if env.distractor == "correlated" and env.rho != 0.0 else [])


def rho_key(rho: float) -> str:
    """A rho as results.json's `per_rho` names it ("0", "0.5")."""
    return f"{rho:g}"


HEADLINE_RHO = rho_key(0.0)


def evaluate_per_rho(env: EnvConfig, policy: EvaluatedPolicy, config: DownstreamConfig,
                     expert: dict[str, float] | None = None, expert_dir: str = "models/experts") -> dict:
    """{rho: {returns, return[, normalized_return]}}: `policy`'s deterministic episodes at each
    of `eval_rhos(env)`, on evaluation backgrounds, normalised by `expert`'s return at that rho."""
    per_rho = {}
    for rho in eval_rhos(env):
        returns = evaluate(dataclasses.replace(env, rho=rho), policy, config.eval_episodes, config.eval_seed,
                           config.eval_workers, expert_dir)
        per_rho[rho_key(rho)] = {"returns": returns, "return": float(np.mean(returns))}
        if expert is not None:
            per_rho[rho_key(rho)]["normalized_return"] = per_rho[rho_key(rho)]["return"] / expert[rho_key(rho)]
    return per_rho


def headline(per_rho: dict) -> dict:
    """The headline figures of an evaluation: its return and normalised return at rho = 0."""
    return {key: per_rho[HEADLINE_RHO][key] for key in ("return", "normalized_return")}


def read_result(path: Path, settings: dict) -> dict | None:
    """The result at `path` if it finished with exactly `settings` (else None: run it)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("settings") == settings else None


def write_result(path: Path, result: dict) -> None:
    """`result` as JSON at `path`, atomically (a killed run leaves the old file or none)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def run_downstream(model: LatentActionModel, lam_config: LAMConfig, data: TransitionData, heldout: TransitionData,
                   env: EnvConfig, config: DownstreamConfig, expert: dict[str, float], seed: int, out: str | Path,
                   label: str = "downstream", compute: ComputeConfig = ComputeConfig()) -> dict:
    """Stages 2 and 3 and evaluation for every label budget, each at every rho (`expert`: the
    expert's return per rho), with the final pixel policy's open-loop action nMSE on `heldout`;
    OUT/downstream.json (reused when the same settings already ran). The headline `return`
    and `normalized_return` are the largest budget's at rho = 0."""
    out = Path(out)
    settings = {"downstream": config_to_dict(config), "env": config_to_dict(env), "seed": seed, "expert": expert}
    path = out / RESULTS
    if (saved := read_result(path, settings)) is not None:
        return saved
    out.mkdir(parents=True, exist_ok=True)
    policy, metrics = train_latent_bc(model, lam_config, data, config, seed, label=f"{label} bc", compute=compute)
    transitions = usable_transitions(data, config.policy_frames, lam_config)
    scored = policy_transitions(heldout, config.policy_frames)
    budgets = []
    for budget in config.budgets():
        decoded = copy.deepcopy(policy)
        fit = train_decoder(decoded, data, transitions, budget, config, seed, compute)
        per_rho = evaluate_per_rho(env, encode_policy(decoded, version=0), config, expert)
        budgets.append({"label_budget": budget, **fit, "action_nmse_heldout": action_nmse(decoded, heldout, scored),
                        "per_rho": per_rho, **headline(per_rho)})
        print(f"  {label}: budget {budget:>6}: " + describe(budgets[-1]), flush=True)
        if budget == config.budgets()[-1]:
            write_checkpoint(decoded.state_dict(), out / "pixel_policy.pt")
    result = {"settings": settings, **metrics, "budgets": budgets, **headline(budgets[-1]["per_rho"]),
              "action_nmse_heldout": budgets[-1]["action_nmse_heldout"]}
    write_result(path, result)
    return result


def describe(result: dict) -> str:
    """One line of an evaluated policy's figures: normalised return per rho, held-out action nMSE."""
    returns = ", ".join(f"rho {rho} {r['return']:.1f} ({r['normalized_return']:.3f} of the expert)"
                        for rho, r in result["per_rho"].items())
    error = result.get("action_nmse_heldout")
    return returns + ("" if error is None else f"; held-out action nMSE {error:.3f}")


def expert_reference(env: EnvConfig, config: DownstreamConfig, expert_dir: str = "models/experts") -> dict:
    """The committed expert's returns on the same env, backgrounds, episodes and rhos as the
    policies: the normaliser of every return (`return`: at rho = 0)."""
    per_rho = evaluate_per_rho(env, "expert", config, expert_dir=expert_dir)
    return {"per_rho": per_rho, "returns": per_rho[HEADLINE_RHO]["returns"], "return": per_rho[HEADLINE_RHO]["return"]}
