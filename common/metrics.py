"""MaskLAM's metric definitions, and one facade over the two ways they are exported.

Conventions (docs/design.md §7): one prefix `masklam_`, base units in the name (`_seconds`,
`_bytes`, `_ratio` for 0..1 fractions), counters exported with `_total`, histograms for
latencies, and labels only with a small fixed set of values (never ids or hostnames).

Where the figures go depends on the process, not on the code that records them:
  * inside Ray (rollout actors, segmenter actors) through `ray.util.metrics`, which each
    node's metrics agent serves; Ray prepends `ray_` to the names it exports
    (`ray_masklam_segmenter_frames_total`), and deploy/prometheus.yml strips it at
    scrape time, so Prometheus and the dashboard see one name, `masklam_...`, from both;
  * in a plain process (the learner, `python -m segmenter.main`) through a
    prometheus_client registry served over HTTP with `Metrics.serve(port)`.
Services call `metrics.inc(SEGMENTER_FRAMES, n, backend="sam")` and work in both.
To add a metric, define a `MetricSpec` below with `counter`, `gauge` or `histogram`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

PREFIX = "masklam_"
_NAME = re.compile(r"^masklam_[a-z][a-z0-9_]*$")

Kind = Literal["counter", "gauge", "histogram"]
Exporter = Literal["prometheus", "ray"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its exported name (counters without `_total`), type, help and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


def _define(name: str, kind: Kind, help: str, labels: tuple[str, ...] = (),
            buckets: tuple[float, ...] = ()) -> MetricSpec:
    full = PREFIX + name
    if not _NAME.match(full) or full.endswith("_total"):
        raise ValueError(f"metric name {full!r} must be lower_snake_case under {PREFIX!r}, without '_total'")
    if (kind == "histogram") != bool(buckets):
        raise ValueError(f"metric {full!r}: histograms, and only histograms, take buckets")
    return MetricSpec(full, kind, help, labels, buckets)


def counter(name: str, help: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    return _define(name, "counter", help, labels)


def gauge(name: str, help: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    return _define(name, "gauge", help, labels)


def histogram(name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> MetricSpec:
    return _define(name, "histogram", help, labels, buckets)


# -- rollout actors ---------------------------------------------------------------------------
# Ray tags every series with the worker and node, so rate() per series is steps/s per actor.
ACTOR_ENV_STEPS = counter("actor_env_steps", "Decisions stepped by rollout actors (rate() = env steps/s)")
ACTOR_CHUNKS = counter("actor_chunks", "Chunks written to the replay by rollout actors")
ACTOR_INSERT_SECONDS = histogram("actor_insert_seconds",
                                 "Time to write one chunk to the replay (id, insert script, eviction)",
                                 LATENCY_BUCKETS_S)
ACTOR_INSERT_WAIT_SECONDS = counter("actor_insert_wait_seconds",
                                    "Time rollout actors waited for the rate limiter before inserting")

# -- segmenter ------------------------------------------------------------------------------
# `backend` is one of oracle|sam|student; `reason` one of evicted|dead_letter.
SEGMENTER_FRAMES = counter("segmenter_frames", "Frames given masks and marked ready (rate() = frames/s)",
                           ("backend",))
SEGMENTER_CHUNKS = counter("segmenter_chunks", "Chunks given masks and marked ready", ("backend",))
SEGMENTER_SKIPPED_CHUNKS = counter(
    "segmenter_skipped_chunks", "Chunks acknowledged without masks: evicted before segmentation, or malformed "
    "(moved to the dead-letter list)", ("reason",))
SEGMENTER_CLAIMED_ENTRIES = counter("segmenter_claimed_entries",
                                    "Stream entries claimed from instances presumed dead")
SEGMENTER_DROPPED_MASKS = counter("segmenter_dropped_masks",
                                  "Frame masks replaced by all-ones (no information) by the dropout knob")
SEGMENTER_BATCH_SECONDS = histogram("segmenter_batch_seconds",
                                    "Time to segment one batch and write its masks", LATENCY_BUCKETS_S,
                                    ("backend",))
SEGMENTER_CHUNK_AGE_SECONDS = histogram("segmenter_chunk_age_seconds",
                                        "Time from a chunk's creation by an actor to its masks being ready",
                                        LATENCY_BUCKETS_S)
SEGMENTER_MASK_IOU = histogram("segmenter_mask_iou_ratio",
                               "Mean per-frame IoU of a chunk's served masks against ground truth",
                               RATIO_BUCKETS, ("backend",))
SEGMENTER_STUDENT_IOU = gauge("segmenter_student_teacher_iou_ratio",
                              "The student's running IoU against its teacher on frames it has not trained on")
# Run-wide figures that every instance reports: aggregate them with max(), not sum().
SEGMENTER_QUEUE_ENTRIES = gauge("segmenter_queue_entries",
                                "Chunks on the to-segment stream not yet finished (waiting + pending)")
SEGMENTER_PENDING_ENTRIES = gauge("segmenter_pending_entries",
                                  "Chunks delivered to a segmenter instance and not yet acknowledged")


# -- learner ----------------------------------------------------------------------------------
# Served by the learner process itself (prometheus_client). `phase` is lam|policy;
# `loss` is a fixed name per phase (reconstruction, vq, probe, critic, actor, alpha, ...).
LEARNER_UPDATES = counter("learner_updates", "Gradient updates of the learner (rate() = updates/s)", ("phase",))
LEARNER_UPDATE_SECONDS = histogram("learner_update_seconds", "Time of one learner update (sampling excluded)",
                                   LATENCY_BUCKETS_S, ("phase",))
LEARNER_DATA_WAIT_SECONDS = counter("learner_data_wait_seconds",
                                    "Time the learner waited for data (sampling and rate limiter)")
LEARNER_SAMPLE_SECONDS = histogram("learner_sample_seconds", "Time to sample one batch from the replay",
                                   LATENCY_BUCKETS_S)
LEARNER_LOSS = gauge("learner_loss", "Latest value of each training loss", ("phase", "loss"))
LEARNER_PROBE_NMSE = gauge("learner_probe_nmse_ratio",
                           "Linear-probe MSE / action variance of the LAM latent on held-out labelled data")
LEARNER_EVAL_RETURN = gauge("learner_eval_return", "Mean return of the latest evaluation episodes")
LEARNER_EPISODE_RETURN = gauge("learner_episode_return", "Mean return of recently finished training episodes")
LEARNER_WEIGHTS_VERSION = gauge("learner_weights_version", "Version of the policy weights last published")
LEARNER_POLICY_LAG = gauge("learner_policy_lag_versions",
                           "Published weights version minus the oldest version the rollout actors last acted with")
LEARNER_DATA_AGE_SECONDS = histogram("learner_data_age_seconds",
                                     "Time from a chunk's insert (to within a poll) to its being trained on",
                                     (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0))
LEARNER_SAMPLES_PER_INSERT = gauge("learner_samples_per_insert_ratio",
                                   "Windows sampled per step inserted (ready or not), achieved over the run")
LEARNER_ACTOR_RESTARTS = counter("learner_actor_restarts", "Rollout or segmenter actors restarted", ("role",))
REPLAY_ITEMS = gauge("replay_items", "Chunks held by the replay")
REPLAY_READY_ITEMS = gauge("replay_ready_items", "Chunks with masks, ready to sample")
REPLAY_BYTES = gauge("replay_bytes", "Bytes of chunk data held by the replay")
# Cumulative figures kept in Redis: the learner adds the change since its last poll.
REPLAY_EVICTED_ITEMS = counter("replay_evicted_items", "Chunks evicted by the replay's FIFO policy")
REPLAY_DEAD_LETTER_ITEMS = counter("replay_dead_letter_items", "Entries refused as malformed and kept for inspection")
# Counted by every process's replay client where it runs (actors, segmenters, learner).
REPLAY_RECONNECTS = counter("replay_reconnects", "Redis outages a replay client waited out (one per outage)")
REPLAY_RECONNECT_WAIT_SECONDS = counter("replay_reconnect_wait_seconds",
                                        "Time replay clients waited for an unreachable Redis to come back")


class Metrics:
    """Records `MetricSpec`s through prometheus_client or ray.util.metrics.

    `constant_labels` fill labels a process always has the same value for (e.g. the
    backend), so call sites only pass the ones that vary. Instruments are created on
    first use. With prometheus, each `Metrics` has its own registry (several services
    can live in one process, e.g. in tests); `serve(port)` exposes it over HTTP.
    """

    def __init__(self, exporter: Exporter = "prometheus", constant_labels: dict[str, str] | None = None,
                 registry: Any = None):
        if exporter not in ("prometheus", "ray"):
            raise ValueError(f"metrics exporter must be 'prometheus' or 'ray', got {exporter!r}")
        self.exporter = exporter
        self.constant_labels = dict(constant_labels or {})
        if exporter == "prometheus" and registry is None:
            from prometheus_client import CollectorRegistry
            registry = CollectorRegistry()
        self.registry = registry
        self._instruments: dict[str, Any] = {}

    @classmethod
    def for_this_process(cls, constant_labels: dict[str, str] | None = None) -> "Metrics":
        """Ray's exporter inside a Ray worker or driver, prometheus_client elsewhere."""
        import ray
        return cls("ray" if ray.is_initialized() else "prometheus", constant_labels)

    def inc(self, spec: MetricSpec, value: float = 1.0, **labels: str) -> None:
        if value > 0:  # Ray's counters reject 0
            self._record(spec, "counter", value, labels)

    def set(self, spec: MetricSpec, value: float, **labels: str) -> None:
        self._record(spec, "gauge", value, labels)

    def observe(self, spec: MetricSpec, value: float, **labels: str) -> None:
        self._record(spec, "histogram", value, labels)

    def serve(self, port: int, address: str = "127.0.0.1") -> WSGIServer:
        """Expose the prometheus registry on http://address:port/metrics (plain processes only).

        Loopback by default: Prometheus runs beside the learner (on the cluster's head too);
        pass address="0.0.0.0" only where a Prometheus on another host must scrape it. It
        serves nothing but this registry: GET on any path returns its exposition (an empty
        /favicon.ico aside), other methods 405. Returns the server, running in a daemon
        thread: `server_port` is the port bound (port=0 picks a free one), and
        `shutdown()` then `server_close()` stop it.
        """
        if self.exporter != "prometheus":
            raise RuntimeError("inside Ray, metrics are served by Ray's metrics agent, not by this process")
        from prometheus_client import start_http_server
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return server

    def _record(self, spec: MetricSpec, kind: Kind, value: float, labels: dict[str, str]) -> None:
        if spec.kind != kind:
            raise TypeError(f"{spec.name} is a {spec.kind}, not a {kind}")
        values = {**self.constant_labels, **labels}
        missing = [name for name in spec.labels if name not in values]
        if missing:
            raise ValueError(f"{spec.name} needs labels {missing}")
        tags = {name: str(values[name]) for name in spec.labels}
        instrument = self._instruments.get(spec.name) or self._create(spec)
        if self.exporter == "ray":
            getattr(instrument, {"counter": "inc", "gauge": "set", "histogram": "observe"}[kind])(value, tags=tags)
            return
        target = instrument.labels(**tags) if tags else instrument
        getattr(target, {"counter": "inc", "gauge": "set", "histogram": "observe"}[kind])(value)

    def _create(self, spec: MetricSpec) -> Any:
        if self.exporter == "ray":
            from ray.util import metrics as ray_metrics
            if spec.kind == "histogram":
                instrument = ray_metrics.Histogram(spec.name, spec.help, boundaries=list(spec.buckets),
                                                   tag_keys=spec.labels)
            else:
                cls = ray_metrics.Counter if spec.kind == "counter" else ray_metrics.Gauge
                instrument = cls(spec.name, spec.help, tag_keys=spec.labels)
        else:
            import prometheus_client as prom
            common = {"labelnames": spec.labels, "registry": self.registry}
            if spec.kind == "histogram":
                instrument = prom.Histogram(spec.name, spec.help, buckets=spec.buckets, **common)
            else:
                cls = prom.Counter if spec.kind == "counter" else prom.Gauge
                instrument = cls(spec.name, spec.help, **common)
        self._instruments[spec.name] = instrument
        return instrument

    def value(self, spec: MetricSpec, **labels: str) -> float | None:
        """The current value (counter total, gauge value, histogram count) from a prometheus registry."""
        if self.exporter != "prometheus":
            raise RuntimeError("only a prometheus registry can be read back in-process")
        suffix = {"counter": "_total", "gauge": "", "histogram": "_count"}[spec.kind]
        values = {**self.constant_labels, **labels}
        return self.registry.get_sample_value(spec.name + suffix, {k: str(values[k]) for k in spec.labels})


def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """Every sample a metrics endpoint serves, as `name|label=value|...` -> value (labels
    sorted); empty while the endpoint is not up. For tests and benchmarks that read a run."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {sample.name + "".join(f"|{k}={v}" for k, v in sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}
