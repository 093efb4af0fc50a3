"""Samples-per-insert rate limiting across processes, through the replay's counters.

Reverb's SampleToInsertRatio idea: with `spi` samples wanted per inserted step, the
quantity `diff = ready_steps * spi - sampled_steps` must stay within
[`spi * min_ready_steps - error_buffer`, `spi * min_ready_steps + error_buffer`].
The learner waits when sampling would push `diff` below the band (not enough new
data); actors wait when inserting would push it above (data no one will sample). Both
sides poll the shared counters with a growing back-off and report time spent waiting.
`spi = 0` switches the ratio off (sampling still waits for `min_ready_steps`).

The ratio counts ready (segmented) steps, the ones the learner can sample. Actors also
wait while `max_unsegmented_chunks` chunks are on the to-segment queue, whatever the
ratio: a segmenter slower than the actors then holds them back instead of letting the
queue grow until FIFO eviction drops chunks that were never segmented. (Counting inserted
steps in the ratio, as Reverb does, would bound that queue only through the learner's
pace and not at all with `spi = 0`; a bound of its own holds whatever the ratio, and
keeps the masks' latency, hence the data's age, bounded too.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.config import at_least
from common.replay.client import ReplayClient, ReplayStats


@dataclass
class RateLimiterConfig:
    """How many times each inserted step should be sampled, and how loosely."""

    samples_per_insert: float = field(default=4.0, metadata={"help": "target sampled/inserted steps; 0 = no ratio limit"})
    min_ready_steps: int = field(default=1_000, metadata={"help": "ready steps before the learner may sample"})
    error_buffer: float = field(default=10_000.0, metadata={"help": "slack of the ratio band, in sampled steps"})
    max_unsegmented_chunks: int = field(default=256, metadata={
        "help": "actors wait while this many chunks wait for the segmenter (below the replay's capacity, so "
                "that no chunk is evicted before it is segmented)"})

    def validate(self) -> None:
        at_least(self, 0, "samples_per_insert", "min_ready_steps", "error_buffer")
        at_least(self, 1, "max_unsegmented_chunks")


class RateLimiterTimeout(TimeoutError):
    """Waited longer than allowed for the other side of the replay."""


class RateLimiter:
    def __init__(self, replay: ReplayClient, config: RateLimiterConfig, max_poll_s: float = 0.2):
        if config.samples_per_insert < 0 or config.error_buffer < 0 or config.min_ready_steps < 0:
            raise ValueError("rate limiter settings must be non-negative")
        if config.max_unsegmented_chunks < 1:
            raise ValueError("--limiter.max-unsegmented-chunks must be at least 1")
        self.replay = replay
        self.config = config
        self.max_poll_s = max_poll_s
        centre = config.samples_per_insert * config.min_ready_steps
        self.min_diff = centre - config.error_buffer
        self.max_diff = centre + config.error_buffer

    def _diff(self, stats: ReplayStats) -> float:
        return stats.ready_steps * self.config.samples_per_insert - stats.sampled_steps

    def can_sample(self, steps: int, stats: ReplayStats | None = None) -> bool:
        stats = stats or self.replay.stats()
        if stats.ready_steps < self.config.min_ready_steps or stats.ready_chunks_stored == 0:
            return False
        return self.config.samples_per_insert == 0 or self._diff(stats) - steps >= self.min_diff

    def can_insert(self, steps: int, stats: ReplayStats | None = None) -> bool:
        stats = stats or self.replay.stats()
        if stats.unsegmented_chunks >= self.config.max_unsegmented_chunks:
            return False
        if self.config.samples_per_insert == 0 or stats.ready_steps < self.config.min_ready_steps:
            return True
        return self._diff(stats) + steps * self.config.samples_per_insert <= self.max_diff

    def await_sample(self, steps: int, timeout_s: float = float("inf"), should_stop=lambda: False) -> float:
        """Block until `steps` may be sampled; returns seconds waited (also added to the replay's stats)."""
        return self._await(lambda: self.can_sample(steps), "sample_wait_s", timeout_s, should_stop)

    def await_insert(self, steps: int, timeout_s: float = float("inf"), should_stop=lambda: False) -> float:
        """Block until `steps` may be inserted; returns seconds waited (also added to the replay's stats)."""
        return self._await(lambda: self.can_insert(steps), "insert_wait_s", timeout_s, should_stop)

    def _await(self, allowed, stat_name: str, timeout_s: float, should_stop) -> float:
        start = time.monotonic()
        pause = 0.002
        while not allowed():
            waited = time.monotonic() - start
            if should_stop():
                break
            if waited > timeout_s:
                self.replay.add_wait(stat_name, waited)
                raise RateLimiterTimeout(f"waited {waited:.1f}s to {stat_name.split('_')[0]}: "
                                         f"{self.replay.stats()} — is the other side of the replay running?")
            time.sleep(pause)
            pause = min(pause * 2, self.max_poll_s)
        waited = time.monotonic() - start
        if waited > 0.001:
            self.replay.add_wait(stat_name, waited)
        return waited
