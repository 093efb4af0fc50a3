"""The committed state-based experts, as actors and data collection use them (without torch).

An expert's folder (`models/experts/<env>/`, written by `python -m learner.experts`) holds
`expert.json` (its record: dynamics, sizes, measured return), `actor.pt` (the torch weights
the learner trains) and `actor.onnx`: the actor's deterministic action tanh(mean(s)) as an
ONNX graph (`learner.publish`), which actors run with onnxruntime after the same checks as
published weights (`common.policy_graph`). A relative experts folder is one of the
repository's (`common.paths`), so the committed experts are found from any directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.cli import ConfigError
from common.envs.pixels import task_view
from common.paths import in_repo
from common.policy_graph import (GraphSignature, PolicyGraph, PolicyGraphError, TensorSpec, load_policy_graph,
                                 mlp_weights)

GRAPH_FILE = "actor.onnx"
EXPERTS_DIR = "models/experts"  # the committed experts, relative to the repository root


class ExpertNotFoundError(ConfigError):
    """No usable expert for a task: none trained, one trained for other dynamics, or one whose
    graph is missing or refused; says how to get one."""


def expert_folder(env_id: str, directory: str | Path = EXPERTS_DIR) -> Path:
    """`directory`/`env_id`, a relative `directory` taken from the repository root."""
    return in_repo(directory) / env_id


def expert_record(env_id: str, action_repeat: int, directory: str | Path = EXPERTS_DIR) -> dict:
    """The committed expert's expert.json, checked to act at the env's control rate
    (`action_repeat` 0 = the task default): a policy trained at one rate is no expert at another."""
    folder = expert_folder(env_id, directory)
    action_repeat = action_repeat or task_view(env_id).action_repeat
    try:
        record = json.loads((folder / "expert.json").read_text())
    except FileNotFoundError as exc:
        raise ExpertNotFoundError(
            f"no expert for {env_id} in {folder}", "pass the folder that holds <env>/expert.json as the experts "
            f"folder, or train one (hours on a CPU): `python -m learner.experts --env {env_id} --action-repeat "
            f"{action_repeat}` writes runs/experts/{env_id}/") from exc
    if record["action_repeat"] != action_repeat:
        raise ExpertNotFoundError(f"the expert in {folder} acts every {record['action_repeat']} gym steps, the env "
                                  f"every {action_repeat}", f"use --action-repeat {record['action_repeat']} or train "
                                  f"an expert with --action-repeat {action_repeat}")
    return record


def expert_signature(record: dict) -> GraphSignature:
    """float32 states (B, S) -> float32 deterministic actions (B, A), B free; the weights of
    `common.nets.TanhGaussianActor` (an MLP to mean and log-std)."""
    obs_dim, action_dim = record["obs_dim"], record["action_dim"]
    return GraphSignature(inputs=(TensorSpec("states", "float32", (None, obs_dim)),),
                          outputs=(TensorSpec("actions", "float32", (None, action_dim)),),
                          weights=mlp_weights(obs_dim, 2 * action_dim, record["hidden"]))


def load_expert_graph(env_id: str, action_repeat: int, directory: str | Path = EXPERTS_DIR
                      ) -> tuple[PolicyGraph, dict]:
    """The committed expert for `env_id` as a checked onnxruntime graph, and its record."""
    record = expert_record(env_id, action_repeat, directory)
    path = expert_folder(env_id, directory) / GRAPH_FILE
    export = f"export it with `python -m learner.export_experts {path.parent}`"
    try:
        return load_policy_graph(path.read_bytes(), expert_signature(record)), record
    except FileNotFoundError as exc:
        raise ExpertNotFoundError(f"the expert in {path.parent} has no {GRAPH_FILE}", export) from exc
    except PolicyGraphError as exc:
        raise ExpertNotFoundError(f"{path} is refused ({type(exc).__name__}: {exc})", export) from exc
