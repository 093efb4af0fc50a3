"""Policies as ONNX graphs: checked as data before use, then run with onnxruntime.

Actors act with networks the learner trained in torch, but never import torch: the learner
exports each policy to an ONNX graph (`learner.publish`) and actors run it on one CPU
thread with onnxruntime. A graph that arrives over Redis or from a file is data from
outside, so `load_policy_graph` builds a session only for a graph that
  - is at most `max_bytes`, parses as an ONNX model and passes `onnx.checker` (full check),
  - imports only the default ONNX domain at exactly `OPSET`, defines no functions,
  - uses only the operators our export produces (`ALLOWED_OPS`: no custom or control-flow
    operators), with no external or sparse tensors (nothing read from disk),
  - has exactly the inputs and outputs of the expected `GraphSignature` (names, dtypes,
    shapes; the batch axis free) and as many float32 weights as the expected network,
  - runs on a zero batch of 1 and of 2 with finite outputs of the expected shapes.
Each refusal is a `PolicyGraphError` subclass whose message says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

OPSET = 18
MAX_GRAPH_BYTES = 64 * 1024 * 1024
MAX_NODES = 4096
DEFAULT_DOMAINS = ("", "ai.onnx")
# Every operator torch.onnx.export (dynamo, unoptimised) writes for our IMPALA CNN, MLPs and tanh.
ALLOWED_OPS = frozenset({
    "Add", "Cast", "Concat", "Constant", "Conv", "Div", "Gemm", "Identity", "MaxPool", "Relu", "Reshape",
    "SequenceAt", "Shape", "SplitToSequence", "Squeeze", "Sub", "Tanh", "Transpose"})
DTYPES = {"uint8": onnx.TensorProto.UINT8, "float32": onnx.TensorProto.FLOAT}


class PolicyGraphError(ValueError):
    """An ONNX policy graph was refused; the subclass says which check it failed."""


class GraphTooLarge(PolicyGraphError):
    """Over the size limit (refused before it is parsed)."""


class GraphMalformed(PolicyGraphError):
    """Not a valid ONNX model, or one onnxruntime cannot build or run."""


class GraphOpsetRefused(PolicyGraphError):
    """Imports another opset version or another operator domain."""


class GraphOperatorRefused(PolicyGraphError):
    """Uses a custom, unknown or not allowed operator, or defines functions."""


class GraphSignatureMismatch(PolicyGraphError):
    """Its inputs or outputs differ from what the reader expects (names, dtypes, shapes)."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; a `None` dimension is free (the batch axis)."""

    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class GraphSignature:
    """What a reader expects of a graph: its inputs and outputs, and `weights`, the float32
    numbers its initializers hold (the network's parameter count, which every width, depth and
    hidden size of the network changes)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    weights: int


def mlp_weights(inputs: int, outputs: int, hidden: int) -> int:
    """Parameters of `common.nets.mlp`: two hidden layers of `hidden` units."""
    return (inputs + 1) * hidden + (hidden + 1) * hidden + (hidden + 1) * outputs


class PolicyGraph:
    """A validated graph's onnxruntime session (one CPU thread)."""

    def __init__(self, session: ort.InferenceSession, signature: GraphSignature):
        self.session, self.signature = session, signature
        self.output_names = [o.name for o in signature.outputs]

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))


