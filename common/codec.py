"""The chunk codec: T consecutive steps of one episode as one validated msgpack blob.

Layout (msgpack, never pickle): a 2 + n element array
    [header: map, arrays: [[name, dtype, shape], ...], bytes_0, ..., bytes_{n-1}]
with every array's raw C-order bytes as a msgpack `bin`. Keeping the arrays as
separate top-level `bin` items lets a reader compute where each array's bytes sit
inside the blob (`ChunkLayout`) and fetch a few frames with GETRANGE instead of the
whole chunk.

A chunk never crosses an episode boundary: it holds `T` decisions and `T + 1` frames
of one episode (`T` is shorter only when the episode ends). Decoding validates
everything and raises `ChunkDecodeError` naming what is wrong. `decode_layout` checks
a blob from its first bytes alone (header and array descriptors), for readers that
fetch only a window of frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgpack
import numpy as np

SCHEMA_VERSION = 1
MAX_BLOB_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
_UNPACK_LIMITS = dict(strict_map_key=True, max_bin_len=MAX_BLOB_BYTES, max_str_len=MAX_HEADER_BYTES,
                      max_array_len=4096, max_map_len=256, max_ext_len=0)

HEADER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int,
    "env_id": str,
    "actor_id": int,
    "policy_version": int,
    "chunk_id": int,
    "episode_id": str,
    "start_step": int,
    "created": float,
    "split": str,
}

# name -> (dtype, shape in terms of T (steps), H, W, A (action dim), S (state dim)).
ARRAY_SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "frames": ("uint8", ("T+1", "H", "W", "3")),
    "masks": ("uint8", ("T+1", "H", "W")),
    "actions": ("float32", ("T", "A")),
    "rewards": ("float32", ("T",)),
    "terminated": ("bool", ("T",)),
    "truncated": ("bool", ("T",)),
    "states": ("float32", ("T+1", "S")),
    "bg_velocity": ("float32", ("T", "2")),
}


class ChunkDecodeError(ValueError):
    """A blob is not a valid chunk. The message names the problem and what was expected."""


class ChunkTooLarge(ChunkDecodeError):
    """A blob is over the configured size limit (refused before it is parsed or stored)."""


def check_blob_size(nbytes: int, max_bytes: int = MAX_BLOB_BYTES) -> None:
    """Refuse a blob over `max_bytes` with a message that says how to make chunks smaller."""
    if nbytes > max_bytes:
        raise ChunkTooLarge(f"chunk blob is {nbytes} bytes, over the {max_bytes}-byte limit; lower the chunk "
                            "length or frame size, or raise --replay.max-chunk-bytes")


@dataclass
class Chunk:
    """One episode segment: `num_steps` decisions and `num_steps + 1` observations."""

    env_id: str
    actor_id: int
    episode_id: str
    start_step: int
    frames: np.ndarray
    masks: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    states: np.ndarray
    bg_velocity: np.ndarray
    policy_version: int = 0
    chunk_id: int = -1
    split: str = "train"
    created: float = field(default_factory=time.time)

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    def header(self) -> dict:
        return {"schema": SCHEMA_VERSION, **{k: getattr(self, k) for k in HEADER_FIELDS if k != "schema"}}

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAY_SPECS}


@dataclass(frozen=True)
class ChunkLayout:
    """Where each array's bytes start inside an encoded blob, plus the chunk's sizes."""

    num_steps: int
    frame_shape: tuple[int, int, int]
    offsets: dict[str, int]


def _bin_prefix_len(nbytes: int) -> int:
    """Bytes msgpack puts before a `bin` payload of this size (bin8/bin16/bin32)."""
    return 2 if nbytes < 2**8 else 3 if nbytes < 2**16 else 5


def encode_chunk(chunk: Chunk) -> tuple[bytes, ChunkLayout]:
    """Validate and encode a chunk; returns the blob and where its arrays sit in it."""
    arrays = {name: np.ascontiguousarray(arr) for name, arr in chunk.arrays().items()}
    _validate_arrays(arrays)
    header = chunk.header()
    _validate_header(header)
    descriptors = [[name, arr.dtype.name, list(arr.shape)] for name, arr in arrays.items()]
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(2 + len(arrays)), packer.pack(header), packer.pack(descriptors)]
    offsets, position = {}, sum(len(p) for p in parts)
    for name, arr in arrays.items():
        payload = arr.tobytes()
        offsets[name] = position + _bin_prefix_len(len(payload))
        parts.append(packer.pack(payload))
        position += len(parts[-1])
    blob = b"".join(parts)
    frames = arrays["frames"]
    layout = ChunkLayout(chunk.num_steps, tuple(frames.shape[1:]), offsets)
    return blob, layout


def decode_chunk(blob: bytes, max_bytes: int = MAX_BLOB_BYTES) -> Chunk:
    """Decode and fully validate a blob; raises ChunkDecodeError on anything unexpected."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ChunkDecodeError(f"chunk blob must be bytes, got {type(blob).__name__}")
    check_blob_size(len(blob), max_bytes)
    try:
        items = msgpack.unpackb(blob, raw=False, **_UNPACK_LIMITS)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ChunkDecodeError(f"chunk blob is not valid msgpack ({type(exc).__name__}: {exc}); "
                               "it is truncated or was not written by this codec") from exc
    if not isinstance(items, list) or len(items) < 2 or not isinstance(items[0], dict):
        raise ChunkDecodeError("chunk blob is msgpack but not a chunk: expected [header, descriptors, arrays...]")
    header, descriptors, payloads = items[0], items[1], items[2:]
    _validate_header(header)
    if not isinstance(descriptors, list) or len(descriptors) != len(payloads):
        raise ChunkDecodeError("chunk descriptors do not match the number of array payloads")
    arrays = {}
    for descriptor, payload in zip(descriptors, payloads):
        name, shape, nbytes = _descriptor(descriptor)
        if not isinstance(payload, bytes):
            raise ChunkDecodeError(f"array {name!r} payload is {type(payload).__name__}, expected bytes")
        if len(payload) != nbytes:
            raise ChunkDecodeError(f"array {name!r} has {len(payload)} bytes, shape {shape} needs {nbytes}; "
                                   "the blob is truncated or corrupt")
        arrays[name] = np.frombuffer(payload, dtype=ARRAY_SPECS[name][0]).reshape(shape)
    if len(arrays) != len(descriptors):
        raise ChunkDecodeError("chunk descriptors name an array twice; the blob is corrupt")
    _validate_arrays(arrays)
    return Chunk(**{k: v for k, v in header.items() if k != "schema"}, **arrays)


