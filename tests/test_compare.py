"""`python -m learner.compare` end to end on a tiny budget: a tiny expert is trained, real
actors collect three tiny datasets with it, two methods train for a few updates and go
through the downstream protocol, results.json has the contract keys, the plots exist, and
a second run reuses the datasets and the finished runs."""

from __future__ import annotations

import json

from learner.compare import main, parse_compare_config
from learner.experts import ExpertConfig, train_expert

CONTRACT_KEYS = {"probe_nmse", "probe_nmse_per_dim", "probe_nmse_indist", "background_nmse", "probe_nmse_online",
                 "train_seconds", "final_losses", "per_seed", "probe_nmse_std", "probe_nmse_per_dim_std",
                 "return", "normalized_return", "label_budgets", "normalized_return_per_budget"}
PLOTS = ("loss_curves.png", "probe_curves.png", "probe_nmse.png", "predictions.png", "return_vs_budget.png")


def test_preset_sets_defaults_and_flags_override_them():
    ci = parse_compare_config(["--preset", "ci"])
    assert ci.env.image_size == 32 and ci.env.action_repeat == 3 and ci.lam.optim.batch_size == 32
    paper = parse_compare_config(["--preset", "paper", "--lam.optim.updates", "7", "--env", "Hopper-v5"])
    assert paper.env.image_size == 64 and paper.lam.optim.batch_size == 512 and paper.lam.optim.updates == 7
    assert paper.env.env_id == "Hopper-v5"


def test_compare_end_to_end_on_a_tiny_budget(tmp_path, redis_server):
    out, data, experts = tmp_path / "out", tmp_path / "data", tmp_path / "experts"
    train_expert(ExpertConfig(env_id="HalfCheetah-v5", action_repeat=3, total_steps=60, learning_starts=40,
                              eval_every=60, eval_episodes=1, out=str(experts)))
    argv = ["--env", "HalfCheetah-v5", "--distractor", "correlated", "--methods", "lapo,masklam", "--seeds", "2",
            "--preset", "ci", "--out", str(out), "--data-dir", str(data), "--image-size", "16", "--render-size", "32",
            "--train-steps", "70", "--heldout-steps", "70", "--lam.optim.updates", "3", "--eval-every", "2",
            "--lam.optim.batch-size", "4", "--expert-dir", str(experts), "--downstream.bc-updates", "3",
            "--downstream.decoder-updates", "3", "--downstream.label-budgets", "10,40", "--downstream.eval-episodes", "2",
            "--max-episode-steps", "20", "--redis-url", redis_server.url]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"methods", "config"}
    assert set(results["methods"]) == {"lapo", "masklam"}
    for method in results["methods"].values():
        assert CONTRACT_KEYS <= set(method)
        assert len(method["probe_nmse_per_dim"]) == 6 and len(method["per_seed"]) == 2
        assert 0 < method["probe_nmse"] and 0 < method["background_nmse"]
        assert method["label_budgets"] == [10, 40] and len(method["normalized_return_per_budget"]) == 2
        per_seed = method["per_seed"][0]
        assert per_seed["budgets"][0]["labelled_transitions"] == 10 and len(per_seed["budgets"][1]["returns"]) == 2
        assert per_seed["normalized_return"] == per_seed["return"] / results["config"]["expert_reference"]["return"]
    assert results["config"]["env_spec"]["distractor"]["rho"] == 0.5
    assert results["config"]["eval_env_spec"]["distractor"]["rho"] == 0.0
    for name in PLOTS:
        assert (out / name).stat().st_size > 1000
    checkpoint = out / "runs" / "lapo" / "seed0" / "checkpoint.pt"
    assert checkpoint.is_file() and (out / "runs" / "lapo" / "seed0" / "metrics.json").is_file()

    stamp = checkpoint.stat().st_mtime_ns
    assert main(argv) == 0  # reuses the datasets and the finished runs
    assert checkpoint.stat().st_mtime_ns == stamp
    assert len(list(data.iterdir())) == 3
