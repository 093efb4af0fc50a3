"""The distractor envs, with real MuJoCo rendering: the Gymnasium API, frames, masks,
motion, seeds, content, and the model and import hygiene behind them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import common.envs  # noqa: F401  (first: sets MUJOCO_GL before mujoco is imported)
import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from PIL import Image

from common.envs import TASKS, EnvConfig, env_spec, gym_id, make_env
from common.envs.backgrounds import Background
from common.envs.pixels import ASSETS

FRAMED_TASKS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")  # the tasks the framing was tuned for


class Step(NamedTuple):
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    bg_velocity: np.ndarray


def rollout(config: EnvConfig, steps: int, seed: int = 0, split: str = "train"):
    """Observations and steps of one env under iid uniform actions (resetting on episode end)."""
    env = make_env(config, split)
    rng = np.random.default_rng(0)
    observations, results = [env.reset(seed=seed)[0]], []
    for _ in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape[0])
        observation, reward, terminated, truncated, info = env.step(action)
        results.append(Step(action, reward, terminated, truncated, info["bg_velocity"]))
        observations.append(observation)
        if terminated or truncated:
            observations.append(env.reset()[0])
    env.close()
    return observations, results


def write_backgrounds(folder: Path) -> Path:
    """A tiny background folder: two stills and one three-frame clip."""
    rng = np.random.default_rng(9)
    (folder / "clip").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / name)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "clip" / f"{k}.png")
    return folder


@pytest.mark.parametrize("mode", ["none", "exogenous", "correlated", "video"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_and_mode_passes_gymnasiums_env_checker(task: str, mode: str, tmp_path) -> None:
    background_dir = str(write_backgrounds(tmp_path)) if mode == "video" else None
    env = gymnasium.make(gym_id(task), distractor=mode, background_dir=background_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # every check, the render and close checks included
    # The proprioceptive state is unbounded, as in gym's own MuJoCo tasks: the checker says so.
    assert [str(w.message) for w in caught if "infinity" not in str(w.message)] == []
    observation, info = env.reset(seed=0)
    for _ in range(5):
        assert observation in env.observation_space and info["bg_velocity"].shape == (2,)
        observation, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not (terminated or truncated)
    assert observation in env.observation_space
    env.close()


def test_gymnasium_make_takes_the_settings_as_keywords() -> None:
    env = gymnasium.make("MaskLAM/Hopper-v5", distractor="correlated", rho=0.25, image_size=32, render_size=64,
                         split="eval")
    assert env.unwrapped.config == EnvConfig(env_id="Hopper-v5", distractor="correlated", rho=0.25, image_size=32,
                                             render_size=64)
    assert env.unwrapped.split == "eval" and env.spec.kwargs["rho"] == 0.25
    assert env.observation_space["pixels"].shape == (32, 32, 3) and env.action_space.shape == (3,)
    observation, _ = env.reset(seed=1)
    assert {k: (v.dtype, v.shape) for k, v in observation.items()} == {
        "pixels": (np.uint8, (32, 32, 3)), "mask": (np.uint8, (32, 32)), "state": (np.float32, (11,))}
    env.close()
    # make_env records every setting in the spec, so the spec alone rebuilds the same env.
    config = EnvConfig(env_id="Walker2d-v5", distractor="exogenous", max_episode_steps=7, bg_speed=1.0)
    env = make_env(config, "eval")
    again = gymnasium.make(env.spec)
    assert again.unwrapped.config == config and again.unwrapped.split == "eval"
    first, again_first = env.reset(seed=4)[0], again.reset(seed=4)[0]
    assert all(np.array_equal(first[k], again_first[k]) for k in first)
    env.close()
    again.close()
    with pytest.raises(ValueError, match="unknown env setting.*rhoo.*valid:.*rho"):
        gymnasium.make("MaskLAM/HalfCheetah-v5", rhoo=0.5)


def test_a_vector_env_steps_the_tasks() -> None:
    envs = gymnasium.make_vec(gym_id("HalfCheetah-v5"), num_envs=2, vectorization_mode="sync", distractor="exogenous")
    observations, _ = envs.reset(seed=[1, 2])
    assert observations["pixels"].shape == (2, 64, 64, 3)
    assert not np.array_equal(observations["pixels"][0], observations["pixels"][1])
    observations, rewards, _, _, infos = envs.step(envs.action_space.sample())
    assert observations["mask"].shape == (2, 64, 64) and rewards.shape == (2,) and infos["bg_velocity"].shape == (2, 2)
    envs.close()


def test_our_half_cheetah_model_is_gyms_without_the_deprecated_settotalmass(capfd) -> None:
    gym_xml = Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "half_cheetah.xml"
    with pytest.warns(UserWarning, match="settotalmass"):  # gym's model, compiled as gym loads it
        theirs = mujoco.MjSpec.from_file(str(gym_xml)).compile()
    ours = mujoco.MjModel.from_xml_path(str(ASSETS / "half_cheetah.xml"))
    arrays = [name for name in dir(theirs) if isinstance(getattr(theirs, name, None), np.ndarray)]
    assert len(arrays) > 100
    assert [n for n in arrays if not np.array_equal(getattr(theirs, n), getattr(ours, n), equal_nan=True)] == []
    for name in ("meanmass", "meaninertia", "meansize", "extent"):
        assert getattr(theirs.stat, name) == getattr(ours.stat, name), name
    capfd.readouterr()
    make_env(EnvConfig(env_id="HalfCheetah-v5")).close()
    assert "settotalmass" not in capfd.readouterr().err


def test_importing_the_envs_loads_neither_torch_nor_triton() -> None:
    code = "import sys, common.envs; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'triton'}))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def project(env, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, pixels per metre) in the env's image of world points, from the scene's camera
    (a square frame: the frustum's half-width equals its half-height)."""
    camera = env.unwrapped.pixels.renderer.scene.camera[0]
    pos, forward, up = np.array(camera.pos), np.array(camera.forward), np.array(camera.up)
    right = np.cross(forward, up)
    rel = np.atleast_2d(points) - pos
    depth, x, y = rel @ forward, rel @ right, rel @ up
    height = camera.frustum_top - camera.frustum_bottom
    size = env.observation_space["pixels"].shape[0]
    col = ((x * camera.frustum_near / depth - camera.frustum_center) / height + 0.5) * size
    row = (camera.frustum_top - y * camera.frustum_near / depth) / height * size
    return row, col, camera.frustum_near / depth / height * size


