"""The chunk codec round-trips chunks and refuses anything else with ChunkDecodeError."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.codec import MAX_BLOB_BYTES, SCHEMA_VERSION, ChunkDecodeError, decode_chunk, encode_chunk
from conftest import synthetic_chunk


def _items(blob: bytes) -> list:
    return msgpack.unpackb(blob, raw=False)


def test_round_trip_preserves_every_field_and_array():
    chunk = synthetic_chunk(num_steps=5, size=6, action_dim=2, first_step=17, episode_id="train-a3-e0-4", actor_id=3)
    chunk.policy_version, chunk.chunk_id = 9, 41
    decoded = decode_chunk(encode_chunk(chunk)[0])
    assert decoded.header() == chunk.header()
    for name, array in chunk.arrays().items():
        np.testing.assert_array_equal(getattr(decoded, name), array)
        assert getattr(decoded, name).dtype == array.dtype


def test_layout_offsets_point_at_each_arrays_bytes():
    chunk = synthetic_chunk(num_steps=4, size=64)
    blob, layout = encode_chunk(chunk)
    for name, array in chunk.arrays().items():
        start = layout.offsets[name]
        assert blob[start:start + array.nbytes] == array.tobytes(), name
    assert layout.num_steps == 4 and layout.frame_shape == (64, 64, 3)


@pytest.mark.parametrize("cut", [1, 10, 100, 1000])
def test_truncated_blob_is_refused(cut):
    blob, _ = encode_chunk(synthetic_chunk())
    with pytest.raises(ChunkDecodeError, match="truncated|not valid msgpack"):
        decode_chunk(blob[:-cut])


def test_wrong_schema_version_is_named():
    items = _items(encode_chunk(synthetic_chunk())[0])
    items[0]["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(ChunkDecodeError, match="schema version"):
        decode_chunk(msgpack.packb(items, use_bin_type=True))


def test_wrong_dtype_and_shape_are_named():
    items = _items(encode_chunk(synthetic_chunk(num_steps=4, size=8))[0])
    bad_dtype = [list(d) for d in items[1]]
    bad_dtype[2][1] = "float64"  # actions
    with pytest.raises(ChunkDecodeError, match="'actions' has dtype"):
        decode_chunk(msgpack.packb([items[0], bad_dtype, *items[2:]], use_bin_type=True))
    bad_shape = [list(d) for d in items[1]]
    bad_shape[0][2] = [5, 8, 4, 6]  # frames: right bytes, wrong shape
    with pytest.raises(ChunkDecodeError, match="shape"):
        decode_chunk(msgpack.packb([items[0], bad_shape, *items[2:]], use_bin_type=True))


def test_missing_header_field_and_missing_array_are_named():
    items = _items(encode_chunk(synthetic_chunk())[0])
    header = dict(items[0])
    del header["episode_id"]
    with pytest.raises(ChunkDecodeError, match="lacks.*episode_id"):
        decode_chunk(msgpack.packb([header, *items[1:]], use_bin_type=True))
    with pytest.raises(ChunkDecodeError, match="lacks arrays.*bg_velocity"):
        decode_chunk(msgpack.packb([items[0], items[1][:-1], *items[2:-1]], use_bin_type=True))


def test_non_binary_masks_and_nan_actions_are_refused():
    chunk = synthetic_chunk()
    chunk.masks = chunk.masks * 3
    with pytest.raises(ChunkDecodeError, match="binary"):
        encode_chunk(chunk)
    chunk = synthetic_chunk()
    chunk.actions[0, 0] = np.nan
    with pytest.raises(ChunkDecodeError, match="NaN"):
        encode_chunk(chunk)


@pytest.mark.faults
def test_pickle_and_foreign_data_are_refused_not_executed():
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    for foreign in (pickle.dumps(Boom()), b"", b"\x00" * 64, msgpack.packb({"a": 1}), msgpack.packb([1, 2, 3]),
                    "text", 12):
        with pytest.raises(ChunkDecodeError):
            decode_chunk(foreign)


def test_oversized_blob_is_refused_before_parsing():
    class Huge(bytes):
        def __len__(self):
            return MAX_BLOB_BYTES + 1

    with pytest.raises(ChunkDecodeError, match="over the"):
        decode_chunk(Huge(b"\x90"))


@pytest.mark.faults
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_corruptions_raise_only_chunk_decode_error(data):
    """Flip, cut, splice or replace bytes anywhere: decoding either succeeds with a valid
    chunk or raises ChunkDecodeError — never any other exception."""
    blob = bytearray(encode_chunk(synthetic_chunk(num_steps=3, size=4))[0])
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "random"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif kind == "cut":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "insert":
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=32))
    else:
        blob = bytearray(data.draw(st.binary(max_size=2048)))
    try:
        chunk = decode_chunk(bytes(blob))
    except ChunkDecodeError:
        return
    assert chunk.frames.shape[0] == chunk.num_steps + 1
    assert chunk.masks.max(initial=0) <= 1
