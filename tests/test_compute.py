"""How training steps compute (learner/compute.py): each switch is honoured, `auto` follows the
CPU's bf16 units (a real oneDNN ISA cap in a subprocess), the plain path keeps the pinned
numbers, and a policy trained on the fast path publishes the same graph, fp32 and standard
layout, matching its torch forward as closely as before."""

from __future__ import annotations

import os
import subprocess
import sys

import msgpack
import numpy as np
import onnx
import pytest
import torch

from common.latent_policy import PixelPolicy, PixelPolicySpec
from common.weights import decode_policy
from conftest import transition_data_of
from learner.compute import PLAIN, Compute, ComputeConfig, has_bf16_units
from learner.downstream import DownstreamConfig, train_latent_bc
from learner.lam.config import LAMConfig, MethodConfig, ModelConfig, OptimConfig
from learner.lam.train import build_model, lam_step
from learner.publish import _pixel_policy_graph, encode_policy
from test_lam import ACTIONS, SIZE, random_frames, random_windows

BF16_UNITS = has_bf16_units("cpu")


def first_conv_output(model: torch.nn.Module, compute: Compute) -> torch.Tensor:
    """The IDM's first convolution's output during one `lam_step` on the `compute` path."""
    seen = []
    handle = model.idm.encoder.stages[0].conv.register_forward_hook(lambda m, i, o: seen.append(o))
    config = LAMConfig(ModelConfig(num_blocks=1, latent_dim=8), MethodConfig(loss="masked"), OptimConfig(batch_size=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lam_step(model, optimizer, config, random_windows(4, config.method.window), np.random.default_rng(0),
             torch.Generator().manual_seed(0), compute=compute)
    handle.remove()
    return seen[0]


def tiny_lam(compute: Compute) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LAMConfig(ModelConfig(num_blocks=1, latent_dim=8), MethodConfig(loss="masked"), OptimConfig(batch_size=4))
    return compute.prepare(build_model(config, SIZE, ACTIONS))


@pytest.mark.parametrize("channels_last, bf16", [(False, "off"), (True, "off"), (False, "on"), (True, "on")])
def test_each_switch_is_honoured_by_the_lam_step(channels_last, bf16):
    compute = Compute.resolve(ComputeConfig(channels_last=channels_last, bf16=bf16), "cpu")
    assert (compute.channels_last, compute.bf16) == (channels_last, bf16 == "on")
    model = tiny_lam(compute)
    output = first_conv_output(model, compute)
    assert output.dtype == (torch.bfloat16 if bf16 == "on" else torch.float32)
    if channels_last:  # (the plain path leaves inputs in whatever layout batch assembly made)
        assert output.is_contiguous(memory_format=torch.channels_last)
    # weights, and so the optimiser state and checkpoints, stay fp32 whatever the forward ran in
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.idm.encoder.stages[0].conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_auto_uses_bf16_exactly_where_the_cpu_has_bf16_units():
    assert Compute.resolve(ComputeConfig(), "cpu").bf16 == BF16_UNITS
    assert not Compute.resolve(ComputeConfig(bf16="off"), "cpu").bf16
    # Capping oneDNN at AVX2 (as on a CPU without bf16 units) turns auto's bf16 off.
    probe = ("from learner.compute import Compute, ComputeConfig, has_bf16_units; "
             "print(has_bf16_units('cpu'), Compute.resolve(ComputeConfig(), 'cpu').bf16)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_channels_last_alone_keeps_the_plain_numbers_and_bf16_stays_close():
    """Same seeds, same batch: fp32 channels-last equals the plain path to float rounding; bf16
    moves the losses by well under a percent (it is a different rounding, not a different objective)."""
    losses = {}
    for name, config in (("plain", PLAIN), ("channels_last", ComputeConfig(bf16="off")),
                         ("bf16", ComputeConfig(bf16="on"))):
        compute = Compute.resolve(config, "cpu")
        model = tiny_lam(compute)
        lam = LAMConfig(ModelConfig(num_blocks=1, latent_dim=8), MethodConfig(loss="masked"), OptimConfig(batch_size=4))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
        losses[name] = [lam_step(model, optimizer, lam, random_windows(4, 2, seed=s), rng, generator,
                                 compute=compute)["reconstruction"].item() for s in range(5)]
    assert losses["channels_last"] == pytest.approx(losses["plain"], rel=1e-5)
    assert losses["bf16"] == pytest.approx(losses["plain"], rel=2e-2)
    assert losses["bf16"] != losses["plain"]  # the switch did change how it computed


def test_a_policy_trained_on_the_fast_path_publishes_the_same_graph_in_fp32():
    frames, masks, actions, bg = (a[0] for a in random_frames(1, 40))
    data = transition_data_of(frames, masks, actions, bg, chunk_length=np.array([20, 20]), chunk_episode=np.array([0, 1]))
    lam_config = LAMConfig(ModelConfig(num_blocks=1, latent_dim=8), MethodConfig(loss="masked"), OptimConfig(batch_size=4))
    idm = build_model(lam_config, SIZE, ACTIONS).eval()
    policy, _ = train_latent_bc(idm, lam_config, data, DownstreamConfig(bc_updates=3, bc_batch_size=4), seed=0,
                                compute=ComputeConfig(channels_last=True, bf16="on"))
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in policy.parameters())
    blob = encode_policy(policy, version=1)
    published = decode_policy(blob)  # checks the graph against the spec's signature, as actors do
    assert published.spec == policy.spec == PixelPolicySpec(image_size=SIZE, action_dim=ACTIONS, latent_dim=8)
    plain_graph = onnx.ModelProto.FromString(_pixel_policy_graph(policy.spec))
    published_graph = onnx.ModelProto.FromString(msgpack.unpackb(blob)[1])
    assert [n.op_type for n in published_graph.graph.node] == [n.op_type for n in plain_graph.graph.node]
    assert [(w.name, list(w.dims), w.data_type) for w in published_graph.graph.initializer] == [
        (w.name, list(w.dims), onnx.TensorProto.FLOAT) for w in plain_graph.graph.initializer]
    stacks = frames[None, :3].repeat(2, axis=0)
    with torch.no_grad():
        latent, action = (t.numpy() for t in policy(torch.from_numpy(stacks)))
    outputs = published.graph.run(frames=stacks)
    assert np.abs(outputs["latent"] - latent).max() < 1e-5
    assert np.abs(outputs["actions"] - action).max() < 1e-5


def test_a_channels_last_policy_publishes_the_bytes_of_its_standard_layout_copy():
    torch.manual_seed(0)
    policy = PixelPolicy(PixelPolicySpec(image_size=SIZE, action_dim=ACTIONS, latent_dim=8))
    blob = encode_policy(policy, version=3)
    policy.to(memory_format=torch.channels_last)
    assert policy.latent_policy.encoder.stages[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert encode_policy(policy, version=3) == blob
