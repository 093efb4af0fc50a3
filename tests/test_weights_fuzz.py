"""Property-based fuzzing of the two decoders that take bytes from Redis: an actor's weights
loader (a graph it will execute) and the chunk decoder.

Over 10,000 generated blobs in all: truncated, bit-flipped, spliced, random, oversized; weights
with wrong headers, wrong opsets, custom or unknown operators, wrong input or output names,
dtypes and shapes. Every bad weights blob is refused with a named `WeightsDecodeError`
subclass and the actor keeps the policy it was acting with. The chunk decoder refuses every
truncated, oversized or structurally wrong blob with a `ChunkDecodeError`; a flipped bit
inside an array's bytes or a header string is a different but well-formed chunk (the chunk
format carries no checksum), so for flips and random bytes the property is: refused, or a
chunk that passes validation and survives a round trip. Nothing crashes another way or hangs.
"""

from __future__ import annotations

import collections

import msgpack
import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actors.policies import PixelPolicyBehaviour
from common.codec import ChunkDecodeError, ChunkTooLarge, decode_chunk, encode_chunk
from common.latent_policy import PixelPolicy
from common.policy_graph import (ALLOWED_OPS, DEFAULT_DOMAINS, MAX_GRAPH_BYTES, OPSET, GraphMalformed,
                                 GraphOperatorRefused, GraphOpsetRefused, GraphSignatureMismatch, GraphTooLarge,
                                 PolicyGraphError)
from common.policy_spec import PixelPolicySpec
from common.weights import (MAX_WEIGHTS_BYTES, WeightsCorrupt, WeightsDecodeError, WeightsGraphRefused,
                            WeightsHeaderError, WeightsMismatch, WeightsTooLarge, decode_policy, pack_policy)
from conftest import synthetic_chunk
from learner.publish import encode_policy

pytestmark = pytest.mark.timeout(300)

SPEC = PixelPolicySpec(image_size=16, action_dim=2, latent_dim=4, frames=2, num_blocks=1, decoder_hidden=16)
VERSION = 5
THROWN: collections.Counter[str] = collections.Counter()  # blobs thrown, per test


def fuzz(examples: int):
    """Hypothesis settings for one property: `examples` blobs, reproducible, no example database."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def published() -> tuple[bytes, dict, onnx.ModelProto]:
    """A small but real exported policy: its blob, header and graph."""
    torch.manual_seed(0)
    blob = encode_policy(PixelPolicy(SPEC), VERSION)
    header, graph = msgpack.unpackb(blob)
    return blob, header, onnx.load_from_string(graph)


@pytest.fixture(scope="module")
def actor(published) -> PixelPolicyBehaviour:
    """An actor's latent policy, acting with the published weights."""
    behaviour = PixelPolicyBehaviour(1, SPEC.image_size, np.random.default_rng(0), fallback=None,
                                     action_dim=SPEC.action_dim)
    assert behaviour.load(published[0], VERSION) == VERSION
    return behaviour


def assert_refused(actor: PixelPolicyBehaviour, blob: bytes, error: type[WeightsDecodeError] = WeightsDecodeError,
                   cause: type[PolicyGraphError] | None = None, test: str = "") -> None:
    """`blob`, published as VERSION + 1, is refused with `error` (and graph error `cause`), and the
    actor still acts with what it had."""
    acting, stacker = actor.policy, actor.stacker
    with pytest.raises(error) as refused:
        actor.load(blob, VERSION + 1)
    if cause is not None:
        assert isinstance(refused.value.__cause__, cause), refused.value
    assert actor.policy is acting and actor.stacker is stacker and actor.version == VERSION
    THROWN[test] += 1


def flip(blob: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(blob)
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    return bytes(data)


def bit_flips(max_flips: int = 8) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Distinct (byte, bit) positions (positions taken modulo the blob's length)."""
    return st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), min_size=1, max_size=max_flips,
                    unique_by=lambda f: f[0])


def repacked(header: dict, graph: bytes) -> bytes:
    return msgpack.packb([header, graph], use_bin_type=True)


# -- the actor's weights loader: bytes ---------------------------------------------------------

def test_truncated_weights_are_refused(published, actor):
    blob = published[0]

    @fuzz(1000)
    @given(st.integers(0, len(blob) - 1))
    def check(length):
        assert_refused(actor, blob[:length], WeightsCorrupt, test="truncated")

    check()
    assert THROWN["truncated"] >= 1000


def test_bit_flipped_weights_are_refused(published, actor):
    """The header's SHA-256 covers the graph, every header field is checked: no flip gets through."""
    blob = published[0]

    @fuzz(2500)
    @given(bit_flips())
    def check(flips):
        assert_refused(actor, flip(blob, flips), test="flipped")

    check()
    assert THROWN["flipped"] >= 2500