def decode_layout(prefix: bytes, blob_length: int, max_bytes: int = MAX_BLOB_BYTES) -> tuple[dict, ChunkLayout]:
    """Validate a stored blob from its first bytes and say where its arrays sit.

    For readers that fetch only a window of frames (GETRANGE) and so never see the whole
    blob: `prefix` must reach past the array descriptors (the first `MAX_HEADER_BYTES`
    always do), `blob_length` is the blob's full length. Header, descriptors, shapes and
    the total length are checked; array contents are not (masks and actions are checked
    by `decode_chunk` and by the writer). Returns the header and the layout.
    """
    check_blob_size(blob_length, max_bytes)
    unpacker = msgpack.Unpacker(raw=False, **_UNPACK_LIMITS)
    unpacker.feed(prefix)
    try:
        count = unpacker.read_array_header()
        header, descriptors = unpacker.unpack(), unpacker.unpack()
    except msgpack.OutOfData:
        raise ChunkDecodeError("chunk blob ends inside its header; it is truncated or not a chunk") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ChunkDecodeError(f"chunk blob does not start with a chunk header ({type(exc).__name__}: {exc}); "
                               "it was not written by this codec") from exc
    if not isinstance(header, dict) or not isinstance(descriptors, list) or count != 2 + len(descriptors):
        raise ChunkDecodeError("chunk blob is msgpack but not a chunk: expected [header, descriptors, arrays...]")
    _validate_header(header)
    offsets, shapes, position = {}, {}, unpacker.tell()
    for descriptor in descriptors:
        name, shape, nbytes = _descriptor(descriptor)
        offsets[name], shapes[name] = position + _bin_prefix_len(nbytes), tuple(shape)
        position = offsets[name] + nbytes
    if len(shapes) != len(descriptors):
        raise ChunkDecodeError("chunk descriptors name an array twice; the blob is corrupt")
    _validate_shapes({name: (np.dtype(ARRAY_SPECS[name][0]), shape) for name, shape in shapes.items()})
    if position != blob_length:
        raise ChunkDecodeError(f"chunk blob is {blob_length} bytes, its descriptors need {position}; "
                               "it is truncated or corrupt")
    return header, ChunkLayout(shapes["actions"][0], shapes["frames"][1:], offsets)


