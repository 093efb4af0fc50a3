"""The student: a small conv net trained online on a teacher's masks, then serving them.

Phases, decided batch by batch:
  * learning — the teacher (oracle or SAM) labels the batch and its masks are served;
    the student first predicts the batch (frames it has never trained on, so this is a
    held-out score), then trains on it, replaying a buffer of recent labelled frames;
  * serving — once it has trained on `student_train_frames` frames and its running IoU
    against the teacher reaches `student_serve_iou`, the student's own masks are served.
    A fraction `student_audit_fraction` of later batches is still labelled by the
    teacher: the student keeps learning from them and keeps being scored, and falls back
    to learning if its IoU drops below the bar (drifting data, e.g. new backgrounds).
On a CPU the learning phase runs at training speed (a few hundred frames/s at most);
serving runs at inference speed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from common.codec import Chunk
from common.config import at_least, in_range, positive
from segmenter.backends.base import Backend
from segmenter.backends.student_net import StudentNet
from segmenter.quality import mask_iou


@dataclass
class StudentConfig:
    """The online-trained student segmenter."""

    student_teacher: Literal["oracle", "sam"] = field(default="oracle", metadata={
        "help": "backend whose masks the student learns from"})
    student_train_frames: int = field(default=4096, metadata={
        "help": "teacher-labelled frames to train on before the student may serve"})
    student_serve_iou: float = field(default=0.9, metadata={
        "help": "running IoU against the teacher the student needs to serve"})
    student_audit_fraction: float = field(default=0.05, metadata={
        "help": "fraction of batches the teacher still labels once the student serves"})
    student_passes: float = field(default=2.0, metadata={
        "help": "training samples drawn from the buffer per new labelled frame"})
    student_minibatch: int = field(default=32, metadata={"help": "frames per optimiser step"})
    student_lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate"})
    student_buffer_frames: int = field(default=8192, metadata={"help": "recent labelled frames kept for training"})
    student_precision: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "bfloat16 autocast (~2x faster where the hardware has bf16 units); auto = bf16 where it has them"})

    def validate(self) -> None:
        at_least(self, 0, "student_train_frames")
        at_least(self, 1, "student_minibatch", "student_buffer_frames")
        in_range(self, "student_serve_iou", 0.0, 1.0)
        in_range(self, "student_audit_fraction", 0.0, 1.0)
        positive(self, "student_passes", "student_lr")


class _LabelledFrames:
    """A ring buffer of frames and teacher masks (allocated at the first batch's frame size)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.frames: np.ndarray | None = None
        self.masks: np.ndarray | None = None
        self.size = self.cursor = 0

    def add(self, frames: np.ndarray, masks: np.ndarray) -> None:
        if self.frames is None:
            self.frames = np.empty((self.capacity, *frames.shape[1:]), np.uint8)
            self.masks = np.empty((self.capacity, *masks.shape[1:]), np.uint8)
        frames, masks = frames[-self.capacity:], masks[-self.capacity:]
        index = (self.cursor + np.arange(len(frames))) % self.capacity
        self.frames[index], self.masks[index] = frames, masks
        self.cursor = int(index[-1] + 1) % self.capacity
        self.size = min(self.size + len(frames), self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        index = rng.integers(0, self.size, n)
        return self.frames[index], self.masks[index]


def bf16_is_fast(device: torch.device) -> bool:
    """bfloat16 pays off on GPUs that support it and on CPUs with native bf16 units (AMX,
    AVX-512 BF16); elsewhere it is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


class StudentBackend:
    name = "student"

    def __init__(self, config: StudentConfig, teacher: Backend, device: torch.device, seed: int = 0):
        self.config = config
        self.teacher = teacher
        self.device = device
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.net = StudentNet().to(device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.student_lr, weight_decay=1e-4)
        self.buffer = _LabelledFrames(config.student_buffer_frames)
        self.recent_iou: deque[float] = deque(maxlen=8)
        self.trained_frames = 0
        self.serving = False
        precision = config.student_precision
        self.bf16 = precision == "bfloat16" or (precision == "auto" and bf16_is_fast(device))

    @property
    def teacher_iou(self) -> float:
        """Mean IoU against the teacher over the last labelled batches, before training on them."""
        return float(np.mean(self.recent_iou)) if self.recent_iou else 0.0

    def segment(self, chunks: Sequence[Chunk]) -> list[np.ndarray]:
        frames = np.concatenate([chunk.frames for chunk in chunks])
        if self.serving and self.rng.random() >= self.config.student_audit_fraction:
            masks = self.predict(frames)
        else:
            masks = np.concatenate(self.teacher.segment(chunks))
            self.learn(frames, masks)
        return np.split(masks, np.cumsum([len(chunk.frames) for chunk in chunks])[:-1])

    def learn(self, frames: np.ndarray, teacher_masks: np.ndarray) -> None:
        """Score the student on new labelled frames, then train on them.

        All-ones teacher masks mean "no mask information" (SAM found nothing plausible):
        such frames are neither scored nor learned from.
        """
        informative = ~teacher_masks.reshape(len(teacher_masks), -1).all(axis=1)
        frames, teacher_masks = frames[informative], teacher_masks[informative]
        if len(frames) == 0:
            return
        self.recent_iou.append(float(mask_iou(self.predict(frames), teacher_masks).mean()))
        self.buffer.add(frames, teacher_masks)
        steps = math.ceil(self.config.student_passes * len(frames) / self.config.student_minibatch)
        self.net.train()
        for _ in range(steps):
            x, y = self.buffer.sample(self.config.student_minibatch, self.rng)
            self._train_step(x, y)
        self.trained_frames += len(frames)
        self.serving = (self.trained_frames >= self.config.student_train_frames
                        and self.teacher_iou >= self.config.student_serve_iou)

    def _train_step(self, frames: np.ndarray, masks: np.ndarray) -> None:
        x = torch.as_tensor(frames, device=self.device).permute(0, 3, 1, 2).float()
        y = torch.as_tensor(masks, device=self.device)[:, None].float()
        with self._autocast():
            logits = self.net(x).float()
        p = torch.sigmoid(logits)
        soft_iou = ((p * y).sum((1, 2, 3)) + 1) / ((p + y - p * y).sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + (1 - soft_iou).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.inference_mode()
    def predict(self, frames: np.ndarray) -> np.ndarray:
        """The student's masks, uint8 {0, 1} (N, H, W), computed 64 frames at a time:
        on a CPU, activations that stay in cache are ~1.5x faster than one big batch."""
        self.net.eval()
        out = []
        for i in range(0, len(frames), 64):
            x = torch.tensor(frames[i:i + 64], device=self.device).permute(0, 3, 1, 2).float()
            with self._autocast():
                out.append((self.net(x)[:, 0] > 0).to(torch.uint8).cpu().numpy())
        return np.concatenate(out)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def report(self) -> dict[str, float]:
        return {"student_teacher_iou": self.teacher_iou, "student_serving": float(self.serving),
                "student_trained_frames": float(self.trained_frames), "student_bf16": float(self.bf16),
                "student_parameters": float(sum(p.numel() for p in self.net.parameters()))}
