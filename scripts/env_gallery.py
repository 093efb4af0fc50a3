"""Look at the envs: a PNG grid of frames and agent masks per task and distractor mode.

Each row is one task in one mode, run with uniformly random actions; each column pair
shows a frame and the same frame with its ground-truth mask in red. It also prints the
agent coverage (mean mask fraction) per task, the figure the camera framing is tuned for.

    python scripts/env_gallery.py [--out docs/env_gallery.png] [--background-dir DIR]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.envs import EnvConfig, make_env  # noqa: E402  (sets MUJOCO_GL before mujoco loads)
from common.cli import run_main  # noqa: E402
from common.config import parse  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TASKS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")


def frames_and_masks(config: EnvConfig, seed: int, times: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, mask) at the given decision indices of one random-action episode."""
    env = make_env(config)
    rng = np.random.default_rng(seed)
    (obs, _), shots = env.reset(seed=seed), []
    for t in range(max(times) + 1):
        if t in times:
            shots.append((obs["pixels"], obs["mask"]))
        if t < max(times):
            obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape[0]))
            if terminated or truncated:
                obs, _ = env.reset()
    env.close()
    return shots


def coverage(env_id: str, image_size: int, decisions: int = 200, seed: int = 0) -> float:
    """Mean agent-mask fraction over random-action decisions (resetting on termination)."""
    config = EnvConfig(env_id=env_id, distractor="none", image_size=image_size, render_size=image_size)
    env = make_env(config)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    fractions = []
    for _ in range(decisions):
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape[0]))
        fractions.append(obs["mask"].mean())
        if terminated or truncated:
            env.reset()
    env.close()
    return float(np.mean(fractions))


def overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    tinted = frame.astype(np.float32)
    tinted[mask == 1] = 0.4 * tinted[mask == 1] + 0.6 * np.array([255.0, 0.0, 0.0])
    return tinted.astype(np.uint8)


@dataclass
class GalleryConfig:
    """Look at the envs: a PNG grid of frames and agent masks per task and distractor mode."""

    out: str = "docs/env_gallery.png"
    background_dir: str | None = field(default=None, metadata={"help": "also show the video mode with these clips"})
    image_size: int = 64
    seed: int = 0


def main(argv: list[str] | None = None) -> int:
    args = parse(GalleryConfig, argv, "scripts/env_gallery.py")

    modes = ["none", "exogenous", "correlated"] + (["video"] if args.background_dir else [])
    times = [0, 4, 8, 12]
    rows = [(task, mode) for task in TASKS for mode in modes]
    fig, axes = plt.subplots(len(rows), 2 * len(times), figsize=(2 * len(times) * 1.1, len(rows) * 1.2))
    for r, (task, mode) in enumerate(rows):
        config = EnvConfig(env_id=task, distractor=mode, image_size=args.image_size,
                           render_size=args.image_size, background_dir=args.background_dir)
        for c, (frame, mask) in enumerate(frames_and_masks(config, args.seed, times)):
            axes[r, 2 * c].imshow(frame, interpolation="nearest")
            axes[r, 2 * c + 1].imshow(overlay(frame, mask), interpolation="nearest")
            axes[0, 2 * c].set_title(f"t={times[c]}", fontsize=7)
            axes[0, 2 * c + 1].set_title("mask", fontsize=7)
        axes[r, 0].set_ylabel(f"{task.removesuffix('-v5')}\n{mode}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")

    print(f"\n{'task':<16} agent coverage ({args.image_size}x{args.image_size}, 200 random decisions)")
    for task in TASKS:
        print(f"{task:<16} {100 * coverage(task, args.image_size):5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
