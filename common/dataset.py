"""Datasets on disk: chunk blobs in a framed file, plus a JSON description.

    DIR/chunks.bin     records of [8-byte little-endian length][chunk blob]
    DIR/dataset.json   env settings, the collection config, and counts

The blobs are the replay's own (common.codec), so reading validates every chunk the
same way the learner does. A truncated last record (a collection killed mid-write)
raises ChunkDecodeError naming it, after every intact record before it was yielded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from common.codec import MAX_BLOB_BYTES, Chunk, ChunkDecodeError, decode_chunk

_LENGTH = struct.Struct("<Q")
CHUNKS_FILE = "chunks.bin"
DESCRIPTION_FILE = "dataset.json"


class DatasetWriter:
    """Append chunk blobs to DIR/chunks.bin; `close` writes DIR/dataset.json."""

    def __init__(self, directory: str | Path, description: dict):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.description = dict(description)
        self.file = open(self.directory / CHUNKS_FILE, "ab")
        self.chunks = 0
        self.bytes = 0

    def append_blob(self, blob: bytes) -> None:
        self.file.write(_LENGTH.pack(len(blob)))
        self.file.write(blob)
        self.chunks += 1
        self.bytes += len(blob)

    def close(self, **counts) -> Path:
        self.file.close()
        self.description.update(counts, chunks=self.chunks, bytes=self.bytes)
        path = self.directory / DESCRIPTION_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.description, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(path)
        return path


def read_description(directory: str | Path) -> dict:
    path = Path(directory) / DESCRIPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a dataset written by `python -m actors.collect --out`")
    return json.loads(path.read_text())


def iter_chunks(directory: str | Path) -> Iterator[Chunk]:
    """Decode and validate every chunk of a dataset, in the order they were written."""
    path = Path(directory) / CHUNKS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a dataset written by `python -m actors.collect --out`")
    with open(path, "rb") as file:
        index = 0
        while header := file.read(_LENGTH.size):
            if len(header) < _LENGTH.size:
                raise ChunkDecodeError(f"{path}: record {index} has a truncated length prefix")
            (length,) = _LENGTH.unpack(header)
            if length > MAX_BLOB_BYTES:
                raise ChunkDecodeError(f"{path}: record {index} claims {length} bytes; the file is corrupt")
            blob = file.read(length)
            if len(blob) < length:
                raise ChunkDecodeError(f"{path}: record {index} is truncated ({len(blob)} of {length} bytes); "
                                       "the collection was interrupted — the records before it are intact")
            yield decode_chunk(blob)
            index += 1
