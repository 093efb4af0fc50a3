"""Dataclass configs: the command line tyro makes of them and the resolved-config file."""

from __future__ import annotations

import json

import pytest

from actors.collect import CollectConfig
from common.cli import ConfigError
from common.config import config_to_dict, parse, save_resolved_config

PROG = "python -m actors.collect"


def test_flags_reach_nested_configs_with_types_and_design_names():
    config = parse(CollectConfig, ["--num-actors", "3", "--env", "Hopper-v5", "--distractor", "exogenous",
                                   "--rho", "0.25", "--save-dataset", "--replay.capacity-chunks", "7",
                                   "--background-dir", "none"], PROG)
    assert config.num_actors == 3 and config.save_dataset is True
    assert config.env.env_id == "Hopper-v5" and config.env.distractor == "exogenous" and config.env.rho == 0.25
    assert config.replay.capacity_chunks == 7 and config.env.background_dir is None


def test_defaults_come_from_the_dataclasses():
    config = parse(CollectConfig, [], PROG)
    assert config == CollectConfig()


def test_a_bad_choice_is_a_config_error_naming_the_flag():
    with pytest.raises(ConfigError, match="invalid choice 'rain' for argument '--distractor'"):
        parse(CollectConfig, ["--distractor", "rain"], PROG)


@pytest.mark.faults
def test_resolved_config_is_saved_without_secrets(tmp_path):
    config = parse(CollectConfig, ["--redis-url", "redis://:hunter2@10.0.0.1:6379/0"], PROG)
    path = save_resolved_config(config, tmp_path)
    text = path.read_text()
    assert "hunter2" not in text
    saved = json.loads(text)
    assert saved["redis_url"] == "<redacted>"
    assert saved["env"]["env_id"] == config.env.env_id == config_to_dict(config)["env"]["env_id"]
