"""Monitoring: a real Prometheus scrapes our metrics endpoints with deploy/prometheus.yml's
jobs and relabelling, and every query of the Grafana dashboard returns series while a run
records its metrics (all of them once the fault paths have run too).

The run is a stand-in, cheap enough for every test run: a thread records, through the real
`Metrics` facade, what a healthy run records at each step (the learner's figures on the
learner's endpoint; the actors' and segmenters' on an endpoint that exports them as Ray's
agent does, `ray_`-prefixed with worker tags). Without the prometheus binary these tests
fail: scripts/setup.sh installs it."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from common import metrics as m
from common.metrics import Metrics, MetricSpec
from common.replay.redis_server import free_loopback_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "masklam.json"
ROWS = ["Throughput", "Pipeline latencies", "Replay", "Learning", "Health"]
SPECS = [value for value in vars(m).values() if isinstance(value, MetricSpec)]

# Metrics that a healthy run leaves without a series (their counters are only incremented,
# and `Metrics.inc` skips zero), so dashboard queries over them may come back empty.
HEALTHY_EMPTY: dict[MetricSpec, str] = {
    m.LEARNER_ACTOR_RESTARTS: "counts restarts: no actor dies",
    m.REPLAY_DEAD_LETTER_ITEMS: "counts malformed entries: actors write none",
    m.REPLAY_EVICTED_ITEMS: "counts FIFO evictions: none until the replay is full",
    m.SEGMENTER_SKIPPED_CHUNKS: "counts chunks evicted before segmentation or malformed",
    m.SEGMENTER_CLAIMED_ENTRIES: "counts entries reclaimed from a dead segmenter instance",
    m.SEGMENTER_DROPPED_MASKS: "counts masks the dropout knob replaced: off by default",
    m.SEGMENTER_STUDENT_IOU: "set by the student backend only",
    m.REPLAY_RECONNECTS: "counts Redis outages waited out",
    m.REPLAY_RECONNECT_WAIT_SECONDS: "time waiting for an unreachable Redis",
}


class StandInRun:
    """Records what a run records: `healthy_step` what every step of a healthy run does (a
    thread repeats it while the tests run, so counters grow and rates have two scrapes),
    `faults` what an actor restart, a malformed chunk, evictions, a dead segmenter
    instance, the dropout knob, the student backend and a Redis outage add."""

    def __init__(self) -> None:
        self.learner = Metrics("prometheus")  # the learner process serves these itself
        self.workers = Metrics("prometheus", {"backend": "oracle"})  # actors and segmenters, through Ray
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._record, daemon=True)

    def healthy_step(self) -> None:
        learner, workers = self.learner, self.workers
        for phase, loss in (("lam", "reconstruction"), ("policy", "critic")):
            learner.inc(m.LEARNER_UPDATES, phase=phase)
            learner.observe(m.LEARNER_UPDATE_SECONDS, 0.05, phase=phase)
            learner.set(m.LEARNER_LOSS, 0.25, phase=phase, loss=loss)
        learner.observe(m.LEARNER_SAMPLE_SECONDS, 0.02)
        learner.inc(m.LEARNER_DATA_WAIT_SECONDS, 0.01)
        learner.observe(m.LEARNER_DATA_AGE_SECONDS, 4.0)
        for spec, value in ((m.LEARNER_WEIGHTS_VERSION, 3), (m.LEARNER_POLICY_LAG, 1), (m.REPLAY_ITEMS, 42),
                            (m.REPLAY_READY_ITEMS, 40), (m.REPLAY_BYTES, 2**20), (m.LEARNER_SAMPLES_PER_INSERT, 2.0),
                            (m.LEARNER_PROBE_NMSE, 0.6), (m.LEARNER_EVAL_RETURN, 120.0),
                            (m.LEARNER_EPISODE_RETURN, 80.0)):
            learner.set(spec, value)
        workers.inc(m.ACTOR_ENV_STEPS, 32)
        workers.inc(m.ACTOR_CHUNKS)
        workers.observe(m.ACTOR_INSERT_SECONDS, 0.004)
        workers.inc(m.ACTOR_INSERT_WAIT_SECONDS, 0.001)
        workers.inc(m.SEGMENTER_CHUNKS)
        workers.inc(m.SEGMENTER_FRAMES, 33)
        workers.observe(m.SEGMENTER_BATCH_SECONDS, 0.03)
        workers.observe(m.SEGMENTER_CHUNK_AGE_SECONDS, 0.5)
        workers.observe(m.SEGMENTER_MASK_IOU, 0.9)
        workers.set(m.SEGMENTER_QUEUE_ENTRIES, 2)
        workers.set(m.SEGMENTER_PENDING_ENTRIES, 1)

    def faults(self) -> None:
        self.learner.inc(m.LEARNER_ACTOR_RESTARTS, role="rollout")
        self.learner.inc(m.REPLAY_DEAD_LETTER_ITEMS)
        self.learner.inc(m.REPLAY_EVICTED_ITEMS, 5)
        self.learner.inc(m.REPLAY_RECONNECTS)
        self.learner.inc(m.REPLAY_RECONNECT_WAIT_SECONDS, 2.5)
        self.workers.inc(m.SEGMENTER_SKIPPED_CHUNKS, reason="evicted")
        self.workers.inc(m.SEGMENTER_CLAIMED_ENTRIES, 2)
        self.workers.inc(m.SEGMENTER_DROPPED_MASKS, 3)
        self.workers.set(m.SEGMENTER_STUDENT_IOU, 0.8)

    def start(self) -> None:
        self.healthy_step()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _record(self) -> None:
        while not self._stop.wait(0.25):
            self.healthy_step()


class RayAgentExport:
    """A registry's series as a Ray node's metrics agent exports them: `ray_`-prefixed names and
    the worker's tags added (deploy/prometheus.yml strips the prefix at scrape time)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            family.name = "ray_" + family.name
            family.samples = [sample._replace(name="ray_" + sample.name, labels={**sample.labels, "WorkerId": "w1"})
                              for sample in family.samples]
            yield family


