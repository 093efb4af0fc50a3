"""deploy/ files are valid for the tools that read them."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_cluster_yaml_passes_rays_own_schema_and_has_the_three_roles():
    config = prepare_config(yaml.safe_load((DEPLOY / "cluster.yaml").read_text()))
    validate_config(config)
    nodes = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert nodes["segmenter"]["resources"] == {"segmenter": 1}
    assert nodes["rollout"]["max_workers"] >= nodes["rollout"]["min_workers"] >= 1
    assert "start_replay_redis.sh" in " ".join(config["head_start_ray_commands"])


def test_local_variant_passes_rays_schema_with_the_same_set_up():
    local = yaml.safe_load((DEPLOY / "cluster-local.yaml").read_text())
    validate_config(prepare_config(local))
    aws = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    assert local["provider"]["type"] == "local"
    for key in ("setup_commands", "head_setup_commands", "file_mounts"):
        assert local[key] == aws[key]
    assert "segmenter" in " ".join(local["worker_start_ray_commands"])


def test_head_scripts_install_monitoring_and_protect_redis():
    setup = (DEPLOY / "head_setup.sh").read_text()
    assert "apt-get install -y -qq grafana" in setup and "prometheus.yml" in setup
    for folder in ("datasources", "dashboards"):
        assert f"deploy/grafana/provisioning/{folder}/*.yaml" in setup
        assert list((DEPLOY / "grafana" / "provisioning" / folder).glob("*.yaml"))
    redis = (DEPLOY / "start_replay_redis.sh").read_text()
    assert "requirepass" in redis and "port 6380" in redis and "noeviction" in redis


def test_prometheus_scrapes_learner_and_ray_and_strips_rays_prefix():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"masklam-learner", "ray"}
    relabel = jobs["ray"]["metric_relabel_configs"][0]
    assert relabel["regex"] == "ray_(masklam_.*)" and relabel["replacement"] == "$1"
