"""`python -m learner.export_experts DIR [DIR ...]`: write DIR/actor.onnx for trained experts.

Actors run an expert as the ONNX graph of its deterministic action (`common.experts`);
`learner.experts` writes that graph whenever it saves an expert. This command writes it
for an expert folder that has only `expert.json` and `actor.pt` (copied from a training
run, or trained before graphs existed), and checks it as actors will.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from common.cli import ConfigError, run_main
from common.config import parse
from learner.experts import load_expert
from learner.publish import write_expert_graph


@dataclass
class ExportConfig:
    """Write actor.onnx (the graph actors run) for trained expert folders."""

    folders: tyro.conf.Positional[tuple[str, ...]]  # expert folders, e.g. models/experts/Walker2d-v5


def export_expert(folder: str | Path) -> Path:
    """Write FOLDER/actor.onnx from FOLDER/actor.pt and FOLDER/expert.json; returns its path."""
    folder = Path(folder).absolute()  # as typed, from the current directory (not the repository's)
    try:
        record = json.loads((folder / "expert.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{folder} holds no expert.json", "give the folder of a trained expert, "
                          "e.g. models/experts/HalfCheetah-v5") from None
    actor, record = load_expert(record["env_id"], record["action_repeat"], folder.parent)
    return write_expert_graph(actor, record, folder)


def main(argv: list[str] | None = None) -> int:
    folders = parse(ExportConfig, argv, "python -m learner.export_experts").folders
    if not folders:
        raise ConfigError("no expert folder given", "e.g. python -m learner.export_experts models/experts/Hopper-v5")
    for folder in folders:
        print(f"wrote {export_expert(folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
