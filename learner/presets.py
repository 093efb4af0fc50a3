"""The one preset table: what `--preset ci` and `--preset paper` start every command from.

`ci` is small enough for two CPU cores (32 px frames rendered at 64, small networks and
batches, minutes per run); `paper` is the authors' configuration (64 px, their networks,
batches and budgets; docs/design.md §5), for a GPU node. Each row names the fields it sets,
nested as the command's config; a field not named keeps its dataclass default, and any
flag on the command line overrides both. A row never repeats a dataclass default (one
source per default, tests/test_cli.py): the LAM's and LAOM's dataclass defaults are the
`ci` preset, so their `ci` rows are empty. The rows are plain values, so this table imports
nothing and every config module can read it.

  lam              LAPO / MaskLAM networks and optimisation (learner/lam/config.py; the
                   method's switches come from its `METHODS`, chosen by --method)
  laom             LAOM networks, optimisation and label budget (learner/laom/config.py)
  learner.main     the distributed run (learner/main.py), apart from its `lam`
  learner.compare  the offline comparison (learner/compare.py), apart from its families
"""

from __future__ import annotations

from typing import Any

# The actors act with the published latent policy and send every chunk to the segmenter.
_LEARNER_ACTOR = {"policy": "latent", "segment": True, "action_noise": 0.2}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ci": {
        "lam": {},  # learner/lam/config.py's defaults: scale-1 networks, a 32-d latent, batch 32, 4k updates
        # learner/laom/config.py's defaults: at 32 px 3.3 M parameters (mostly the MLP heads; the encoder is
        # the LAM IDM's size), a shorter EMA horizon and a larger lr for the 4k-update budget, labelled
        # batches half the batch.
        "laom": {},
        "learner.main": {
            "total_env_steps": 100_000, "torch_threads": 1, "actor": _LEARNER_ACTOR,
            "env": {"image_size": 32, "action_repeat": 3, "max_episode_steps": 250},
            "segmenter": {"torch_threads": 1},
            "replay": {"run_name": "masklam-learner", "capacity_chunks": 4_000, "capacity_bytes": 2**30},
            "sac": {"batch_size": 64},
            # Every phase within the README's 5 minutes on 2 cores: a small bootstrap (the schedule's and the
            # rate limiter's defaults are this preset's: learner/loop.py, common/replay/rate_limiter.py).
            "downstream": {"bc_updates": 300, "decoder_updates": 300, "label_budgets": "4000", "eval_episodes": 4}},
        "learner.compare": {
            "env": {"image_size": 32, "action_repeat": 3, "max_episode_steps": 250}},
    },
    "paper": {
        "lam": {"model": {"idm_scale": 4, "fdm_scale": 6, "latent_dim": 128, "frame_diff": False},
                "optim": {"batch_size": 512, "lr": 6e-4, "updates": 35_000}},
        # The authors' configuration: encoder scale 6 (96/192/192), 2 residual blocks, 8192-d latent,
        # 1024-wide heads of 3 blocks, batch 512, lr 1e-4, warm-up 3 of 10 epochs, tau 0.001,
        # labelled batches of 128 with coefficient 0.001; label budget 2.5 % of the compare
        # preset's 500k training decisions (their 128 of 5k trajectories).
        "laom": {"model": {"encoder_scale": 6, "latent_dim": 8192, "head_dim": 1024, "head_depth": 3},
                 "method": {"label_budget": 12_500},
                 "optim": {"batch_size": 512, "lr": 1e-4, "updates": 35_000, "warmup": 0.3, "target_tau": 0.001,
                           "label_batch_size": 128}},
        "learner.main": {
            "total_env_steps": 5_000_000, "actor": _LEARNER_ACTOR,
            "env": {"action_repeat": 3},  # the authors' 64 px frames and 1000-decision episodes: the defaults
            "segmenter": {"torch_threads": 1},
            "replay": {"run_name": "masklam-learner"},
            "limiter": {"samples_per_insert": 8.0, "error_buffer": 20_000.0},
            "downstream": {"label_budgets": "128000", "eval_workers": 4},
            "schedule": {"bootstrap_after": 10_000, "bootstrap_steps": 200_000, "probe_every": 2_500,
                         "eval_every": 5_000, "publish_every": 100, "checkpoint_minutes": 10.0}},
        "learner.compare": {
            "env": {"action_repeat": 3, "max_episode_steps": 250},
            "train_steps": 500_000, "heldout_steps": 20_000, "probe_samples": 10_000, "eval_every": 2_500,
            "collect_actors": 8, "device": "auto"},
    },
}


def preset(name: str, row: str) -> dict[str, Any]:
    """The values preset `name` gives the config `row` (a ValueError names the choices)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name][row]