def load_policy_graph(data: bytes, signature: GraphSignature, max_bytes: int = MAX_GRAPH_BYTES) -> PolicyGraph:
    """A session for the ONNX graph in `data`, after every check in the module docstring."""
    if not isinstance(data, bytes):
        raise GraphMalformed(f"a policy graph must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise GraphTooLarge(f"the policy graph is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise GraphMalformed(f"the policy graph is not an ONNX model ({type(exc).__name__}: {exc})") from exc
    _check_opset(model)
    _check_operators(model)
    _check_tensors(model.graph)
    _check_signature(model.graph, signature)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise GraphMalformed(f"the policy graph fails onnx.checker: {str(exc)[:300]}") from exc
    graph = PolicyGraph(_session(model.SerializeToString()), signature)
    _check_runs(graph)
    return graph


def _check_opset(model: onnx.ModelProto) -> None:
    imports = [(entry.domain, entry.version) for entry in model.opset_import]
    if len(imports) != 1 or imports[0][0] not in DEFAULT_DOMAINS or imports[0][1] != OPSET:
        raise GraphOpsetRefused(f"the policy graph imports opsets {imports!r:.200}; only the default ONNX "
                                f"domain at opset {OPSET} is accepted (export with opset_version={OPSET})")


def _check_operators(model: onnx.ModelProto) -> None:
    if model.functions:
        raise GraphOperatorRefused(f"the policy graph defines {len(model.functions)} functions; "
                                   "custom functions are refused")
    if len(model.graph.node) > MAX_NODES:
        raise GraphOperatorRefused(f"the policy graph has {len(model.graph.node)} nodes, over {MAX_NODES}")
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            raise GraphOperatorRefused(f"node {node.name!r:.60} is {node.domain!r:.60}::{node.op_type!r:.60}, "
                                       "a custom operator; only default-domain ONNX operators are accepted")
        if node.op_type not in ALLOWED_OPS:
            raise GraphOperatorRefused(f"node {node.name!r:.60} uses operator {node.op_type!r:.60}, which our "
                                       f"export never writes; allowed: {sorted(ALLOWED_OPS)}")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise GraphOperatorRefused(f"node {node.name!r:.60} carries a subgraph; subgraphs are refused")


def _check_tensors(graph: onnx.GraphProto) -> None:
    """No tensor may point at external data (onnxruntime would read it from disk), none may be sparse."""
    if graph.sparse_initializer:
        raise GraphMalformed("the policy graph has sparse initializers; our export writes none")
    tensors = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("sparse_tensor") or attribute.sparse_tensors:
                raise GraphMalformed(f"node {node.name!r:.60} carries a sparse tensor; our export writes none")
            if attribute.HasField("t"):
                tensors.append(attribute.t)
            tensors.extend(attribute.tensors)
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise GraphMalformed(f"tensor {tensor.name!r:.60} refers to external data; a published graph "
                                 "must carry all its weights")


def _check_signature(graph: onnx.GraphProto, signature: GraphSignature) -> None:
    for kind, actual, expected in (("inputs", graph.input, signature.inputs),
                                   ("outputs", graph.output, signature.outputs)):
        names = [value.name for value in actual]
        if names != [spec.name for spec in expected]:
            raise GraphSignatureMismatch(f"the policy graph's {kind} are {names!r:.200}, expected "
                                         f"{[spec.name for spec in expected]}; it does not fit the policy spec")
        for value, spec in zip(actual, expected):
            described = _describe(value)
            if described != (DTYPES[spec.dtype], spec.shape):
                raise GraphSignatureMismatch(
                    f"graph {kind[:-1]} {spec.name!r} is (dtype {described[0]}, shape {described[1]}), expected "
                    f"({spec.dtype} = {DTYPES[spec.dtype]}, {spec.shape}; None = a free batch axis); "
                    "it does not fit the policy spec")
    weights = sum(int(np.prod(t.dims, dtype=object)) for t in graph.initializer if t.data_type == DTYPES["float32"])
    if weights != signature.weights:
        raise GraphSignatureMismatch(f"the policy graph holds {weights} float32 weights, the network the reader "
                                     f"expects has {signature.weights}; it does not fit the policy spec")


def _describe(value: onnx.ValueInfoProto) -> tuple[int, tuple[int | str | None, ...]]:
    """(element type, shape) with a symbolic dimension as None; '?' marks a dimension that is
    neither a fixed size nor named, or -1 for a value that is not a tensor of known rank."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return -1, ()
    dims = tuple(d.dim_value if d.HasField("dim_value") else None if d.dim_param else "?"
                 for d in value.type.tensor_type.shape.dim)
    return value.type.tensor_type.elem_type, dims


def _session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: a refused graph is reported by our exception
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidGraph, ...) share no base
        raise GraphMalformed(f"onnxruntime cannot build the policy graph: {str(exc)[:300]}") from exc


def _check_runs(graph: PolicyGraph) -> None:
    """A zero batch of 1 and of 2 must give finite outputs of the signature's dtypes and shapes."""
    for batch in (1, 2):
        inputs = {spec.name: np.zeros([batch if d is None else d for d in spec.shape], spec.dtype)
                  for spec in graph.signature.inputs}
        try:
            outputs = graph.run(**inputs)
        except Exception as exc:  # onnxruntime's own exception types share no base
            raise GraphMalformed(f"the policy graph fails on a zero batch of {batch}: {str(exc)[:300]}") from exc
        for spec in graph.signature.outputs:
            value, shape = outputs[spec.name], tuple(batch if d is None else d for d in spec.shape)
            if value.dtype != np.dtype(spec.dtype) or value.shape != shape:
                raise GraphSignatureMismatch(f"on a zero batch of {batch} the graph's {spec.name!r} is "
                                             f"{value.dtype}{value.shape}, expected {spec.dtype}{shape}")
            if not np.isfinite(value).all():
                raise GraphMalformed(f"on a zero batch of {batch} the graph's {spec.name!r} is not finite")
