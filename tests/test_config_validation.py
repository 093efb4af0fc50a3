"""Every setting of every command is checked where it is parsed (issue 22, bug 3).

The fields are enumerated from the commands' config trees, not listed by hand: each leaf
must either have a bad value in `BAD` (a refused choice, for a Literal field) or be named
in `ANY_VALUE` with the reason every value is a setting, so a new field without a check
fails `test_every_field_has_a_bad_value_or_a_reason`. Each bad value is parsed in-process
(the benchmarks' in one subprocess: tests never import benchmarks) and must be refused
with one line that starts with the flag and says how to fix it. A few real command lines
then show what a user sees: exit status 2, one line on stderr naming the flag, no
traceback, no output folder and no process left behind (nothing was started).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Literal, get_origin, get_type_hints

import pytest

from actors.collect import CollectConfig
from common.cli import ConfigError
from common.config import flag, parse, parse_flags
from learner import compare
from learner import main as learner_main
from learner.experts import ExpertConfig
from segmenter.main import SegmenterMainConfig

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# command -> (config class, how the command parses); the benchmarks' are read in a subprocess.
IN_PROCESS: dict[str, tuple[type, Callable[[list[str]], object], Callable[[], object]]] = {
    "learner.main": (learner_main.LearnerMainConfig, learner_main.parse_learner_config,
                     lambda: parse_flags(learner_main.LearnerMainConfig, [], learner_main.PROG, learner_main.defaults,
                                         choose_by=("preset", "method"))),
    "learner.compare": (compare.CompareConfig, compare.parse_compare_config,
                        lambda: parse_flags(compare.CompareConfig, [], compare.PROG, compare.defaults)),
    "actors.collect": (CollectConfig, lambda argv: parse(CollectConfig, argv, "python -m actors.collect"),
                       lambda: parse_flags(CollectConfig, [], "python -m actors.collect")),
    "segmenter.main": (SegmenterMainConfig, lambda argv: parse(SegmenterMainConfig, argv, "python -m segmenter.main"),
                       lambda: parse_flags(SegmenterMainConfig, [], "python -m segmenter.main")),
    "learner.experts": (ExpertConfig, lambda argv: parse(ExpertConfig, argv, "python -m learner.experts"),
                        lambda: parse_flags(ExpertConfig, [], "python -m learner.experts")),
}
BENCHMARKS = {"benchmarks.rollout": "RolloutBenchConfig", "benchmarks.system": "SystemBenchConfig",
              "benchmarks.soak": "SoakConfig", "benchmarks.segmenter": "SegmenterBenchConfig",
              "benchmarks.lam": "LAMBenchConfig"}
COMMANDS = [*IN_PROCESS, *BENCHMARKS]

UNWRITABLE = "/proc/masklam-out"  # its nearest existing parent stores no files
NOT_A_URL = "localhost:6379"
# A bad value per flag, shared by every command that has the flag; a dict field's key is `*`.
# A tuple is the whole argument list (a flag whose check needs another setting).
BAD: dict[str, str | tuple[str, ...]] = {
    # the task (EnvConfig)
    "--env": "NoSuchEnv-v5", "--image-size": "0", "--render-size": "50", "--action-repeat": "-1",
    "--max-episode-steps": "0", "--rho": "1.5", "--background-dir": "/nonexistent", "--bg-speed": "-1",
    "--ground-alpha": "1.5", "--camera-shake": "-0.5", "--color-drift": "-0.5", "--distractor-seed": "-1",
    "--terminate-when-unhealthy": ("--env", "HalfCheetah-v5", "--no-terminate-when-unhealthy"),
    # rollout actors (ActorConfig)
    "--actor.envs-per-actor": "0", "--actor.chunk-length": "0", "--actor.action-correlation": "1.5",
    "--actor.action-noise": "-0.1", "--actor.seed": "-1",
    "--actor.expert-dir": ("--actor.policy", "expert", "--actor.expert-dir", "/nonexistent"),
    # replay and rate limiter
    "--replay.run-name": "my:run", "--replay.capacity-chunks": "0", "--replay.capacity-bytes": "0",
    "--replay.max-chunk-bytes": "0", "--replay.outage-deadline-s": "-1", "--replay.connect-timeout-s": "-1",
    "--replay.redis-persist-dir": UNWRITABLE, "--replay.dead-letter-cap": "0",
    "--limiter.samples-per-insert": "-1", "--limiter.min-ready-steps": "-1", "--limiter.error-buffer": "-1",
    "--limiter.max-unsegmented-chunks": "0",
    # the segmenter
    "--segmenter.batch-frames": "0", "--segmenter.max-wait-ms": "-1", "--segmenter.poll-ms": "0",
    "--segmenter.claim-idle-ms": "0", "--segmenter.max-deliveries": "0", "--segmenter.group": "a:b",
    "--segmenter.device": "gpu", "--segmenter.torch-threads": "-1", "--segmenter.seed": "-1",
    "--segmenter.imperfection.mask-radius": "1000", "--segmenter.imperfection.mask-dropout": "1.5",
    "--segmenter.sam-checkpoint": ("--segmenter", "sam", "--segmenter.sam-checkpoint", "/nonexistent.pth"),
    "--segmenter.sam-encoder-batch": "0", "--segmenter.sam-box-margin": "-1", "--segmenter.sam-points-per-side": "0",
    "--segmenter.sam-pred-iou-thresh": "1.5", "--segmenter.sam-stability-thresh": "1.5",
    "--segmenter.sam-min-area": "0.5", "--segmenter.sam-max-area": "1.5",
    "--segmenter.student-train-frames": "-1", "--segmenter.student-serve-iou": "1.5",
    "--segmenter.student-audit-fraction": "1.5", "--segmenter.student-passes": "0",
    "--segmenter.student-minibatch": "0", "--segmenter.student-lr": "0", "--segmenter.student-buffer-frames": "0",
    # the LAM, LAOM, the schedule, SAC and the downstream protocol
    "--lam.model.idm-scale": "0", "--lam.model.fdm-scale": "0", "--lam.model.num-blocks": "-1",
    "--lam.model.latent-dim": "0", "--lam.model.vq-codes": "0", "--lam.model.vq-beta": "-1",
    "--lam.model.vq-groups": ("--lam.model.quantizer", "vq", "--lam.model.latent-dim", "32",
                              "--lam.model.vq-groups", "5"),
    "--lam.method.context-frames": "0", "--lam.method.future-frames": "0", "--lam.method.max-future-offset": "0",
    "--lam.method.mask-radius": "1000", "--lam.method.occlusion": "1.5",
    "--lam.methods.*.context-frames": "0", "--lam.methods.*.future-frames": "0",
    "--lam.methods.*.max-future-offset": "0", "--lam.methods.*.mask-radius": "1000",
    "--lam.methods.*.occlusion": "-0.5",
    "--lam.optim.batch-size": "0", "--lam.optim.lr": "0", "--lam.optim.weight-decay": "-1",
    "--lam.optim.updates": "0", "--lam.optim.vq-coef": "-1", "--lam.optim.probe-coef": "-1",
    "--laom.model.encoder-scale": "0", "--laom.model.num-blocks": "-1", "--laom.model.latent-dim": "0",
    "--laom.model.head-dim": "0", "--laom.model.head-depth": "0",
    "--laom.methods.*.frame-stack": "0", "--laom.methods.*.max-future-offset": "0",
    "--laom.methods.*.label-budget": "0",
    "--laom.optim.batch-size": "0", "--laom.optim.lr": "-1", "--laom.optim.weight-decay": "-1",
    "--laom.optim.updates": "0",
    "--laom.optim.warmup": "1.5", "--laom.optim.target-tau": "1.5", "--laom.optim.label-batch-size": "0",
    "--laom.optim.label-coef": "-1", "--laom.optim.probe-coef": "-1",
    "--schedule.lam-updates-per-round": "0", "--schedule.policy-updates-per-round": "0",
    "--schedule.publish-every": "0",
    "--schedule.bootstrap-after": "-1", "--schedule.bootstrap-steps": "0", "--schedule.probe-every": "0",
    "--schedule.eval-every": "0", "--schedule.checkpoint-minutes": "0",
    "--sac.hidden": "0", "--sac.lr": "0", "--sac.gamma": "1.5", "--sac.tau": "-0.1", "--sac.batch-size": "0",
    "--sac.init-temperature": "0",
    "--downstream.policy-frames": "0", "--downstream.policy-scale": "0", "--downstream.bc-updates": "0",
    "--downstream.bc-batch-size": "0", "--downstream.bc-lr": "0", "--downstream.bc-shift": "-1",
    "--downstream.bc-validation-fraction": "1", "--downstream.bc-validate-every": "0", "--downstream.bc-patience": "-1",
    "--downstream.label-budgets": "4k",
    "--downstream.decoder-updates": "0", "--downstream.decoder-batch-size": "0", "--downstream.decoder-lr": "-1",
    "--downstream.eval-episodes": "-1", "--downstream.eval-workers": "0", "--downstream.eval-seed": "-1",
    # the commands' own settings
    "--num-actors": "0", "--num-segmenters": "0", "--redis-url": NOT_A_URL, "--ray-address": "nope",
    "--max-minutes": "0", "--max-seconds": "-5", "--total-env-steps": "0", "--out": UNWRITABLE,
    "--metrics-port": "70000", "--device": "gpu", "--torch-threads": "-1", "--data-dir": UNWRITABLE,
    "--probe-steps": "0", "--probe-samples": "0", "--max-restarts": "-1", "--max-replacements": "-1",
    "--methods": "lapo,nosuch", "--seeds": "0", "--train-steps": "0", "--heldout-steps": "0", "--eval-every": "0",
    "--jobs": "0", "--collect-actors": "0", "--data-action-noise": "-1", "--expert-dir": "/nonexistent",
    "--references": "zero,nosuch",
    "--check-batch": "0", "--total-steps": "0", "--learning-starts": "-1", "--updates-per-decision": "0",
    "--eval-episodes": "0", "--seed": "-1", "--threads": "0",
    # the benchmarks'
    "--env-steps": "0", "--batch": "0", "--window": "0", "--replay-chunks": "0", "--repeats": "0",
    "--actor-counts": "1,x", "--measure-seconds": "0", "--warmup-timeout-s": "-1", "--bare-steps": "0",
    "--learner-args": ("--learner-args=--schedule.publish-every 0",), "--actors": "0", "--minutes": "0",
    "--warmup-minutes": "-1",
    "--sample-s": "0", "--capacity-chunks": "0", "--capacity-bytes": "0", "--run-dir": UNWRITABLE,
    "--eval-steps": "0", "--batch-sizes": "64,0", "--sam-chunks": "0", "--sam-checkpoint": "/nonexistent.pth",
    "--sam-batch-frames": "0", "--seconds": "0", "--rounds": "0", "--cases": "lam:ci:nosuch:32:32",
}
NO_SUCH_CHOICE = "no-such-choice"  # the bad value of every Literal field: tyro refuses it
# Fields whose every value is a setting (besides switches, whose two values both are).
ANY_VALUE: dict[str, str] = {
    "segmenter.main --segmenter.imperfection.mask-radius":
        "the frames come with each chunk, so no frame size bounds it here (learner.main bounds it by --image-size)",
}


# -- the config trees ---------------------------------------------------------------------------
def leaves(config: object) -> list[dict]:
    """Every leaf of a parsed config: its path, kind (switch, choice or value) and the generic
    path (a dict field's keys as `*`)."""
    found = []

    def walk(node: object, path: tuple[str, ...], generic: tuple[str, ...]) -> None:
        hints = get_type_hints(type(node))
        for f in dataclasses.fields(node):
            value, hint = getattr(node, f.name), hints[f.name]
            if dataclasses.is_dataclass(value):
                walk(value, (*path, f.name), (*generic, f.name))
            elif isinstance(value, dict):
                for key, item in value.items():
                    walk(item, (*path, f.name, key), (*generic, f.name, "*"))
            else:
                kind = "switch" if hint is bool else "choice" if get_origin(hint) is Literal else "value"
                found.append({"path": [*path, f.name], "generic": [*generic, f.name], "kind": kind})

    walk(config, (), ())
    return found


def named(config_type: type, config: object) -> list[dict]:
    """`leaves` with each one's flag and generic flag (the flag with `*` for a dict's keys)."""
    rows = leaves(config)
    for row in rows:
        row["flag"] = row["generic_flag"] = flag(config_type, row["path"])
        for key, generic in zip(row["path"], row["generic"]):
            if generic == "*":  # a dict's key is a level of the flag
                row["generic_flag"] = row["generic_flag"].replace(f".{key.replace('_', '-')}.", ".*.", 1)
    return rows


def bad_args(command: str, row: dict) -> list[str] | None:
    """The arguments that give the leaf a bad value (None: every value is valid)."""
    if f"{command} {row['flag']}" in ANY_VALUE:
        return None
    value = BAD.get(row["generic_flag"])
    if isinstance(value, tuple):
        return list(value)
    if value is not None:
        return [row["flag"], value]
    if row["kind"] == "choice":
        return [row["flag"], NO_SUCH_CHOICE]
    return None


def outcome(parse_argv: Callable[[list[str]], object], argv: list[str]) -> str | None:
    """The ConfigError's one line, or None when `argv` parses."""
    try:
        parse_argv(argv)
    except ConfigError as error:
        return str(error)
    return None


BENCHMARK_DRIVER = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
from test_config_validation import bad_args, named, outcome
from common.config import parse, parse_flags
report = {}
for module, name in json.loads(sys.argv[2]).items():
    config_type = getattr(importlib.import_module(module), name)
    prog = "python -m " + module
    rows = named(config_type, parse_flags(config_type, [], prog))
    for row in rows:
        args = bad_args(module, row)
        row["args"] = args
        row["message"] = None if args is None else outcome(lambda argv: parse(config_type, argv, prog), args)
    report[module] = rows
print(json.dumps(report))
"""


@cache
def benchmark_rows() -> dict[str, list[dict]]:
    """The benchmarks' leaves, each with its bad arguments and what parsing them said, from one subprocess."""
    result = subprocess.run([sys.executable, "-c", BENCHMARK_DRIVER, str(TESTS), json.dumps(BENCHMARKS)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@cache
def rows_of(command: str) -> list[dict]:
    if command in BENCHMARKS:
        return benchmark_rows()[command]
    config_type, parse_argv, flags_only = IN_PROCESS[command]
    rows = named(config_type, flags_only())
    for row in rows:
        row["args"] = bad_args(command, row)
        row["message"] = None if row["args"] is None else outcome(parse_argv, row["args"])
    return rows


def all_rows() -> list[tuple[str, str]]:
    return [(command, row["flag"]) for command in COMMANDS for row in rows_of(command)]


# -- field by field -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_has_a_bad_value_or_a_reason(command):
    """A leaf without a bad value must be a switch or say why any value is valid (a new field
    without a check fails here); and no entry of the tables is stale."""
    rows = rows_of(command)
    unchecked = [row["flag"] for row in rows if row["args"] is None and row["kind"] != "switch"
                 and f"{command} {row['flag']}" not in ANY_VALUE]
    assert not unchecked, f"{command}: fields with neither a bad value in BAD nor a reason in ANY_VALUE: {unchecked}"
    for key in ANY_VALUE:
        if key.startswith(command + " "):
            assert any(f"{command} {row['flag']}" == key for row in rows), f"stale ANY_VALUE entry {key}"


def test_no_bad_value_is_stale():
    generic = {row["generic_flag"] for command in COMMANDS for row in rows_of(command)}
    assert not set(BAD) - generic, f"BAD names flags no command has: {sorted(set(BAD) - generic)}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_bad_value_is_one_line_naming_the_flag_and_the_fix(command):
    """Each leaf's bad value is refused at parse time by a ConfigError whose one line starts with
    the flag (or, for a refused choice, names it) and says how to fix it."""
    failures = []
    for row in rows_of(command):
        if row["args"] is None:
            continue
        message, shown = row["message"], " ".join(row["args"])
        if message is None:
            failures.append(f"{shown}: accepted")
        elif "\n" in message or " — " not in message:
            failures.append(f"{shown}: not one line with a fix: {message!r}")
        elif row["args"][-1] == NO_SUCH_CHOICE and row["generic_flag"] not in BAD:
            if "invalid choice" not in message or row["flag"] not in message:
                failures.append(f"{shown}: {message}")
        elif not (message.startswith(row["flag"] + " ") or message.startswith(row["flag"] + ":")):
            failures.append(f"{shown}: blames another setting: {message}")
    assert not failures, "\n".join(failures)


def test_the_tables_cover_every_field_and_count_them():
    """The count the report quotes: every leaf of every command, by how it is covered."""
    rows = [row for command in COMMANDS for row in rows_of(command)]
    refused = [row for row in rows if row["args"] is not None]
    switches = [row for row in rows if row["args"] is None and row["kind"] == "switch"]
    print(f"\n{len(rows)} fields over {len(COMMANDS)} commands: {len(refused)} with a refused bad value, "
          f"{len(switches)} switches, {len(rows) - len(refused) - len(switches)} any value valid")
    assert len(refused) + len(switches) + len(ANY_VALUE) == len(rows)


# -- checks across fields, and the folders the issue names ---------------------------------------
@pytest.fixture
def image_free_folder(tmp_path):
    folder = tmp_path / "no-images"
    (folder / "clip").mkdir(parents=True)
    (folder / "notes.txt").write_text("no image here\n")
    return folder


def test_a_background_folder_without_images_is_refused(image_free_folder):
    for command in ("learner.main", "learner.compare", "actors.collect"):
        message = outcome(IN_PROCESS[command][1], ["--background-dir", str(image_free_folder)])
        assert message is not None and message.startswith(f"--background-dir {image_free_folder}: is not a folder of "
                                                          "images"), (command, message)


def test_a_folder_of_images_is_accepted(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "red.png")
    config = learner_main.parse_learner_config(["--background-dir", str(tmp_path), "--out", str(tmp_path / "run")])
    assert config.env.background_dir == str(tmp_path)


@pytest.mark.parametrize(("command", "argv", "blamed", "says"), [
    ("learner.main", ["--limiter.min-ready-steps", "200000"], "--limiter.min-ready-steps",
     "more than the replay holds"),
    ("learner.main", ["--limiter.max-unsegmented-chunks", "4000"], "--limiter.max-unsegmented-chunks",
     "not below --replay.capacity-chunks"),
    ("learner.main", ["--limiter.error-buffer", "10"], "--limiter.error-buffer", "too narrow"),
    ("learner.main", ["--downstream.label-budgets", "9000"], "--downstream.label-budgets", "more than the 8000"),
    ("learner.main", ["--method", "masklam-paper", "--actor.chunk-length", "8"], "--actor.chunk-length",
     "fewer than the LAM's window"),
    ("learner.main", ["--actor.no-segment", "--num-segmenters", "0", "--actor.chunk-length", "2"],
     "--actor.chunk-length", "a policy transition's window"),
    ("learner.compare", ["--train-steps", "500"], "--downstream.label-budgets", "more than the 500"),
    ("learner.compare", ["--methods", "laom", "--train-steps", "900", "--downstream.label-budgets", "100"],
     "--laom.methods.laom.label-budget", "more than the 900"),
    ("learner.compare", ["--downstream.eval-episodes", "0"], "--downstream.eval-episodes", "with expert data"),
    ("learner.compare", ["--env", "Ant-v5"], "--expert-dir", "no expert for Ant-v5"),
    ("learner.experts", ["--total-steps", "100", "--learning-starts", "100"], "--learning-starts", "leaves none"),
    ("segmenter.main", ["--segmenter.sam-min-area", "0.3", "--segmenter.sam-max-area", "0.2"],
     "--segmenter.sam-min-area", "above --segmenter.sam-max-area"),
])
def test_settings_that_contradict_each_other_are_refused(command, argv, blamed, says):
    message = outcome(IN_PROCESS[command][1], argv)
    assert message is not None and message.startswith(blamed) and says in message, message


def test_what_is_valid_stays_valid(tmp_path):
    """The checks refuse only what cannot work: 0 where it means "off", none where it means
    "no limit", and an empty Redis URL (the embedded server) are settings."""
    learner_main.parse_learner_config(["--limiter.samples-per-insert", "0", "--metrics-port", "0", "--redis-url", "",
                                       "--total-env-steps", "none", "--torch-threads", "0", "--max-restarts", "0",
                                       "--out", str(tmp_path / "new" / "run"), "--ray-address", "auto"])
    parse(SegmenterMainConfig, ["--segmenter.imperfection.mask-radius", "-3", "--max-seconds", "0.5"], "x")


# -- what a user sees ---------------------------------------------------------------------------
def processes_marked(marker: str) -> list[int]:
    """Processes whose environment holds `marker`: anything the command started and left running."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(("args", "blamed"), [
    (["learner.main", "--limiter.samples-per-insert", "-1"], "--limiter.samples-per-insert"),
    (["learner.main", "--redis-url", NOT_A_URL], "--redis-url"),
    (["learner.main", "--background-dir", "{no_images}"], "--background-dir"),
    (["learner.compare", "--seeds", "0"], "--seeds"),
    (["actors.collect", "--replay.run-name", "my:run"], "--replay.run-name"),
    (["segmenter.main", "--segmenter.imperfection.mask-dropout", "2"], "--segmenter.imperfection.mask-dropout"),
    (["benchmarks.soak", "--learner-args=--schedule.publish-every 0"], "--learner-args"),
])
def test_a_bad_setting_ends_the_command_with_one_line_before_anything_starts(args, blamed, tmp_path,
                                                                             image_free_folder):
    out = tmp_path / "out"
    args = [a.replace("{no_images}", str(image_free_folder)) for a in args]
    args += ["--out", str(out / "result.json" if args[0].startswith("benchmarks.") else out)]
    marker = f"MASKLAM_TEST_MARKER={uuid.uuid4().hex}"
    env = {**os.environ, "MASKLAM_REDIS_URL": "", marker.split("=")[0]: marker.split("=")[1]}
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)  # a command that started its services would not end this soon
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {blamed}"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists(), "the command wrote its output folder: it got past its settings"
    assert not processes_marked(marker), "the command left a process running (Redis? Ray?)"