def _load(path: Path) -> ModuleType:
    """Import a script that is not part of a package (deploy/, scripts/)."""
    spec = importlib.util.spec_from_file_location(f"masklam_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _exported_names(spec: MetricSpec) -> set[str]:
    """The series names Prometheus stores for a metric."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}[spec.kind]
    return {spec.name + suffix for suffix in suffixes}


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD_JSON.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


@pytest.fixture(scope="module")
def run():
    stand_in = StandInRun()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, run):
    """A real Prometheus running deploy/prometheus.yml's jobs against the stand-in run's two
    endpoints: the learner's (our `Metrics.serve`) and a Ray node agent's, listed in a
    service-discovery file. Scrapes every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is not installed: run scripts/setup.sh (it installs Debian's package)")
    learner_server = run.learner.serve(0)
    ray_registry = CollectorRegistry()
    ray_registry.register(RayAgentExport(run.workers.registry))
    ray_server, _ = start_http_server(0, addr="127.0.0.1", registry=ray_registry)

    workdir = tmp_path_factory.mktemp("prometheus")
    discovery = workdir / "ray_service_discovery.json"
    discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{ray_server.server_port}"]}]))
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["masklam-learner"]["static_configs"] = [{"targets": [f"127.0.0.1:{learner_server.server_port}"]}]
    jobs["ray"]["file_sd_configs"] = [{"files": [str(discovery)]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))

    url = f"http://127.0.0.1:{free_loopback_port()}"
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address={url.removeprefix('http://')}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if _get(f"{url}/-/ready")[0] == 200:
                    break
            except urllib.error.URLError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"Prometheus did not become ready: {(workdir / 'prometheus.log').read_text()[-2000:]}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        for server in (learner_server, ray_server):
            server.shutdown()
            server.server_close()


def _query(prometheus: str, expr: str) -> list[dict]:
    status, body = _get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert status == 200, f"{expr}: {body}"
    return json.loads(body)["data"]["result"]


def _wait_for(prometheus: str, expr: str, timeout: float = 15.0, check=bool) -> list[dict]:
    """The query's result once `check` accepts it (non-empty by default), or the last one at `timeout`."""
    deadline = time.monotonic() + timeout
    while not check(result := _query(prometheus, expr)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return result


def test_prometheus_scrapes_the_learner_and_ray_with_the_deploy_config(prometheus):
    updates = _wait_for(prometheus, "masklam_learner_updates_total")
    assert sorted((r["metric"]["job"], r["metric"]["phase"]) for r in updates) == [
        ("masklam-learner", "lam"), ("masklam-learner", "policy")]
    assert all(float(r["value"][1]) >= 1 for r in updates)
    loss = _query(prometheus, 'masklam_learner_loss{phase="lam", loss="reconstruction"}')
    assert float(loss[0]["value"][1]) == 0.25
    assert float(_query(prometheus, "masklam_learner_weights_version")[0]["value"][1]) == 3.0
    assert float(_query(prometheus, "masklam_replay_items")[0]["value"][1]) == 42.0
    assert float(_query(prometheus, "masklam_learner_sample_seconds_count")[0]["value"][1]) >= 1
    # The Ray job's `ray_` prefix is stripped at scrape time, so one name serves both exporters.
    steps = _wait_for(prometheus, "masklam_actor_env_steps_total")
    assert [(r["metric"]["job"], r["metric"]["WorkerId"]) for r in steps] == [("ray", "w1")]
    assert float(steps[0]["value"][1]) >= 32
    assert _query(prometheus, '{__name__=~"ray_masklam_.*"}') == []


def _has_a_number(result: list[dict]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def test_every_dashboard_query_returns_series_during_a_run(prometheus, run):
    """While the run records, every query returns a series with a number (a misspelled metric, a
    wrong suffix or a rate over a gauge returns none), except those over HEALTHY_EMPTY metrics;
    once the fault paths have recorded too, those return series as well."""
    exempt = {name for spec in HEALTHY_EMPTY for name in _exported_names(spec)}
    exprs = _dashboard_exprs()
    healthy = [expr for expr in exprs if not set(re.findall(r"masklam_[a-z0-9_]+", expr)) <= exempt]
    assert len(healthy) > len(exprs) / 2
    empty = [expr for expr in healthy if not _has_a_number(_wait_for(prometheus, expr, check=_has_a_number))]
    assert not empty, f"dashboard queries without a series during a healthy run: {empty}"
    run.faults()
    empty = [expr for expr in exprs if not _has_a_number(_wait_for(prometheus, expr, check=_has_a_number))]
    assert not empty, f"dashboard queries without a series once the fault paths have run: {empty}"


def test_dashboard_png_plots_the_panels_from_prometheus(prometheus, tmp_path):
    _wait_for(prometheus, "masklam_replay_items")
    png = _load(ROOT / "scripts" / "dashboard_png.py")
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    panels = png.fetch(dashboard, prometheus, time.time() - 120, time.time())
    by_title = {p["title"]: panels[p["id"]] for p in dashboard["panels"] if p["type"] != "row"}
    assert [s.label for s in by_title["Chunks held"]] == ["held", "ready (masked)"]
    assert by_title["Chunks held"][0].values[-1] == 42.0
    assert sorted(s.label for s in by_title["Losses"]) == ["lam reconstruction", "policy critic"]
    out = tmp_path / "dashboard.png"
    assert png.main(["--prometheus", prometheus, "--minutes", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000


def test_dashboard_json_is_what_the_generator_produces():
    generator = _load(DEPLOY / "grafana" / "dashboard.py")
    assert DASHBOARD_JSON.read_text() == generator.render(), \
        "stale dashboard: run `.venv/bin/python deploy/grafana/dashboard.py` (or `make dashboard`)"


def test_every_dashboard_query_names_exported_metrics_and_every_metric_has_a_panel():
    exported = set().union(*(_exported_names(spec) for spec in SPECS))
    queried: set[str] = set()
    for expr in _dashboard_exprs():
        names = set(re.findall(r"\b(?:ray_)?masklam_[a-z0-9_]+", expr))
        assert names and names <= exported, f"{expr!r} names {names - exported or 'no masklam metric'}"
        queried |= names
    unshown = [spec.name for spec in SPECS if not _exported_names(spec) & queried]
    assert not unshown, f"metrics without a panel in deploy/grafana/dashboard.py: {unshown}"


def test_dashboard_has_the_rows_and_uses_the_provisioned_data_source():
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    panels = dashboard["panels"]
    assert [p["title"] for p in panels if p["type"] == "row"] == ROWS
    row_starts = [i for i, p in enumerate(panels) if p["type"] == "row"] + [len(panels)]
    assert all(end - start > 1 for start, end in zip(row_starts, row_starts[1:])), "a row without panels"
    provisioning = DEPLOY / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert {p["datasource"]["uid"] for p in panels if p["type"] != "row"} == {source["uid"]}
    provider = yaml.safe_load((provisioning / "dashboards" / "masklam.yaml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "${MASKLAM_DASHBOARDS}"


def test_metrics_endpoint_binds_loopback_by_default_and_serves_only_metrics():
    metrics = Metrics("prometheus")
    metrics.set(m.LEARNER_WEIGHTS_VERSION, 5)
    server = metrics.serve(0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        base = f"http://127.0.0.1:{server.server_port}"
        status, body = _get(f"{base}/metrics")
        assert status == 200
        for path in ("/", "/admin", "/../../etc/passwd", "/metrics?debug=1"):
            status, other = _get(base + path)
            families = list(text_string_to_metric_families(other))
            assert status == 200 and families and all(f.name.startswith("masklam_") for f in families), path
        request = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 405
    finally:
        server.shutdown()
        server.server_close()