def test_spliced_and_random_weights_are_refused(published, actor):
    blob = published[0]
    edits = st.one_of(
        st.binary(max_size=4096).map(lambda random: random),  # not weights at all
        st.tuples(st.integers(0, len(blob)), st.binary(min_size=1, max_size=64)).map(  # bytes inserted
            lambda e: blob[:e[0]] + e[1] + blob[e[0]:]),
        st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 4096)).map(  # bytes cut out
            lambda e: blob[:e[0]] + blob[e[0] + e[1]:]),
        st.binary(min_size=1, max_size=64).map(lambda tail: blob + tail))  # trailing garbage

    @fuzz(1000)
    @given(edits)
    def check(candidate):
        assume(candidate != blob)
        assert_refused(actor, candidate, test="spliced")

    check()
    assert THROWN["spliced"] >= 1000


def test_weights_over_the_size_limit_are_refused_before_parsing(published, actor):
    blob = published[0]

    @fuzz(500)
    @given(st.integers(0, len(blob) - 1), st.binary(max_size=64))
    def check(limit, tail):
        with pytest.raises(WeightsTooLarge):
            decode_policy(blob + tail, max_bytes=limit)
        THROWN["oversized"] += 1

    check()
    assert THROWN["oversized"] >= 500
    # at the real limits: a blob over it, and a graph over its own inside a blob that is not
    assert_refused(actor, blob + bytes(MAX_WEIGHTS_BYTES), WeightsTooLarge)
    assert_refused(actor, pack_policy(bytes(MAX_GRAPH_BYTES + 1), SPEC, VERSION + 1), WeightsGraphRefused,
                   GraphTooLarge)


# -- the actor's weights loader: headers --------------------------------------------------------

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6)


@st.composite
def wrong_headers(draw, header: dict) -> dict:
    """The header with one field dropped, added or changed, or one spec field changed."""
    header = {**header, "spec": dict(header["spec"]), "version": VERSION + 1}
    change = draw(st.sampled_from(["drop", "add", "value", "spec drop", "spec add", "spec value", "spec int"]))
    spec = header["spec"]
    if change == "drop":
        del header[draw(st.sampled_from(sorted(header)))]
    elif change == "add":
        header[draw(st.text(max_size=10).filter(lambda k: k not in header))] = draw(msgpack_values)
    elif change == "value":
        header[draw(st.sampled_from(sorted(header)))] = draw(msgpack_values)
    elif change == "spec drop":
        del spec[draw(st.sampled_from(sorted(spec)))]
    elif change == "spec add":
        spec[draw(st.text(max_size=10).filter(lambda k: k not in spec))] = draw(msgpack_values)
    elif change == "spec value":
        spec[draw(st.sampled_from(sorted(spec)))] = draw(msgpack_values)
    else:  # a well-typed spec of another policy than the graph is
        spec[draw(st.sampled_from(sorted(spec)))] = draw(st.integers(1, 300))
    return header


def test_weights_with_wrong_headers_are_refused(published, actor):
    blob, header, _ = published
    graph = msgpack.unpackb(blob)[1]
    original = {**header, "version": VERSION + 1}

    @fuzz(1500)
    @given(wrong_headers(header))
    def check(wrong):
        assume(wrong != original)
        assert_refused(actor, repacked(wrong, graph), test="header")

    check()
    assert THROWN["header"] >= 1500


def test_valid_weights_of_another_version_are_refused(published, actor):
    """(Valid weights of another env or frame size: tests/test_faults.py.)"""
    assert_refused(actor, published[0], WeightsMismatch)  # carries VERSION, published as VERSION + 1


# -- the actor's weights loader: graphs (re-packed with a valid header and checksum) -------------

def _node(model: onnx.ModelProto, draw) -> onnx.NodeProto:
    return model.graph.node[draw(st.integers(0, len(model.graph.node) - 1))]


def _value(model: onnx.ModelProto, draw) -> onnx.ValueInfoProto:
    return draw(st.sampled_from([*model.graph.input, *model.graph.output]))


def wrong_opset(model, draw):
    model.opset_import[0].version = draw(st.integers(1, 40).filter(lambda v: v != OPSET))
    return GraphOpsetRefused


def extra_domain(model, draw):
    model.opset_import.add(domain=draw(st.text(min_size=1, max_size=20).filter(lambda d: d not in DEFAULT_DOMAINS)),
                           version=draw(st.integers(1, 5)))
    return GraphOpsetRefused


def custom_domain(model, draw):
    domains = st.sampled_from(["com.microsoft", "ai.onnx.ml", "ai.onnx.preview.training", "org.pytorch.aten",
                               "ai.onnx.contrib"]) | st.text(min_size=1, max_size=20)
    _node(model, draw).domain = draw(domains.filter(lambda d: d not in DEFAULT_DOMAINS))
    return GraphOperatorRefused


