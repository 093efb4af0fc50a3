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

Every config checks itself where it is parsed, so a bad value fails in a second with one
line, before a service starts, instead of minutes later inside an actor. A dataclass in the
tree may define `validate(self) -> None`, which raises `ConfigError(what, fix, field=NAME)`
for a setting it refuses (NAME relative to it; dotted for a field of a nested config, for
checks across fields); `validate` (called by `parse`) runs them innermost first and names
the flag as the user typed it: `--limiter.samples-per-insert -1.0: must be at least 0 — ...`.
The helpers below state the usual rules (`at_least`, `positive`, `in_range`, ...) in a line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

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
    """Parse `argv` (None: sys.argv) into `config_type` and validate it.

    With `defaults`, the flags `choose_by` (top-level Literal fields) are read first and
    `defaults(**their values)` is the config every other flag starts from. A wrong flag or
    value, or one a config's `validate()` refuses, raises ConfigError (one line, see
    common/cli.py); `--help` prints and exits.
    """
    config = parse_flags(config_type, argv, prog, defaults, choose_by)
    validate(config)
    return config


def parse_flags(config_type: type[T], argv: list[str] | None, prog: str,
                defaults: Callable[..., T] | None = None, choose_by: tuple[str, ...] = ("preset",)) -> T:
    """`parse` without `validate`: only what tyro checks (flags, types, choices)."""
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


# -- validation ---------------------------------------------------------------------------------
_ARG_CONFIG = type(tyro.conf.arg())  # what `tyro.conf.arg(name=..., prefix_name=...)` annotates a field with


def validate(config: Any) -> None:
    """Run the `validate()` of every config in the tree, innermost first (a config's own checks
    across its fields can rely on each part being valid); a ConfigError that blames a field is
    raised again naming that field's flag and value."""
    for path, node in _configs(config, ()):
        check = getattr(node, "validate", None)
        if check is None:
            continue
        try:
            check()
        except ConfigError as exc:
            if exc.field is None:
                raise
            where = (*path, *exc.field.split("."))
            raise ConfigError(f"{flag(type(config), where)}{_shown(config, where)}: {exc.what}", exc.fix) from None


def _configs(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, config) of every dataclass in the tree, children before their parent."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from _configs(getattr(node, f.name), (*path, f.name))
        yield path, node
    elif isinstance(node, dict):  # e.g. compare's methods: {"masklam": MethodConfig(...), ...}
        for key, value in node.items():
            yield from _configs(value, (*path, key))


def flag(config_type: type, path: Sequence[str]) -> str:
    """The flag tyro gives the field at `path` of `config_type`, by its naming rules: nested
    names joined by dots, `_` as `-`; a `tyro.conf.arg(name=...)` renames a level ('' drops
    it), `prefix_name=False` and `tyro.conf.OmitArgPrefixes` drop the prefix; a dict field's
    keys are a level ("--lam.methods.masklam-paper.max-future-offset")."""
    prefix: list[str] = []
    node_type, omit = config_type, False
    parts = list(path)
    while parts:
        name = parts.pop(0)
        hint = get_type_hints(node_type, include_extras=True)[name]
        base, markers = (get_args(hint)[0], get_args(hint)[1:]) if get_origin(hint) is Annotated else (hint, ())
        arg = next((m for m in markers if isinstance(m, _ARG_CONFIG)), None)
        omit = omit or tyro.conf.OmitArgPrefixes in markers
        label = name if arg is None or arg.name is None else arg.name
        if not parts:
            plain = omit or (arg is not None and arg.prefix_name is False)
            return "--" + ".".join(p.replace("_", "-") for p in ([] if plain else prefix) + [label])
        prefix += [label] if label else []
        if get_origin(base) is dict:
            prefix.append(parts.pop(0))
            base = get_args(base)[1]
        node_type = base
    raise ValueError("flag() needs the path of a field")


def _shown(config: Any, path: Sequence[str]) -> str:
    """" VALUE" as it would be typed after the flag ('' for secrets and whole groups)."""
    value = config
    for name in path:
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    if path[-1] in _SECRET_FIELDS or dataclasses.is_dataclass(value) or isinstance(value, dict):
        return ""
    if value is None:
        return " none"
    if isinstance(value, (list, tuple)):
        return "".join(" " + shlex.quote(str(v)) for v in value)
    return " " + shlex.quote(str(value))


