"""`python -m learner.compare` end to end on a tiny budget: a tiny expert is trained, real
actors collect three tiny datasets with it, two methods train for a few updates and go
through the downstream protocol beside the reference rows, results.json has the contract
keys, the plots exist, and a second run reuses the datasets, the finished runs and the
finished references."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from actors.evaluate import evaluate
from common.checkpoint import read_checkpoint
from common.latent_policy import PixelPolicy, PixelPolicySpec
from learner.compare import bootstrap_interval, main, parse_compare_config
from learner.experts import ExpertConfig, train_expert
from learner.publish import encode_policy

CONTRACT_KEYS = {"probe_nmse", "probe_nmse_per_dim", "probe_nmse_indist", "background_nmse", "probe_nmse_online",
                 "train_seconds", "final_losses", "per_seed", "probe_nmse_std", "probe_nmse_per_dim_std",
                 "return", "normalized_return", "label_budgets", "normalized_return_per_budget",
                 "ceiling_normalized_return", "action_nmse_heldout", "per_rho", "per_budget"}
EVALUATED_KEYS = {"return", "normalized_return", "ceiling_normalized_return", "action_nmse_heldout", "per_rho"}
RHOS = ["0", "0.5"]  # the headline (decorrelated) and the training rho of `correlated`
PLOTS = ("loss_curves.png", "probe_curves.png", "probe_nmse.png", "predictions.png", "return_vs_budget.png")


def test_preset_sets_defaults_and_flags_override_them():
    ci = parse_compare_config(["--preset", "ci"])
    assert ci.env.image_size == 32 and ci.env.action_repeat == 3 and ci.lam.optim.batch_size == 32
    paper = parse_compare_config(["--preset", "paper", "--lam.optim.updates", "7", "--env", "Hopper-v5"])
    assert paper.env.image_size == 64 and paper.lam.optim.batch_size == 512 and paper.lam.optim.updates == 7
    assert paper.env.env_id == "Hopper-v5"


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.1, 0.05, 3), rng.normal(0.1, 0.05, 30)
    for values in (few, many):
        low, high = bootstrap_interval(list(values))
        assert low < values.mean() < high
    assert np.diff(bootstrap_interval(list(many))) < np.diff(bootstrap_interval(list(few)))
    assert bootstrap_interval([0.2, 0.2, 0.2]) == [pytest.approx(0.2), pytest.approx(0.2)]


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
    assert set(results) == {"methods", "config", "references", "paired"}
    assert set(results["methods"]) == {"lapo", "masklam"}
    expert = results["config"]["expert_reference"]
    assert list(expert["per_rho"]) == RHOS and expert["return"] == expert["per_rho"]["0"]["return"]
    for method in results["methods"].values():
        assert CONTRACT_KEYS <= set(method)
        assert len(method["probe_nmse_per_dim"]) == 6 and len(method["per_seed"]) == 2
        assert 0 < method["probe_nmse"] and 0 < method["background_nmse"]
        assert method["label_budgets"] == [10, 40] and len(method["normalized_return_per_budget"]) == 2
        assert list(method["per_budget"]) == ["10", "40"] and list(method["per_rho"]) == RHOS
        per_seed = method["per_seed"][0]
        budget = per_seed["budgets"][0]
        assert budget["labelled_transitions"] == 10 and budget["labelled_episodes"] >= 1
        assert 0 < budget["action_nmse_heldout"]
        for rho in RHOS:  # every budget at both rhos, each normalised by the expert at that rho
            assert len(budget["per_rho"][rho]["returns"]) == 2
            assert budget["per_rho"][rho]["normalized_return"] == (budget["per_rho"][rho]["return"]
                                                                   / expert["per_rho"][rho]["return"])
        assert per_seed["normalized_return"] == per_seed["return"] / expert["return"]  # the headline: rho = 0
        assert per_seed["return"] == per_seed["budgets"][-1]["per_rho"]["0"]["return"]

    references = results["references"]
    assert set(references) == {"zero", "random", "labels_only_bc", "ground_truth_bc"}
    assert set(references["labels_only_bc"]) == {"10", "40"}
    rows = [references["zero"], references["random"], references["ground_truth_bc"],
            *references["labels_only_bc"].values()]
    for row in rows:
        assert EVALUATED_KEYS <= set(row) and list(row["per_rho"]) == RHOS and len(row["per_seed"]) == 2
        for rho in RHOS:
            record = row["per_seed"][0]["per_rho"][rho]
            assert len(record["returns"]) == 2
            assert record["normalized_return"] == record["return"] / expert["per_rho"][rho]["return"]
    ceiling = references["ground_truth_bc"]
    if ceiling["per_seed"][0]["return"] > 0:
        assert ceiling["ceiling_normalized_return"] == pytest.approx(1.0)
    assert references["labels_only_bc"]["10"]["per_seed"][0]["train_transitions"] == 10
    assert references["random"]["action_nmse_heldout"] is None and references["zero"]["action_nmse_heldout"] > 0

    # the references are evaluated on the methods' episodes: the saved ceiling, evaluated again as the methods are
    config = parse_compare_config(argv)
    state = read_checkpoint(out / "references" / "ground_truth_bc" / "seed0" / "pixel_policy.pt")
    policy = PixelPolicy(PixelPolicySpec(image_size=16, action_dim=6, latent_dim=config.lam.model.latent_dim))
    policy.load_state_dict(state)
    again = evaluate(dataclasses.replace(config.env, rho=0.0), encode_policy(policy, 0),
                     config.downstream.eval_episodes, config.downstream.eval_seed)
    assert again == ceiling["per_seed"][0]["per_rho"]["0"]["returns"]

    pair = results["paired"]["masklam-lapo"]
    headline = pair["headline"]
    assert headline["label_budget"] == 40 and headline["rho"] == "0" and len(headline["differences"]) == 2
    masklam, lapo = (results["methods"][m]["per_seed"] for m in ("masklam", "lapo"))
    assert headline["differences"] == [m["normalized_return"] - b["normalized_return"] for m, b in zip(masklam, lapo)]
    assert headline["ci95"][0] <= headline["mean"] <= headline["ci95"][1]
    assert set(pair["per_budget"]) == {"10", "40"} and list(pair["per_budget"]["10"]) == RHOS
    assert results["config"]["env_spec"]["distractor"]["rho"] == 0.5
    assert results["config"]["eval_env_spec"]["distractor"]["rho"] == 0.0
    for name in PLOTS:
        assert (out / name).stat().st_size > 1000
    checkpoint = out / "runs" / "lapo" / "seed0" / "checkpoint.pt"
    assert checkpoint.is_file() and (out / "runs" / "lapo" / "seed0" / "metrics.json").is_file()

    stamp = checkpoint.stat().st_mtime_ns
    finished = {path: path.stat().st_mtime_ns for path in (out / "references").rglob("reference.json")}
    assert len(finished) == 2 + 2 + 2 * 2  # the floors once, the ceiling per seed, labels-only BC per seed and budget
    assert main(argv) == 0  # reuses the datasets, the finished runs and the finished references
    assert checkpoint.stat().st_mtime_ns == stamp
    assert {path: path.stat().st_mtime_ns for path in finished} == finished
    assert len(list(data.iterdir())) == 3

    budgets = argv.index("--downstream.label-budgets") + 1  # a new budget: only its labels-only units are new
    assert main(argv[:budgets] + ["10,20"] + argv[budgets + 1:]) == 0
    again = {path: path.stat().st_mtime_ns for path in (out / "references").rglob("reference.json")}
    assert {path: again[path] for path in finished} == finished
    assert sorted(str(p.relative_to(out)) for p in set(again) - set(finished)) == [
        f"references/labels_only_bc/budget20/seed{s}/reference.json" for s in (0, 1)]

    assert main(argv + ["--references-only", "--references", "ground_truth_bc"]) == 0  # the ceiling ablation's run
    only = json.loads((out / "results.json").read_text())
    assert only["methods"] == {} and list(only["references"]) == ["ground_truth_bc"]
    assert only["references"]["ground_truth_bc"] == results["references"]["ground_truth_bc"]  # read back, not rerun
