"""Where every benchmark's figures go: FILE as JSON, and the resolved config beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.config import save_resolved_config


def write_report(out: str | Path, figures: dict, config: Any) -> Path:
    """Write `figures` to OUT (JSON) and the resolved config to OUT-stem.config.json."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    save_resolved_config(config, out.parent, name=out.stem + ".config.json")
    print(f"wrote {out}")
    return out
