"""The environment contract: its settings and what one step yields.

Actors, the segmenter and the learner only ever see these types, so every task and
distractor mode looks the same to them. The proprioceptive `state` is for diagnostics
and experts only; the LAM never sees it. `bg_velocity` is the distractor's own motion
(pixels per step), recorded so that we can measure how much of it a latent holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

DistractorMode = Literal["none", "exogenous", "correlated", "video"]
Split = Literal["train", "eval"]


@dataclass
class EnvConfig:
    """Which task is rendered, how, and behind which distractor."""

    env_id: str = field(default="HalfCheetah-v5", metadata={"help": "Gymnasium MuJoCo v5 task", "flag": "env"})
    image_size: int = field(default=64, metadata={"help": "side of the frames the models see (pixels)"})
    render_size: int = field(default=64, metadata={"help": "side MuJoCo renders at; area-downsampled to image_size"})
    action_repeat: int = field(default=0, metadata={"help": "env steps per decision; 0 = the task's default"})
    max_episode_steps: int = field(default=1000, metadata={"help": "decisions per episode before truncation"})
    terminate_when_unhealthy: bool = field(default=True, metadata={"help": "end Hopper/Walker/Humanoid/Ant episodes when the agent falls (off: it keeps moving on the floor, as the Distracting Control Suite's tasks)"})
    distractor: DistractorMode = field(default="correlated", metadata={"help": "background distractor mode"})
    rho: float = field(default=0.5, metadata={"help": "action correlation of the background motion (correlated mode)"})
    background_dir: str | None = field(default=None, metadata={"help": "folder of images or clip sub-folders used as background content"})
    bg_speed: float = field(default=2.0, metadata={"help": "std of the background's velocity per axis (image pixels per decision; exogenous/correlated)"})
    ground_alpha: float = field(default=0.3, metadata={"help": "opacity of the floor over the background"})
    camera_shake: float = field(default=0.0, metadata={"help": "camera random-walk scale (0 = off)"})
    color_drift: float = field(default=0.0, metadata={"help": "background colour random-walk scale (0 = off)"})
    distractor_seed: int = field(default=0, metadata={"help": "seed of the fixed action->background projection"})


@dataclass
class Observation:
    """What the env shows at one instant."""

    frame: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # uint8 (H, W), 1 = agent pixels (ground truth from MuJoCo segmentation)
    state: np.ndarray  # float32 (S,), proprioceptive, diagnostics only


@dataclass
class StepResult:
    """The outcome of one decision (action held for `action_repeat` env steps)."""

    observation: Observation
    reward: float
    terminated: bool
    truncated: bool
    bg_velocity: np.ndarray  # float32 (2,), background motion this step (pixels/step)
