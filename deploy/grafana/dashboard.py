"""The Grafana dashboard, generated from the metric definitions in common/metrics.py.

Every query is built from a `MetricSpec`, so a panel can only name a metric the code
exports, with the suffix Prometheus stores it under (`_total`, `_bucket`);
tests/test_monitoring.py checks that the committed JSON is what this module produces
and that every metric has a panel. Queries name `masklam_*` only (deploy/prometheus.yml
strips the `ray_` prefix of the actors' and segmenters' series at scrape time) and use
fixed windows and no Grafana variables, so each one also runs unchanged against
Prometheus's HTTP API: scripts/dashboard_png.py plots them where Grafana cannot run.

    .venv/bin/python deploy/grafana/dashboard.py    # rewrites dashboards/masklam.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import TooltipDisplayMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from common import metrics as m
from common.metrics import MetricSpec

OUT = Path(__file__).resolve().parent / "dashboards" / "masklam.json"
UID = "masklam"
# The uid that provisioning/datasources/prometheus.yaml gives the data source.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE_WINDOW = "1m"  # six scrapes at deploy/prometheus.yml's 10 s interval
QUANTILE_WINDOW = "5m"  # latency quantiles need more observations than a rate
PANEL_WIDTH, PANEL_HEIGHT = 8, 7  # three panels a line on Grafana's 24-column grid


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    spec: MetricSpec


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # a Grafana unit id: short, s, bytes, percentunit
    queries: tuple[Query, ...]


def _aggregate(inner: str, agg: str | None, by: tuple[str, ...]) -> str:
    if agg is None:
        return inner
    return f"{agg} by ({', '.join(by)}) ({inner})" if by else f"{agg}({inner})"


def _require(spec: MetricSpec, kind: str, by: tuple[str, ...]) -> None:
    """Fail at generation time on a query that cannot match what the code records."""
    if spec.kind != kind:
        raise ValueError(f"{spec.name} is a {spec.kind}, not a {kind}")
    if not set(by) <= set(spec.labels):
        raise ValueError(f"{spec.name} has labels {spec.labels}, not {by}")


def value(spec: MetricSpec, legend: str, agg: str | None = None, by: tuple[str, ...] = ()) -> Query:
    """A gauge as it is (agg=None: one line per series) or aggregated over series."""
    _require(spec, "gauge", by)
    return Query(_aggregate(spec.name, agg, by), legend, spec)


def total(spec: MetricSpec, legend: str, by: tuple[str, ...] = ()) -> Query:
    """A counter's running total, summed over series."""
    _require(spec, "counter", by)
    return Query(_aggregate(f"{spec.name}_total", "sum", by), legend, spec)


def rate(spec: MetricSpec, legend: str, agg: str | None = "sum", by: tuple[str, ...] = ()) -> Query:
    """A counter's per-second rate; for a `_seconds` counter, the share of time spent."""
    _require(spec, "counter", by)
    return Query(_aggregate(f"rate({spec.name}_total[{RATE_WINDOW}])", agg, by), legend, spec)


def quantiles(spec: MetricSpec, qs: tuple[float, ...] = (0.5, 0.95), by: tuple[str, ...] = ()) -> tuple[Query, ...]:
    """Quantiles of a histogram over all series (or per `by` label)."""
    _require(spec, "histogram", by)
    buckets = _aggregate(f"rate({spec.name}_bucket[{QUANTILE_WINDOW}])", "sum", ("le", *by))
    suffix = "".join(" {{" + label + "}}" for label in by)
    return tuple(Query(f"histogram_quantile({q}, {buckets})", f"p{round(q * 100)}{suffix}", spec) for q in qs)


def panel(title: str, unit: str, *queries: Query) -> Panel:
    return Panel(title, unit, queries)


