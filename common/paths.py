"""Folders of this repository, found from any current directory.

Some defaults name folders the repository itself holds or fills: `models/experts` (the
committed experts) and `data/lam` (the collected datasets every comparison reuses). Read
from the current directory, a command started elsewhere would find no expert and suggest
hours of training, or collect every dataset again. Those folders' relative paths are
therefore resolved against the repository root (this checkout, an editable install), on
whichever machine the reading process runs; absolute paths are used as given.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def in_repo(path: str | Path) -> Path:
    """`path` if it is absolute, else the same path under the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path
