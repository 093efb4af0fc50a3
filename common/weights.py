"""Policy weights as a validated msgpack blob: how the learner publishes them to the actors.

`WeightsChannel` carries them through the run's Redis: the learner publishes, actors poll.

Layout (never pickle): [header: map, names: [[name, shape], ...], float32 bytes...].
The header carries the weights version and the `PixelPolicySpec`, so a reader builds
the network from the blob alone; `load_pixel_policy` then checks every tensor's name
and shape against that network, so a foreign or corrupt blob is refused, not half-loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgpack
import numpy as np
import torch

from common.latent_policy import PixelPolicy, PixelPolicySpec

if TYPE_CHECKING:
    from common.replay import ReplayClient

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


class WeightsChannel:
    """The latest published weights of a run: `<run>:weights` (the blob) and `<run>:weights-version`.

    Both keys are written in one transaction. A reader polls the small version key and
    fetches the blob (megabytes) only when it is newer than the one it acts with, so an
    actor can check before every chunk at the cost of one GET.

    Anything under these keys may be foreign (another writer, an old MaskLAM, a truncated
    write). A publication its reader refuses is moved aside: the first reader to refuse
    it deletes both keys (unless a newer publication replaced them meanwhile), records it
    in the replay's dead-letter list and counts it there, so the other readers never fetch
    it; every reader keeps acting with the weights it had.
    """

    def __init__(self, replay: ReplayClient):
        self.replay = replay
        self.blob_key = replay.keys.weights
        self.version_key = replay.keys.weights_version
        self._delete_if_unchanged = replay.redis.register_script(_DELETE_IF_UNCHANGED)

    def publish(self, blob: bytes, version: int) -> None:
        def write() -> None:
            pipe = self.replay.redis.pipeline(transaction=True)
            pipe.set(self.blob_key, blob)
            pipe.set(self.version_key, int(version))
            pipe.execute()

        self.replay.call(write)

    def version(self) -> int:
        """The published version; 0 before the first publication. Raises WeightsDecodeError if
        the version key holds something other than an integer."""
        return _parse_version(self.replay.call(self.replay.redis.get, self.version_key))

    def load_newer(self, than: int, load: Callable[[bytes, int], int]) -> int | None:
        """If the published version is above `than`, give the blob and its version to `load`
        (which raises WeightsDecodeError to refuse it) and return what `load` returns; else None.

        A refused publication is moved aside (see the class) and the error raised again.
        """
        raw, blob = self.replay.call(self.replay.redis.get, self.version_key), None
        try:
            if _parse_version(raw) <= than:
                return None
            raw, blob = self.replay.call(self.replay.redis.mget, [self.version_key, self.blob_key])
            version = _parse_version(raw)  # the pair as one read: this blob was published as this version
            if version <= than:
                return None
            if blob is None:
                raise WeightsDecodeError(f"version {version} is published without a blob under {self.blob_key}")
            return load(blob, version)
        except WeightsDecodeError as exc:
            self._move_aside(raw, blob, exc)
            raise

    def _move_aside(self, raw_version: bytes | None, blob: bytes | None, error: WeightsDecodeError) -> None:
        if raw_version is None or not self.replay.call(self._delete_if_unchanged,
                                                       keys=[self.version_key, self.blob_key], args=[raw_version]):
            return  # already moved aside by another reader, or replaced by a newer publication
        self.replay.dead_letter(None, f"WeightsDecodeError: {error}", blob or b"",
                                source="weights", version=raw_version[:40].decode(errors="replace"))


# KEYS: version, blob; ARGV: the version value the caller read. 1 if it deleted both keys.
_DELETE_IF_UNCHANGED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


def _parse_version(raw: bytes | None) -> int:
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise WeightsDecodeError(f"the weights version key holds {raw[:40]!r}, not an integer") from None
