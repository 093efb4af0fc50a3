"""Plot learner.main runs' evaluation returns against env steps (docs/online_return.png).

    python scripts/online_return_plot.py --runs "RL=runs/online/rl-seed0" "latent BC only=runs/online/bc-seed0"

Each run folder holds the summary.json learner.main wrote; its `evals` are plotted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import ConfigError, run_main
from common.config import parse
from learner.plots import plot_online_returns


@dataclass
class OnlineReturnPlotConfig:
    """learner.main runs' evaluation returns against env steps, as a PNG."""

    runs: tuple[str, ...] = field(default=(), metadata={"help": "LABEL=RUN_FOLDER, one per run"})
    out: Path = field(default=Path("docs/online_return.png"), metadata={"help": "PNG to write"})


def main(argv: list[str] | None = None) -> int:
    config = parse(OnlineReturnPlotConfig, argv, "scripts/online_return_plot.py")
    runs = {}
    for item in config.runs:
        label, _, folder = item.partition("=")
        summary = Path(folder) / "summary.json"
        if not summary.is_file():
            raise ConfigError(f"no {summary}", "pass LABEL=FOLDER of a finished learner.main run")
        runs[label] = json.loads(summary.read_text())["evals"]
    plot_online_returns(runs, config.out)
    print(f"wrote {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
