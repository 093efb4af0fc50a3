"""The one way checkpoints are written and read: atomically, durably, and without unpickling.

`write_checkpoint` serialises into `<path>.tmp` in the same folder, flushes and fsyncs it,
renames it over `path` and fsyncs the folder. A process (or machine) that dies at any
moment leaves the previous checkpoint whole, or the new one, never a mix: the rename
cannot reach the disk before the data, and the rename itself is on disk once the call
returns. A partial `<path>.tmp` left by a kill is read by nothing (the next write replaces it).

`read_checkpoint` loads with `weights_only=True`: tensors and plain containers only, so a
file is never a way to run code. A file that is not a checkpoint, or not the kind the
caller expects, is a ConfigError that says what to do. It reads onto the CPU first and
moves the tensors to the device afterwards, so that only the file's own faults (I/O,
format) are reported as "could not be read": a device that fails is the device's error.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from common.cli import ConfigError

# What torch.load raises for a file it cannot read or that is not a checkpoint: I/O errors,
# an empty file (EOFError), a broken zip archive (RuntimeError from its stream reader), and
# pickled content that is not tensors and plain containers (UnpicklingError).
UNREADABLE = (OSError, EOFError, RuntimeError, pickle.UnpicklingError, ValueError)


def write_checkpoint(state: Any, path: str | Path) -> Path:
    """Write `state` (tensors and plain containers) to `path` atomically and durably."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())  # the data reaches the disk before the rename can
    except BaseException:
        tmp.unlink(missing_ok=True)  # an error while serialising leaves no partial file behind
        raise
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)
    return path


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu", *, kind: str = "checkpoint",
                    required: Iterable[str] = (), fix: str = "") -> Any:
    """The state written by `write_checkpoint`, its tensors on `device`; ConfigError (with `fix`)
    if `path` is not a readable `kind`, or, for `required` keys, not a dict holding them all."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as exc:
        raise ConfigError(f"{path} could not be read as a {kind} ({type(exc).__name__}: {str(exc)[:200]})",
                          fix) from None
    missing = set(required) - (state.keys() if isinstance(state, dict) else set())
    if missing:
        raise ConfigError(f"{path} is not a {kind} (it lacks {sorted(missing)})", fix)
    return _to_device(state, torch.device(device))



def _to_device(state: Any, device: torch.device) -> Any:
    """`state` with every tensor in its containers on `device` (dicts and lists changed in
    place, so a state dict keeps its type and its `_metadata`)."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        for key, value in state.items():
            state[key] = _to_device(value, device)
    elif isinstance(state, list):
        state[:] = [_to_device(value, device) for value in state]
    elif isinstance(state, tuple):
        return tuple(_to_device(value, device) for value in state)
    return state
