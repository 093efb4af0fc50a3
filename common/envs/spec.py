"""The environment contract: its settings and what it shows.

Every task and distractor mode is a Gymnasium env with the same observation, so they
all look the same to actors, the segmenter and the learner. The proprioceptive `state`
is for diagnostics and experts only; the LAM never sees it. Each step's `info` holds
`bg_velocity`, the distractor's own motion (float32 (2,), (dx, dy) in image pixels per
step), recorded so that we can measure how much of it a latent holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, TypedDict, get_args

import numpy as np
import tyro

from common.cli import ConfigError
from common.config import at_least, in_range, require

DistractorMode = Literal["none", "exogenous", "correlated", "video"]
Split = Literal["train", "eval"]


@dataclass
class EnvConfig:
    """Which task is rendered, how, and behind which distractor."""

    env_id: Annotated[str, tyro.conf.arg(name="env", prefix_name=False)] = field(
        default="HalfCheetah-v5", metadata={"help": "Gymnasium MuJoCo v5 task"})
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

    def validate(self) -> None:
        """Settings no env can honour (`check_config` applies these when an env is made), then
        a --background-dir that is not a folder of images (the last check: an env reports that
        one itself, with the path, when it opens the folder)."""
        from common.envs.backgrounds import IMAGE_SUFFIXES, BackgroundLibrary
        from common.envs.distractors import TASKS
        from common.envs.pixels import has_health_check

        require(self.env_id in TASKS, "env_id", "unsupported env id", f"choose from {', '.join(TASKS)}")
        require(self.distractor in get_args(DistractorMode), "distractor", "is not a distractor mode",
                f"choose from {', '.join(get_args(DistractorMode))}")
        require(self.distractor != "video" or bool(self.background_dir), "distractor",
                "plays clips from a folder", "pass --background-dir DIR (clips as sub-folders of images)")
        at_least(self, 1, "image_size", "render_size", "max_episode_steps")
        require(self.render_size % self.image_size == 0, "render_size", f"is not a multiple of --image-size "
                f"{self.image_size} (frames are area-downsampled)", f"pass a multiple of {self.image_size}")
        at_least(self, 0, "action_repeat", "bg_speed", "camera_shake", "color_drift", "distractor_seed")
        in_range(self, "rho", -1.0, 1.0)
        in_range(self, "ground_alpha", 0.0, 1.0)
        require(self.terminate_when_unhealthy or has_health_check(self.env_id), "terminate_when_unhealthy",
                f"{self.env_id} has no health check to turn off", "drop --no-terminate-when-unhealthy for it")
        if self.background_dir:
            try:
                BackgroundLibrary(self.background_dir, self.image_size)
            except (OSError, ValueError):
                raise ConfigError(f"is not a folder of images ({', '.join(IMAGE_SUFFIXES)}) or of sub-folders of "
                                  "images (clips)", "pass such a folder, or none for procedural backgrounds",
                                  field="background_dir") from None


class Observation(TypedDict):
    """What the env shows at one instant (a plain dict, as Gymnasium's `Dict` space holds)."""

    pixels: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # uint8 (H, W), 1 = agent pixels (ground truth from MuJoCo segmentation)
    state: np.ndarray  # float32 (S,), proprioceptive, diagnostics only
