"""The command lines: one flag per config field, grouped help, presets as defaults, and every
command the README and docs/ show parses.

The flags are checked by behaviour, not by re-deriving tyro's naming: every option that
`--help` lists is set at once to a value other than its default, and every leaf of the
config tree must then differ from its default (read with `parse_flags`: those values are
mostly not valid settings, which tests/test_config_validation.py covers).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from functools import cache
from pathlib import Path
from unittest import mock

import pytest
import torch

from actors.collect import CollectConfig
from common.cli import ConfigError
from common.config import parse, parse_flags
from learner import compare
from learner import main as learner_main
from learner.compare import CompareConfig, parse_compare_config
from learner.experts import ExpertConfig
from learner.main import LearnerMainConfig, parse_learner_config
from learner.lam.config import LAMConfig
from learner.laom.config import LAOMConfig
from learner.presets import PRESETS
from segmenter.main import SegmenterMainConfig

ROOT = Path(__file__).resolve().parents[1]
PARSERS: dict[str, Callable[[list[str]], object]] = {
    "learner.main": parse_learner_config,
    "learner.compare": parse_compare_config,
    "actors.collect": lambda argv: parse(CollectConfig, argv, "python -m actors.collect"),
    "segmenter.main": lambda argv: parse(SegmenterMainConfig, argv, "python -m segmenter.main"),
    "learner.experts": lambda argv: parse(ExpertConfig, argv, "python -m learner.experts"),
}
# The same commands' flags alone, without validation.
FLAGS_ONLY: dict[str, Callable[[list[str]], object]] = {
    "learner.main": lambda argv: parse_flags(LearnerMainConfig, argv, learner_main.PROG, learner_main.defaults,
                                             choose_by=("preset", "method")),
    "learner.compare": lambda argv: parse_flags(CompareConfig, argv, compare.PROG, compare.defaults),
    "actors.collect": lambda argv: parse_flags(CollectConfig, argv, "python -m actors.collect"),
    "segmenter.main": lambda argv: parse_flags(SegmenterMainConfig, argv, "python -m segmenter.main"),
    "learner.experts": lambda argv: parse_flags(ExpertConfig, argv, "python -m learner.experts"),
}
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WIDE = {"COLUMNS": "120"}  # one option per help line, in one column


@cache
def help_text(command: str) -> str:
    buffer = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, mock.patch.dict(os.environ, WIDE), redirect_stdout(buffer):
        PARSERS[command](["--help"])
    assert exit_info.value.code == 0
    return buffer.getvalue()


def options(help_output: str) -> dict[str, tuple[str, str]]:
    """Each option line's flags ("--a" or "--a, --no-a") -> (its metavar, '' for a switch; its default)."""
    texts: dict[str, list[str]] = {}
    current = None
    for line in help_output.splitlines():
        inside = line.strip().startswith("│")  # a box's line: what follows its border is indented
        body = line.strip()[1:] if inside else line.rstrip()
        indent = len(body) - len(body.lstrip())  # an option's line is less indented than its help's
        line = line.strip().strip("│").strip()
        match = re.match(r"(--[a-z][\w.-]*(?:, --[a-z][\w.-]*)?)(?: (\S+))?", line) if indent <= 3 else None
        if match and match.group(1) != "--help":
            current = match.group(1)
            texts[current] = [match.group(2) or ""]
        elif not line or line[0] in "╭╰─-":  # a group's border or rule ends the option's help
            current = None
        elif current:
            texts[current].append(line)
    defaults = {flags: re.search(r"\(default: (.*?)\)$", " ".join(text[1:])) for flags, text in texts.items()}
    return {flags: (text[0], defaults[flags].group(1) if defaults[flags] else "") for flags, text in texts.items()}


