"""The small records the replay keeps beside each chunk blob (see `keys`).

`ChunkInfo` ("T:frames_offset:H:W" in `<run>:info`) says where a window's bytes sit in
the blob, so the sampler cuts windows with GETRANGE without decoding the chunk. The
step arrays (msgpack in `<run>:meta`) come with every sample without a second round
trip. Both are read back as untrusted input: anything malformed is a ChunkDecodeError.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

from common.codec import ARRAY_SPECS, MAX_HEADER_BYTES, Chunk, ChunkDecodeError
from common.windows import STEP_ARRAYS  # copied into <run>:meta: a sample needs no second round trip


@dataclass(frozen=True)
class ChunkInfo:
    """Where a chunk's frames sit: the `<run>:info` record "T:frames_offset:H:W"."""

    steps: int
    frames_offset: int
    height: int
    width: int

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3

    @property
    def mask_bytes(self) -> int:
        return self.height * self.width

    def encode(self) -> str:
        return f"{self.steps}:{self.frames_offset}:{self.height}:{self.width}"

    @classmethod
    def parse(cls, raw: bytes) -> "ChunkInfo":
        try:
            info = cls(*(int(v) for v in raw.split(b":")))
        except (TypeError, ValueError) as exc:
            raise ChunkDecodeError(f"replay info record {raw!r:.60} is malformed; expected T:offset:H:W") from exc
        if min(info.steps, info.frames_offset, info.height, info.width) < 1 or info.frames_offset > MAX_HEADER_BYTES:
            raise ChunkDecodeError(f"replay info record {raw!r:.60} is out of range")
        return info


def encode_step_arrays(chunk: Chunk) -> bytes:
    """The `<run>:meta` record of a chunk: each step array as [dtype, shape, bytes]."""
    return msgpack.packb({name: [getattr(chunk, name).dtype.name, list(getattr(chunk, name).shape),
                                 getattr(chunk, name).tobytes()] for name in STEP_ARRAYS})


def decode_step_arrays(chunk_id: bytes, meta: bytes, steps: int) -> dict[str, np.ndarray]:
    """The step arrays of a `<run>:meta` record, checked against the codec's dtypes and `steps`."""
    try:
        raw = msgpack.unpackb(meta, raw=False, max_ext_len=0)
        decoded = {}
        for name in STEP_ARRAYS:
            dtype, shape, payload = raw[name]
            if dtype != ARRAY_SPECS[name][0] or not shape or shape[0] != steps:
                raise ValueError(f"{name} is {dtype} {shape}, expected {ARRAY_SPECS[name][0]} of {steps} steps")
            decoded[name] = np.frombuffer(payload, dtype=np.dtype(dtype)).reshape(shape)
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise ChunkDecodeError(f"replay meta of chunk {int(chunk_id)} is malformed "
                               f"({type(exc).__name__}: {exc})") from exc
    return decoded
