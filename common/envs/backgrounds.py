"""Background content for the distractors: what is shown behind the agent.

Content is kept apart from motion (distractors.py decides how a background moves). A
`Background` is a stack of frames (one for a still or the procedural texture, several
for a clip) seen through a square window at any sub-pixel offset. The content wraps so
it can be panned forever without a seam: the procedural texture is periodic by
construction, loaded images are mirrored at their edges (by index arithmetic, no copy).

Two sources:
- `procedural_background`: smooth, natural-image-like coloured noise (a 1/f^beta
  spectrum, as natural images have) on a canvas 3x the frame, with soft sprites that
  drift with their own velocities. New content for every episode's generator.
- `BackgroundLibrary`: a folder of still images and/or sub-folders of frames (clips),
  split deterministically into train and evaluation items.

Everything per episode is precomputed; a step is one gather and a few small blends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.envs.spec import Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
EVAL_EVERY = 5  # with >= 2 items, every 5th (counted from the last) is an evaluation item
# Decoded items kept per library, so that frequent resets (random policies fall within a few
# steps) do not decode a clip every time. DAVIS-2017 train at 64 px is about 50 MB.
CACHE_BYTES = 256 * 2**20


@dataclass
class Sprites:
    """Soft shapes living on the canvas, each with its own colour and velocity."""

    alphas: list[np.ndarray]  # per sprite (h, w) float32 opacity in [0, 1]
    colors: np.ndarray  # (n, 3) float32 in [0, 1]
    positions: np.ndarray  # (n, 2) top-left corner (row, col) in canvas pixels
    velocities: np.ndarray  # (n, 2) canvas pixels per step


class Background:
    """Frames (N, H, W, 3) uint8 played back and forth, sampled through a moving window."""

    def __init__(self, frames: np.ndarray, mirror: bool, rng: np.random.Generator,
                 sprites: Sprites | None = None) -> None:
        self.frames = np.ascontiguousarray(frames)  # gathers from a strided array are 10x slower
        self.mirror = mirror
        self.sprites = sprites
        # As the Distracting Control Suite: random start and direction, reversing at the ends.
        self.index = int(rng.integers(len(frames)))
        self.direction = 1 if rng.random() < 0.5 else -1

    @property
    def period(self) -> tuple[int, int]:
        """Size after which the content repeats (mirrored content repeats at twice its size)."""
        h, w = self.frames.shape[1:3]
        return (2 * h, 2 * w) if self.mirror else (h, w)

    def advance(self) -> None:
        """Move to the next frame of a clip and move the sprites."""
        if len(self.frames) > 1:
            if not 0 <= self.index + self.direction < len(self.frames):
                self.direction = -self.direction
            self.index += self.direction
        if self.sprites is not None:
            self.sprites.positions = (self.sprites.positions + self.sprites.velocities) % self.period

    def window(self, offset: np.ndarray, size: int) -> np.ndarray:
        """The (size, size, 3) float32 view in [0, 1] whose top-left is at `offset` (row, col)."""
        frame = self.frames[self.index]
        whole = np.floor(offset).astype(int)
        fy, fx = (np.asarray(offset) - whole).astype(np.float32)
        rows = self._wrap(whole[0] + np.arange(size + 1), frame.shape[0])
        cols = self._wrap(whole[1] + np.arange(size + 1), frame.shape[1])
        block = np.take(np.take(frame, rows, axis=0), cols, axis=1).astype(np.float32)
        block *= np.float32(1 / 255)
        # Bilinear sampling, so sub-pixel motion is shown as it is reported.
        rows_mixed = block[:-1] * (1 - fy) + block[1:] * fy
        view = rows_mixed[:, :-1] * (1 - fx) + rows_mixed[:, 1:] * fx
        if self.sprites is not None:
            self._draw_sprites(view, whole)
        return view

    def _wrap(self, index: np.ndarray, length: int) -> np.ndarray:
        if not self.mirror:
            return index % length
        index = index % (2 * length)
        return np.where(index < length, index, 2 * length - 1 - index)

    def _draw_sprites(self, view: np.ndarray, origin: np.ndarray) -> None:
        sprites, period, size = self.sprites, np.array(self.period), view.shape[0]
        corners = (np.round(sprites.positions).astype(int) - origin) % period
        # A sprite near the canvas end may show at the window's start (wrap-around).
        corners = np.where(corners > size, corners - period, corners)
        extents = np.array([alpha.shape for alpha in sprites.alphas])
        visible = np.all((corners < size) & (corners + extents > 0), axis=1)
        for i in np.flatnonzero(visible):
            (top, left), (h, w) = corners[i], extents[i]
            r0, r1, c0, c1 = max(top, 0), min(top + h, size), max(left, 0), min(left + w, size)
            alpha = sprites.alphas[i][r0 - top:r1 - top, c0 - left:c1 - left, None]
            view[r0:r1, c0:c1] = view[r0:r1, c0:c1] * (1 - alpha) + sprites.colors[i] * alpha


def procedural_background(size: int, rng: np.random.Generator, num_sprites: int = 12) -> Background:
    """A fresh textured canvas (3x `size`) with drifting sprites, all drawn from `rng`."""
    side = 3 * size
    canvas = _fractal_texture(side, rng)
    sprite_sides = rng.uniform(0.15, 0.45, num_sprites) * size
    sprites = Sprites(
        alphas=[_sprite_alpha(s, rng) for s in sprite_sides],
        colors=rng.uniform(0.0, 1.0, (num_sprites, 3)).astype(np.float32),
        positions=rng.uniform(0, side, (num_sprites, 2)),
        velocities=rng.normal(0.0, 0.015 * size, (num_sprites, 2)),
    )
    return Background(canvas[None], mirror=False, rng=rng, sprites=sprites)


def _fractal_texture(side: int, rng: np.random.Generator) -> np.ndarray:
    """Periodic coloured noise with amplitude spectrum 1/f^beta, like natural images.

    Natural images vary mostly in brightness, less in hue, so one field drives luminance
    (through a soft threshold, which gives regions with edges rather than pure haze) and
    two weaker fields move the colour across a random pair of chroma directions.
    """
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = np.inf  # no DC term: each field has zero mean
    amplitude = (radius ** -rng.uniform(1.2, 2.0)).astype(np.float32)
    noise = rng.standard_normal((2, 3, *radius.shape), dtype=np.float32)
    fields = np.fft.irfft2(amplitude * (noise[0] + 1j * noise[1]), s=(side, side))
    fields /= fields.std(axis=(1, 2), keepdims=True)
    sharpness = rng.uniform(0.5, 2.5)
    luminance = np.tanh(sharpness * fields[0]) / np.tanh(sharpness)
    angle = rng.uniform(0, 2 * np.pi)
    gray_free = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) / np.sqrt([[2.0], [6.0]])
    chroma = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) @ gray_free
    base = rng.uniform(0.2, 0.8, 3)
    rgb = (base + rng.uniform(0.15, 0.3) * luminance[..., None]
           + rng.uniform(0.03, 0.1) * np.tensordot(fields[1:], chroma, axes=(0, 0)))
    return np.ascontiguousarray(np.clip(rgb, 0.0, 1.0) * 255 + 0.5, dtype=np.uint8)


def _sprite_alpha(side: float, rng: np.random.Generator) -> np.ndarray:
    """A soft superellipse (exponent 2 = ellipse up to 6 = rounded box) at a random angle."""
    n = max(int(np.ceil(side)), 3)
    coords = np.arange(n) - (n - 1) / 2
    y, x = np.meshgrid(coords, coords, indexing="ij")
    angle = rng.uniform(0, np.pi)
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    semi_axes = rng.uniform(0.3, 0.5, 2) * n
    exponent = rng.uniform(2.0, 6.0)
    distance = (np.abs(u / semi_axes[0]) ** exponent + np.abs(v / semi_axes[1]) ** exponent) ** (1 / exponent)
    edge = (1.0 - distance) * semi_axes.min() / 1.5  # about 1.5 pixels of soft edge
    return (np.clip(edge, 0.0, 1.0) * rng.uniform(0.7, 1.0)).astype(np.float32)


class BackgroundLibrary:
    """Stills and clips found in a folder, split into train and evaluation items.

    Expected layout: image files directly in `directory` (each one still) and/or
    sub-folders of image files (each one clip, frames in file-name order). Items are
    sorted by name; with two or more, every 5th counted from the last goes to evaluation
    (so evaluation always gets one), the rest to training. A single item is shared by
    both splits, the only way such a folder can be used at all.
    """

    def __init__(self, directory: str | Path, size: int) -> None:
        self.directory = Path(directory)
        self.size = size
        self._cache: dict[Path, np.ndarray] = {}  # first file of an item -> its frames, oldest first
        expected = "image files (stills) and/or sub-folders of image files (clips)"
        if not self.directory.is_dir():
            raise FileNotFoundError(f"background_dir {str(self.directory)!r} is not a folder; expected {expected}")
        try:
            items = [[p] for p in _image_files(self.directory)]
            items += [frames for sub in sorted(p for p in self.directory.iterdir() if p.is_dir())
                      if (frames := _image_files(sub))]
        except OSError as error:
            raise ValueError(f"background_dir {str(self.directory)!r} cannot be listed ({error}); "
                             f"expected {expected}") from error
        if not items:
            raise ValueError(f"background_dir {str(self.directory)!r} holds no {', '.join(IMAGE_SUFFIXES)} "
                             f"files; expected {expected}")
        if len(items) == 1:
            self.splits: dict[str, list[list[Path]]] = {"train": items, "eval": items}
        else:
            is_eval = [(len(items) - 1 - i) % EVAL_EVERY == 0 for i in range(len(items))]
            self.splits = {"train": [it for it, e in zip(items, is_eval) if not e],
                           "eval": [it for it, e in zip(items, is_eval) if e]}

    def sample(self, split: Split, rng: np.random.Generator) -> Background:
        """A random item of `split`, loaded at `size`, with random start frame and direction."""
        items = self.splits[split]
        return Background(self._frames(items[int(rng.integers(len(items)))]), mirror=True, rng=rng)

    def _frames(self, item: list[Path]) -> np.ndarray:
        """(N, size, size, 3) uint8 frames of an item, from the cache (least recently used goes first)."""
        frames = self._cache.pop(item[0], None)
        if frames is None:
            frames = np.stack([self._load(path) for path in item])
        self._cache[item[0]] = frames
        while len(self._cache) > 1 and sum(f.nbytes for f in self._cache.values()) > CACHE_BYTES:
            del self._cache[next(iter(self._cache))]
        return frames

    def _load(self, path: Path) -> np.ndarray:
        """Centre square crop, area-resized to (size, size, 3) uint8."""
        try:
            with Image.open(path) as image:
                image.draft("RGB", (self.size, self.size))  # JPEG: decode at reduced scale, much faster
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"background image {str(path)!r} cannot be read: {error}") from error
        w, h = image.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        return np.asarray(image.resize((self.size, self.size), Image.Resampling.BOX, box=box))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
