"""Distractor backgrounds composited behind the agent: the Gymnasium env every role steps.

Modes (docs/design.md section 3):
- `none`: the clean task (black sky, checker floor); `bg_velocity` is zero.
- `exogenous`: background content panned with a smooth random velocity
  v_t = bg_speed * n_t, where n_t is an AR(1) process with unit marginal variance.
- `correlated`: v_t = bg_speed * (rho * u_t + sqrt(1 - rho^2) * n_t) with u_t = W a_t and W a
  fixed random projection (2 x A, from `distractor_seed`, scaled so that u_t has unit,
  uncorrelated components for actions iid uniform in [-1, 1]). So corr(u_t, v_t) = rho.
- `video`: clips from `background_dir` played one frame per step, back and forth, with
  no panning (as the Distracting Control Suite); stills stay still.

The content is procedural unless `background_dir` is given (then its stills and clips
are used in every mode but `none`). Compositing uses the segmentation: sky pixels show
the background, floor pixels are `ground_alpha * floor + (1 - ground_alpha) * background`,
agent pixels are untouched, and the mask is never affected by the background.
`bg_velocity` is the on-screen motion of the background content this step, (dx, dy) in
image pixels (right, down).

Optional nuisances, off by default, in every mode but `none`, each a bounded random walk
that starts at a random point per episode (the Distracting Control Suite's dynamic
setting): `camera_shake` = s pans the camera by up to s x the frame height (this moves
the agent, and so the mask, with the image), `color_drift` = s varies the background's
per-channel gain by up to +-s and offset by up to +-s/2.

Seeds: episode i of an env with seed s and split p draws its physics and its background
from `SeedSequence(s, spawn_key=(p, i))`, p = 0 for train and 1 for eval, so training
and evaluation backgrounds never coincide and every (seed, split) replays exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium
import numpy as np

from common.cli import ConfigError
from common.envs.backgrounds import Background, BackgroundLibrary, procedural_background
from common.envs.pixels import AGENT, PixelMujocoEnv
from common.envs.spec import EnvConfig, Observation, Split

# Tasks with pixels and distractors. InvertedPendulum (pixels.py) has one action, too few for
# the action projection; it only serves the state-based expert trainer's tests.
TASKS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Humanoid-v5", "Ant-v5")
SPLIT_IDS = {"train": 0, "eval": 1}
NOISE_AR = 0.9  # step-to-step correlation of the background's own motion (smooth, not jittery)
WALK_STEP = 0.1  # random-walk step std as a fraction of the walk's bound


def action_projection(action_dim: int, seed: int) -> np.ndarray:
    """Fixed W (2, A) with orthogonal rows: u = W a has unit-variance, uncorrelated
    components when a is iid uniform in [-1, 1]^A (each a_j has variance 1/3)."""
    if action_dim < 2:
        raise ValueError("the action projection needs at least 2 action dimensions")
    columns, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((action_dim, 2)))
    return np.sqrt(3.0) * columns.T


class BackgroundMotion:
    """v_t = speed * (rho * W a_t + sqrt(1 - rho^2) * n_t), n_t = AR(1) with unit variance."""

    def __init__(self, projection: np.ndarray, rho: float, speed: float, rng: np.random.Generator) -> None:
        self.projection, self.rho, self.speed, self.rng = projection, rho, speed, rng
        self.noise = rng.standard_normal(2)

    def velocity(self, action: np.ndarray) -> np.ndarray:
        self.noise = NOISE_AR * self.noise + np.sqrt(1 - NOISE_AR**2) * self.rng.standard_normal(2)
        return self.speed * (self.rho * (self.projection @ action) + np.sqrt(1 - self.rho**2) * self.noise)


class BoundedWalk:
    """A random walk in [-scale, scale]^dim starting at a uniform random point."""

    def __init__(self, dim: int, scale: float, rng: np.random.Generator) -> None:
        self.scale, self.rng = scale, rng
        self.value = rng.uniform(-scale, scale, dim)

    def step(self) -> None:
        step = self.rng.normal(0.0, WALK_STEP * self.scale, self.value.shape)
        self.value = np.clip(self.value + step, -self.scale, self.scale)


def check_config(config: EnvConfig) -> None:
    """Raise a ValueError for settings the env cannot honour (`EnvConfig.validate`'s rules; a
    background folder is checked by `BackgroundLibrary` as the env opens it, with its own errors)."""
    try:
        config.validate()
    except ConfigError as exc:
        if exc.field != "background_dir":
            raise ValueError(str(exc)) from None


class DistractorEnv(gymnasium.Env[Observation, np.ndarray]):
    """One task behind one distractor, as a Gymnasium env: frames, ground-truth masks, states.

    Registered for every supported task as "MaskLAM/<task>" (factory.py), with `EnvConfig`'s
    fields as keyword settings and `split` picking the background split. Actions are in
    [-1, 1]^A (clipped), each held for the task's action repeat; `info["bg_velocity"]` is
    the background's on-screen motion during the step (zero at reset). Episodes are
    truncated after `max_episode_steps` decisions by the env itself (as a setting it travels
    in the spec's kwargs: `gymnasium.make`'s own `max_episode_steps` adds a TimeLimit).

    Seeding: `reset(seed=s)` starts episode 0 of seed s, each later `reset()` the next
    episode of the same seed; a first `reset()` without a seed draws one.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env_id: str = "HalfCheetah-v5", split: Split = "train", render_mode: str | None = None,
                 **settings: Any) -> None:
        config = _config(env_id, settings)
        check_config(config)
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {', '.join(SPLIT_IDS)}, not {split!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', not {render_mode!r}")
        self.config, self.split, self.render_mode = config, split, render_mode
        self.library = BackgroundLibrary(config.background_dir, config.render_size) if config.background_dir else None
        self.pixels = PixelMujocoEnv(config.env_id, config.render_size, config.action_repeat,
                                     config.max_episode_steps, config.terminate_when_unhealthy)
        try:
            self.projection = action_projection(self.pixels.action_dim, config.distractor_seed)
        except ValueError:
            self.pixels.close()
            raise
        self.action_dim = self.pixels.action_dim
        size = config.image_size
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self.observation_space = gymnasium.spaces.Dict({
            "pixels": gymnasium.spaces.Box(0, 255, (size, size, 3), np.uint8),
            "mask": gymnasium.spaces.Box(0, 1, (size, size), np.uint8),
            "state": gymnasium.spaces.Box(-np.inf, np.inf, (self.pixels.state_dim,), np.float32),
        })
        self.metadata = {**self.metadata, "render_fps": 1.0 / self.pixels.decision_seconds}
        self._factor = self.pixels.render_size // size
        # Share of the background in a pixel of each layer (SKY, FLOOR, AGENT).
        self._layer_weight = np.array([1.0, 1.0 - config.ground_alpha, 0.0], np.float32)
        self._seed: int | None = None
        self._episode = -1
        self._done = True
        self._background: Background | None = None
        self._frame: np.ndarray | None = None

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Observation, dict[str, Any]]:
        """Start the next episode (or episode 0 of a new `seed`); there are no options."""
        super().reset(seed=seed)
        if seed is not None or self._seed is None:
            self._seed, self._episode = self.np_random_seed, -1
        self._episode += 1
        episode = np.random.SeedSequence(self._seed, spawn_key=(SPLIT_IDS[self.split], self._episode))
        # One stream per process, so that switching one nuisance on leaves the others unchanged.
        physics, content, motion, shake, color = (np.random.default_rng(s) for s in episode.spawn(5))
        state = self.pixels.reset(seed=int(physics.integers(2**31)))
        mode, size = self.config.distractor, self.pixels.render_size
        if mode == "none":
            self._background = None
        elif self.library is not None:
            self._background = self.library.sample(self.split, content)
        else:
            self._background = procedural_background(size, content)
        pans = mode in ("exogenous", "correlated")
        self._offset = content.uniform(0, 1, 2) * self._background.period if pans else np.zeros(2)
        rho = self.config.rho if mode == "correlated" else 0.0
        speed = self.config.bg_speed * self._factor if pans else 0.0  # render pixels per step
        self._motion = BackgroundMotion(self.projection, rho, speed, motion)
        live = mode != "none"
        self._shake = BoundedWalk(2, self.config.camera_shake, shake) if live and self.config.camera_shake else None
        self._color = BoundedWalk(6, self.config.color_drift, color) if live and self.config.color_drift else None
        self._done = False
        return self._observe(state), {"bg_velocity": np.zeros(2, np.float32)}

    def step(self, action: np.ndarray) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Apply `action` in [-1, 1]^A for one decision."""
        if self._done:
            raise RuntimeError("call reset() before step(): the episode has not started or has ended")
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_dim), -1.0, 1.0)
        state, reward, terminated, truncated = self.pixels.step(action)
        velocity = self._motion.velocity(action)  # (dx, dy) in render pixels
        if self._background is not None:
            self._offset = self._offset - velocity[::-1]  # window moves against the content
            self._background.advance()
        for walk in (self._shake, self._color):
            if walk is not None:
                walk.step()
        self._done = terminated or truncated
        info = {"bg_velocity": (velocity / self._factor).astype(np.float32)}
        return self._observe(state), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The current frame, as the observation shows it (render_mode "rgb_array")."""
        if self.render_mode is None or self._frame is None:
            return None
        return self._frame.copy()

    def close(self) -> None:
        self.pixels.close()

    def _observe(self, state: np.ndarray) -> Observation:
        pan = (0.0, 0.0)
        if self._shake is not None:  # (right, up) in metres
            pan = (self._shake.value[0] * self.pixels.view_height, self._shake.value[1] * self.pixels.view_height)
        rgb, layers = self.pixels.render(pan)
        frame: np.ndarray = rgb
        if self._background is not None:
            background = self._background.window(self._offset, self.pixels.render_size)
            if self._color is not None:
                gain, shift = 1.0 + self._color.value[:3], 0.5 * self._color.value[3:]
                background = np.clip(background * gain.astype(np.float32) + shift.astype(np.float32), 0.0, 1.0)
            weight = self._layer_weight[layers][..., None]
            frame = rgb * (1.0 - weight) + (255.0 * weight) * background
        mask = layers == AGENT
        if self._factor > 1:
            frame, mask = _area_pool(frame, self._factor), _area_pool(mask, self._factor) >= 0.5
        if frame.dtype != np.uint8:
            frame = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        self._frame = frame
        return {"pixels": frame, "mask": mask.astype(np.uint8), "state": state}


def _config(env_id: str, settings: dict[str, Any]) -> EnvConfig:
    """`EnvConfig` from keyword settings, naming the valid ones when one is unknown."""
    known = {f.name for f in dataclasses.fields(EnvConfig)} - {"env_id"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown env setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return EnvConfig(env_id=env_id, **settings)


def _area_pool(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (area downsampling), as float32."""
    h, w = image.shape[:2]
    blocks = image.reshape(h // factor, factor, w // factor, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)