def leaves(node, prefix: str = "") -> dict[str, object]:
    """The config tree as {"lam.method.mask_channel": value, ...} (dict fields included)."""
    if dataclasses.is_dataclass(node):
        node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def other_value(index: int, flags: str, metavar: str, default: str) -> tuple[list[str], object]:
    """Arguments that set the option to something other than its default, and the value when
    it is unique to this option (None for switches and choices, which only flip)."""
    if ", " in flags:  # --x, --no-x
        return [flags.split(", ")[1 if default == "True" else 0]], None
    if metavar.startswith("{") and "|" not in metavar:
        return [flags, next(c for c in metavar.strip("{}").split(",") if c != default)], None
    if metavar.endswith("INT"):
        return [flags, str(100_000 + index)], 100_000 + index
    if metavar.endswith("FLOAT"):  # in (0, 1): a probability is valid too
        return [flags, str((index + 1) / 1024)], (index + 1) / 1024
    return [flags, f"value-{index}"], f"value-{index}"


@pytest.mark.parametrize("command", PARSERS)
def test_every_config_field_has_exactly_one_flag(command):
    """One parse sets every option at once: each leaf must change, each unique value must land
    in exactly one leaf, and there are as many options as leaves."""
    default = leaves(FLAGS_ONLY[command]([]))
    argv, unique = [], {}
    for index, (flags, (metavar, default_text)) in enumerate(options(help_text(command)).items()):
        args, value = other_value(index, flags, metavar, default_text)
        argv += args
        if value is not None:
            unique[flags] = value
    config = leaves(FLAGS_ONLY[command](argv))
    unchanged = sorted(leaf for leaf, value in config.items() if value == default[leaf])
    assert not unchanged, f"fields no flag sets: {unchanged}"
    for flags, value in unique.items():
        holders = [leaf for leaf, v in config.items() if v == value and type(v) is type(value)]
        assert len(holders) == 1, f"{flags} set {holders or 'nothing'}"
    assert len(options(help_text(command))) == len(default)


@pytest.mark.parametrize(("command", "groups"), [
    ("learner.main", ["env", "lam.model", "lam.method", "lam.optim", "schedule", "actor", "segmenter",
                      "segmenter.imperfection", "replay", "limiter", "sac", "downstream"]),
    ("learner.compare", ["env", "lam.model", "lam.optim", "lam.methods.masklam", "laom.optim", "downstream"]),
])
def test_help_shows_the_flags_grouped_by_component(command, groups):
    text = help_text(command)
    for group in groups:
        assert re.search(rf"(^|[\s─]){re.escape(group)} options($|[\s─])", text, flags=re.M), group
    for flag in ("--sac.lr", "--lam.method.mask-channel", "--replay.capacity-chunks") if command == "learner.main" \
            else ("--lam.optim.batch-size", "--lam.methods.masklam-paper.max-future-offset"):
        assert flag in text


def test_a_preset_gives_the_defaults_and_a_flag_overrides_them():
    assert parse_learner_config(["--preset", "paper"]).env.image_size == 64
    ci = parse_learner_config(["--preset", "ci"])
    assert ci.env.image_size == 32 and ci.lam.optim.batch_size == 32 and ci.sac.batch_size == 64
    assert parse_learner_config(["--preset", "ci", "--lam.optim.batch-size", "7"]).lam.optim.batch_size == 7
    paper = parse_compare_config(["--preset", "paper", "--lam.optim.updates", "7", "--env", "Hopper-v5"])
    assert paper.env.image_size == 64 and paper.lam.optim.batch_size == 512 and paper.lam.optim.updates == 7
    assert paper.laom.optim.updates == 35_000 and paper.env.env_id == "Hopper-v5"


def test_no_preset_repeats_a_dataclass_default():
    """One source per default: a preset row names only what it changes."""
    row_types = {"lam": LAMConfig, "laom": LAOMConfig, "learner.main": LearnerMainConfig,
                 "learner.compare": CompareConfig}

    def repeated(row: dict, default: object, prefix: str) -> list[str]:
        return [name for key, value in row.items() for name in
                (repeated(value, getattr(default, key), f"{prefix}{key}.") if isinstance(value, dict)
                 else [f"{prefix}{key}"] if value == getattr(default, key) else [])]

    found = [f"{preset}/{row}: {name}" for preset, rows in PRESETS.items() for row, values in rows.items()
             for name in repeated(values, row_types[row](), "")]
    assert not found, found


