"""Policy weights as a validated msgpack blob: how the learner publishes them to the actors.

Layout (never pickle): [header: map, names: [[name, shape], ...], float32 bytes...].
The header carries the weights version and the `PixelPolicySpec`, so a reader builds
the network from the blob alone; `load_pixel_policy` then checks every tensor's name
and shape against that network, so a foreign or corrupt blob is refused, not half-loaded.
"""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import torch

from common.latent_policy import PixelPolicy, PixelPolicySpec

SCHEMA_VERSION = 1
MAX_WEIGHTS_BYTES = 512 * 1024 * 1024
KIND = "pixel-policy"


class WeightsDecodeError(ValueError):
    """A blob is not a valid set of policy weights; the message says what is wrong."""


def encode_policy(policy: PixelPolicy, version: int) -> bytes:
    """Pack a pixel policy's weights with its spec and a version number."""
    state = {name: tensor.detach().cpu().float().contiguous().numpy() for name, tensor in policy.state_dict().items()}
    header = {"schema": SCHEMA_VERSION, "kind": KIND, "version": int(version),
              "spec": dataclasses.asdict(policy.spec)}
    names = [[name, list(array.shape)] for name, array in state.items()]
    return msgpack.packb([header, names, *(array.tobytes() for array in state.values())], use_bin_type=True)


def decode_policy(blob: bytes) -> tuple[int, PixelPolicy]:
    """(version, policy in eval mode); raises WeightsDecodeError on anything unexpected."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) > MAX_WEIGHTS_BYTES:
        raise WeightsDecodeError(f"weights blob must be bytes of at most {MAX_WEIGHTS_BYTES} bytes")
    try:
        items = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_bin_len=MAX_WEIGHTS_BYTES,
                                max_array_len=4096, max_map_len=64, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WeightsDecodeError(f"weights blob is not valid msgpack ({exc}); it is truncated or foreign") from exc
    if not (isinstance(items, list) and len(items) >= 2 and isinstance(items[0], dict)
            and isinstance(items[1], list) and len(items[1]) == len(items) - 2):
        raise WeightsDecodeError("weights blob is msgpack but not [header, names, tensors...]")
    header, names, payloads = items[0], items[1], items[2:]
    if header.get("schema") != SCHEMA_VERSION or header.get("kind") != KIND:
        raise WeightsDecodeError(f"weights schema/kind {header.get('schema')!r:.20}/{header.get('kind')!r:.30} "
                                 f"is not {SCHEMA_VERSION}/{KIND!r}; publisher and reader run different versions")
    if not isinstance(header.get("version"), int):
        raise WeightsDecodeError("weights header has no integer version")
    try:
        policy = PixelPolicy(PixelPolicySpec(**header["spec"]))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise WeightsDecodeError(f"weights header has an invalid policy spec: {exc}") from exc
    expected = {name: tuple(t.shape) for name, t in policy.state_dict().items()}
    state = {}
    for entry, payload in zip(names, payloads):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list) and isinstance(payload, bytes)):
            raise WeightsDecodeError(f"weights entry {entry!r:.60} is not [name, shape] with bytes")
        name, shape = entry[0], tuple(entry[1])
        if expected.get(name) != shape or len(payload) != 4 * int(np.prod(shape, dtype=np.int64)):
            raise WeightsDecodeError(f"tensor {name!r:.60} with shape {shape!r:.40} and {len(payload)} bytes "
                                     f"does not fit the policy (expected {expected.get(name)})")
        state[name] = torch.from_numpy(np.frombuffer(payload, np.float32).reshape(shape).copy())
    if state.keys() != expected.keys():
        raise WeightsDecodeError(f"weights miss tensors: {sorted(expected.keys() - state.keys())[:5]}")
    policy.load_state_dict(state)
    return header["version"], policy.eval()
