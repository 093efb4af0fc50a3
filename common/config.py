"""Dataclass configs with a generated command line, and the resolved-config file.

Every entry point describes its settings as dataclasses; `add_dataclass_arguments`
turns their fields into `--kebab-case` flags (nested dataclasses are flattened, so field
names must be unique across a config tree), and `dataclass_from_args` builds the
instances back. `save_resolved_config` writes what actually ran next to the outputs,
so a result can always be traced to its settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from common.cli import ArgumentParser

T = TypeVar("T")

# Keys whose values must never reach a file on disk (passwords live in Redis URLs).
_SECRET_FIELDS = ("redis_url",)


def _flag(field: dataclasses.Field) -> str:
    """`--kebab-case` of the field name, or of `metadata["flag"]` where the design names the flag."""
    return "--" + field.metadata.get("flag", field.name).replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, is_optional) for `X | None`."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parser_for(tp: Any, optional: bool):
    if tp is bool:
        return None
    if tp in (int, float, str):
        base = tp
    elif get_origin(tp) is Literal:
        base = type(get_args(tp)[0])
    else:
        raise TypeError(f"config field type {tp!r} has no command-line form")
    if not optional:
        return base

    def parse(text: str):
        return None if text.lower() in ("none", "") else base(text)

    parse.__name__ = base.__name__
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, defaults: Any = None) -> None:
    """Add one flag per field of dataclass `cls` (recursing into nested dataclasses)."""
    defaults = defaults if defaults is not None else cls()
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[field.name])
        default = getattr(defaults, field.name)
        if dataclasses.is_dataclass(tp):
            add_dataclass_arguments(parser, tp, default)
            continue
        help_text = field.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        if tp is bool:
            parser.add_argument(_flag(field), dest=field.name, default=default,
                                action=argparse.BooleanOptionalAction, help=help_text)
            continue
        choices = list(get_args(tp)) if get_origin(tp) is Literal else None
        parser.add_argument(_flag(field), dest=field.name, default=default,
                            type=_parser_for(tp, optional), choices=choices, help=help_text)


def dataclass_from_args(cls: type[T], namespace: argparse.Namespace) -> T:
    """Rebuild an instance of `cls` from a namespace filled by `add_dataclass_arguments`."""
    hints = get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(tp):
            values[field.name] = dataclass_from_args(tp, namespace)
        else:
            values[field.name] = getattr(namespace, field.name)
    return cls(**values)


def parse_config(cls: type[T], argv: list[str] | None = None, description: str = "") -> T:
    """Parse a command line straight into dataclass `cls`."""
    parser = ArgumentParser(description=description or (cls.__doc__ or "").strip().splitlines()[0])
    add_dataclass_arguments(parser, cls)
    return dataclass_from_args(cls, parser.parse_args(argv))


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


__all__ = [
    "add_dataclass_arguments",
    "dataclass_from_args",
    "parse_config",
    "config_to_dict",
    "save_resolved_config",
]
