"""`python -m segmenter.main`: one segmenter instance as a plain process (outside Ray).

It joins a running replay (`--redis-url`, else $MASKLAM_REDIS_URL: a segmenter has
nothing to do on a private empty Redis), serves Prometheus metrics on `--metrics-port`
(0 = off), and runs until `--max-seconds`, until the stream is empty with
`--stop-when-idle`, or until SIGTERM/SIGINT (it then finishes its open batch). With
`--out DIR` it writes the resolved config (without the Redis password) and, at the
end, `summary.json`. Start several to share the work. Prefer $MASKLAM_REDIS_URL to
`--redis-url`: a password on the command line is visible in the process list.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import ConfigError, run_main
from common.config import in_range, parse, positive, redis_url, save_resolved_config, writable
from common.metrics import Metrics
from common.replay import ReplayConfig
from common.replay.redis_server import REDIS_URL_ENV
from segmenter.config import SegmenterConfig
from segmenter.service import SegmenterService

log = logging.getLogger("segmenter")


@dataclass
class SegmenterMainConfig:
    """Run one segmenter instance against a run's replay."""

    redis_url: str | None = field(default=None, metadata={
        "help": f"redis:// URL of the replay (with credentials); default ${REDIS_URL_ENV}"})
    metrics_port: int = field(default=0, metadata={"help": "serve Prometheus metrics on this port (0 = off)"})
    max_seconds: float | None = field(default=None, metadata={"help": "stop after this many seconds"})
    stop_when_idle: bool = field(default=False, metadata={"help": "stop once the to-segment stream is empty"})
    out: str | None = field(default=None, metadata={"help": "folder for config.json and summary.json"})
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def validate(self) -> None:
        redis_url(self)
        in_range(self, "metrics_port", 0, 65535, fix="pass a free port, or 0 for none")
        positive(self, "max_seconds", fix="pass seconds above 0 (no --max-seconds: no time limit)")
        writable(self, "out")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = parse(SegmenterMainConfig, argv, "python -m segmenter.main")
    url = config.redis_url or os.environ.get(REDIS_URL_ENV)
    if not url:
        raise ConfigError("the segmenter has no replay to serve",
                          f"pass --redis-url or set {REDIS_URL_ENV} (the URL of the run's Redis, "
                          "e.g. redis://:PASSWORD@host:6379/0)")
    if config.out:
        save_resolved_config(config, config.out)
    metrics = Metrics("prometheus")
    service = SegmenterService(config.segmenter, url, config.replay, metrics=metrics)
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stop())
    log.info("consumer %s serving run %r with the %s backend", service.consumer, config.replay.run_name,
             config.segmenter.backend)
    summary = service.run(config.max_seconds, config.stop_when_idle)
    service.close()
    text = json.dumps(summary, indent=2, default=str)
    if config.out:
        Path(config.out, "summary.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
