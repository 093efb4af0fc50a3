"""The segmenter's settings: the service's own, plus each backend's and the imperfection knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segmenter.backends.sam import SamConfig
from segmenter.backends.student import StudentConfig
from segmenter.imperfection import ImperfectionConfig


@dataclass
class SegmenterConfig:
    """How one segmenter instance reads, batches and segments (every instance of a run alike)."""

    backend: Literal["oracle", "sam", "student"] = field(default="oracle", metadata={
        "help": "mask source: the chunk's ground truth, Segment Anything, or a student trained online"})
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
    sam: SamConfig = field(default_factory=SamConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