def require(ok: bool, field: str, what: str, fix: str) -> None:
    """Refuse `field` (a ConfigError saying `what` is wrong and the `fix`) unless `ok`."""
    if not ok:
        raise ConfigError(what, fix, field=field)


@contextlib.contextmanager
def blame(field: str, fix: str = "") -> Iterator[None]:
    """Blame `field` for a ConfigError or ValueError raised inside (a check that does not know
    the flag, e.g. an env id looked up in the task table), with `fix` where it has none; a
    ConfigError that blames a field already gets `field` as its prefix (a nested config's
    method called by its parent)."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(exc.what, exc.fix or fix, field=f"{field}.{exc.field}" if exc.field else field) from None
    except ValueError as exc:
        raise ConfigError(str(exc), fix, field=field) from None


def at_least(config: Any, minimum: float, *fields: str, fix: str = "") -> None:
    """Each of `fields` must be >= `minimum` (None: not set, allowed; NaN never is)."""
    for name in fields:
        value = getattr(config, name)
        require(value is None or value >= minimum, name, f"must be at least {minimum}",
                fix or f"pass {minimum} or more")


def positive(config: Any, *fields: str, fix: str = "") -> None:
    """Each of `fields` must be > 0 (None: not set, allowed)."""
    for name in fields:
        value = getattr(config, name)
        require(value is None or value > 0, name, "must be more than 0", fix or "pass a positive number")


def in_range(config: Any, field: str, low: float, high: float, fix: str = "") -> None:
    """`field` must lie in [low, high]."""
    value = getattr(config, field)
    require(low <= value <= high, field, f"must be in [{low}, {high}]", fix or f"pass a value from {low} to {high}")


def comma_list(config: Any, field: str, item: Callable[[str], Any], what: str, fix: str) -> list:
    """`field` as a non-empty comma-separated list, each item converted by `item` (a ValueError,
    or a false result, refuses it: `what` says what each item must be)."""
    items = [part.strip() for part in getattr(config, field).split(",") if part.strip()]
    require(bool(items), field, f"lists no {what}", fix)
    values = []
    for part in items:
        try:
            value = item(part)
        except ValueError:
            value = None
        require(value is not None and value is not False, field, f"{part!r} is not {what}", fix)
        values.append(value)
    return values


def positive_int(text: str) -> int | None:
    """`text` as an integer above 0, else None (an item of `comma_list`)."""
    value = int(text)
    return value if value > 0 else None


def writable(config: Any, field: str, folder: bool = True) -> None:
    """`field` is a path this process can create or write (a folder, or a file when not `folder`):
    it is (or its nearest existing parent is) a folder we may write in, on a filesystem that
    stores files (not /proc or /sys). Nothing is created; '' or None: not set."""
    value = getattr(config, field)
    if not value:
        return
    path = Path(value).expanduser().absolute()
    kind = "folder" if folder else "file"
    if path.exists():
        require(path.is_dir() == folder, field, f"exists and is not a {kind}", f"pass a {kind} path")
        target = path if folder else path.parent
    else:
        target = next(p for p in path.parents if p.exists())
        require(target.is_dir(), field, f"cannot be created: {target} is not a folder", f"pass a {kind} path")
    stats = os.statvfs(target)
    require(os.access(target, os.W_OK | os.X_OK) and not stats.f_flag & os.ST_RDONLY and stats.f_blocks > 0,
            field, f"cannot be written: {target} is not a writable folder", f"pass a {kind} path you can write")


def redis_url(config: Any, field: str = "redis_url") -> None:
    """`field` (else $MASKLAM_REDIS_URL, which it defaults to) is a URL redis-py can connect with:
    redis://, rediss:// or unix:// (the value is never shown: it may hold a password)."""
    import redis.connection

    from common.replay.redis_server import REDIS_URL_ENV

    value = getattr(config, field)
    url, source = (value, None) if value else (os.environ.get(REDIS_URL_ENV), f"${REDIS_URL_ENV}")
    if not url:
        return
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        fix = "e.g. redis://:PASSWORD@HOST:6379/0"
        if source:
            raise ConfigError(f"{source} is not a Redis URL ({exc})", f"set it to a Redis URL, {fix}") from None
        raise ConfigError(f"is not a Redis URL ({exc})", fix, field=field) from None


__all__ = ["parse", "parse_flags", "from_dict", "config_to_dict", "save_resolved_config", "validate", "flag",
           "require", "blame", "at_least", "positive", "in_range", "comma_list", "positive_int", "writable",
           "redis_url"]