@pytest.mark.parametrize("task", FRAMED_TASKS)
def test_frames_and_masks_follow_the_agent_geometry(task: str) -> None:
    env = make_env(EnvConfig(env_id=task, distractor="exogenous"))
    rng = np.random.default_rng(1)
    obs, _ = env.reset(seed=1)
    pixels = env.unwrapped.pixels
    model, data = pixels.model, pixels.data
    agent_geoms = np.flatnonzero(model.geom_bodyid != 0)
    grid_rows, grid_cols = np.mgrid[0:64, 0:64] + 0.5
    for step in range(12):
        frame, mask = obs["pixels"], obs["mask"]
        assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)
        assert frame.std() > 10, "blank frame"
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert mask.sum() > 20
        # The torso's projection lies on the mask.
        row, col, _ = project(env, data.xpos[pixels.camera.trackbodyid])
        r, c = int(row[0]), int(col[0])
        assert 0 <= r < 64 and 0 <= c < 64
        assert mask[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any(), f"no agent at the torso (step {step})"
        # Every mask pixel lies within the projected bounding sphere of some agent geom.
        rows, cols, scale = project(env, data.geom_xpos[agent_geoms])
        radius = model.geom_rbound[agent_geoms] * scale * 1.1 + 1.5
        near_agent = ((grid_rows[..., None] - rows) ** 2 + (grid_cols[..., None] - cols) ** 2 < radius**2).any(-1)
        assert not mask[~near_agent].any(), f"mask pixels away from the agent (step {step})"
        obs, _, terminated, _, _ = env.step(rng.uniform(-1, 1, env.action_space.shape[0]))
        if terminated:
            obs, _ = env.reset()
    env.close()


@pytest.mark.parametrize("task", FRAMED_TASKS)
def test_agent_coverage_is_in_the_framing_band(task: str) -> None:
    # 10-25 % is the target; thin Hopper/Walker bodies stay near 8-9 % inside a square frame.
    observations, _ = rollout(EnvConfig(env_id=task, distractor="none"), steps=40)
    coverage = np.mean([o["mask"].mean() for o in observations])
    assert 0.07 < coverage < 0.30, coverage


def velocity_and_projected_action(mode: str, steps: int = 500) -> tuple[np.ndarray, np.ndarray]:
    config = EnvConfig(env_id="HalfCheetah-v5", distractor=mode, rho=0.5, max_episode_steps=10_000)
    env = make_env(config)
    env.reset(seed=2)
    rng = np.random.default_rng(2)
    velocities, projected = [], []
    for _ in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape[0])
        velocities.append(env.step(action)[4]["bg_velocity"])
        projected.append(env.unwrapped.projection @ action)
    env.close()
    return np.array(velocities), np.array(projected)