def _descriptor(descriptor: object) -> tuple[str, list[int], int]:
    """Name, shape and byte size of one array descriptor [name, dtype, shape]."""
    if (not isinstance(descriptor, list) or len(descriptor) != 3 or not isinstance(descriptor[0], str)
            or not isinstance(descriptor[1], str) or not isinstance(descriptor[2], list)):
        raise ChunkDecodeError(f"array descriptor {descriptor!r:.80} is not [name, dtype, shape]")
    name, dtype_name, shape = descriptor
    if name not in ARRAY_SPECS:
        raise ChunkDecodeError(f"unknown array {name!r:.40} in chunk; expected {sorted(ARRAY_SPECS)}")
    expected_dtype = ARRAY_SPECS[name][0]
    if dtype_name != expected_dtype:
        raise ChunkDecodeError(f"array {name!r} has dtype {dtype_name!r:.20}, expected {expected_dtype!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape):
        raise ChunkDecodeError(f"array {name!r} has an invalid shape {shape!r:.80}")
    return name, shape, int(np.prod(shape, dtype=np.int64)) * np.dtype(expected_dtype).itemsize


def _validate_header(header: dict) -> None:
    if header.get("schema") != SCHEMA_VERSION:
        raise ChunkDecodeError(f"chunk schema version {header.get('schema')!r:.20} is not {SCHEMA_VERSION}; "
                               "the writer runs a different MaskLAM version — use one version per run")
    missing = [k for k in HEADER_FIELDS if k not in header]
    if missing:
        raise ChunkDecodeError(f"chunk header lacks {missing}")
    extra = [k for k in header if k not in HEADER_FIELDS]
    if extra:
        raise ChunkDecodeError(f"chunk header has unknown fields {extra!r:.80}")
    for key, kind in HEADER_FIELDS.items():
        value = header[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ChunkDecodeError(f"chunk header field {key!r} is {type(value).__name__}, expected {kind.__name__}")
    if header["split"] not in ("train", "eval"):
        raise ChunkDecodeError(f"chunk split {header['split']!r:.20} is not 'train' or 'eval'")


def _validate_shapes(arrays: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
    """Every array present, of its dtype, with shapes that agree on T, H, W, A and S."""
    missing = sorted(set(ARRAY_SPECS) - set(arrays))
    if missing:
        raise ChunkDecodeError(f"chunk lacks arrays {missing}")
    frames, actions, states = arrays["frames"][1], arrays["actions"][1], arrays["states"][1]
    if len(frames) != 4:
        raise ChunkDecodeError(f"frames must be (T+1, H, W, 3), got shape {frames}")
    sizes = {"T": frames[0] - 1, "H": frames[1], "W": frames[2],
             "A": actions[-1] if len(actions) == 2 else -1, "S": states[-1] if len(states) == 2 else -1}
    if sizes["T"] < 1:
        raise ChunkDecodeError("a chunk needs at least one step (two frames)")
    for name, (dtype, dims) in ARRAY_SPECS.items():
        actual_dtype, shape = arrays[name]
        expected = tuple(sizes["T"] + 1 if d == "T+1" else sizes[d] if d in sizes else int(d) for d in dims)
        if actual_dtype != np.dtype(dtype):
            raise ChunkDecodeError(f"array {name!r} has dtype {actual_dtype}, expected {dtype}")
        if tuple(shape) != expected:
            raise ChunkDecodeError(f"array {name!r} has shape {tuple(shape)}, expected {expected} "
                                   f"(T={sizes['T']} steps, frame {sizes['H']}x{sizes['W']})")


def _validate_arrays(arrays: dict[str, np.ndarray]) -> None:
    _validate_shapes({name: (arr.dtype, arr.shape) for name, arr in arrays.items()})
    if arrays["masks"].size and arrays["masks"].max() > 1:
        raise ChunkDecodeError("masks must be binary (0 = background, 1 = agent)")
    if not np.isfinite(arrays["actions"]).all():
        raise ChunkDecodeError("actions contain NaN or infinity")
    for name in ("terminated", "truncated"):  # numpy takes any byte as a bool; only 0 and 1 are ones
        if arrays[name].view(np.uint8).max(initial=0) > 1:
            raise ChunkDecodeError(f"{name} holds bytes other than 0 and 1; the blob is corrupt")
