"""Dataclass configs on the command line, presets as their defaults, and the resolved-config file.

Every entry point describes its settings as a tree of dataclasses. `parse` hands the tree
to tyro, which makes one flag per leaf, grouped by the nested dataclass it sits in
(`--sac.lr`, `--lam.method.mask-channel`, `--replay.capacity-chunks`); `--help` shows the
groups. A field annotated `tyro.conf.arg(name=..., prefix_name=False)` keeps a plain name
(`--env`), and a group annotated `tyro.conf.OmitArgPrefixes` gives its fields plain names.

Commands with presets pass `defaults`, a function of a few top-level choices (`--preset`,
`--method`) that returns the whole config those choices start from; `parse` reads the
choices first, so every other flag's default (and `--help`) is the chosen preset's value,
and a flag on the command line overrides it. `save_resolved_config` writes what actually
ran next to the outputs, without secrets, so a result can always be traced to its settings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

import tyro
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

from common.cli import ConfigError

T = TypeVar("T")

# Keys whose values must never reach a file on disk (passwords live in Redis URLs).
_SECRET_FIELDS = ("redis_url",)

_REGISTRY = ConstructorRegistry()


@_REGISTRY.primitive_rule
def _none_rule(type_info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """`X | None` flags take `none` as well as tyro's `None` (else `--background-dir none`
    would silently be the folder "none")."""
    if type_info.type is not type(None):
        return None
    return PrimitiveConstructorSpec(nargs=1, metavar="{None}", choices=("None", "none"),
                                    instance_from_str=lambda args: None, is_instance=lambda x: x is None,
                                    str_from_instance=lambda instance: ["None"])


def _choices(config_type: type, names: tuple[str, ...], argv: list[str], prog: str) -> dict[str, str]:
    """The pre-pass: the values of the top-level Literal fields `names` (e.g. --preset)."""
    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False, exit_on_error=False)
    hints, fields = get_type_hints(config_type), {f.name: f for f in dataclasses.fields(config_type)}
    for name in names:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=fields[name].default,
                            choices=get_args(hints[name]))
    try:
        return vars(parser.parse_known_args(argv)[0])
    except argparse.ArgumentError as exc:
        raise ConfigError(str(exc), f"see {prog} --help") from None


def _one_line(box: str) -> str:
    """tyro's error box as one line: its message, and the flags it suggests instead."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip().strip("│╭╮╰╯").strip() for line in box.splitlines()]
    sections: list[list[str]] = [[]]
    for line in lines[1:]:  # the first line is the box's title
        if line and set(line) <= set("─-"):
            sections.append([])
        elif line:
            sections[-1].append(line)
    message = " ".join(sections[0]) or " ".join(lines)
    suggested = [flag for section in sections[1:] if section and section[0].startswith("Perhaps you meant")
                 for line in section[1:] for flag in re.findall(r"^--[a-z][\w.-]*", line)]
    return f"{message}; perhaps {', '.join(suggested)}" if suggested else message


def parse(config_type: type[T], argv: list[str] | None, prog: str,
          defaults: Callable[..., T] | None = None, choose_by: tuple[str, ...] = ("preset",)) -> T:
    """Parse `argv` (None: sys.argv) into `config_type`.

    With `defaults`, the flags `choose_by` (top-level Literal fields) are read first and
    `defaults(**their values)` is the config every other flag starts from. A wrong flag or
    value raises ConfigError (one line, see common/cli.py); `--help` prints and exits.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    default = defaults(**_choices(config_type, choose_by, argv, prog)) if defaults else None
    description = (config_type.__doc__ or "").strip().splitlines()[0]
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            config = tyro.cli(config_type, args=argv, default=default, prog=prog, description=description,
                              registry=_REGISTRY)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise ConfigError(_one_line(captured.getvalue()), f"see {prog} --help") from None
    sys.stderr.write(captured.getvalue())  # tyro's warnings, if any
    return config


def config_to_dict(config: Any) -> dict:
    """A JSON-safe dict of a config tree, with secrets (Redis passwords) removed."""
    data = dataclasses.asdict(config)

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("<redacted>" if k in _SECRET_FIELDS and v else scrub(v)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [scrub(v) for v in node]
        return node

    return scrub(data)


def from_dict(config_type: type[T], values: dict) -> T:
    """Build a config tree from nested dicts (a preset's row); absent fields keep their defaults,
    an unknown key is a TypeError."""
    hints = get_type_hints(config_type)
    kwargs = {}
    for name, value in values.items():
        field_type = hints.get(name)
        kwargs[name] = (from_dict(field_type, value) if isinstance(value, dict) and dataclasses.is_dataclass(field_type)
                        else value)
    return config_type(**kwargs)


def save_resolved_config(config: Any, out_dir: str | os.PathLike, name: str = "config.json",
                         extra: dict | None = None) -> Path:
    """Write the resolved config (plus `extra`, e.g. env settings) as JSON in `out_dir`."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = config_to_dict(config)
    if extra:
        payload.update(extra)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


__all__ = ["parse", "from_dict", "config_to_dict", "save_resolved_config"]
