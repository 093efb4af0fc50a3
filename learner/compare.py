"""`python -m learner.compare`: the paper's offline comparison, LAPO vs MaskLAM (and the LAOM
baselines, learner/laom/), as a table.

1. Collect (or reuse, keyed by their settings, under --data-dir) three datasets through
   the actors, with the committed expert (`--data-policy expert`, the paper's protocol) or
   iid uniform random actions, and oracle masks:
     train   the training distribution (the distractor as configured, train backgrounds);
     indist  held-out episodes from the same distribution;
     eval    held-out episodes on evaluation backgrounds with rho = 0: the background's
             motion is independent of the action, so a latent that encodes the background
             gains nothing from the correlation. The headline probe is scored here.
2. Train every method with every seed on the same data and budget (OUT/runs/<method>/seed<s>,
   checkpointed and resumable; a finished run is reused). With expert data, each run then
   goes through the downstream protocol (learner/downstream.py): latent behaviour cloning,
   an action decoder per label budget (random whole episodes, seeded), and evaluation
   episodes at rho = 0 (the headline) and at the training rho, whose return is normalised
   by the expert's return on the same env, episodes and rho. In the same pool run the
   reference rows (learner/references.py: zero and random floors, labels-only BC per budget,
   ground-truth BC: the ceiling), each unit reused once finished (OUT/references/...).
3. Write OUT/results.json (means over seeds, `_std` spreads, per-seed values; `references`;
   `paired`: each method's per-seed difference of normalised return to LAPO with a bootstrap
   95 % interval), the plots and the resolved config, and print the tables.

`--preset` sets the defaults of every other flag (frame size, action repeat, dataset
sizes, networks, updates; the table is learner/presets.py); any flag given on the command
line overrides its preset default. Each family's networks and optimisation are grouped
(`--lam.optim.updates`, `--laom.model.latent-dim`), and so are each method's switches
(`--lam.methods.masklam.mask-channel`): see `--help`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro

from common.cli import run_main
from common.config import (at_least, blame, comma_list, config_to_dict, from_dict, parse, redis_url, require,
                           save_resolved_config, writable)
from common.devices import check_device, resolve_device
from common.envs import EnvConfig, env_spec
from common.experts import expert_record
from common.replay import redis_url_or_embedded
from learner import plots, presets
from learner.compute import ComputeConfig
from learner.data import DatasetSpec, TransitionData, ensure_dataset, idm_windows, load_dataset
from learner.downstream import HEADLINE_RHO, DownstreamConfig, expert_reference, run_downstream
from learner.lam.batch import make_batch
from learner.lam.config import METHODS as LAM_METHODS
from learner.lam.config import LAMConfig, MethodConfig, ModelConfig, OptimConfig, lam_config
from learner.laom.config import METHODS as LAOM_METHODS
from learner.laom.config import LAOMConfig, LAOMMethodConfig, LAOMModelConfig, LAOMOptimConfig, laom_config
from learner.lam.train import load_model
from learner.methods import METHODS, family
from learner.probe import make_probe_set
from learner.references import FLOORS, REFERENCE_KINDS, ReferenceUnit, reference_units, run_reference

DATA_SEEDS = {"train": 1, "indist": 2, "eval": 3}
SCALARS = ("probe_nmse", "probe_nmse_indist", "background_nmse", "probe_nmse_online", "train_seconds", "updates_per_s")
PER_DIM = ("probe_nmse_per_dim", "probe_nmse_per_dim_indist", "probe_nmse_online_per_dim")
PROG = "python -m learner.compare"
BOOTSTRAP_RESAMPLES = 10_000


@dataclass
class LAMFamilyConfig:
    """LAPO and MaskLAM: the networks and optimisation all of them train with, and each one's switches."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    methods: dict[str, MethodConfig] = field(default_factory=lambda: dict(LAM_METHODS))

    def config(self, method: str) -> LAMConfig:
        return LAMConfig(model=self.model, method=self.methods[method], optim=self.optim)