def unknown_operator(model, draw):
    names = st.sampled_from(["If", "Loop", "Scan", "Einsum", "Resize", "RandomNormal", "Gelu", "Attention",
                             "QLinearConv", "MyCustomOp", "ATen", "PythonOp"]) | st.text(min_size=1, max_size=20)
    _node(model, draw).op_type = draw(names.filter(lambda n: n not in ALLOWED_OPS))
    return GraphOperatorRefused


def local_function(model, draw):
    model.functions.add(name=draw(st.text(min_size=1, max_size=10)), domain="custom")
    return GraphOperatorRefused


def subgraph_attribute(model, draw):
    attribute = _node(model, draw).attribute.add(name=draw(st.sampled_from(["then_branch", "body", "g"])))
    attribute.type = onnx.AttributeProto.GRAPH
    attribute.g.name = "inner"
    return GraphOperatorRefused


def external_data(model, draw):
    tensor = draw(st.sampled_from(list(model.graph.initializer)))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=draw(st.sampled_from(["/etc/passwd", "../weights.bin"])))
    return GraphMalformed


def wrong_dtype(model, draw):
    value = _value(model, draw)
    elem_type = value.type.tensor_type.elem_type
    value.type.tensor_type.elem_type = draw(st.integers(0, 25).filter(lambda t: t != elem_type))
    return GraphSignatureMismatch


def wrong_shape(model, draw):
    dims = _value(model, draw).type.tensor_type.shape.dim
    dim = dims[draw(st.integers(0, len(dims) - 1))]
    old = dim.dim_value if dim.HasField("dim_value") else None
    dim.dim_value = draw(st.integers(0, 1000).filter(lambda v: v != old))  # a fixed batch, or another size
    return GraphSignatureMismatch


def wrong_rank(model, draw):
    shape = _value(model, draw).type.tensor_type.shape
    if draw(st.booleans()):
        shape.dim.add(dim_value=draw(st.integers(1, 8)))
    else:
        del shape.dim[draw(st.integers(0, len(shape.dim) - 1))]
    return GraphSignatureMismatch


def wrong_name(model, draw):
    value = _value(model, draw)
    value.name = draw(st.text(max_size=12).filter(lambda n: n != value.name))
    return PolicyGraphError  # a signature mismatch, or (renamed output of a node) a malformed graph


def extra_input(model, draw):
    model.graph.input.add().CopyFrom(onnx.helper.make_tensor_value_info(
        draw(st.text(min_size=1, max_size=8)), onnx.TensorProto.FLOAT, [draw(st.integers(1, 4))]))
    return GraphSignatureMismatch


def dropped_weights(model, draw):
    del model.graph.initializer[draw(st.integers(0, len(model.graph.initializer) - 1))]
    return GraphSignatureMismatch


def reshaped_weights(model, draw):
    tensor = draw(st.sampled_from(list(model.graph.initializer)))
    tensor.dims[draw(st.integers(0, len(tensor.dims) - 1))] += draw(st.integers(1, 3))
    return PolicyGraphError  # too many weights, or a shape the graph cannot run


GRAPH_MUTATIONS = [wrong_opset, extra_domain, custom_domain, unknown_operator, local_function, subgraph_attribute,
                   external_data, wrong_dtype, wrong_shape, wrong_rank, wrong_name, extra_input, dropped_weights,
                   reshaped_weights]


def test_weights_with_wrong_graphs_are_refused(published, actor):
    """Each graph mutation is re-packed with a valid header and checksum, so only the graph checks
    stand between it and the actor: each is refused by the check that names it."""
    _, header, model = published
    header = {**header, "version": VERSION + 1}

    @fuzz(1500)
    @given(st.sampled_from(GRAPH_MUTATIONS), st.data())
    def check(mutation, data):
        wrong = onnx.ModelProto()
        wrong.CopyFrom(model)
        cause = mutation(wrong, data.draw)
        graph = wrong.SerializeToString()
        blob = pack_policy(graph, SPEC, VERSION + 1)
        assert {**msgpack.unpackb(blob)[0], "sha256": header["sha256"]} == header  # only the checksum differs
        assert_refused(actor, blob, WeightsGraphRefused, cause, test="graph")

    check()
    assert THROWN["graph"] >= 1500


def test_the_actor_still_acts_as_before(published, actor):
    """After every refusal above, the actor's policy gives the published policy's actions."""
    frames = np.random.default_rng(0).integers(0, 256, (3, SPEC.frames, 16, 16, 3), dtype=np.uint8)
    assert actor.version == VERSION
    np.testing.assert_array_equal(actor.policy.act(frames), decode_policy(published[0]).act(frames))


