"""The checkpoint writer is atomic and durable, and the reader unpickles nothing.

(tests/test_faults.py also SIGKILLs a process in the middle of its writes.)"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import pytest
import torch

from common.checkpoint import read_checkpoint, write_checkpoint
from common.cli import ConfigError


@dataclass
class NotATensor:
    value: int


class Unserialisable:
    """Fails when torch.save reaches it, after what comes before it was serialised."""

    def __reduce__(self):
        raise RuntimeError("cannot serialise this")


def test_a_checkpoint_reads_back_as_written(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7, "history": [{"loss": 0.5}]}
    path = write_checkpoint(state, tmp_path / "checkpoint.pt")
    read = read_checkpoint(path, required={"model", "step"})
    assert torch.equal(read["model"]["w"], state["model"]["w"]) and read["step"] == 7
    assert read["history"] == state["history"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    with pytest.raises(RuntimeError, match="cannot serialise this"):
        write_checkpoint({"step": 2, "w": torch.zeros(1000), "bad": Unserialisable()}, path)
    read = read_checkpoint(path)
    assert read["step"] == 1 and torch.equal(read["w"], torch.ones(1000))
    assert not path.with_name("checkpoint.pt.tmp").exists()


def test_the_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    """os.fsync runs (for real) on the written file and then on its folder."""
    synced: list[os.stat_result] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = write_checkpoint({"w": torch.ones(3)}, tmp_path / "checkpoint.pt")
    file, folder = os.stat(path), os.stat(tmp_path)
    assert [(s.st_ino, stat.S_ISDIR(s.st_mode)) for s in synced] == [(file.st_ino, False), (folder.st_ino, True)]
    assert synced[0].st_size == file.st_size  # the file was whole when it was synced


def test_the_reader_refuses_garbage_pickles_and_other_kinds_with_a_fix(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ConfigError, match="could not be read as a run checkpoint") as error:
        read_checkpoint(garbage, kind="run checkpoint", fix="start again")
    assert str(garbage) in str(error.value) and error.value.fix == "start again"

    pickled = tmp_path / "pickled.pt"
    torch.save({"object": NotATensor(3)}, pickled)  # loadable only by unpickling an arbitrary class
    with pytest.raises(ConfigError, match="could not be read"):
        read_checkpoint(pickled)

    other = write_checkpoint({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"is not a run checkpoint \(it lacks \['counters'\]\)"):
        read_checkpoint(other, kind="run checkpoint", required={"model", "counters"})


def test_only_the_files_own_faults_are_could_not_be_read_a_device_error_is_the_devices(tmp_path):
    """An empty file, a truncated archive, a folder or a missing file could not be read; a
    whole checkpoint read onto a device that fails raises that device's error, never
    "could not be read" (which would send the user after a file that is fine)."""
    path = write_checkpoint({"model": {"w": torch.ones(4)}}, tmp_path / "checkpoint.pt")
    whole = path.read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(whole[:len(whole) // 2])
    for bad in ("empty.pt", "truncated.pt", "missing.pt", ""):
        with pytest.raises(ConfigError, match="could not be read"):
            read_checkpoint(tmp_path / bad)
    try:  # a device this machine cannot map to, whether or not it has a GPU
        torch.empty(1, device="cuda:99")
    except Exception as exc:  # noqa: BLE001 (whatever torch raises for it, read_checkpoint must raise too)
        device_error = type(exc)
    with pytest.raises(device_error) as error:
        read_checkpoint(path, "cuda:99")
    assert not isinstance(error.value, ConfigError)
    assert read_checkpoint(path, "cpu")["model"]["w"].device.type == "cpu"