@dataclass
class LAOMFamilyConfig:
    """LAOM and its variants: the networks and optimisation all of them train with, and each one's switches."""

    model: LAOMModelConfig = field(default_factory=LAOMModelConfig)
    optim: LAOMOptimConfig = field(default_factory=LAOMOptimConfig)
    methods: dict[str, LAOMMethodConfig] = field(default_factory=lambda: dict(LAOM_METHODS))

    def config(self, method: str) -> LAOMConfig:
        return LAOMConfig(model=self.model, method=self.methods[method], optim=self.optim)


@dataclass
class CompareConfig:
    """Train LAPO and MaskLAM on the same distractor data and compare their latents' probes."""

    methods: str = field(default="lapo,masklam", metadata={"help": f"comma-separated, from {', '.join(METHODS)}"})
    seeds: int = field(default=3, metadata={"help": "seeds per method (0 .. S-1)"})
    preset: Literal["ci", "paper"] = field(default="ci", metadata={"help": "network, budget and data-size preset"})
    out: str = field(default="runs/compare", metadata={"help": "output folder"})
    data_dir: str = field(default="data/lam", metadata={"help": "where datasets are collected and reused"})
    train_steps: int = field(default=25_000, metadata={"help": "decisions in the training set"})
    heldout_steps: int = field(default=4_000, metadata={"help": "decisions in each held-out set (indist, eval)"})
    probe_samples: int = field(default=4_000, metadata={"help": "held-out windows used by each probe"})
    eval_every: int = field(default=500, metadata={"help": "updates between probe evaluations (learning curves)"})
    jobs: int = field(default=1, metadata={"help": "training processes at once (methods and reference units share them)"})
    references: str = field(default=",".join(REFERENCE_KINDS), metadata={
        "help": "comma-separated reference rows run beside the methods with expert data, evaluated as they are: zero "
                "and random (action floors), labels_only_bc (the pixel network on each budget's labelled subset), "
                "ground_truth_bc (on every transition: the ceiling, and the second normaliser)"})
    references_only: bool = field(default=False, metadata={
        "help": "train no method: collect, evaluate the expert and run the --references only (ablations of the "
                "downstream stage; the first of --methods still sets the pixel network's latent width)"})
    torch_threads: int = field(default=1, metadata={"help": "torch threads per training process"})
    collect_actors: int = field(default=1, metadata={"help": "rollout actors when collecting"})
    data_policy: Literal["expert", "random"] = field(default="expert", metadata={
        "help": "who acts in the datasets: the committed expert (needed for returns) or iid uniform random actions"})
    data_action_noise: float = field(default=0.1, metadata={"help": "std of Gaussian noise on the expert's actions"})
    expert_dir: str = field(default="models/experts", metadata={"help": "folder of committed experts"})
    device: str = field(default="cpu", metadata={"help": "torch device for training (cpu, cuda; auto: GPU if any)"})
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    redis_url: str | None = field(default=None, metadata={"help": "Redis for collection; default: embedded"})
    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=EnvConfig)  # the task, unprefixed
    lam: LAMFamilyConfig = field(default_factory=LAMFamilyConfig)
    laom: LAOMFamilyConfig = field(default_factory=LAOMFamilyConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def validate(self) -> None:
        """Each part checks itself (common.config.validate); here, what holds across the parts."""
        chosen = [m.strip() for m in self.methods.split(",")]
        for method in chosen:
            require(method in METHODS, "methods", f"unknown method {method!r}", f"choose from {', '.join(METHODS)}")
        at_least(self, 1, "seeds", "train_steps", "heldout_steps", "probe_samples", "eval_every", "jobs",
                 "torch_threads", "collect_actors")
        at_least(self, 0, "data_action_noise")
        self.reference_kinds()
        require(not self.references_only or self.data_policy == "expert", "references_only",
                "needs expert data (the references are returns)", "pass --data-policy expert")
        writable(self, "out")
        writable(self, "data_dir")
        with blame("device", "pass cpu, auto, or a GPU this machine has"):
            check_device(self.device)
        redis_url(self)
        if self.data_policy == "expert":  # the datasets' actor, and the normaliser of every return
            with blame("expert_dir"):
                expert_record(self.env.env_id, self.env.action_repeat, self.expert_dir)
            require(self.downstream.eval_episodes >= 1, "downstream.eval_episodes",
                    "must be at least 1 with expert data (each budget's return is measured)", "pass 1 or more")
        require(self.downstream.bc_shift < self.env.image_size, "downstream.bc_shift",
                f"shifts past the {self.env.image_size}-pixel frame", f"pass a shift below {self.env.image_size}")
        for budget in self.downstream.budgets():
            require(budget <= self.train_steps, "downstream.label_budgets", f"has {budget}, more than the "
                    f"{self.train_steps} training decisions (--train-steps)", "pass smaller budgets, or more steps")
        for name, method in self.laom.methods.items():
            require(name not in chosen or method.label_budget <= self.train_steps, f"laom.methods.{name}.label_budget",
                    f"is more than the {self.train_steps} training decisions (--train-steps)", "pass a smaller budget")
        for name, method in self.lam.methods.items():
            require(abs(method.mask_radius) < self.env.image_size, f"lam.methods.{name}.mask_radius",
                    f"reaches past the {self.env.image_size}-pixel frame", f"pass a radius below {self.env.image_size}")


    def reference_kinds(self) -> list[str]:
        return comma_list(self, "references", lambda name: name if name in REFERENCE_KINDS else None,
                          f"a reference row ({', '.join(REFERENCE_KINDS)})", f"pass some of {','.join(REFERENCE_KINDS)}")


def defaults(preset: str) -> CompareConfig:
    """The preset's row of learner/presets.py, with each family's networks, optimisation and methods."""
    lam = {m: lam_config(preset, m) for m in LAM_METHODS}
    laom = {m: laom_config(preset, m) for m in LAOM_METHODS}
    return from_dict(CompareConfig, {
        **presets.preset(preset, "learner.compare"), "preset": preset,
        "lam": LAMFamilyConfig(lam["lapo"].model, lam["lapo"].optim, {m: c.method for m, c in lam.items()}),
        "laom": LAOMFamilyConfig(laom["laom"].model, laom["laom"].optim, {m: c.method for m, c in laom.items()})})


def parse_compare_config(argv: list[str] | None = None) -> CompareConfig:
    """The parsed config, its device resolved (so the results record what trained)."""
    config = parse(CompareConfig, argv, PROG, defaults)
    return dataclasses.replace(config, device=str(resolve_device(config.device)))


def method_settings(config: CompareConfig, method: str) -> LAMConfig | LAOMConfig:
    """What `method` trains with: its family's networks and optimisation, and its own switches."""
    return {"lam": config.lam, "laom": config.laom}[family(method).name].config(method)


def dataset_specs(config: CompareConfig) -> dict[str, DatasetSpec]:
    decorrelated = dataclasses.replace(config.env, rho=0.0)
    sizes = {"train": config.train_steps, "indist": config.heldout_steps, "eval": config.heldout_steps}
    envs = {"train": config.env, "indist": config.env, "eval": decorrelated}
    return {name: DatasetSpec(envs[name], "eval" if name == "eval" else "train", DATA_SEEDS[name], sizes[name],
                              config.collect_actors, policy=config.data_policy,
                              action_noise=config.data_action_noise if config.data_policy == "expert" else 0.0,
                              expert_dir=config.expert_dir) for name in sizes}


@dataclass
class Job:
    method: str
    seed: int
    data: dict[str, str]  # dataset name -> folder
    out: str
    config: CompareConfig
    expert: dict[str, float] | None  # the expert's return per rho; None: no downstream protocol (random-action data)


@dataclass
class ReferenceJob:
    unit: ReferenceUnit
    data: dict[str, str]  # dataset name -> folder
    out: str
    config: CompareConfig
    expert: dict[str, float]


def run_job(job: Job) -> dict:
    """Train one (method, seed) in a worker process (loads the datasets itself), then run
    the downstream protocol on it when there is an expert to normalise by."""
    torch.set_num_threads(job.config.torch_threads)
    c = job.config
    method_family = family(job.method)  # LAM (LAPO, MaskLAM) or LAOM: same data, probes and downstream protocol
    lam = method_settings(c, job.method)
    train = load_dataset(job.data["train"])
    heldout = {name: load_dataset(job.data[name]) for name in ("eval", "indist")}
    probe_sets = {name: make_probe_set(data, lam.method.probe_window, c.probe_samples, seed=0)
                  for name, data in heldout.items()}
    label = f"{job.method}/seed{job.seed}"
    metrics = method_family.train(lam, train, probe_sets, job.out, job.seed, c.eval_every, label=label,
                                  device=c.device, compute=c.compute)
    if job.expert is None:
        return metrics
    model, _ = method_family.load_model(job.out)
    downstream = run_downstream(model, lam, train, heldout["eval"], c.env, c.downstream, job.expert, job.seed,
                                job.out, label=label, compute=c.compute)
    return {**metrics, **{k: v for k, v in downstream.items() if k != "settings"}}


def run_reference_job(job: ReferenceJob) -> dict:
    """One reference unit in a worker process, with the pixel network the methods' stage 2
    builds (the first method's latent width)."""
    torch.set_num_threads(job.config.torch_threads)
    c = job.config
    first = c.methods.split(",")[0].strip()
    return run_reference(job.unit, job.data, c.env, c.downstream, job.expert, job.out,
                         method_settings(c, first).model.latent_dim, c.device, c.compute)


def _mean_std(values: list) -> tuple[float | None, float | None]:
    if any(v is None for v in values):
        return None, None
    return float(np.mean(values)), float(np.std(values))


def _mean_std_lists(lists: list[list]) -> tuple[list, list]:
    pairs = [_mean_std([lst[j] for lst in lists]) for j in range(len(lists[0]))]
    return [m for m, _ in pairs], [s for _, s in pairs]


def aggregate(runs: list[dict]) -> dict:
    """Means over seeds with `_std` spreads beside them, and every seed's own values."""
    result: dict = {}
    for key in SCALARS:
        result[key], result[f"{key}_std"] = _mean_std([r[key] for r in runs])
    for key in PER_DIM:
        result[key], result[f"{key}_std"] = _mean_std_lists([r[key] for r in runs])
    result["final_losses"] = {k: float(np.mean([r["final_losses"][k] for r in runs])) for k in runs[0]["final_losses"]}
    result["updates"] = runs[0]["updates"]
    result["parameters"] = runs[0]["parameters"]
    downstream = all("budgets" in r for r in runs)
    for key in ("return", "normalized_return", "bc_probe_nmse_online"):
        result[key], result[f"{key}_std"] = _mean_std([r[key] for r in runs]) if downstream else (None, None)
    if downstream:
        result["label_budgets"] = [b["label_budget"] for b in runs[0]["budgets"]]
        for key in ("return", "normalized_return", "action_nmse_heldout"):
            result[f"{key}_per_budget"], result[f"{key}_per_budget_std"] = _mean_std_lists(
                [[b[key] for b in r["budgets"]] for r in runs])
    curves = ("loss_curve", "probe_curve", "config", "bc_curve")  # kept in each run's own files
    result["per_seed"] = [{k: v for k, v in r.items() if k not in curves} for r in runs]
    return result


def evaluated_summary(records: list[dict], ceilings: list[dict] | None) -> dict:
    """Means over seeds (`_std` beside them) of evaluated policies, `records[s]` seed s's: return,
    normalised return (by the expert) and normalised by seed s's ground-truth BC ceiling
    (`ceilings[s]`, as LAOM normalises; None where a ceiling's return is not above 0, or without
    ceilings), at rho = 0 and in `per_rho`, and the held-out action nMSE."""
    def figures(rho: str) -> dict:
        out: dict = {}
        ceiling = [c["per_rho"][rho]["return"] for c in ceilings] if ceilings else [0.0] * len(records)
        values = {"return": [r["per_rho"][rho]["return"] for r in records],
                  "normalized_return": [r["per_rho"][rho]["normalized_return"] for r in records],
                  "ceiling_normalized_return": [r["per_rho"][rho]["return"] / c if c > 0 else None
                                                for r, c in zip(records, ceiling)]}
        for key, per_seed in values.items():
            out[key], out[f"{key}_std"] = _mean_std(per_seed)
        return out

    summary = figures(HEADLINE_RHO)
    summary["action_nmse_heldout"], summary["action_nmse_heldout_std"] = _mean_std(
        [r["action_nmse_heldout"] for r in records])
    summary["per_rho"] = {rho: figures(rho) for rho in records[0]["per_rho"]}
    return summary


def add_downstream_summary(summary: dict, runs: list[dict], ceilings: list[dict] | None) -> None:
    """A method's downstream figures beside its probes: per budget (`per_budget`, keyed by the
    budget) and, for the headline budget, at the top level (ceiling-normalised return, held-out
    action nMSE, `per_rho`)."""
    per_budget = {str(b["label_budget"]): evaluated_summary([r["budgets"][i] for r in runs], ceilings)
                  for i, b in enumerate(runs[0]["budgets"])}
    last = per_budget[str(summary["label_budgets"][-1])]
    summary.update({k: last[k] for k in ("ceiling_normalized_return", "ceiling_normalized_return_std",
                                         "action_nmse_heldout", "action_nmse_heldout_std", "per_rho")})
    summary["per_budget"] = per_budget


def summarise_references(records: dict[ReferenceUnit, dict], kinds: list[str], seeds: int,
                         budgets: list[int]) -> dict:
    """results.json's `references`: each row of `kinds` as `evaluated_summary` makes it, with its
    per-seed records (the floors, the same for every seed, count once per seed)."""
    def seed_records(kind: str, budget: int | None = None) -> list[dict]:
        if kind in FLOORS:
            return [records[ReferenceUnit(kind)]] * seeds
        return [records[ReferenceUnit(kind, s, budget)] for s in range(seeds)]

    ceilings = seed_records("ground_truth_bc") if "ground_truth_bc" in kinds else None

    def row(kind: str, budget: int | None = None) -> dict:
        chosen = seed_records(kind, budget)
        dropped = ("settings", "bc_curve")
        return {**evaluated_summary(chosen, ceilings),
                "per_seed": [{k: v for k, v in r.items() if k not in dropped} for r in chosen]}

    return {kind: {str(b): row(kind, b) for b in budgets} if kind == "labels_only_bc" else row(kind)
            for kind in REFERENCE_KINDS if kind in kinds}


def bootstrap_interval(values: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                       level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement,
    seeded, so a table is reproducible)."""
    values_array = np.asarray(values, float)
    draws = np.random.default_rng(seed).integers(len(values_array), size=(resamples, len(values_array)))
    means = values_array[draws].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def paired_differences(per_method: dict[str, list[dict]], baseline: str = "lapo") -> dict:
    """Each method's paired per-seed difference to `baseline` of the expert-normalised return
    (seed s against seed s: the same data, labelled episodes and evaluation episodes), per
    budget and rho, with its mean and a bootstrap 95 % interval; `headline`: the largest budget
    at rho = 0."""
    paired = {}
    for name, runs in per_method.items():
        if name == baseline:
            continue
        table = {}
        for i, budget in enumerate(b["label_budget"] for b in runs[0]["budgets"]):
            table[str(budget)] = {}
            for rho in runs[0]["budgets"][i]["per_rho"]:
                differences = [r["budgets"][i]["per_rho"][rho]["normalized_return"]
                               - base["budgets"][i]["per_rho"][rho]["normalized_return"]
                               for r, base in zip(runs, per_method[baseline])]
                table[str(budget)][rho] = {"differences": differences, "mean": float(np.mean(differences)),
                                           "ci95": bootstrap_interval(differences)}
        headline_budget = str(runs[0]["budgets"][-1]["label_budget"])
        paired[f"{name}-{baseline}"] = {"headline": {"label_budget": int(headline_budget), "rho": HEADLINE_RHO,
                                                     **table[headline_budget][HEADLINE_RHO]},
                                        "per_budget": table}
    return paired


def prediction_grid(methods: list[str], run_dirs: dict[str, Path], eval_data: TransitionData, path: Path,
                    samples: int = 4) -> None:
    """Target / mask / each method's (seed 0) prediction for the same eval transitions."""
    models = {m: load_model(run_dirs[m]) for m in methods}
    longest = max(cfg.method.context_frames for _, cfg in models.values())
    reach = longest + max(cfg.method.future_frames for _, cfg in models.values())
    starts = eval_data.window_starts(reach)
    targets = starts[:: max(1, len(starts) // samples)][:samples] + longest
    generator = torch.Generator().manual_seed(0)
    predictions, target, mask, context = {}, None, None, None
    for name, (model, cfg) in models.items():
        windows = idm_windows(eval_data, targets - 1, cfg.method)  # the transition into each target frame
        batch = make_batch(windows, cfg.method, cfg.model, np.ones(len(targets), np.int64), generator)
        with torch.no_grad():
            prediction, _, _ = model(batch.idm_input, batch.fdm_input)
        predictions[name] = (prediction + 0.5).permute(0, 2, 3, 1).numpy()
        target = (batch.target + 0.5).permute(0, 2, 3, 1).numpy()
        mask = eval_data.masks[targets].astype(np.float32)
        context = eval_data.frames[targets - 1] / 255.0
    plots.plot_prediction_grid(context, target, mask, predictions, path)


def print_table(methods: dict[str, dict]) -> None:
    def fmt(mean, std) -> str:
        return "  n/a      " if mean is None else f"{mean:5.3f}±{std:5.3f}"

    print(f"\n  {'method':<14} {'probe_nmse':<12} {'indist':<12} {'background':<12} {'online':<12} "
          f"{'norm return':<12} {'train s':>8}  per-dim (decorrelated eval)")
    for name, m in methods.items():
        per_dim = " ".join("n/a" if v is None else f"{v:.2f}" for v in m["probe_nmse_per_dim"])
        print(f"  {name:<14} {fmt(m['probe_nmse'], m['probe_nmse_std'])} "
              f"{fmt(m['probe_nmse_indist'], m['probe_nmse_indist_std'])} "
              f"{fmt(m['background_nmse'], m['background_nmse_std'])} "
              f"{fmt(m['probe_nmse_online'], m['probe_nmse_online_std'])} "
              f"{fmt(m['normalized_return'], m['normalized_return_std'])} {m['train_seconds']:8.0f}  {per_dim}")
    if "lapo" in methods:
        lapo = methods["lapo"]
        for name, m in methods.items():
            if name != "lapo" and m["probe_nmse"]:
                print(f"  LAPO / {name} probe nMSE ratio: {lapo['probe_nmse'] / m['probe_nmse']:.2f}")
            if name != "lapo" and m["normalized_return"] is not None and lapo["normalized_return"]:
                print(f"  {name} / LAPO normalised return ratio: "
                      f"{m['normalized_return'] / lapo['normalized_return']:.2f}")


def print_returns(methods: dict[str, dict], references: dict, paired: dict) -> None:
    """The downstream table: every method per budget and every reference, normalised return
    (mean ± std over seeds) at each rho, by the expert and by the ground-truth BC ceiling, and
    the held-out action nMSE; then each paired difference to LAPO with its interval."""
    def fmt(mean, std=None) -> str:
        return "  n/a" if mean is None else (f"{mean:6.3f}" if std is None else f"{mean:6.3f}±{std:5.3f}")

    rows = [(f"{name} @{budget}", row) for name, m in methods.items() for budget, row in m["per_budget"].items()]
    names = {"zero": "zero action", "random": "random action", "ground_truth_bc": "ground-truth BC"}
    for kind, row in references.items():
        rows += ([(f"labels-only BC @{budget}", r) for budget, r in row.items()] if kind == "labels_only_bc"
                 else [(names[kind], row)])
    if not rows:
        return
    rhos = list(rows[0][1]["per_rho"])
    print("\n  normalised return (by the expert; in brackets by the ground-truth BC ceiling), "
          "held-out open-loop action nMSE")
    print(f"  {'policy':<26} " + " ".join(f"{'rho ' + rho:<29}" for rho in rhos) + " action nMSE")
    for label, row in rows:
        cells = [f"{fmt(r['normalized_return'], r['normalized_return_std'])} ({fmt(r['ceiling_normalized_return'])})"
                 for r in (row["per_rho"][rho] for rho in rhos)]
        print(f"  {label:<26} " + " ".join(f"{c:<29}" for c in cells) + f" {fmt(row['action_nmse_heldout'])}")
    for name, pair in paired.items():
        h = pair["headline"]
        print(f"  {name}: paired difference of normalised return at {h['label_budget']} labels, rho {h['rho']}: "
              f"{h['mean']:+.3f}, bootstrap 95 % interval [{h['ci95'][0]:+.3f}, {h['ci95'][1]:+.3f}] "
              f"over {len(h['differences'])} seeds")


def run_comparison(config: CompareConfig) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in config.methods.split(",") if m.strip()]
    for method in methods:
        family(method)  # fail fast on an unknown name
    start = time.perf_counter()
    specs = dataset_specs(config)
    # Collection (which renders, and may start Ray) and every training run each get a fresh
    # process: this one stays free of GL and Ray state, and each run sets its own threads.
    spawn = get_context("spawn")
    with redis_url_or_embedded(config.redis_url) as url, ProcessPoolExecutor(1, mp_context=spawn) as pool:
        data = {name: str(pool.submit(ensure_dataset, spec, config.data_dir, url).result())
                for name, spec in specs.items()}
        expert = (pool.submit(expert_reference, config.env, config.downstream, config.expert_dir).result()
                  if config.data_policy == "expert" else None)
    collect_seconds = time.perf_counter() - start
    if expert is not None:
        print(f"expert return on the evaluation episodes: {expert['return']:.1f}", flush=True)

    expert_per_rho = expert and {rho: r["return"] for rho, r in expert["per_rho"].items()}
    jobs = [Job(m, s, data, str(out / "runs" / m / f"seed{s}"), config, expert_per_rho)
            for m in methods for s in range(config.seeds)] if not config.references_only else []
    kinds = config.reference_kinds() if expert is not None else []
    units = [u for u in reference_units(config.downstream.budgets(), config.seeds) if u.kind in kinds]
    with ProcessPoolExecutor(config.jobs, mp_context=spawn) as pool:  # methods and references: one pool
        method_futures = [pool.submit(run_job, job) for job in jobs]
        reference_futures = {unit: pool.submit(run_reference_job, ReferenceJob(
            unit, data, str(out / "references" / unit.name), config, expert_per_rho)) for unit in units}
        results = [future.result() for future in method_futures]
        reference_records = {unit: future.result() for unit, future in reference_futures.items()}
    per_method = {m: runs for m in methods if (runs := [r for j, r in zip(jobs, results) if j.method == m])}

    summary = {name: aggregate(runs) for name, runs in per_method.items()}
    resolved = {**config_to_dict(config), "env_spec": env_spec(config.env),
                "eval_env_spec": env_spec(specs["eval"].env), "datasets": data,
                "collect_seconds": collect_seconds, "expert_reference": expert,
                "lam": {m: config_to_dict(method_settings(config, m)) for m in methods}}
    results_json = {"methods": summary, "config": resolved}
    if expert is not None:
        references = summarise_references(reference_records, kinds, config.seeds, config.downstream.budgets())
        ceilings = references["ground_truth_bc"]["per_seed"] if "ground_truth_bc" in references else None
        for name, runs in per_method.items():
            add_downstream_summary(summary[name], runs, ceilings)
        paired = paired_differences(per_method) if "lapo" in per_method else {}
        results_json |= {"references": references, "paired": paired}
    (out / "results.json").write_text(json.dumps(results_json, indent=2) + "\n")
    save_resolved_config(config, out, extra={"env_spec": resolved["env_spec"]})

    if per_method:
        plots.plot_losses(per_method, out / "loss_curves.png")
        plots.plot_probe_curves(per_method, out / "probe_curves.png")
        plots.plot_nmse_bars(summary, out / "probe_nmse.png")
    if expert is not None and (per_method or "labels_only_bc" in results_json["references"]):  # an x axis to plot
        plots.plot_return_vs_budget(summary, results_json["references"], out / "return_vs_budget.png")
    pixel_methods = [m for m in per_method if family(m).name == "lam"]  # LAOM predicts features, not frames
    if pixel_methods:
        prediction_grid(pixel_methods, {m: out / "runs" / m / "seed0" for m in pixel_methods},
                        load_dataset(data["eval"]), out / "predictions.png")
    if summary:
        print_table(summary)
    if expert is not None:
        print_returns(summary, results_json["references"], results_json["paired"])
    print(f"wrote {out / 'results.json'} and plots in {out}")
    return results_json


def main(argv: list[str] | None = None) -> int:
    run_comparison(parse_compare_config(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
