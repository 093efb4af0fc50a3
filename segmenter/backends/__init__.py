"""Mask backends: `oracle` (ground truth), `sam` (Segment Anything), `student` (learned online)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from segmenter.backends.base import Backend
from segmenter.backends.oracle import OracleBackend
from segmenter.backends.sam import SamBackend
from segmenter.backends.sam_models import check_sam_checkpoint
from segmenter.backends.student import StudentBackend

if TYPE_CHECKING:
    from segmenter.config import SegmenterConfig


def check_backend(config: "SegmenterConfig") -> None:
    """Refuse (ConfigError) a backend setting that could only fail later inside a segmenter
    process, e.g. a missing SAM checkpoint; for commands that start segmenters elsewhere."""
    if config.backend == "sam" or (config.backend == "student" and config.student.student_teacher == "sam"):
        check_sam_checkpoint(config.sam.sam_model_type, config.sam.sam_checkpoint)


def make_backend(config: "SegmenterConfig", device: torch.device) -> Backend:
    """The configured backend (the student's teacher is built from the same config)."""
    if config.backend == "oracle":
        return OracleBackend()
    if config.backend == "sam":
        return SamBackend(config.sam, device)
    if config.backend == "student":
        teacher = SamBackend(config.sam, device) if config.student.student_teacher == "sam" else OracleBackend()
        return StudentBackend(config.student, teacher, device, seed=config.seed)
    raise ValueError(f"unknown segmenter backend {config.backend!r}; expected oracle, sam or student")


__all__ = ["Backend", "OracleBackend", "SamBackend", "StudentBackend", "check_backend", "make_backend"]
