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
    text = (DEPLOY / "cluster.yaml").read_text()
    assert "requirepass" in text and "6380" in text  # replay Redis is password-protected, off Ray's port


def test_prometheus_scrapes_learner_and_ray_and_strips_rays_prefix():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"masklam-learner", "ray"}
    relabel = jobs["ray"]["metric_relabel_configs"][0]
    assert relabel["regex"] == "ray_(masklam_.*)" and relabel["replacement"] == "$1"