ROWS: dict[str, list[Panel]] = {
    "Throughput": [
        panel("Env steps/s, all actors", "short", rate(m.ACTOR_ENV_STEPS, "env steps/s")),
        panel("Env steps/s per actor", "short", rate(m.ACTOR_ENV_STEPS, "{{WorkerId}}", agg=None)),
        panel("Chunks/s", "short", rate(m.ACTOR_CHUNKS, "inserted by actors"),
              rate(m.SEGMENTER_CHUNKS, "segmented ({{backend}})", by=("backend",))),
        panel("Segmented frames/s", "short", rate(m.SEGMENTER_FRAMES, "{{backend}}", by=("backend",)),
              rate(m.SEGMENTER_DROPPED_MASKS, "masks dropped (dropout knob)")),
        panel("Learner updates/s", "short", rate(m.LEARNER_UPDATES, "{{phase}}", by=("phase",))),
    ],
    "Pipeline latencies": [
        panel("Chunk insert latency", "s", *quantiles(m.ACTOR_INSERT_SECONDS)),
        panel("Segmentation batch latency", "s", *quantiles(m.SEGMENTER_BATCH_SECONDS)),
        panel("Chunk age when its masks are ready", "s", *quantiles(m.SEGMENTER_CHUNK_AGE_SECONDS)),
        panel("Replay sample latency", "s", *quantiles(m.LEARNER_SAMPLE_SECONDS)),
        panel("Data age when trained on", "s", *quantiles(m.LEARNER_DATA_AGE_SECONDS)),
        panel("Learner update time", "s", *quantiles(m.LEARNER_UPDATE_SECONDS, by=("phase",))),
    ],
    "Replay": [
        panel("Chunks held", "short", value(m.REPLAY_ITEMS, "held"), value(m.REPLAY_READY_ITEMS, "ready (masked)")),
        panel("Replay bytes", "bytes", value(m.REPLAY_BYTES, "chunk data")),
        panel("Evicted and skipped chunks/s", "short", rate(m.REPLAY_EVICTED_ITEMS, "evicted (FIFO)"),
              rate(m.SEGMENTER_SKIPPED_CHUNKS, "skipped by segmenter: {{reason}}", by=("reason",))),
        panel("Dead-letter entries", "short", total(m.REPLAY_DEAD_LETTER_ITEMS, "malformed, kept")),
        panel("Samples per insert", "short", value(m.LEARNER_SAMPLES_PER_INSERT, "achieved")),
    ],
    "Learning": [
        panel("Losses", "short", value(m.LEARNER_LOSS, "{{phase}} {{loss}}")),
        panel("Probe nMSE (held-out)", "short", value(m.LEARNER_PROBE_NMSE, "probe nMSE")),
        panel("Returns", "short", value(m.LEARNER_EVAL_RETURN, "evaluation"),
              value(m.LEARNER_EPISODE_RETURN, "training episodes")),
        panel("Policy weights version", "short", value(m.LEARNER_WEIGHTS_VERSION, "published")),
        panel("Mask IoU", "percentunit", *quantiles(m.SEGMENTER_MASK_IOU, (0.5, 0.05)),
              value(m.SEGMENTER_STUDENT_IOU, "student vs teacher", agg="max")),
    ],
    "Health": [
        panel("Actor restarts", "short", total(m.LEARNER_ACTOR_RESTARTS, "{{role}}", by=("role",))),
        panel("Policy lag", "short", value(m.LEARNER_POLICY_LAG, "versions behind")),
        panel("Actors waiting for the rate limiter", "percentunit",
              rate(m.ACTOR_INSERT_WAIT_SECONDS, "share of time, mean over actors", agg="avg")),
        panel("Learner waiting for data", "percentunit", rate(m.LEARNER_DATA_WAIT_SECONDS, "share of time")),
        panel("Segmenter queue", "short", value(m.SEGMENTER_QUEUE_ENTRIES, "not finished", agg="max"),
              value(m.SEGMENTER_PENDING_ENTRIES, "pending", agg="max")),
        panel("Segmenter entries reclaimed", "short",
              total(m.SEGMENTER_CLAIMED_ENTRIES, "claimed from dead instances")),
        panel("Redis outages waited out", "short", total(m.REPLAY_RECONNECTS, "all replay clients")),
        panel("Time waiting for Redis", "s", total(m.REPLAY_RECONNECT_WAIT_SECONDS, "all replay clients")),
    ],
}


def _timeseries(p: Panel, panel_id: int) -> timeseries.Panel:
    helps = dict.fromkeys(q.spec.help for q in p.queries)  # ordered, without repeats
    built = (timeseries.Panel().id(panel_id).title(p.title).description("; ".join(helps)).unit(p.unit)
             .datasource(DATASOURCE).span(PANEL_WIDTH).height(PANEL_HEIGHT)
             .legend(common_builders.VizLegendOptions().show_legend(True))
             .tooltip(common_builders.VizTooltipOptions().mode(TooltipDisplayMode.MULTI)))
    for i, q in enumerate(p.queries):
        built = built.with_target(prometheus.Dataquery().ref_id(chr(ord("A") + i)).expr(q.expr)
                                  .legend_format(q.legend).range())
    return built


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    board = (dashboard.Dashboard("MaskLAM").uid(UID).tags(["masklam"]).refresh("10s").time("now-30m", "now")
             .editable())
    panel_id = 0
    for title, panels in ROWS.items():
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for p in panels:
            panel_id += 1
            board = board.with_panel(_timeseries(p, panel_id))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
