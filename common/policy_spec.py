"""What an actor needs to know about the pixel policy, without torch: its spec, the frame
stacks it sees, and the signature of the ONNX graph it is published as.

The networks themselves (torch) are in `common.latent_policy`, which only the learner
imports; actors run the published graph with onnxruntime (`common.weights`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np

from common.policy_graph import GraphSignature, TensorSpec, mlp_weights

MAX_SPEC_VALUE = 4096  # far above any real width or size; keeps a foreign header from sizing anything huge


@dataclass(frozen=True)
class PixelPolicySpec:
    """Everything that fixes the shapes of the latent policy and its decoder."""

    image_size: int
    action_dim: int
    latent_dim: int
    frames: int = 3  # stacked RGB frames o_{t-frames+1} .. o_t
    scale: int = 1  # IMPALA widths 16/32/32 x scale
    num_blocks: int = 2
    decoder_hidden: int = 256

    @classmethod
    def from_dict(cls, values: object) -> PixelPolicySpec:
        """The spec in a published header; ValueError unless it has exactly our fields, each a
        positive integer."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(values, dict) or sorted(values) != sorted(names):
            raise ValueError(f"a policy spec needs exactly the fields {names}, got {values!r:.120}")
        for name, value in values.items():
            if type(value) is not int or not 0 < value <= MAX_SPEC_VALUE:
                raise ValueError(f"policy spec field {name!r} is {value!r:.20}, not an integer in 1..{MAX_SPEC_VALUE}")
        return cls(**values)

    def signature(self) -> GraphSignature:
        """The published graph: uint8 frame stacks (B, F, H, W, 3) -> the latent (B, Z) and the
        decoder's deterministic action (B, A); B is free."""
        size = self.image_size
        return GraphSignature(
            inputs=(TensorSpec("frames", "uint8", (None, self.frames, size, size, 3)),),
            outputs=(TensorSpec("latent", "float32", (None, self.latent_dim)),
                     TensorSpec("actions", "float32", (None, self.action_dim))),
            weights=self.graph_weights())

    def graph_weights(self) -> int:
        """Parameters of `common.latent_policy.PixelPolicy` without its probe (which the graph
        does not use): IMPALA stages, head, decoder MLP. `learner.publish` checks this against
        the exported network, so a change of architecture that misses it fails at the first publication."""
        widths, side, total = (3 * self.frames, *(c * self.scale for c in (16, 32, 32))), self.image_size, 0
        for a, b in zip(widths[:-1], widths[1:]):
            total += (9 * a + 1) * b + self.num_blocks * 2 * (9 * b + 1) * b  # conv, then residual blocks
            side = (side + 1) // 2  # max-pool 3/2
        total += (widths[-1] * side * side + 1) * self.latent_dim  # head
        return total + mlp_weights(self.latent_dim, 2 * self.action_dim, self.decoder_hidden)


class FrameStacker:
    """The last `frames` frames of each env; an episode starts by repeating its first frame."""

    def __init__(self, num_envs: int, frames: int):
        self.stacks: list[deque] = [deque(maxlen=frames) for _ in range(num_envs)]

    def reset(self, index: int) -> None:
        self.stacks[index].clear()

    def push(self, index: int, frame: np.ndarray) -> None:
        """Append `frame`, unless it is the very frame pushed last (an env that did not step)."""
        stack = self.stacks[index]
        if stack and stack[-1] is frame:
            return
        if not stack:
            stack.extend([frame] * (stack.maxlen - 1))
        stack.append(frame)

    def batch(self) -> np.ndarray:
        return np.stack([np.stack(stack) for stack in self.stacks])