def test_correlated_background_motion_has_correlation_rho() -> None:
    velocity, u = velocity_and_projected_action("correlated")
    # Both axes pooled: 1000 pairs put +-0.1 at over 3 standard errors.
    corr = np.corrcoef(velocity.ravel(), u.ravel())[0, 1]
    assert abs(corr - 0.5) < 0.1, corr
    assert np.allclose(u.std(axis=0), 1.0, atol=0.15), "u = W a should have unit variance"
    assert np.allclose(velocity.std(axis=0), 2.0, rtol=0.3), "bg_velocity should be in image pixels (bg_speed 2)"


def test_exogenous_background_motion_ignores_the_action() -> None:
    velocity, u = velocity_and_projected_action("exogenous")
    corr = np.corrcoef(velocity.ravel(), u.ravel())[0, 1]
    assert abs(corr) < 0.1, corr
    assert velocity.std() > 1.0


def test_bg_velocity_is_the_on_screen_motion_of_the_background(tmp_path) -> None:
    # A blocky still, panned: the sky (top rows) of frame t+1 is frame t moved by bg_velocity.
    rng = np.random.default_rng(0)
    texture = np.kron(rng.integers(0, 256, (16, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    Image.fromarray(texture).save(tmp_path / "still.png")
    config = EnvConfig(env_id="HalfCheetah-v5", distractor="exogenous", background_dir=str(tmp_path))
    observations, results = rollout(config, steps=10)
    checked = 0
    for t, step in enumerate(results):
        before, after = observations[t], observations[t + 1]
        velocity = step.bg_velocity
        if before["mask"][:15].any() or after["mask"][:15].any() or np.abs(velocity).max() > 4:
            continue  # only rows 0-14 are sure to be sky; the search covers shifts up to 4
        errors = {(dx, dy): np.abs(after["pixels"][4 + dy:10 + dy, 8 + dx:56 + dx].astype(float)
                                   - before["pixels"][4:10, 8:56]).mean()
                  for dx in range(-6, 7) for dy in range(-4, 5)}
        best = np.array(min(errors, key=errors.get))
        assert np.all(np.abs(best - velocity) <= 1.0), (best, velocity)
        checked += 1
    assert checked >= 5 and np.abs([r.bg_velocity for r in results]).max() > 1.0


def test_none_mode_has_no_background_motion() -> None:
    _, results = rollout(EnvConfig(env_id="Walker2d-v5", distractor="none"), steps=5)
    assert all(np.array_equal(r.bg_velocity, np.zeros(2, np.float32)) for r in results)


def test_train_and_eval_backgrounds_differ_and_seeds_replay() -> None:
    config = EnvConfig(env_id="HalfCheetah-v5", distractor="exogenous")
    train_a, _ = rollout(config, steps=5, seed=3, split="train")
    train_b, _ = rollout(config, steps=5, seed=3, split="train")
    evaluation, _ = rollout(config, steps=5, seed=3, split="eval")
    assert all(np.array_equal(a["pixels"], b["pixels"]) for a, b in zip(train_a, train_b))
    assert np.abs(train_a[0]["pixels"].astype(int) - evaluation[0]["pixels"].astype(int)).mean() > 5

    env = make_env(config)
    first = env.reset(seed=3)[0]["pixels"]
    second = env.reset()[0]["pixels"]  # next episode: new background
    replay = env.reset(seed=3)[0]["pixels"]  # episode 0 again
    env.close()
    assert np.array_equal(first, train_a[0]["pixels"]) and np.array_equal(replay, first)
    assert not np.array_equal(first, second)


def test_mask_does_not_depend_on_the_distractor() -> None:
    masks = {}
    for mode in ("none", "exogenous", "correlated"):
        observations, _ = rollout(EnvConfig(env_id="Walker2d-v5", distractor=mode), steps=10, seed=4)
        masks[mode] = np.stack([o["mask"] for o in observations])
        frames = np.stack([o["pixels"] for o in observations])
        if mode == "none":
            clean = frames
        else:
            assert not np.array_equal(frames, clean)
    assert np.array_equal(masks["none"], masks["exogenous"]) and np.array_equal(masks["none"], masks["correlated"])


def test_camera_shake_moves_the_view_and_colour_drift_only_the_background() -> None:
    base = dict(env_id="HalfCheetah-v5", distractor="exogenous")
    plain, plain_steps = rollout(EnvConfig(**base), steps=8, seed=7)
    shaken, shaken_steps = rollout(EnvConfig(**base, camera_shake=0.1), steps=8, seed=7)
    drifted, _ = rollout(EnvConfig(**base, color_drift=0.3), steps=8, seed=7)

    def centroid(mask: np.ndarray) -> np.ndarray:
        return np.argwhere(mask).mean(axis=0)

    shifts = np.array([centroid(s["mask"]) - centroid(p["mask"]) for p, s in zip(plain, shaken)])
    assert np.abs(shifts).max() > 0.5, "camera shake did not move the view"
    assert np.abs(shifts).max() < 0.1 * 64 + 3, "camera shake beyond its bound (0.1 of the frame)"
    # Each nuisance has its own random stream: shaking leaves the background motion alone.
    assert all(np.array_equal(a.bg_velocity, b.bg_velocity) for a, b in zip(plain_steps, shaken_steps))
    background_change = []
    for p, d in zip(plain, drifted):
        agent = p["mask"] == 1
        assert np.array_equal(p["mask"], d["mask"]) and np.array_equal(p["pixels"][agent], d["pixels"][agent])
        background_change.append(np.abs(p["pixels"][~agent].astype(int) - d["pixels"][~agent]).mean())
    assert min(background_change) > 2, background_change


def test_render_size_is_area_downsampled() -> None:
    small, _ = rollout(EnvConfig(env_id="HalfCheetah-v5", render_size=64, distractor="none"), steps=5)
    large, _ = rollout(EnvConfig(env_id="HalfCheetah-v5", render_size=128, image_size=64, distractor="none"), steps=5)
    for a, b in zip(small, large):
        assert b["pixels"].shape == (64, 64, 3) and b["mask"].shape == (64, 64)
        assert set(np.unique(b["mask"])) <= {0, 1}
        iou = (a["mask"] & b["mask"]).sum() / (a["mask"] | b["mask"]).sum()
        assert iou > 0.7, iou
    with pytest.raises(ValueError, match="multiple"):
        make_env(EnvConfig(render_size=100, image_size=64))


def write_clip(folder, colours: list[int]) -> None:
    folder.mkdir()
    for k, grey in enumerate(colours):
        Image.fromarray(np.full((40, 60, 3), grey, np.uint8)).save(folder / f"{k:05d}.png")


def test_video_mode_plays_clips_back_and_forth(tmp_path) -> None:
    write_clip(tmp_path / "clip_a", [10, 60, 110, 160])
    write_clip(tmp_path / "clip_b", [30, 80, 130, 180])
    config = EnvConfig(env_id="HalfCheetah-v5", distractor="video", background_dir=str(tmp_path))
    for split, colours in (("train", [10, 60, 110, 160]), ("eval", [30, 80, 130, 180])):
        observations, results = rollout(config, steps=12, split=split)
        sky = [int(o["pixels"][0, 0, 0]) for o in observations]  # top-left pixel: sky
        assert set(sky) <= set(colours), (split, sky)
        index = np.array([colours.index(s) for s in sky])
        assert np.all(np.abs(np.diff(index)) == 1), index  # one frame per step
        turns = np.flatnonzero(np.diff(np.sign(np.diff(index))) != 0) + 1
        assert all(index[t] in (0, len(colours) - 1) for t in turns), index  # reversing only at the ends
        assert all(np.array_equal(r.bg_velocity, np.zeros(2, np.float32)) for r in results)


def test_stills_are_static_in_video_mode_and_panned_in_exogenous(tmp_path) -> None:
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(tmp_path / name)
    for mode, static in (("video", True), ("exogenous", False)):
        config = EnvConfig(env_id="HalfCheetah-v5", distractor=mode, background_dir=str(tmp_path))
        observations, _ = rollout(config, steps=4)
        skies = [o["pixels"][:10].astype(int) for o in observations]
        moved = max(np.abs(s - skies[0]).mean() for s in skies[1:])
        assert (moved < 1.0) == static, (mode, moved)


def test_background_dir_errors_are_clear(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make_env(EnvConfig(distractor="video", background_dir=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*expected"):
        make_env(EnvConfig(distractor="exogenous", background_dir=str(empty)))
    with pytest.raises(ValueError, match="background-dir"):
        make_env(EnvConfig(distractor="video"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not an image")
    env = make_env(EnvConfig(distractor="video", background_dir=str(broken)))
    with pytest.raises(ValueError, match="bad.png"):
        env.reset()
    env.close()


def test_unknown_task_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="HalfCheetah-v5.*Hopper-v5.*Walker2d-v5"):
        make_env(EnvConfig(env_id="CartPole-v1"))


def test_episodes_truncate_after_max_episode_steps() -> None:
    env = make_env(EnvConfig(env_id="HalfCheetah-v5", distractor="none", max_episode_steps=3))
    env.reset(seed=0)
    flags = [env.step(np.zeros(6))[3] for _ in range(3)]
    assert flags == [False, False, True]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(6))
    env.close()


def test_env_spec_records_the_resolved_settings() -> None:
    config = EnvConfig(env_id="Hopper-v5", distractor="correlated", rho=0.3)
    spec = env_spec(config)
    env = make_env(config)
    assert spec["action_repeat"] == env.unwrapped.pixels.action_repeat > 1
    assert (spec["action_dim"],) == env.action_space.shape
    assert (spec["state_dim"],) == env.observation_space["state"].shape
    assert spec["image_size"] == env.observation_space["pixels"].shape[0] and spec["distractor"]["rho"] == 0.3
    assert env.reset(seed=0)[0]["state"].shape == (spec["state_dim"],)
    env.close()
    assert json.loads(json.dumps(spec)) == spec


def test_background_window_moves_content_by_the_offset() -> None:
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    background = Background(frames, mirror=True, rng=rng)
    view = background.window(np.array([3.0, 4.0]), 16)
    assert np.allclose(view, frames[0, 3:19, 4:20] / 255, atol=1e-6)
    moved = background.window(np.array([3.0 - 2, 4.0 - 5]), 16)  # content moves down 2, right 5
    assert np.allclose(moved[2:, 5:], view[:-2, :-5], atol=1e-6)
    half = background.window(np.array([3.5, 4.0]), 16)  # sub-pixel: halfway between rows
    assert np.allclose(half[:-1], (view[:-1] + view[1:]) / 2, atol=1e-5)
    wrapped = background.window(np.array([15.0, 0.0]), 16)  # past the bottom: mirrored, no seam
    assert np.allclose(wrapped[4], frames[0, 19, :16] / 255) and np.allclose(wrapped[5], frames[0, 19, :16] / 255)


def test_unhealthy_termination_can_be_turned_off_for_tasks_with_a_health_check():
    def decisions_until_termination(config: EnvConfig, limit: int = 150) -> int:
        env = make_env(config)
        env.reset(seed=3)
        rng = np.random.default_rng(0)
        for step in range(1, limit + 1):
            if env.step(rng.uniform(-1, 1, env.action_space.shape[0]))[2]:
                env.close()
                return step
        env.close()
        return limit + 1  # never terminated

    hopper = EnvConfig(env_id="Hopper-v5", distractor="none", max_episode_steps=1000)
    assert decisions_until_termination(hopper) < 150  # random actions topple it
    assert decisions_until_termination(dataclasses.replace(hopper, terminate_when_unhealthy=False)) == 151
    with pytest.raises(ValueError, match="no health check"):
        make_env(EnvConfig(env_id="HalfCheetah-v5", terminate_when_unhealthy=False))
