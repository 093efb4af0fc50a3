"""The SAC expert trainer: it learns, it never replaces a committed expert unless asked, and
an interrupted run resumed from its checkpoint continues exactly as if it had not stopped."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cli import ConfigError
from common.dataset import iter_chunks
from common.experts import ExpertNotFoundError, expert_record, load_expert_graph
from learner.compare import dataset_specs, parse_compare_config
from learner.data import ensure_dataset
from learner.experts import (CHECKPOINT, ExpertConfig, evaluate, make_expert_env, prepare_output, train_expert,
                             updates_after)
from learner.rl.sac import SACAgent, SACConfig

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "models" / "experts"
TINY_SAC = SACConfig(hidden=32, batch_size=32, lr=1e-3)


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_experts(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "learner.experts", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})


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


def test_the_readme_command_with_default_output_leaves_the_committed_experts_byte_identical(tmp_path):
    """The README's command (HalfCheetah at action repeat 3, default --out), for a few decisions,
    from the repository root's layout: it writes runs/experts/, never models/experts/; run again
    it refuses (one line, before training) to replace its own expert unless --overwrite."""
    before = tree_digest(COMMITTED)
    assert "HalfCheetah-v5/expert.json" in before
    args = ["--env", "HalfCheetah-v5", "--action-repeat", "3", "--total-steps", "30", "--learning-starts", "20",
            "--eval-every", "30", "--eval-episodes", "1"]
    first = run_experts(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert tree_digest(COMMITTED) == before
    written = tmp_path / "runs" / "experts" / "HalfCheetah-v5"
    assert {"actor.pt", "actor.onnx", "config.json", "expert.json"} <= {p.name for p in written.iterdir()}

    ours = tree_digest(written)
    again = run_experts(args, cwd=tmp_path)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1, again.stderr[-2000:]
    assert "already holds an expert" in lines[0] and "--overwrite" in lines[0]
    assert "Traceback" not in again.stderr + again.stdout
    assert tree_digest(written) == ours  # refused before anything trained or wrote

    replaced = run_experts([*args, "--overwrite", "--seed", "1"], cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert json.loads((written / "config.json").read_text())["seed"] == 1
    assert tree_digest(COMMITTED) == before


def test_committed_experts_are_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expert_record("HalfCheetah-v5", 3)["env_id"] == "HalfCheetah-v5"
    with pytest.raises(ExpertNotFoundError, match="hours"):
        expert_record("HalfCheetah-v5", 3, tmp_path / "nothing-here")


def test_updates_per_decision_spreads_updates_evenly_after_learning_starts():
    config = ExpertConfig(learning_starts=10, updates_per_decision=0.5)
    per_step = [updates_after(s, config) - updates_after(s - 1, config) for s in range(1, 31)]
    assert sum(per_step[:10]) == 0 and sum(per_step) == 10 and max(per_step) == 1
    config.updates_per_decision = 3.0
    assert [updates_after(s, config) - updates_after(s - 1, config) for s in (10, 11, 12)] == [0, 3, 3]
    config.updates_per_decision = 0.1
    assert updates_after(40, config) == 3  # 30 x 0.1 is not floored to 2


def test_a_killed_run_resumed_from_its_checkpoint_continues_exactly(tmp_path):
    """A real process trains, is killed (SIGKILL) once it has written a checkpoint, and the run is
    resumed: evaluations, networks, optimisers and the replay buffer equal an uninterrupted run's."""
    common = ["--env", "InvertedPendulum-v5", "--learning-starts", "100", "--eval-every", "200",
              "--eval-episodes", "2", "--updates-per-decision", "0.5", "--sac.hidden", "32", "--sac.batch-size", "32",
              "--sac.lr", "0.001"]
    killed_out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "learner.experts", *common, "--total-steps", "100000",
                                "--out", str(killed_out)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    checkpoint = killed_out / "InvertedPendulum-v5" / CHECKPOINT
    deadline = time.monotonic() + 300  # a bound on a hung process, not a speed requirement
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and checkpoint.exists(), process.stderr.read()[-2000:]
    stopped_at = torch.load(checkpoint, weights_only=True)["counters"]["step"]
    assert 200 <= stopped_at < 1500

    config = dict(env_id="InvertedPendulum-v5", learning_starts=100, eval_every=200, eval_episodes=2,
                  updates_per_decision=0.5, total_steps=1500, sac=TINY_SAC)
    resumed = train_expert(ExpertConfig(**config, out=str(killed_out), resume=True))
    straight = train_expert(ExpertConfig(**config, out=str(tmp_path / "straight")))
    assert [h["step"] for h in resumed["history"]] == list(range(200, 1501, 200)) + [1500]
    assert [h["mean_return"] for h in resumed["history"]] == [h["mean_return"] for h in straight["history"]]
    assert resumed["mean_return"] == straight["mean_return"]
    a = torch.load(checkpoint, weights_only=True)
    b = torch.load(tmp_path / "straight" / "InvertedPendulum-v5" / CHECKPOINT, weights_only=True)
    assert a["counters"]["step"] == b["counters"]["step"] > stopped_at
    for part in ("agent", "buffer"):
        for name, value in b[part].items():
            assert torch.equal(a[part][name], value) if torch.is_tensor(value) else a[part][name] == value, name
    assert str(a["optimizers"]) == str(b["optimizers"])


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path):
    config = ExpertConfig(env_id="InvertedPendulum-v5", total_steps=60, learning_starts=20, eval_every=30,
                          eval_episodes=1, out=str(tmp_path), sac=TINY_SAC)
    with pytest.raises(ConfigError, match="there is no"):
        prepare_output(replace(config, resume=True))
    train_expert(config)
    assert (tmp_path / "InvertedPendulum-v5" / CHECKPOINT).exists()
    with pytest.raises(ConfigError, match="--sac.lr 0.001, not 0.0003"):
        prepare_output(replace(config, resume=True, sac=SACConfig(hidden=32, batch_size=32)))
    with pytest.raises(ConfigError, match="--total-steps 10 is below"):
        prepare_output(replace(config, resume=True, total_steps=10))
    assert prepare_output(replace(config, resume=True, total_steps=90)) is not None


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5"])
def test_expert_datasets_of_the_thin_bodied_tasks_collect_through_compares_specs(env_id, tmp_path, redis_server):
    """learner.compare's dataset path (its specs, ensure_dataset, a rollout worker acting with
    the committed expert's graph) on a few decisions: each action is the expert's plus the
    spec's Gaussian noise, not a random action."""
    config = parse_compare_config(["--preset", "ci", "--env", env_id, "--train-steps", "64", "--heldout-steps", "16",
                                   "--downstream.label-budgets", "16", "--data-dir", str(tmp_path),
                                   "--redis-url", redis_server.url])
    spec = dataset_specs(config)["train"]
    assert spec.policy == "expert" and spec.action_noise == pytest.approx(0.1)
    directory = ensure_dataset(spec, config.data_dir, redis_server.url)
    chunks = list(iter_chunks(directory))
    states = np.concatenate([chunk.states[:-1] for chunk in chunks])
    actions = np.concatenate([chunk.actions for chunk in chunks])
    assert len(actions) >= 64
    graph, _ = load_expert_graph(env_id, config.env.action_repeat)
    residual = actions - graph.run(states=states)["actions"]
    assert 0.03 < residual.std() < 0.12 and np.abs(residual).max() < 0.6, residual.std()
