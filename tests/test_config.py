"""Dataclass configs: the generated command line and the resolved-config file."""

from __future__ import annotations

import json

import pytest

from actors.collect import CollectConfig
from common.config import config_to_dict, parse_config, save_resolved_config


def test_flags_reach_nested_configs_with_types_and_design_names():
    config = parse_config(CollectConfig, ["--num-actors", "3", "--env", "Hopper-v5", "--distractor", "exogenous",
                                          "--rho", "0.25", "--save-dataset", "--capacity-chunks", "7",
                                          "--background-dir", "none"])
    assert config.num_actors == 3 and config.save_dataset is True
    assert config.env.env_id == "Hopper-v5" and config.env.distractor == "exogenous" and config.env.rho == 0.25
    assert config.replay.capacity_chunks == 7 and config.env.background_dir is None


def test_defaults_come_from_the_dataclasses():
    config = parse_config(CollectConfig, [])
    assert config == CollectConfig()


def test_bad_choice_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(CollectConfig, ["--distractor", "rain"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'rain'" in capsys.readouterr().err


@pytest.mark.faults
def test_resolved_config_is_saved_without_secrets(tmp_path):
    config = parse_config(CollectConfig, ["--redis-url", "redis://:hunter2@10.0.0.1:6379/0"])
    path = save_resolved_config(config, tmp_path)
    text = path.read_text()
    assert "hunter2" not in text
    saved = json.loads(text)
    assert saved["redis_url"] == "<redacted>"
    assert saved["env"]["env_id"] == config.env.env_id == config_to_dict(config)["env"]["env_id"]
