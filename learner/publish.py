"""Policies leave the learner as ONNX graphs, so that actors act without torch.

`encode_policy` is what the learner publishes on the weights channel: `PixelPolicy.forward`
exported with `torch.onnx.export` (opset `OPSET`, free batch axis), packed with its spec
(`common.weights.pack_policy`). Exporting traces the network (seconds), so each spec is
exported once, from a fresh network, and kept as the serialised graph; every publication
writes the current weights into a copy of it (milliseconds). Publication is pure: the
blob depends on the policy's weights and version only, and the cached export is never
changed or tied to a live network. The graph is exported unoptimised: the optimiser merges
initialisers that happen to be equal (zero biases at initialisation), which would tie
weights that training later separates.

`export_expert_actor` does the same for a SAC expert's deterministic action; experts are
exported when they are saved (`learner.experts`) or afterwards (`learner.export_experts`).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import onnx
import torch
from torch import nn

from common.experts import GRAPH_FILE, expert_signature
from common.latent_policy import PixelPolicy, PixelPolicySpec
from common.nets import TanhGaussianActor
from common.policy_graph import OPSET, GraphSignature, load_policy_graph
from common.weights import pack_policy


def encode_policy(policy: PixelPolicy, version: int) -> bytes:
    """The weights blob of `policy` (on any device) as version `version`."""
    graph = onnx.ModelProto.FromString(_pixel_policy_graph(policy.spec))  # a copy of its own
    state = policy.state_dict()
    names = {initializer.name for initializer in graph.graph.initializer}
    if not names <= state.keys():
        raise RuntimeError(f"the exported graph holds weights that are not the policy's: "
                           f"{sorted(names - state.keys())[:5]}")
    for initializer in graph.graph.initializer:
        # fp32 in the standard layout, however the learner trains it (learner/compute.py)
        weights = state[initializer.name].detach().to("cpu", torch.float32).contiguous().numpy()
        initializer.CopyFrom(onnx.numpy_helper.from_array(weights, initializer.name))
    return pack_policy(graph.SerializeToString(), policy.spec, version)


@functools.lru_cache(maxsize=4)
def _pixel_policy_graph(spec: PixelPolicySpec) -> bytes:
    """The serialised graph of `PixelPolicy(spec)` (immutable), checked once as actors will check it."""
    example = torch.zeros((2, spec.frames, spec.image_size, spec.image_size, 3), dtype=torch.uint8)
    return _export(PixelPolicy(spec), example, spec.signature()).model_proto.SerializeToString()


class _DeterministicActor(nn.Module):
    """An expert's deterministic action tanh(mean(s)): what actors act with."""

    def __init__(self, actor: TanhGaussianActor):
        super().__init__()
        self.actor = actor

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.actor.deterministic(states)


def export_expert_actor(actor: TanhGaussianActor, record: dict) -> bytes:
    """The ONNX graph of an expert's deterministic action, for the expert with `record`."""
    example = torch.zeros((2, record["obs_dim"]), dtype=torch.float32)
    module = _DeterministicActor(copy.deepcopy(actor).cpu())  # a copy: export sets eval mode
    return _export(module, example, expert_signature(record)).model_proto.SerializeToString()


def write_expert_graph(actor: TanhGaussianActor, record: dict, folder: Path) -> Path:
    """Write FOLDER/actor.onnx (temp file, then rename: readers see the old graph or the new)."""
    path, tmp = folder / GRAPH_FILE, folder / f"{GRAPH_FILE}.tmp"
    tmp.write_bytes(export_expert_actor(actor, record))
    os.replace(tmp, path)
    return path


def _export(module: nn.Module, example: torch.Tensor, signature: GraphSignature) -> torch.onnx.ONNXProgram:
    """`module` (one input, outputs as `signature` names them) as an ONNX program; its graph
    passes `load_policy_graph` (so a torch upgrade that writes new operators fails here, loudly)."""
    (name,) = [spec.name for spec in signature.inputs]
    program = torch.onnx.export(
        module.eval(), (example,), input_names=[name], output_names=[spec.name for spec in signature.outputs],
        opset_version=OPSET, dynamo=True, optimize=False, verbose=False,
        dynamic_shapes={name: {0: torch.export.Dim("batch")}})
    load_policy_graph(program.model_proto.SerializeToString(), signature)
    return program
