"""The segmenter's settings: the service's own, plus each backend's and the imperfection knobs.

On the command line the backend is `--segmenter`, the backends' fields (already named
`sam_*`, `student_*`) sit in the segmenter's own group (`--segmenter.sam-checkpoint`), and
the imperfection knobs in theirs (`--segmenter.imperfection.mask-radius`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

from common.config import at_least, blame, require
from common.devices import check_device
from segmenter.backends import check_backend
from segmenter.backends.sam import SamConfig
from segmenter.backends.student import StudentConfig
from segmenter.imperfection import ImperfectionConfig


@dataclass
class SegmenterConfig:
    """How one segmenter instance reads, batches and segments (every instance of a run alike)."""

    backend: Annotated[Literal["oracle", "sam", "student"], tyro.conf.arg(name="segmenter", prefix_name=False)] = field(
        default="oracle",
        metadata={"help": "mask source: the chunk's ground truth, Segment Anything, or a student trained online"})
    batch_frames: int = field(default=256, metadata={
        "help": "frames per backend batch; a batch holds whole chunks and closes once it has this many"})
    max_wait_ms: int = field(default=200, metadata={"help": "longest a partial batch waits for more chunks"})
    poll_ms: int = field(default=500, metadata={
        "help": "longest one stream read blocks while idle (bounds the reaction to stop and to claims)"})
    claim_idle_ms: int = field(default=30_000, metadata={
        "help": "entries pending this long on another instance are claimed (it is presumed dead)"})
    max_deliveries: int = field(default=5, metadata={
        "help": "an entry delivered more often than this without being finished goes to the dead-letter list"})
    group: str = field(default="segmenter", metadata={"help": "consumer group shared by a run's instances"})
    device: str = field(default="auto", metadata={"help": "torch device for sam/student; auto = GPU if visible"})
    torch_threads: int = field(default=0, metadata={
        "help": "torch CPU threads of this process (0 = torch's default, one per core; 1 is fastest on busy cores)"})
    seed: int = field(default=0, metadata={"help": "seed of the student and the imperfection knobs"})
    imperfection: ImperfectionConfig = field(default_factory=ImperfectionConfig)
    sam: Annotated[SamConfig, tyro.conf.arg(name="")] = field(default_factory=SamConfig)
    student: Annotated[StudentConfig, tyro.conf.arg(name="")] = field(default_factory=StudentConfig)

    def validate(self) -> None:
        at_least(self, 1, "batch_frames", "poll_ms", "claim_idle_ms", "max_deliveries")
        at_least(self, 0, "max_wait_ms", "torch_threads", "seed")
        require(bool(self.group) and not set(self.group) & set(" :*?[]"), "group",
                "must be a non-empty name without spaces, ':' or glob characters", "pass e.g. segmenter")
        with blame("device", "pass auto, cpu, cuda or cuda:N"):  # on a Ray worker, whose GPUs the head may lack
            check_device(self.device, here=False)
        with blame("sam.sam_checkpoint", "pass the checkpoint file of --segmenter.sam-model-type"):
            check_backend(self)
