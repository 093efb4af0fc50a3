"""LAOM's image augmentations: shifts, rotations and perspective warps, as one homography per sample.

The reference draws, for every image of a batch, one of 8 kinds (nothing, shift, rotate,
perspective, shift-rotate, rotate-shift, rotate-perspective, perspective-rotate) and warps
an edge-padded copy. Here every kind is a 3x3 homography on normalised coordinates, a
composition is a matrix product, and one `grid_sample` with border padding (the edge pad)
warps the whole batch. Unlike the reference, whose rotation angle and perspective corners
are drawn once per kind and batch, every parameter is drawn per sample.

Each call draws afresh, so the training step augments o_t, o_{t+k} and o_{t+1}
independently; the channels of one image (the frames of a stacked observation, and a
mask appended to them) share its warp, so the motion inside a stack survives.
Magnitudes are the reference's at 64 px, as fractions of the side: shifts up to 14/64,
rotations up to 90 degrees, perspective corners moved inward by up to half of the
half-side of an image padded by 30/64 on each side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SHIFT_FRACTION = 14 / 64
ROTATION_DEGREES = 90.0
PERSPECTIVE_PAD_FRACTION = 30 / 64
PERSPECTIVE_DISTORTION = 0.5

# The kinds, as sequences of elementary warps applied left to right.
KINDS: tuple[tuple[str, ...], ...] = ((), ("shift",), ("rotate",), ("perspective",), ("shift", "rotate"),
                                     ("rotate", "shift"), ("rotate", "perspective"), ("perspective", "rotate"))


def shift_matrices(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """Whole-pixel translations of up to SHIFT_FRACTION of the side, (n, 3, 3)."""
    pad = round(SHIFT_FRACTION * side)
    pixels = torch.randint(-pad, pad + 1, (n, 2), generator=generator).float()
    matrices = torch.eye(3).repeat(n, 1, 1)
    matrices[:, :2, 2] = pixels * 2.0 / side  # one pixel is 2/side in normalised coordinates
    return matrices


def rotation_matrices(n: int, generator: torch.Generator) -> torch.Tensor:
    """Rotations about the centre by U(-ROTATION_DEGREES, ROTATION_DEGREES), (n, 3, 3)."""
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(ROTATION_DEGREES)
    cos, sin = angle.cos(), angle.sin()
    matrices = torch.eye(3).repeat(n, 1, 1)
    matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 0], matrices[:, 1, 1] = cos, -sin, sin, cos
    return matrices


def homography(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (n, 3, 3) homographies taking the 4 points `source` (n, 4, 2) to `target` (n, 4, 2)."""
    x, y = source[..., 0], source[..., 1]
    u, v = target[..., 0], target[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    system = torch.cat([rows_u, rows_v], dim=1)  # (n, 8, 8)
    solution = torch.linalg.solve(system, torch.cat([u, v], dim=1))
    return torch.cat([solution, torch.ones_like(solution[:, :1])], dim=1).reshape(-1, 3, 3)


def perspective_matrices(n: int, generator: torch.Generator) -> torch.Tensor:
    """Random perspective warps (n, 3, 3), output -> source, as torchvision's RandomPerspective on the
    padded image: each corner moves inward by up to PERSPECTIVE_DISTORTION of the half-side."""
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    inward = -corners.sign() * torch.rand((n, 4, 2), generator=generator) * PERSPECTIVE_DISTORTION
    padded = homography(corners + inward, corners.expand(n, 4, 2))  # moved corners show the corners' content
    ratio = 1.0 / (1.0 + 2.0 * PERSPECTIVE_PAD_FRACTION)  # image coordinates -> padded-image coordinates
    to_padded = torch.diag(torch.tensor([ratio, ratio, 1.0]))
    return torch.linalg.inv(to_padded) @ padded @ to_padded


def random_warps(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """One homography per sample (output -> source coordinates), its kind drawn uniformly from KINDS."""
    elementary = {"shift": shift_matrices(n, side, generator), "rotate": rotation_matrices(n, generator),
                  "perspective": perspective_matrices(n, generator)}
    kinds = torch.randint(len(KINDS), (n,), generator=generator)
    warps = torch.eye(3).repeat(n, 1, 1)
    for index, kind in enumerate(KINDS):
        chosen = kinds == index
        for name in kind:  # warp A then B samples the source at A(B(x)): compose left to right
            warps[chosen] = warps[chosen] @ elementary[name][chosen]
    return warps


def warp(images: torch.Tensor, warps: torch.Tensor) -> torch.Tensor:
    """Warp (B, C, H, W) images by per-sample homographies (B, 3, 3); outside the image: its edge."""
    b, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h), torch.linspace(-1 + 1 / w, 1 - 1 / w, w),
                            indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)  # pixel centres
    source = points @ warps.transpose(1, 2)
    grid = (source[..., :2] / source[..., 2:].clamp_min(1e-6)).reshape(b, h, w, 2)
    return F.grid_sample(images, grid.to(images.device, images.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of the batch warped by its own random kind and parameters (drawn on the CPU),
    in fp32 even inside a bf16 autocast region (learner/compute.py): it prepares inputs, it is
    not part of a network's forward pass."""
    with torch.autocast(images.device.type, enabled=False):
        return warp(images, random_warps(images.shape[0], images.shape[-1], generator))
