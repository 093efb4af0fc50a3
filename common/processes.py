"""A run's processes as Linux shows them in /proc: the tree under a pid, command lines, memory.

The soak benchmark measures every process of a run and the learner tests find and kill
Ray's actor processes; both read /proc the same way, here. A process that exits while it
is read counts as gone, never as an error.
"""

from __future__ import annotations

import os
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (from /proc; gone processes are skipped)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def command_line(pid: int) -> str:
    """The command line of `pid`, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid` in bytes (None once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None
