"""A Gymnasium MuJoCo task seen through a tracking camera: RGB frame plus per-pixel layers.

We render with `mujoco.Renderer` ourselves instead of gym's renderer so that we control
the camera, the render flags that dominate CPU cost, and can take the segmentation from
the very same scene as the colour image (one `update_scene`, two `render` calls). The
segmentation is reduced to three layers: sky (nothing hit), floor (geoms of the world
body) and agent (every other geom), which is all the distractors need to composite.

Framing. Gym's default distances leave the agent at 2-4 % of a 64x64 frame. The
per-task views below zoom in until the agent is as large as it can be while staying
(almost) entirely in view, as the Distracting Control Suite framing does. Thin upright
stick figures cannot fill 10 % of a square frame without leaving it: Hopper and Walker
sit a little below that and, standing, already lose the top centimetres of the torso. Coverage is the mean agent-mask fraction at 64x64 over 200 decisions
of uniformly random actions (resetting on termination), from `coverage` in
scripts/env_gallery.py (distance in m, elevation in degrees, lift in m):

    ============== ======== ========= ==== ======== ==============
    task           distance elevation lift coverage action repeat
    ============== ======== ========= ==== ======== ==============
    HalfCheetah-v5 1.8      -10       0.0  11.4 %   1 (0.050 s)
    Hopper-v5      1.8      -10       0.2   8.3 %   4 (0.032 s)
    Walker2d-v5    1.8      -10       0.2   9.1 %   2 (0.016 s)
    Humanoid-v5    2.0      -10       0.0  10.5 %   2 (0.030 s)
    Ant-v5         2.6      -20       0.0  14.2 %   1 (0.050 s)
    ============== ======== ========= ==== ======== ==============

Action repeat. Gym already holds each action for `frame_skip` physics steps; on top of
that we hold it for `action_repeat` gym steps so that one decision moves the agent
visibly (a fifth to a half of its mask area changes under random actions) without the
motion becoming a blur. HalfCheetah's gym step (0.05 s) is already there; Hopper's and
Walker's 0.008 s steps move the agent by a pixel or two and the action's effect is
barely visible, so they repeat 4 and 2 (Walker's six actuators move it faster).
Humanoid (0.015 s gym steps) repeats 2, Ant (0.05 s) is used as is.

Models. HalfCheetah loads our copy of gym's model (assets/half_cheetah.xml), identical
once compiled but without the deprecated `settotalmass` that MuJoCo warns about.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import gymnasium
import mujoco
import numpy as np

SKY, FLOOR, AGENT = 0, 1, 2  # values of the layer image
ASSETS = Path(__file__).parent / "assets"
_GEOM = int(mujoco.mjtObj.mjOBJ_GEOM)  # a plain int: comparing arrays to the enum is slow


@dataclass(frozen=True)
class TaskView:
    """How one task is filmed and how long one decision lasts."""

    action_repeat: int  # gym steps per decision
    distance: float  # camera distance from the agent's centre of mass (m)
    elevation: float  # degrees, negative looks down
    lift: float  # metres the view is raised above the centre of mass (tall agents)
    track_body: str = "torso"  # the body whose subtree the camera follows
    xml_file: str | None = None  # our copy of the task's model in assets/, where gym's needs a fix


TASK_VIEWS: dict[str, TaskView] = {
    "HalfCheetah-v5": TaskView(action_repeat=1, distance=1.8, elevation=-10.0, lift=0.0,
                               xml_file="half_cheetah.xml"),
    "Hopper-v5": TaskView(action_repeat=4, distance=1.8, elevation=-10.0, lift=0.2),
    "Walker2d-v5": TaskView(action_repeat=2, distance=1.8, elevation=-10.0, lift=0.2),
    "Humanoid-v5": TaskView(action_repeat=2, distance=2.0, elevation=-10.0, lift=0.0),
    "Ant-v5": TaskView(action_repeat=1, distance=2.6, elevation=-20.0, lift=0.0),
    # A small, fast task for tests of the RL code (the expert trainer reaches its maximum quickly).
    "InvertedPendulum-v5": TaskView(action_repeat=1, distance=2.0, elevation=-10.0, lift=0.0, track_body="cart"),
}


def task_view(env_id: str) -> TaskView:
    """The framing of `env_id`; a ValueError naming the supported tasks otherwise."""
    if env_id not in TASK_VIEWS:
        raise ValueError(f"unsupported env id {env_id!r}; supported: {', '.join(TASK_VIEWS)}")
    return TASK_VIEWS[env_id]


def has_health_check(env_id: str) -> bool:
    """Whether the Gymnasium task can end an episode when the agent falls (its env takes
    `terminate_when_unhealthy`), read from its signature without making it."""
    creator = gymnasium.envs.registration.load_env_creator(gymnasium.spec(env_id).entry_point)
    return "terminate_when_unhealthy" in inspect.signature(creator).parameters


def make_gym_env(env_id: str, terminate_when_unhealthy: bool = True) -> gymnasium.Env:
    """The bare Gymnasium task (no time limit); `terminate_when_unhealthy=False` keeps a
    fallen Hopper or Walker going, which only tasks with a health check accept."""
    options = {} if terminate_when_unhealthy else {"terminate_when_unhealthy": False}
    view = task_view(env_id)
    if view.xml_file is not None:
        options["xml_file"] = str(ASSETS / view.xml_file)
    try:
        return gymnasium.make(env_id, disable_env_checker=True, **options).unwrapped
    except TypeError as error:
        raise ValueError(f"{env_id} has no health check; drop --no-terminate-when-unhealthy for it") from error


def _load_triton_before_mesa() -> None:
    """Load Triton now if this process uses torch and has it.

    Mesa's software GL (loaded with the first renderer) and Triton (loaded by torch's
    optimisers) each bring their own LLVM; if Mesa comes first, loading Triton crashes the
    process with a segmentation fault, while the other order works. Processes that train
    with torch import it before they build an env, so this covers them; processes without
    torch (the actors) load neither.
    """
    if "torch" in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


class PixelMujocoEnv:
    """One task, stepped in decisions of `action_repeat` gym steps and rendered on demand.

    Actions are in [-1, 1]^A and scaled to the task's action space. Rewards are summed
    over the repeats, which stop early on termination; an episode is truncated after
    `max_episode_steps` decisions (gym's own time limit is not used, it counts gym steps).
    """

    def __init__(self, env_id: str, render_size: int = 64, action_repeat: int = 0,
                 max_episode_steps: int = 1000, terminate_when_unhealthy: bool = True) -> None:
        self.view = task_view(env_id)
        self.render_size = render_size
        self.action_repeat = action_repeat or self.view.action_repeat
        self.max_episode_steps = max_episode_steps
        self._env = make_gym_env(env_id, terminate_when_unhealthy)
        self.model: mujoco.MjModel = self._env.model
        self.data: mujoco.MjData = self._env.data
        self.action_dim = int(self._env.action_space.shape[0])
        self.state_dim = int(self._env.observation_space.shape[0])
        self.decision_seconds = float(self._env.dt) * self.action_repeat
        self._low = self._env.action_space.low.astype(np.float64)
        self._high = self._env.action_space.high.astype(np.float64)
        self._steps = 0

        # Multisampling and these three effects cost 10-30x the rest of a 64x64 render on a CPU.
        self.model.vis.quality.offsamples = 0
        # A plane's third size is only its rendering grid; Hopper's 0.125 m grid draws ~10^5
        # quads per frame (4x the whole render) and looks the same at 1 m. Set before the
        # renderer: the context bakes plane geometry when it is created.
        planes = self.model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE
        self.model.geom_size[planes, 2] = np.maximum(self.model.geom_size[planes, 2], 1.0)
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, render_size)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, render_size)
        _load_triton_before_mesa()
        try:
            self.renderer = mujoco.Renderer(self.model, render_size, render_size)
        except Exception as error:  # mujoco raises FatalError or RuntimeError, by backend
            raise RuntimeError(
                f"MuJoCo could not create an OpenGL context ({error}). Headless machines need "
                "MUJOCO_GL=egl (GPU or Mesa) or osmesa, set before mujoco is first imported: "
                "import common.envs before mujoco or gymnasium's MuJoCo envs, or export it") from error
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            self.renderer.scene.flags[flag] = 0
        # Free the GL context before interpreter teardown (OSMesa errors out otherwise).
        self._finalizer = weakref.finalize(self, self.renderer.close)

        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        self.camera.trackbodyid = self.model.body(self.view.track_body).id  # follows that subtree's centre of mass
        self.camera.distance = self.view.distance
        self.camera.elevation = self.view.elevation
        self.camera.azimuth = 90.0  # side view: the agent moves left to right
        self.view_height = 2.0 * self.view.distance * np.tan(np.radians(self.model.vis.global_.fovy) / 2)

        # Layer of each segmentation id: index 0 is "nothing hit", index 1 + g is geom g.
        self._geom_layer = np.concatenate(
            [[SKY], np.where(self.model.geom_bodyid == 0, FLOOR, AGENT)]).astype(np.uint8)

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode whose initial-state noise comes from `seed`; returns the state."""
        state, _ = self._env.reset(seed=seed)
        self._steps = 0
        return state.astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Hold `action` for `action_repeat` gym steps: (state, reward, terminated, truncated)."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        scaled = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        reward, terminated = 0.0, False
        for _ in range(self.action_repeat):
            state, r, terminated, _, _ = self._env.step(scaled)
            reward += float(r)
            if terminated:
                break
        self._steps += 1
        truncated = not terminated and self._steps >= self.max_episode_steps
        return state.astype(np.float32), reward, bool(terminated), truncated

    def render(self, pan: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (R, R, 3) and layers uint8 (R, R) in {SKY, FLOOR, AGENT}.

        `pan` (right, up) in metres moves the camera parallel to the image plane (camera
        shake); the task's `lift` is added to it.
        """
        self.renderer.update_scene(self.data, self.camera)
        right_m, up_m = pan[0], pan[1] + self.view.lift
        if right_m or up_m:
            for gl_camera in self.renderer.scene.camera:
                forward, up = np.array(gl_camera.forward), np.array(gl_camera.up)
                gl_camera.pos = np.array(gl_camera.pos) + right_m * np.cross(forward, up) + up_m * up
        rgb = self.renderer.render()
        self.renderer.enable_segmentation_rendering()
        try:
            segmentation = self.renderer.render()
        finally:
            self.renderer.disable_segmentation_rendering()
        objid, objtype = segmentation[..., 0], segmentation[..., 1]
        is_geom = objtype == _GEOM
        layers = self._geom_layer[np.where(is_geom, objid + 1, 0)]
        # Anything hit that is not a geom (none in the supported tasks) counts as agent.
        layers[(objid >= 0) & ~is_geom] = AGENT
        return rgb, layers

    def close(self) -> None:
        self._finalizer()
        self._env.close()
