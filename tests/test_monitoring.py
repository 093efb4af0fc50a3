"""Monitoring: a real Prometheus scrapes our metrics endpoints with deploy/prometheus.yml's
jobs and relabelling, and the Grafana dashboard only queries metrics that the code exports."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from common import metrics as m
from common.metrics import Metrics, MetricSpec
from common.replay.redis_server import free_loopback_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "masklam.json"
ROWS = ["Throughput", "Pipeline latencies", "Replay", "Learning", "Health"]
SPECS = [value for value in vars(m).values() if isinstance(value, MetricSpec)]


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
def prometheus(tmp_path_factory):
    """A real Prometheus running deploy/prometheus.yml's jobs against two endpoints: the
    learner's (our `Metrics.serve`) and a stand-in for a Ray node's agent, listed in a
    service-discovery file, whose series carry Ray's `ray_` prefix. Scrapes every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (scripts/setup.sh installs Debian's package)")
    learner = Metrics("prometheus")
    learner.inc(m.LEARNER_UPDATES, 7, phase="lam")
    learner.set(m.LEARNER_LOSS, 0.25, phase="lam", loss="reconstruction")
    learner.set(m.LEARNER_WEIGHTS_VERSION, 3)
    learner.set(m.REPLAY_ITEMS, 42)
    for seconds in (0.01, 0.02, 0.03):
        learner.observe(m.LEARNER_SAMPLE_SECONDS, seconds)
    learner_server = learner.serve(0)

    ray_registry = CollectorRegistry()
    Counter("ray_" + m.ACTOR_ENV_STEPS.name, "as Ray's agent exports it", ["WorkerId"],
            registry=ray_registry).labels(WorkerId="w1").inc(500)
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


def _wait_for(prometheus: str, expr: str, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not (result := _query(prometheus, expr)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return result


def test_prometheus_scrapes_the_learner_and_ray_with_the_deploy_config(prometheus):
    updates = _wait_for(prometheus, "masklam_learner_updates_total")
    assert [(r["metric"]["job"], r["metric"]["phase"], float(r["value"][1])) for r in updates] == [
        ("masklam-learner", "lam", 7.0)]
    loss = _query(prometheus, 'masklam_learner_loss{phase="lam", loss="reconstruction"}')
    assert float(loss[0]["value"][1]) == 0.25
    assert float(_query(prometheus, "masklam_learner_weights_version")[0]["value"][1]) == 3.0
    assert float(_query(prometheus, "masklam_replay_items")[0]["value"][1]) == 42.0
    assert float(_query(prometheus, "masklam_learner_sample_seconds_count")[0]["value"][1]) == 3.0
    # The Ray job's `ray_` prefix is stripped at scrape time, so one name serves both exporters.
    steps = _wait_for(prometheus, "masklam_actor_env_steps_total")
    assert [(r["metric"]["job"], r["metric"]["WorkerId"], float(r["value"][1])) for r in steps] == [
        ("ray", "w1", 500.0)]
    assert _query(prometheus, '{__name__=~"ray_masklam_.*"}') == []


def test_every_dashboard_query_runs_in_prometheus(prometheus):
    for expr in _dashboard_exprs():
        _query(prometheus, expr)  # a 400 from PromQL's parser fails here


def test_dashboard_png_plots_the_panels_from_prometheus(prometheus, tmp_path):
    _wait_for(prometheus, "masklam_replay_items")
    png = _load(ROOT / "scripts" / "dashboard_png.py")
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    panels = png.fetch(dashboard, prometheus, time.time() - 120, time.time())
    by_title = {p["title"]: panels[p["id"]] for p in dashboard["panels"] if p["type"] != "row"}
    assert [s.label for s in by_title["Chunks held"]] == ["held"]
    assert by_title["Chunks held"][0].values[-1] == 42.0
    assert by_title["Losses"][0].label == "lam reconstruction"
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
