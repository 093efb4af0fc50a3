"""The reference rows of every return table, evaluated exactly like the methods' policies.

Without them a return cannot be read: is 0.11 of the expert a good latent, or the most any
pixel policy trained here reaches? Each reference runs the downstream protocol's
evaluation (learner/downstream.py: same env, evaluation backgrounds, episodes, rhos and
normaliser) and the same held-out open-loop action nMSE:

  zero             all-zero actions (a floor; needs no training)
  random           iid uniform actions, drawn from each episode's seed (a floor)
  labels_only_bc   per label budget: stage 2's pixel network (latent policy + decoder)
                   trained end to end on just the labelled subset's true actions (the
                   same whole episodes the methods' decoders get): what the labels buy
                   without any latent
  ground_truth_bc  the same network on the true actions of every training transition,
                   with the same batches and update budget: the ceiling of the stage
                   (with --downstream.bc-validation-fraction, early-stopped on held-out
                   training episodes)

A unit is one reference (with one seed and budget where it has them; the floors are the
same for every seed, so each runs once). It writes OUT/references/<unit>/reference.json
with the settings that decide it, and a unit that finished with the same settings is read
back instead of run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from common.checkpoint import write_checkpoint
from common.config import config_to_dict
from common.envs import EnvConfig
from learner.compute import ComputeConfig
from learner.data import load_dataset
from learner.downstream import (DownstreamConfig, Transitions, action_nmse, describe, evaluate_per_rho, headline,
                                labelled_subset, policy_transitions, read_result, train_action_bc,
                                validation_split, write_result)
from learner.probe import nmse
from learner.publish import encode_policy

ReferenceKind = Literal["zero", "random", "labels_only_bc", "ground_truth_bc"]
REFERENCE_KINDS: tuple[ReferenceKind, ...] = get_args(ReferenceKind)
FLOORS: tuple[ReferenceKind, ...] = ("zero", "random")
RESULT = "reference.json"
# DownstreamConfig fields that cannot change a unit of each kind (a change to them reuses it).
_IGNORED = {
    "floor": {"bc_updates", "bc_batch_size", "bc_lr", "bc_shift", "bc_validation_fraction", "bc_validate_every",
              "bc_patience", "label_budgets", "decoder_updates", "decoder_batch_size", "decoder_lr", "eval_workers",
              "policy_scale"},
    "labels_only_bc": {"bc_validation_fraction", "bc_validate_every", "bc_patience", "label_budgets",
                       "decoder_updates", "decoder_batch_size", "decoder_lr", "eval_workers"},
    "ground_truth_bc": {"label_budgets", "decoder_updates", "decoder_batch_size", "decoder_lr", "eval_workers"},
}


@dataclass(frozen=True)
class ReferenceUnit:
    kind: ReferenceKind
    seed: int | None = None  # None: a floor, the same for every seed
    budget: int | None = None  # labels_only_bc only

    @property
    def name(self) -> str:
        """Its folder under OUT/references/ (zero, labels_only_bc/budget1000/seed0, ...)."""
        parts = [self.kind] + ([f"budget{self.budget}"] if self.budget is not None else [])
        return "/".join(parts + ([f"seed{self.seed}"] if self.seed is not None else []))


def reference_units(budgets: list[int], seeds: int) -> list[ReferenceUnit]:
    """Every unit of a comparison: the floors once, the BC references per seed (and budget)."""
    return ([ReferenceUnit(kind) for kind in FLOORS]
            + [ReferenceUnit("ground_truth_bc", seed) for seed in range(seeds)]
            + [ReferenceUnit("labels_only_bc", seed, budget) for seed in range(seeds) for budget in budgets])


def unit_settings(unit: ReferenceUnit, env: EnvConfig, config: DownstreamConfig, expert: dict[str, float],
                  datasets: dict[str, str], latent_dim: int) -> dict:
    """What decides `unit`'s result: its kind, seed and budget, the task, the evaluation, the
    datasets, and the downstream settings its kind uses."""
    kind = "floor" if unit.kind in FLOORS else unit.kind
    downstream = {k: v for k, v in config_to_dict(config).items() if k not in _IGNORED[kind]}
    return {"unit": unit.name, "env": config_to_dict(env), "downstream": downstream, "expert": expert,
            "datasets": datasets if kind != "floor" else {"eval": datasets["eval"]},
            **({"latent_dim": latent_dim} if kind != "floor" else {})}


def run_reference(unit: ReferenceUnit, datasets: dict[str, str], env: EnvConfig, config: DownstreamConfig,
                  expert: dict[str, float], out: str | Path, latent_dim: int, device: str = "cpu",
                  compute: ComputeConfig = ComputeConfig()) -> dict:
    """`unit`'s evaluation (returns and normalised returns per rho, the headline at rho = 0) and
    its open-loop action nMSE on the held-out `datasets["eval"]` (a BC reference trains on
    `datasets["train"]`), with a policy of `latent_dim`; read back from OUT/reference.json
    instead when it finished with the same settings."""
    out = Path(out)
    path = out / RESULT
    settings = unit_settings(unit, env, config, expert, datasets, latent_dim)
    if (saved := read_result(path, settings)) is not None:
        return saved
    out.mkdir(parents=True, exist_ok=True)
    heldout = load_dataset(datasets["eval"])
    scored = policy_transitions(heldout, config.policy_frames)
    truth = heldout.actions[scored.rows]
    metrics: dict = {}
    if unit.kind == "zero":
        policy, error = "zero", nmse(np.zeros_like(truth), truth).nmse
    elif unit.kind == "random":
        policy, error = "random", None  # an open-loop error of random guesses says nothing
    else:
        train = load_dataset(datasets["train"])
        transitions = policy_transitions(train, config.policy_frames)
        validation = None
        if unit.kind == "labels_only_bc":
            labelled = labelled_subset(train, transitions.rows, unit.budget, unit.seed)
            transitions = Transitions(transitions.rows[labelled], config.policy_frames)
        elif config.bc_validation_fraction > 0:
            transitions, validation = validation_split(train, transitions, config.bc_validation_fraction, unit.seed)
        trained, metrics = train_action_bc(train, transitions, config, unit.seed, latent_dim, device,
                                           label=f"reference {unit.name}", compute=compute, validation=validation)
        write_checkpoint(trained.state_dict(), out / "pixel_policy.pt")
        error = action_nmse(trained, heldout, scored)
        policy = encode_policy(trained.cpu(), version=0)
    per_rho = evaluate_per_rho(env, policy, config, expert)
    result = {"settings": settings, "kind": unit.kind, "seed": unit.seed, "label_budget": unit.budget, **metrics,
              "action_nmse_heldout": error, "per_rho": per_rho, **headline(per_rho)}
    print(f"  reference {unit.name}: " + describe(result), flush=True)
    write_result(path, result)
    return result
