"""The design's import rules between roles hold (lint-imports), and none of them was dropped.

The roles meet only through common/ (replay, codec, weights): an import across that line,
even one hidden inside a function, is a boundary a change can no longer rely on.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, type) of every contract in pyproject.toml's [tool.importlinter]. A contract is
# removed or renamed only together with this list, so that doing it is a visible decision.
EXPECTED_CONTRACTS = {
    ("common imports no role", "forbidden"),
    ("actors and segmenter import only common", "forbidden"),
    ("actors and segmenter never import each other", "independence"),
    ("only benchmarks import benchmarks", "forbidden"),
}


def _importlinter_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_contract_is_removed_or_weakened():
    config = _importlinter_config()
    contracts = config["contracts"]
    assert {(contract["name"], contract["type"]) for contract in contracts} == EXPECTED_CONTRACTS
    assert set(config["root_packages"]) == {"common", "actors", "segmenter", "learner", "benchmarks", "tests"}
    for contract in contracts:  # an ignored import or an allowed indirect one is a hole in the rule
        assert not {"ignore_imports", "allow_indirect_imports"} & contract.keys(), contract["name"]