# -- the chunk decoder --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chunk_blob() -> bytes:
    return encode_chunk(synthetic_chunk(num_steps=4, size=8))[0]


def refused_or_well_formed(blob: bytes) -> None:
    """A ChunkDecodeError, or a chunk that passes validation, with canonical booleans, and
    survives a round trip."""
    try:
        chunk = decode_chunk(blob)
    except ChunkDecodeError:
        return
    for flags in (chunk.terminated, chunk.truncated):
        assert flags.view(np.uint8).max(initial=0) <= 1
    again = decode_chunk(encode_chunk(chunk)[0])
    for name, array in chunk.arrays().items():
        np.testing.assert_array_equal(getattr(again, name), array)
    assert again.header() == chunk.header()


def test_truncated_chunks_are_refused(chunk_blob):
    @fuzz(1000)
    @given(st.integers(0, len(chunk_blob) - 1))
    def check(length):
        with pytest.raises(ChunkDecodeError):
            decode_chunk(chunk_blob[:length])
        THROWN["chunk truncated"] += 1

    check()
    assert THROWN["chunk truncated"] >= 1000


def test_oversized_chunks_are_refused_before_parsing(chunk_blob):
    @fuzz(300)
    @given(st.integers(0, len(chunk_blob) - 1))
    def check(limit):
        with pytest.raises(ChunkTooLarge):
            decode_chunk(chunk_blob, max_bytes=limit)
        THROWN["chunk oversized"] += 1

    check()
    assert THROWN["chunk oversized"] >= 300


def test_bit_flipped_and_random_chunks_are_refused_or_well_formed(chunk_blob):
    blobs = st.one_of(bit_flips().map(lambda flips: flip(chunk_blob, flips)), st.binary(max_size=2048),
                      st.tuples(st.integers(0, len(chunk_blob)), st.binary(min_size=1, max_size=32)).map(
                          lambda e: chunk_blob[:e[0]] + e[1] + chunk_blob[e[0]:]))

    @fuzz(2000)
    @given(blobs)
    def check(blob):
        refused_or_well_formed(blob)
        THROWN["chunk flipped"] += 1

    check()
    assert THROWN["chunk flipped"] >= 2000


@st.composite
def wrong_chunks(draw, blob: bytes) -> list:
    """The chunk's items with one structural change: header field dropped, added or retyped;
    an array descriptor's name, dtype or shape changed; an array dropped, added or resized."""
    header, descriptors, *payloads = msgpack.unpackb(blob)
    change = draw(st.sampled_from(["drop field", "add field", "retype field", "schema", "split", "name", "dtype",
                                   "shape", "drop array", "extra array", "payload"]))
    i = draw(st.integers(0, len(descriptors) - 1))
    if change == "drop field":
        del header[draw(st.sampled_from(sorted(header)))]
    elif change == "add field":
        header[draw(st.text(max_size=10).filter(lambda k: k not in header))] = draw(msgpack_values)
    elif change == "retype field":
        key = draw(st.sampled_from(sorted(header)))
        header[key] = draw(msgpack_values.filter(lambda v: type(v) is not type(header[key])))
    elif change == "schema":
        header["schema"] = draw(st.integers(-2**63, 2**64 - 1).filter(lambda v: v != header["schema"]))
    elif change == "split":
        header["split"] = draw(st.text(max_size=8).filter(lambda v: v not in ("train", "eval")))
    elif change == "name":
        descriptors[i][0] = draw(st.text(max_size=12).filter(lambda v: v != descriptors[i][0]))
    elif change == "dtype":
        descriptors[i][1] = draw(st.sampled_from(["uint8", "float32", "bool", "float64", "int64", "object", "<U8"])
                                 .filter(lambda v: v != descriptors[i][1]))
    elif change == "shape":
        shape = descriptors[i][2]
        shape[draw(st.integers(0, len(shape) - 1))] += draw(st.integers(1, 3))
    elif change == "drop array":
        del descriptors[i], payloads[i]
    elif change == "extra array":
        descriptors.append(list(descriptors[i]))
        payloads.append(payloads[i])
    else:
        payloads[i] = payloads[i][:-1] if draw(st.booleans()) and payloads[i] else payloads[i] + b"\0"
    return [header, descriptors, *payloads]


def test_structurally_wrong_chunks_are_refused(chunk_blob):
    @fuzz(1000)
    @given(wrong_chunks(chunk_blob))
    def check(items):
        with pytest.raises(ChunkDecodeError):
            decode_chunk(msgpack.packb(items, use_bin_type=True))
        THROWN["chunk structure"] += 1

    check()
    assert THROWN["chunk structure"] >= 1000
