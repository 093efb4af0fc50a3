"""Policy weights as a validated msgpack blob: how the learner publishes them to the actors.

`WeightsChannel` carries them through the run's Redis: the learner publishes, actors poll.

Layout (never pickle): [header: map, graph: bytes]. The graph is the pixel policy as an
ONNX model (`learner.publish` exports it; actors run it with onnxruntime, without torch).
The header carries the weights version, the `PixelPolicySpec`, the graph's opset and its
SHA-256, so a reader knows from the blob alone which graph signature to expect, and a
flipped bit anywhere is refused. `decode_policy` checks the header, then the graph as data
(`common.policy_graph`: size, operators, opset, signature) before it builds a session.
Every refusal is a `WeightsDecodeError` subclass naming the problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack
import numpy as np

from common.policy_graph import MAX_GRAPH_BYTES, OPSET, PolicyGraph, PolicyGraphError, load_policy_graph
from common.policy_spec import PixelPolicySpec

if TYPE_CHECKING:
    from common.replay import ReplayClient

SCHEMA_VERSION = 2
KIND = "pixel-policy"
MAX_WEIGHTS_BYTES = MAX_GRAPH_BYTES + 64 * 1024
HEADER_FIELDS = {"schema", "kind", "version", "spec", "opset", "sha256"}


class WeightsDecodeError(ValueError):
    """A blob is not a valid set of policy weights; the subclass and message say what is wrong."""


class WeightsTooLarge(WeightsDecodeError):
    """Over the size limit (refused before it is parsed)."""


class WeightsCorrupt(WeightsDecodeError):
    """Not msgpack, not [header, graph], or a graph that does not match its checksum: truncated or foreign."""


class WeightsHeaderError(WeightsDecodeError):
    """The header is of another schema or kind, or has missing, unknown or invalid fields."""


class WeightsGraphRefused(WeightsDecodeError):
    """The graph failed a check of `common.policy_graph`; `__cause__` is that `PolicyGraphError`."""


class WeightsMismatch(WeightsDecodeError):
    """Valid weights that do not fit the reader: another version, frame size or action count."""


@dataclass
class PublishedPolicy:
    """Decoded weights: the pixel policy as an onnxruntime session, with its spec and version."""

    version: int
    spec: PixelPolicySpec
    graph: PolicyGraph

    def act(self, frames: np.ndarray) -> np.ndarray:
        """Deterministic actions for uint8 frame stacks (B, F, H, W, 3)."""
        return self.graph.run(frames=frames)["actions"]


def pack_policy(graph: bytes, spec: PixelPolicySpec, version: int) -> bytes:
    """The blob for an exported graph of a policy with `spec` (see `learner.publish.encode_policy`)."""
    header = {"schema": SCHEMA_VERSION, "kind": KIND, "version": int(version), "spec": dataclasses.asdict(spec),
              "opset": OPSET, "sha256": hashlib.sha256(graph).hexdigest()}
    return msgpack.packb([header, graph], use_bin_type=True)


def decode_policy(blob: bytes, max_bytes: int = MAX_WEIGHTS_BYTES) -> PublishedPolicy:
    """The policy in `blob`, ready to act; raises a WeightsDecodeError subclass on anything unexpected."""
    if not isinstance(blob, bytes):
        raise WeightsCorrupt(f"a weights blob must be bytes, got {type(blob).__name__}")
    if len(blob) > max_bytes:
        raise WeightsTooLarge(f"the weights blob is {len(blob)} bytes, over the {max_bytes}-byte limit")
    try:
        items = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_bin_len=max_bytes, max_str_len=4096,
                                max_array_len=64, max_map_len=64, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WeightsCorrupt(f"weights blob is not valid msgpack ({exc}); it is truncated or foreign") from exc
    if not (isinstance(items, list) and len(items) == 2 and isinstance(items[0], dict)
            and isinstance(items[1], bytes)):
        raise WeightsCorrupt("weights blob is msgpack but not [header, graph bytes]; it is foreign")
    header, graph = items
    spec = _check_header(header)
    if hashlib.sha256(graph).hexdigest() != header["sha256"]:
        raise WeightsCorrupt("the weights graph does not match the header's SHA-256; the blob is corrupt")
    try:
        session = load_policy_graph(graph, spec.signature())
    except PolicyGraphError as exc:
        raise WeightsGraphRefused(f"the weights graph is refused ({type(exc).__name__}): {exc}") from exc
    return PublishedPolicy(header["version"], spec, session)


def _check_header(header: dict) -> PixelPolicySpec:
    if header.get("schema") != SCHEMA_VERSION or header.get("kind") != KIND:
        raise WeightsHeaderError(f"weights schema/kind {header.get('schema')!r:.20}/{header.get('kind')!r:.30} "
                                 f"is not {SCHEMA_VERSION}/{KIND!r}; publisher and reader run different versions")
    if header.keys() != HEADER_FIELDS:
        raise WeightsHeaderError(f"weights header fields {sorted(map(str, header))!r:.200} are not "
                                 f"{sorted(HEADER_FIELDS)}")
    if type(header["version"]) is not int or header["version"] < 0:
        raise WeightsHeaderError("weights header has no non-negative integer version")
    if header["opset"] != OPSET:
        raise WeightsHeaderError(f"weights graph is opset {header['opset']!r:.20}, this reader runs opset {OPSET}")
    if not isinstance(header["sha256"], str):
        raise WeightsHeaderError("weights header has no SHA-256 string")
    try:
        return PixelPolicySpec.from_dict(header["spec"])
    except ValueError as exc:
        raise WeightsHeaderError(f"weights header has an invalid policy spec: {exc}") from exc


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