def test_the_online_lam_has_no_update_budget():
    """learner.main's LAM trains for as long as the run: no --lam.optim.updates, no cosine schedule."""
    def group(command: str) -> str:  # the lam.optim group's text: up to the blank line that ends it
        return re.split(r"\n\s*\n", help_text(command).split(" lam.optim options", 1)[1], maxsplit=1)[0]

    online, offline = group("learner.main"), group("learner.compare")
    assert "--lam.optim.lr" in online and "--lam.optim.updates" not in online and "cosine" not in online
    assert "--lam.optim.updates" in offline and "cosine" in offline


def test_the_method_gives_the_lam_switches_and_a_flag_overrides_them():
    assert parse_learner_config(["--method", "masklam-paper"]).lam.method.context_frames == 3
    config = parse_learner_config(["--method", "masklam-paper", "--lam.method.context-frames", "2",
                                   "--lam.method.input-masking", "--segmenter.imperfection.mask-radius", "1"])
    assert config.lam.method.context_frames == 2 and config.lam.method.future_frames == 3
    assert config.lam.method.input_masking and config.lam.method.mask_radius == 0
    assert config.segmenter.imperfection.mask_radius == 1


def test_a_wrong_flag_is_one_config_error():
    with pytest.raises(ConfigError, match="Unrecognized options: --lr, 3; perhaps .*--sac.lr"):
        parse_learner_config(["--lr", "3"])
    with pytest.raises(ConfigError, match="invalid choice"):
        parse_learner_config(["--preset", "huge"])
    assert parse_learner_config(["--total-env-steps", "none"]).total_env_steps is None


# -- the documented commands ------------------------------------------------------------------------
def documented_commands() -> list[tuple[str, str, str]]:
    """(document, module, arguments) of every `python -m MODULE ...` in inline code or a code block."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
        inline = re.findall(r"`([^`\n]*(?:\n[^`\n]+)*)`", re.sub(r"```.*?```", "", text, flags=re.S))
        lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
        lines += [span.replace("\n", " ") for span in inline]
        for line in lines:
            for module, args in re.findall(r"python -m ([\w.]+)((?: +(?!&&|\||>|;)\S+)*)", line):
                if module.split(".")[0] in ("learner", "actors", "segmenter", "benchmarks"):
                    found.append((path.name, module, args.strip()))
    return found


@cache
def benchmark_flags() -> dict[str, frozenset[str]]:
    """Each documented benchmark's flags, from its --help in one subprocess (tests never import
    benchmarks)."""
    modules = sorted({module for _, module, _ in documented_commands() if module.startswith("benchmarks.")})
    show_help = ("import contextlib, importlib, sys\n"
                 "for name in sys.argv[1:]:\n"
                 "    print('@@', name, flush=True)\n"
                 "    with contextlib.suppress(SystemExit):\n"
                 "        importlib.import_module(name).main(['--help'])\n")
    result = subprocess.run([sys.executable, "-c", show_help, *modules], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, **WIDE}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    helps = dict(re.findall(r"^@@ (\S+)\n(.*?)(?=^@@ |\Z)", result.stdout, flags=re.S | re.M))
    return {module: frozenset(f for flags in options(text) for f in flags.split(", "))
            for module, text in helps.items()}


def test_the_documents_show_commands():
    modules = {module for _, module, _ in documented_commands()}
    assert {"learner.main", "learner.compare", "actors.collect", "segmenter.main", "learner.experts"} <= modules


@pytest.mark.parametrize(("document", "module", "args"), documented_commands())
def test_every_documented_command_parses(document, module, args):
    """Usage lines (`[--env E]`, `ci\\|paper`) must name real flags; literal commands must parse."""
    flags = re.findall(r"(?<![\w-])--[a-z][\w.-]*", args)
    if module.startswith("benchmarks."):
        assert set(flags) <= benchmark_flags()[module], f"{document}: {module} {args}"
        return
    known = {f for names in options(help_text(module)) for f in names.split(", ")}
    assert set(flags) <= known, f"{document}: unknown flags {sorted(set(flags) - known)} in {module} {args}"
    if re.search(r"[\[|]|\.\.\.|\b[A-Z]+\b", args):
        return
    try:
        PARSERS[module](args.split())
    except ConfigError as error:  # a GPU node's command read on a machine without one is refused for that alone
        if not (re.search(r"--device cuda\b", args) and not torch.cuda.is_available()
                and str(error).startswith("--device cuda: names a GPU this machine does not show")):
            raise
